package guest

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// spawner starts processes and collects their exit status. Outside PID 1
// the Go runtime's own wait is used. As PID 1 the agent must also reap
// orphans with wait4(-1), which would steal the status of the workload's
// process from a per-process wait; then the reaper owns every wait and hands
// statuses to whoever started the process.
type spawner interface {
	start(path string, argv []string, attr *os.ProcAttr) (pid int, wait func() syscall.WaitStatus, err error)
}

type directSpawner struct{}

func (directSpawner) start(path string, argv []string, attr *os.ProcAttr) (int, func() syscall.WaitStatus, error) {
	p, err := os.StartProcess(path, argv, attr)
	if err != nil {
		return 0, nil, err
	}
	return p.Pid, func() syscall.WaitStatus {
		st, err := p.Wait()
		if err != nil {
			// Only possible if someone else reaped it; report it as killed
			// rather than inventing a success.
			return syscall.WaitStatus(syscall.SIGKILL)
		}
		return st.Sys().(syscall.WaitStatus)
	}, nil
}

// reaper reaps every child of the process. It holds mu across both start
// and wait4, so a child cannot be reaped before its waiter is registered.
type reaper struct {
	mu      sync.Mutex
	waiters map[int]chan syscall.WaitStatus
	sig     chan os.Signal
}

// startReaper begins reaping; it is meant for PID 1, which inherits every
// orphan in the VM.
func startReaper() *reaper {
	r := &reaper{waiters: make(map[int]chan syscall.WaitStatus), sig: make(chan os.Signal, 16)}
	signal.Notify(r.sig, syscall.SIGCHLD)
	go func() {
		for range r.sig {
			r.reap()
		}
	}()
	return r
}

// stop ends reaping; only tests need it, PID 1 reaps until power off.
func (r *reaper) stop() {
	signal.Stop(r.sig)
	close(r.sig)
}

func (r *reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if ch, ok := r.waiters[pid]; ok {
			delete(r.waiters, pid)
			ch <- ws // buffered
		}
	}
}

func (r *reaper) start(path string, argv []string, attr *os.ProcAttr) (int, func() syscall.WaitStatus, error) {
	r.mu.Lock()
	p, err := os.StartProcess(path, argv, attr)
	if err != nil {
		r.mu.Unlock()
		return 0, nil, err
	}
	ch := make(chan syscall.WaitStatus, 1)
	r.waiters[p.Pid] = ch
	r.mu.Unlock()
	pid := p.Pid
	// The reaper owns the wait; drop the runtime's handle (pidfd) so
	// nothing else waits on it.
	if err := p.Release(); err != nil {
		return pid, nil, fmt.Errorf("release %d: %w", pid, err)
	}
	// A SIGCHLD may have arrived before registration and been consumed by
	// a reap that found nothing for this pid; reap once more to be sure.
	go r.reap()
	return pid, func() syscall.WaitStatus { return <-ch }, nil
}
