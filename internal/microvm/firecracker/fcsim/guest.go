package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// initArg makes fcsim the guest's init: PID 1 of the guest's PID namespace, the agent
// its only child. When init dies, the kernel kills everything in the namespace — the
// simulated equivalent of the VM's power going off.
const initArg = "__fcsim_init"

// guest is the "VM": init (in new namespaces when possible) running the agent.
type guest struct {
	cmd      *exec.Cmd
	done     chan struct{}
	sock     string // the agent's unix socket
	port     uint32 // the vsock port the agent listens on inside the "VM"
	stopOnce sync.Once
}

// startGuest starts init with the agent. The vulcan.* kernel arguments become the
// agent's flags (what the agent as PID 1 would read from /proc/cmdline), the memory
// size becomes RLIMIT_DATA.
func startGuest(dir string, boot bootSource, mc machineConfig, console io.Writer, extra []string, log *slog.Logger) (*guest, error) {
	agent := os.Getenv("VULCAN_FCSIM_AGENT")
	if agent == "" {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		agent = filepath.Join(filepath.Dir(self), "vulcan-guest")
	}
	if _, err := os.Stat(agent); err != nil {
		return nil, fmt.Errorf("guest agent: %w", err)
	}
	k := parseKernelArgs(boot.BootArgs)
	if k.port == 0 {
		return nil, fmt.Errorf("boot args have no vulcan.listen=vsock:PORT: %q", boot.BootArgs)
	}
	// The agent's socket sits beside the API socket, in the VM dir, so whatever is
	// left after a SIGKILL goes with the dir.
	sock := filepath.Join(dir, "fcsim-agent-"+strconv.Itoa(os.Getpid())+".sock")
	_ = os.Remove(sock)

	agentArgs := []string{"--listen", "unix:" + sock}
	if k.oneshot {
		agentArgs = append(agentArgs, "--oneshot")
	}
	agentArgs = append(agentArgs, strings.Fields(os.Getenv("VULCAN_FCSIM_AGENT_ARGS"))...)
	agentArgs = append(agentArgs, extra...)

	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	memBytes := uint64(*mc.MemSizeMib) << 20
	args := append([]string{initArg, strconv.FormatUint(memBytes, 10), k.hostname, agent}, agentArgs...)
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = console, console // the "serial console": fcsim's output
	attr, pidns, err := initProcAttr()
	if err != nil {
		return nil, err
	}
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	g := &guest{cmd: cmd, done: make(chan struct{}), sock: sock, port: k.port}
	go func() {
		_ = cmd.Wait()
		os.Remove(sock)
		close(g.done)
	}()
	log.Info("guest started", "init_pid", cmd.Process.Pid, "agent", agent, "args", agentArgs,
		"vcpus", *mc.VcpuCount, "mem_mib", *mc.MemSizeMib, "pidns", pidns)
	return g, nil
}

func (g *guest) status() string {
	if g.cmd.ProcessState == nil {
		return "running"
	}
	return g.cmd.ProcessState.String()
}

// kill powers the guest off: SIGKILL to init takes the whole PID namespace along.
// Without a namespace (not root) init kills the agent's process group on SIGTERM.
func (g *guest) kill() {
	g.stopOnce.Do(func() {
		if os.Geteuid() == 0 {
			_ = g.cmd.Process.Kill()
		} else {
			_ = g.cmd.Process.Signal(syscall.SIGTERM)
		}
		<-g.done
	})
}

// kernelArgs are the parts of the boot args the simulated guest honours.
type kernelArgs struct {
	port     uint32
	oneshot  bool
	hostname string
}

func parseKernelArgs(s string) kernelArgs {
	k := kernelArgs{oneshot: true, hostname: "vulcan"}
	for _, f := range strings.Fields(s) {
		key, val, _ := strings.Cut(f, "=")
		switch key {
		case "vulcan.listen":
			if p, ok := strings.CutPrefix(val, "vsock:"); ok {
				n, err := strconv.ParseUint(p, 10, 32)
				if err == nil {
					k.port = uint32(n)
				}
			}
		case "vulcan.oneshot":
			k.oneshot = val != "0" && val != "false" && val != "no"
		case "vulcan.hostname":
			if val != "" {
				k.hostname = val
			}
		}
	}
	return k
}

// guestInit runs as PID 1 of the guest: args are mem-bytes, hostname, agent, flags.
// It reaps every orphan and exits with the agent's status.
func guestInit(args []string) int {
	if len(args) < 3 {
		fmt.Fprintln(os.Stderr, "fcsim init: bad arguments")
		return 2
	}
	mem, err := strconv.ParseUint(args[0], 10, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fcsim init:", err)
		return 2
	}
	if os.Getpid() == 1 {
		_ = setHostname(args[1])
	}
	// RLIMIT_DATA rather than RLIMIT_AS: node and the go toolchain reserve ~800 MiB of
	// address space at start that a small VM runs them with fine, while RLIMIT_DATA
	// counts the private writable memory a VM's RAM actually bounds.
	lim := &syscall.Rlimit{Cur: mem, Max: mem}
	if err := syscall.Setrlimit(syscall.RLIMIT_DATA, lim); err != nil {
		fmt.Fprintln(os.Stderr, "fcsim init: rlimit:", err)
		return 2
	}
	cmd := exec.Command(args[2], args[3:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	// Outside a PID namespace, the agent gets its own group so SIGTERM can take it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: os.Getpid() != 1}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "fcsim init:", err)
		return 1
	}
	agentPid := cmd.Process.Pid
	if os.Getpid() != 1 {
		go func() {
			sig := make(chan os.Signal, 1)
			signalNotify(sig)
			<-sig
			_ = syscall.Kill(-agentPid, syscall.SIGKILL)
		}()
	}
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, 0, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 1
		}
		if pid == agentPid {
			if ws.Exited() {
				return ws.ExitStatus()
			}
			return 128 + int(ws.Signal())
		}
	}
}
