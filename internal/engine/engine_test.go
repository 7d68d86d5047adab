package engine_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/store"
)

type env struct {
	e    *engine.Engine
	st   *store.Store
	fake *backendtest.Fake
}

func newEnv(t *testing.T, cfg engine.Config, fake *backendtest.Fake) *env {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	reg := backend.NewRegistry()
	if fake != nil {
		reg.Register(fake)
	}
	e, err := engine.New(context.Background(), engine.Options{Config: cfg, Store: st, Registry: reg, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // workloads a test left blocked are cancelled right away
		e.Shutdown(ctx)
		st.Close()
	})
	return &env{e: e, st: st, fake: fake}
}

var quiet = slog.New(slog.DiscardHandler)

func py(code string) model.Spec { return model.Spec{Runtime: model.RuntimePython, Code: code} }

func TestRunCompletesAndPersists(t *testing.T) {
	fake := &backendtest.Fake{Run: func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
		sink.Line(model.Stdout, "out 1")
		sink.Line(model.Stderr, "err 1")
		sink.Line(model.Stdout, "out 2")
		return backend.Result{Metadata: map[string]string{"vm_id": "vm-7", "boot_ms": "12"}}, nil
	}}
	env := newEnv(t, engine.Config{}, fake)
	w, err := env.e.Run(context.Background(), py("x"))
	if err != nil {
		t.Fatal(err)
	}
	if w.Status != model.StatusCompleted || w.ExitCode == nil || *w.ExitCode != 0 || w.Output != "out 1\nerr 1\nout 2\n" ||
		w.Stdout != "out 1\nout 2\n" || w.Stderr != "err 1\n" || w.Metadata["vm_id"] != "vm-7" || w.Backend != "microvm" ||
		w.Spec.Isolation != model.IsolationMicroVM || w.Spec.Entrypoint != "main.py" || w.StartedAt == nil || w.FinishedAt == nil {
		t.Fatalf("workload %+v", w)
	}
	stored, err := env.st.Get(context.Background(), w.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.Status != model.StatusCompleted || stored.Output != w.Output || stored.Metadata["boot_ms"] != "12" {
		t.Fatalf("stored %+v", stored)
	}
	logs, _ := env.st.Logs(context.Background(), w.ID, 0, 0)
	if len(logs) != 3 || logs[0].Seq != 1 || logs[1].Stream != model.Stderr || logs[2].Text != "out 2" {
		t.Fatalf("logs %+v", logs)
	}
}

func TestNonZeroExitFails(t *testing.T) {
	fake := &backendtest.Fake{Run: func(context.Context, backend.Job, backend.Sink) (backend.Result, error) {
		return backend.Result{ExitCode: 3}, nil
	}}
	w, err := newEnv(t, engine.Config{}, fake).e.Run(context.Background(), py("x"))
	if err != nil {
		t.Fatal(err)
	}
	if w.Status != model.StatusFailed || *w.ExitCode != 3 || w.Error != "exited with code 3" {
		t.Fatalf("%s exit=%v err=%q", w.Status, w.ExitCode, w.Error)
	}
}

func TestBackendErrorAndPanicFail(t *testing.T) {
	for name, run := range map[string]func(context.Context, backend.Job, backend.Sink) (backend.Result, error){
		"error": func(context.Context, backend.Job, backend.Sink) (backend.Result, error) {
			return backend.Result{}, errors.New("vmm exploded")
		},
		"panic": func(context.Context, backend.Job, backend.Sink) (backend.Result, error) { panic("boom") },
	} {
		t.Run(name, func(t *testing.T) {
			env := newEnv(t, engine.Config{}, &backendtest.Fake{Run: run})
			w, err := env.e.Run(context.Background(), py("x"))
			if err != nil {
				t.Fatal(err)
			}
			if w.Status != model.StatusFailed || !strings.HasPrefix(w.Error, "backend error: ") || w.ExitCode != nil {
				t.Fatalf("%s %q", w.Status, w.Error)
			}
			if got := env.fake.Cleaned(); len(got) != 1 || got[0] != w.ID {
				t.Fatalf("cleanup after a failed Execute: %v", got)
			}
		})
	}
}

// A sync caller that goes away must not take the workload with it.
func TestCallerCancelDoesNotStopWorkload(t *testing.T) {
	b := backendtest.NewBlocker(1)
	env := newEnv(t, engine.Config{}, &backendtest.Fake{Run: b.Run})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := env.e.Run(ctx, py("x")); errc <- err }()
	id := <-b.Started
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run after cancel: %v", err)
	}
	close(b.Release)
	w, err := env.e.Wait(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if w.Status != model.StatusCompleted || w.Output != "started\nreleased\n" {
		t.Fatalf("%s %q %q", w.Status, w.Output, w.Error)
	}
}

