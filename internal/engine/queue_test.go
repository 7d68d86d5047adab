package engine_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
)

// within fails the test if f has not returned after d: the engine bugs these tests guard
// against are hangs, and a hung test should say which call hung.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v: the engine is stuck", what, d)
	}
}

// The reproduction from the integrity issue: with one run slot and one queue slot,
// killing queued workloads used to leave them in the queue channel while admission freed
// their slots, so the next Submit blocked on the full channel holding the engine's lock
// and every later call (Stats, Get, Kill, Ready, Shutdown) hung behind it.
func TestKillQueuedDoesNotDeadlockAdmission(t *testing.T) {
	b := backendtest.NewBlocker(8)
	env := newEnv(t, engine.Config{MaxConcurrent: 1, QueueSize: 1}, &backendtest.Fake{Run: b.Run})
	ctx := context.Background()
	a, err := env.e.Submit(ctx, py("a"))
	if err != nil {
		t.Fatal(err)
	}
	<-b.Started
	for _, code := range []string{"b", "c"} {
		w, err := env.e.Submit(ctx, py(code))
		if err != nil {
			t.Fatalf("submit %s: %v", code, err)
		}
		within(t, 5*time.Second, "Kill of a queued workload", func() {
			if k, err := env.e.Kill(ctx, w.ID); err != nil || k.Status != model.StatusKilled {
				t.Errorf("kill %s: %v %v", code, k, err)
			}
		})
	}
	var d *model.Workload
	within(t, 5*time.Second, "Submit after killing queued workloads", func() {
		d, err = env.e.Submit(ctx, py("d"))
	})
	if err != nil {
		t.Fatalf("submit d: %v (the killed workloads' slots were freed)", err)
	}
	// The slot is taken by d now: one more is refused, not blocked.
	within(t, 5*time.Second, "Submit over capacity", func() {
		if _, err := env.e.Submit(ctx, py("e")); !errors.Is(err, engine.ErrBusy) {
			t.Errorf("submit e: %v, want ErrBusy", err)
		}
	})
	within(t, 5*time.Second, "Stats/Get/Ready", func() {
		if st, err := env.e.Stats(ctx); err != nil || st.Running != 1 || st.Queued != 1 {
			t.Errorf("stats %+v %v", st, err)
		}
		if _, err := env.e.Get(ctx, a.ID); err != nil {
			t.Error(err)
		}
		if err := env.e.Ready(ctx); err != nil {
			t.Error(err)
		}
	})
	close(b.Release)
	within(t, 10*time.Second, "Wait for the queued workload", func() {
		w, err := env.e.Wait(ctx, d.ID)
		if err != nil || w.Status != model.StatusCompleted {
			t.Errorf("d: %+v %v", w, err)
		}
	})
	for _, id := range env.fake.Executed() {
		if id != a.ID && id != d.ID {
			t.Errorf("a killed workload ran: %s", id)
		}
	}
}

// A queued workload that is killed never reaches its backend, however the kill races the
// worker picking it up. Before the fix ~5% of tight races booted a VM for a workload
// reported killed.
func TestKillQueuedRaceNeverExecutes(t *testing.T) {
	const rounds = 250
	var mu sync.Mutex
	ran := map[string]bool{}
	fake := &backendtest.Fake{Run: func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
		mu.Lock()
		ran[job.WorkloadID] = true
		mu.Unlock()
		return backend.Result{}, nil
	}}
	env := newEnv(t, engine.Config{MaxConcurrent: 4, QueueSize: 64}, fake)
	// Give the workers time to pick the task up after Kill has marked it.
	defer engine.SetKillPendingHook(func() { time.Sleep(200 * time.Microsecond) })()
	ctx := context.Background()
	var killedMu sync.Mutex
	killed := 0
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range rounds {
				w, err := env.e.Submit(ctx, py(fmt.Sprint(g, i)))
				if errors.Is(err, engine.ErrBusy) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				k, err := env.e.Kill(ctx, w.ID)
				if errors.Is(err, engine.ErrTerminal) {
					continue // it ran to completion first: fine
				}
				if err != nil {
					t.Error(err)
					return
				}
				if k.Status == model.StatusKilled && k.Error == "killed by request before it started" {
					killedMu.Lock()
					killed++
					killedMu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	// Wait for the workers to settle, then look again: a late execute would show here.
	within(t, 10*time.Second, "drain", func() {
		for {
			st, _ := env.e.Stats(ctx)
			if st.Running == 0 && st.Queued == 0 {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	mu.Lock()
	defer mu.Unlock()
	for id := range ran {
		w, _ := env.e.Get(ctx, id)
		if w.Status == model.StatusKilled && (w.StartedAt == nil || w.Error == "killed by request before it started") {
			t.Errorf("%s reached the backend but is recorded killed before it started", id)
		}
	}
	t.Logf("%d of %d rounds killed the workload before it started", killed, 8*rounds)
}

// Shutdown with queued workloads fails them and returns; workers blocked waiting for work
// wake up and exit.
func TestShutdownWithQueuedAndIdleWorkers(t *testing.T) {
	b := backendtest.NewBlocker(4)
	env := newEnv(t, engine.Config{MaxConcurrent: 1, QueueSize: 4}, &backendtest.Fake{Run: b.Run})
	ctx := context.Background()
	run, _ := env.e.Submit(ctx, py("a"))
	<-b.Started
	q1, _ := env.e.Submit(ctx, py("b"))
	q2, _ := env.e.Submit(ctx, py("c"))
	sctx, cancel := context.WithCancel(ctx)
	cancel()
	within(t, 20*time.Second, "Shutdown", func() { env.e.Shutdown(sctx) })
	for _, id := range []string{q1.ID, q2.ID} {
		w, _ := env.st.Get(ctx, id)
		if w.Status != model.StatusFailed || w.StartedAt != nil {
			t.Errorf("queued %s: %s started=%v", id, w.Status, w.StartedAt)
		}
	}
	if w, _ := env.st.Get(ctx, run.ID); !w.Status.Terminal() {
		t.Errorf("running: %s", w.Status)
	}
}