func TestKillRunning(t *testing.T) {
	b := backendtest.NewBlocker(1)
	env := newEnv(t, engine.Config{}, &backendtest.Fake{Run: b.Run})
	w, err := env.e.Submit(context.Background(), py("x"))
	if err != nil {
		t.Fatal(err)
	}
	<-b.Started
	killed, err := env.e.Kill(context.Background(), w.ID)
	if err != nil {
		t.Fatal(err)
	}
	if killed.Status != model.StatusKilled || killed.Error != "killed by request" || killed.ExitCode != nil {
		t.Fatalf("%+v", killed)
	}
	if got := env.fake.Cleaned(); len(got) != 1 || got[0] != w.ID {
		t.Fatalf("Cleanup calls: %v", got)
	}
	stored, _ := env.st.Get(context.Background(), w.ID)
	if stored.Status != model.StatusKilled {
		t.Fatalf("stored status %s", stored.Status)
	}
	// The kill is logged once: a dashboard showing the history must not see it twice.
	logs, err := env.e.Logs(context.Background(), w.ID, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	kills := 0
	for _, l := range logs {
		if l.Stream == model.System && strings.HasPrefix(l.Text, "killed by request") {
			kills++
		}
	}
	if kills != 1 {
		t.Fatalf("%d kill lines in the log: %+v", kills, logs)
	}
	if _, err := env.e.Kill(context.Background(), w.ID); !errors.Is(err, engine.ErrTerminal) {
		t.Fatalf("second kill: %v", err)
	}
	if _, err := env.e.Kill(context.Background(), "nope"); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("kill unknown: %v", err)
	}
}

func TestKillPendingNeverRuns(t *testing.T) {
	b := backendtest.NewBlocker(2)
	env := newEnv(t, engine.Config{MaxConcurrent: 1}, &backendtest.Fake{Run: b.Run})
	first, _ := env.e.Submit(context.Background(), py("1"))
	<-b.Started
	second, err := env.e.Submit(context.Background(), py("2"))
	if err != nil {
		t.Fatal(err)
	}
	if second.Status != model.StatusPending {
		t.Fatalf("second is %s", second.Status)
	}
	killed, err := env.e.Kill(context.Background(), second.ID)
	if err != nil || killed.Status != model.StatusKilled || killed.StartedAt != nil {
		t.Fatalf("%+v %v", killed, err)
	}
	close(b.Release)
	if w, _ := env.e.Wait(context.Background(), first.ID); w.Status != model.StatusCompleted {
		t.Fatalf("first: %s", w.Status)
	}
	// A third workload runs after the first; the killed one must never have been executed.
	third, _ := env.e.Run(context.Background(), py("3"))
	if third.Status != model.StatusCompleted {
		t.Fatalf("third: %s", third.Status)
	}
	for _, id := range env.fake.Executed() {
		if id == second.ID {
			t.Fatal("killed pending workload was executed")
		}
	}
}

func TestTimeout(t *testing.T) {
	var backendCtxErr error
	fake := &backendtest.Fake{Run: func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
		<-ctx.Done()
		backendCtxErr = ctx.Err()
		return backend.Result{}, ctx.Err()
	}}
	env := newEnv(t, engine.Config{}, fake)
	spec := py("x")
	spec.Resources.TimeoutS = 1
	w, err := env.e.Run(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if w.Status != model.StatusFailed || w.Error != "timed out after 1s" || !errors.Is(backendCtxErr, context.DeadlineExceeded) {
		t.Fatalf("%s %q (backend saw %v)", w.Status, w.Error, backendCtxErr)
	}
	if len(env.fake.Cleaned()) != 1 {
		t.Fatal("no Cleanup after timeout")
	}
	logs, _ := env.e.Logs(context.Background(), w.ID, 0, 0)
	if len(logs) != 1 || logs[0].Stream != model.System || logs[0].Text != "timed out after 1s" {
		t.Fatalf("logs %+v", logs)
	}
}

func TestAdmissionLimit(t *testing.T) {
	b := backendtest.NewBlocker(2)
	env := newEnv(t, engine.Config{MaxConcurrent: 1, QueueSize: 1}, &backendtest.Fake{Run: b.Run})
	ctx := context.Background()
	first, err := env.e.Submit(ctx, py("1"))
	if err != nil {
		t.Fatal(err)
	}
	<-b.Started
	second, err := env.e.Submit(ctx, py("2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.e.Submit(ctx, py("3")); !errors.Is(err, engine.ErrBusy) {
		t.Fatalf("third submit: %v, want ErrBusy", err)
	}
	if _, total, _ := env.st.List(ctx, store.Filter{}); total != 2 {
		t.Fatalf("a refused workload was stored: total %d", total)
	}
	st, _ := env.e.Stats(ctx)
	if st.Running != 1 || st.Queued != 1 {
		t.Fatalf("load running=%d queued=%d", st.Running, st.Queued)
	}
	close(b.Release)
	<-b.Started
	env.e.Wait(ctx, first.ID)
	env.e.Wait(ctx, second.ID)
	// Capacity comes back once they finish.
	w, err := env.e.Run(ctx, py("4"))
	if err != nil || w.Status != model.StatusCompleted {
		t.Fatalf("after release: %v %v", w, err)
	}
}

func TestNoBackendIsUnavailableAndStoresNothing(t *testing.T) {
	env := newEnv(t, engine.Config{}, nil)
	_, err := env.e.Submit(context.Background(), py("x"))
	if !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("got %v", err)
	}
	if _, total, _ := env.st.List(context.Background(), store.Filter{}); total != 0 {
		t.Fatal("stored a workload no backend can run")
	}
}

func TestValidation(t *testing.T) {
	env := newEnv(t, engine.Config{}, &backendtest.Fake{})
	for name, spec := range map[string]model.Spec{
		"no runtime":      {Code: "x"},
		"unknown runtime": {Runtime: "cobol", Code: "x"},
		"both":            {Runtime: "go", Code: "x", Archive: []byte{0x1f, 0x8b}},
		"neither":         {Runtime: "go"},
		"not gzip":        {Runtime: "go", Archive: []byte("PK\x03\x04")},
		"isolation":       {Runtime: "go", Code: "x", Isolation: "container"},
		"network":         {Runtime: "go", Code: "x", Network: "all"},
		"cpus":            {Runtime: "go", Code: "x", Resources: model.Resources{CPUs: 99}},
		"timeout":         {Runtime: "go", Code: "x", Resources: model.Resources{TimeoutS: -1}},
		"entrypoint":      {Runtime: "go", Code: "x", Entrypoint: "../etc/passwd"},
		"env":             {Runtime: "go", Code: "x", Env: map[string]string{"A=B": "c"}},
	} {
		if _, err := env.e.Submit(context.Background(), spec); !errors.Is(err, engine.ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
	if _, total, _ := env.st.List(context.Background(), store.Filter{}); total != 0 {
		t.Fatalf("invalid workloads stored: %d", total)
	}
}

func TestOutputTruncated(t *testing.T) {
	fake := &backendtest.Fake{Run: func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
		for i := range 10 {
			sink.Line(model.Stdout, fmt.Sprintf("line %d", i)) // 7 bytes with newline
		}
		return backend.Result{}, nil
	}}
	w, err := newEnv(t, engine.Config{OutputLimit: 20}, fake).e.Run(context.Background(), py("x"))
	if err != nil {
		t.Fatal(err)
	}
	// Exactly the first 20 bytes written: the line that crossed the cap keeps what fits,
	// and no newline the program did not write there is invented.
	if !w.Truncated || w.Output != "line 0\nline 1\nline 2" || w.Status != model.StatusCompleted {
		t.Fatalf("truncated=%v output=%q", w.Truncated, w.Output)
	}
}

// Lines arrive while followers read; every follower must see 1..n exactly once, in order,
// whether it starts at the beginning, in the middle (resume) or after the end.
func TestFollowOrderingResumeAndDone(t *testing.T) {
	const n = 2000
	gate := make(chan struct{})
	fake := &backendtest.Fake{Run: func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
		for i := 1; i <= n; i++ {
			if i == n/2 {
				<-gate
			}
			sink.Line(model.Stdout, fmt.Sprint(i))
		}
		return backend.Result{ExitCode: 0}, nil
	}}
	env := newEnv(t, engine.Config{}, fake)
	w, err := env.e.Submit(context.Background(), py("x"))
	if err != nil {
		t.Fatal(err)
	}
	collect := func(after int64) ([]model.LogLine, *model.Workload) {
		f, err := env.e.Follow(context.Background(), w.ID, after)
		if err != nil {
			t.Error(err)
			return nil, nil
		}
		var got []model.LogLine
		for {
			lines, final, err := f.Next(context.Background())
			if err != nil {
				t.Error(err)
				return got, nil
			}
			if final != nil {
				return got, final
			}
			got = append(got, lines...)
		}
	}
	check := func(name string, after int64, got []model.LogLine, final *model.Workload) {
		if final == nil || final.Status != model.StatusCompleted {
			t.Errorf("%s: final %+v", name, final)
		}
		if len(got) != n-int(after) {
			t.Errorf("%s: got %d lines, want %d", name, len(got), n-int(after))
			return
		}
		for i, l := range got {
			want := after + int64(i) + 1
			if l.Seq != want || l.Text != fmt.Sprint(want) {
				t.Errorf("%s: line %d is seq %d %q", name, i, l.Seq, l.Text)
				return
			}
		}
	}
	var wg sync.WaitGroup
	for _, after := range []int64{0, 10, 999} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, final := collect(after)
			check(fmt.Sprint("live after ", after), after, got, final)
		}()
	}
	close(gate)
	wg.Wait()
	if _, err := env.e.Wait(context.Background(), w.ID); err != nil {
		t.Fatal(err)
	}
	for _, after := range []int64{0, 1500} {
		got, final := collect(after)
		check(fmt.Sprint("stored after ", after), after, got, final)
	}
	if _, err := env.e.Follow(context.Background(), "nope", 0); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("follow unknown: %v", err)
	}
}

func TestRestartReconciliation(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db")
	st, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	w := &model.Workload{ID: "01RUNNING", Status: model.StatusPending, Spec: py("x"), Metadata: map[string]string{}}
	st.Create(ctx, w)
	w.Status = model.StatusRunning
	if err := st.Update(ctx, w, nil); err != nil {
		t.Fatal(err)
	}
	st.Close()

	st, _ = store.Open(ctx, path)
	defer st.Close()
	e, err := engine.New(ctx, engine.Options{Store: st, Registry: backend.NewRegistry(), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown(ctx)
	got, _ := e.Get(ctx, "01RUNNING")
	if got.Status != model.StatusFailed || got.Error != engine.RestartReason {
		t.Fatalf("%s %q", got.Status, got.Error)
	}
}

func TestShutdownCancelsRunningAndRefusesNew(t *testing.T) {
	b := backendtest.NewBlocker(1)
	env := newEnv(t, engine.Config{MaxConcurrent: 1}, &backendtest.Fake{Run: b.Run})
	ctx := context.Background()
	running, _ := env.e.Submit(ctx, py("1"))
	<-b.Started
	queued, _ := env.e.Submit(ctx, py("2"))
	expired, cancel := context.WithCancel(ctx)
	cancel()
	if err := env.e.Shutdown(expired); !errors.Is(err, context.Canceled) {
		t.Fatalf("shutdown: %v", err)
	}
	for id, want := range map[string]string{
		running.ID: "server shut down while the workload was running",
		queued.ID:  "server shut down before the workload started",
	} {
		w, _ := env.st.Get(ctx, id)
		if w.Status != model.StatusFailed || w.Error != want {
			t.Errorf("%s: %s %q", id, w.Status, w.Error)
		}
	}
	if _, err := env.e.Submit(ctx, py("3")); !errors.Is(err, engine.ErrShuttingDown) {
		t.Fatalf("submit after shutdown: %v", err)
	}
}

func TestShutdownDrainsRunning(t *testing.T) {
	b := backendtest.NewBlocker(1)
	env := newEnv(t, engine.Config{}, &backendtest.Fake{Run: b.Run})
	w, _ := env.e.Submit(context.Background(), py("1"))
	<-b.Started
	done := make(chan error)
	go func() { done <- env.e.Shutdown(context.Background()) }()
	close(b.Release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, _ := env.st.Get(context.Background(), w.ID); got.Status != model.StatusCompleted {
		t.Fatalf("drained workload: %s %q", got.Status, got.Error)
	}
}

// A spec too big for one agent frame is refused at submission, with the size in the text.
func TestSpecTooBigForTheGuest(t *testing.T) {
	env := newEnv(t, engine.Config{}, &backendtest.Fake{})
	spec := py(strings.Repeat("#", model.MaxSpecBytes))
	_, err := env.e.Submit(context.Background(), spec)
	if !errors.Is(err, engine.ErrInvalid) || !strings.Contains(err.Error(), "the limit is 15 MiB") {
		t.Fatalf("err = %v", err)
	}
	if _, total, _ := env.e.List(context.Background(), store.Filter{}); total != 0 {
		t.Fatalf("%d workloads stored", total)
	}
}
