package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
)

// pausingMachine saves a marker file as its "state" and stops.
type pausingMachine struct {
	*fakeMachine
	refuse  error         // Pause answers it without doing anything
	gate    chan struct{} // when set, Pause waits for it (after entered is closed)
	entered chan struct{}
}

func (m *pausingMachine) Pause(ctx context.Context, dir string) error {
	if m.gate != nil {
		close(m.entered)
		<-m.gate
	}
	if m.refuse != nil {
		return m.refuse
	}
	if err := os.WriteFile(filepath.Join(dir, "paused.json"), []byte("{}"), 0o600); err != nil {
		return err
	}
	return m.Stop(ctx)
}

// resumingLauncher launches pausing machines and resumes them from their dir.
type resumingLauncher struct {
	fakeLauncher
	refuse    error
	resumed   []string
	resumeErr error
}

func (l *resumingLauncher) Launch(ctx context.Context, id string, spec model.SandboxSpec) (Machine, error) {
	m, err := l.fakeLauncher.Launch(ctx, id, spec)
	if err != nil {
		return nil, err
	}
	return &pausingMachine{fakeMachine: m.(*fakeMachine), refuse: l.refuse}, nil
}

func (l *resumingLauncher) Resume(ctx context.Context, id string, spec model.SandboxSpec, dir string) (Machine, error) {
	if l.resumeErr != nil {
		return nil, l.resumeErr
	}
	if _, err := os.Stat(filepath.Join(dir, "paused.json")); err != nil {
		return nil, fmt.Errorf("no saved VM: %w", err)
	}
	l.resumed = append(l.resumed, id)
	return &pausingMachine{fakeMachine: newFakeMachine(l.t)}, nil
}

// The pause lifecycle, against ground truth kept by the fakes: a paused sandbox frees
// its capacity, refuses operations (or resumes itself with auto_resume), survives a new
// service on the same store, resumes with its timeout counted again, and a failed resume
// leaves it paused; killing a paused one removes its saved VM; a pause the backend
// refuses changes nothing.
func TestPauseResumeLifecycle(t *testing.T) {
	ctx := context.Background()
	paused := t.TempDir()
	db := filepath.Join(t.TempDir(), "db")
	l := &resumingLauncher{fakeLauncher: fakeLauncher{t: t}}
	s, st := newService(t, Config{PausedDir: paused, MaxSandboxes: 1}, l, db)

	sb, err := s.Create(ctx, model.SandboxSpec{TimeoutS: 60})
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.Pause(ctx, sb.ID)
	if err != nil || p.State != model.SandboxPaused || p.VM["pause_ms"] == "" {
		t.Fatalf("pause: %+v %v", p, err)
	}
	if _, err := s.Pause(ctx, sb.ID); !errors.Is(err, ErrAlreadyPaused) {
		t.Errorf("second pause: %v", err)
	}
	if l := s.Load(); l.Live != 0 || l.MemMB != 0 {
		t.Errorf("a paused sandbox holds capacity: %+v", l)
	}
	// Its capacity is free: another sandbox fits under MaxSandboxes 1.
	other, err := s.Create(ctx, model.SandboxSpec{})
	if err != nil {
		t.Fatalf("create beside a paused one: %v", err)
	}
	if _, err := s.Do(ctx, sb.ID, &protocol.Request{Op: protocol.OpFSStat, Path: "/x"}); !errors.Is(err, ErrPaused) {
		t.Errorf("op in a paused sandbox: %v", err)
	}
	// Resuming needs room: the other one has it.
	if _, err := s.Resume(ctx, sb.ID, 0); !errors.Is(err, ErrBusy) {
		t.Errorf("resume without room: %v", err)
	}
	if _, err := s.Kill(ctx, other.ID); err != nil {
		t.Fatal(err)
	}

	// A new service on the same store (a restart) still has it paused.
	s.Shutdown(ctx)
	s2, _ := newService(t, Config{PausedDir: paused, MaxSandboxes: 1}, l, db)
	if got, _ := s2.Get(ctx, sb.ID); got.State != model.SandboxPaused {
		t.Fatalf("after a restart: %+v", got)
	}
	// A failed resume leaves it paused, saying why.
	l.resumeErr = errors.New("images changed")
	if _, err := s2.Resume(ctx, sb.ID, 0); err == nil {
		t.Fatal("resume did not fail")
	}
	if got, _ := s2.Get(ctx, sb.ID); got.State != model.SandboxPaused || got.Error == "" {
		t.Fatalf("after a failed resume: %+v", got)
	}
	l.resumeErr = nil
	start := time.Now()
	r, err := s2.Resume(ctx, sb.ID, 30)
	if err != nil || r.State != model.SandboxRunning {
		t.Fatalf("resume: %+v %v", r, err)
	}
	if d := r.ExpiresAt.Sub(start); d < 29*time.Second || d > 31*time.Second {
		t.Errorf("resumed with %v left, want 30s from the resume", d)
	}
	if _, err := os.Stat(filepath.Join(paused, sb.ID)); !os.IsNotExist(err) {
		t.Errorf("the saved VM outlived the resume: %v", err)
	}
	if _, err := s2.Do(ctx, sb.ID, &protocol.Request{Op: protocol.OpFSStat, Path: "/x"}); err != nil {
		t.Errorf("op after resume: %v", err)
	}
	// Resuming a running sandbox returns it as it is.
	if again, err := s2.Resume(ctx, sb.ID, 0); err != nil || again.State != model.SandboxRunning {
		t.Errorf("resume of a running sandbox: %+v %v", again, err)
	}

	// Kill while paused: killed, its saved VM removed.
	if _, err := s2.Pause(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	k, err := s2.Kill(ctx, sb.ID)
	if err != nil || k.State != model.SandboxKilled {
		t.Fatalf("kill paused: %+v %v", k, err)
	}
	if _, err := os.Stat(filepath.Join(paused, sb.ID)); !os.IsNotExist(err) {
		t.Errorf("the saved VM outlived the kill: %v", err)
	}
	if _, err := s2.Resume(ctx, sb.ID, 0); !errors.Is(err, ErrEnded) {
		t.Errorf("resume of a killed sandbox: %v", err)
	}
	if n := len(l.resumed); n != 1 {
		t.Errorf("%d resumes reached the launcher, want 1", n)
	}
	_ = st

	// A pause the backend refuses leaves the sandbox running.
	l.refuse = fmt.Errorf("%w: it has a network", backend.ErrUnsupported)
	sb2, err := s2.Create(ctx, model.SandboxSpec{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Pause(ctx, sb2.ID); !errors.Is(err, ErrUnsupported) {
		t.Errorf("refused pause: %v", err)
	}
	if got, _ := s2.Get(ctx, sb2.ID); got.State != model.SandboxRunning {
		t.Errorf("after a refused pause: %s", got.State)
	}
}

// auto_resume: an operation on a paused sandbox resumes it; auto_pause: its timeout
// pauses it instead of killing it.
func TestAutoPauseAndResume(t *testing.T) {
	ctx := context.Background()
	l := &resumingLauncher{fakeLauncher: fakeLauncher{t: t}}
	s, _ := newService(t, Config{PausedDir: t.TempDir()}, l, "")
	// 2 s: long enough that the resumed sandbox does not time out again before the op.
	sb, err := s.Create(ctx, model.SandboxSpec{TimeoutS: 2, AutoPause: true, AutoResume: true})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := s.Get(ctx, sb.ID)
		if got.State == model.SandboxPaused {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the timeout did not pause it: %s %s", got.State, got.Error)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := s.Do(ctx, sb.ID, &protocol.Request{Op: protocol.OpFSStat, Path: "/x"}); err != nil {
		t.Fatalf("op with auto_resume: %v", err)
	}
	if got, _ := s.Get(ctx, sb.ID); got.State != model.SandboxRunning || len(l.resumed) != 1 {
		t.Fatalf("after the op: %s, %d resumes", got.State, len(l.resumed))
	}
}

// Kill and shutdown during a pause in progress: a kill waits for the pause and kills
// the paused sandbox; a shutdown leaves the sandbox paused (no double ending); a kill
// during a refused pause kills the sandbox it left running.
func TestEndDuringPause(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name   string
		refuse error
		end    func(s *Service, id string) error
		want   model.SandboxState
	}{
		{"kill", nil, func(s *Service, id string) error { _, err := s.Kill(ctx, id); return err }, model.SandboxKilled},
		{"shutdown", nil, func(s *Service, id string) error { s.Shutdown(ctx); return nil }, model.SandboxPaused},
		{"kill during a refused pause", fmt.Errorf("%w: no", backend.ErrUnsupported),
			func(s *Service, id string) error { _, err := s.Kill(ctx, id); return err }, model.SandboxKilled},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := &resumingLauncher{fakeLauncher: fakeLauncher{t: t}}
			s, _ := newService(t, Config{PausedDir: t.TempDir()}, l, "")
			sb, err := s.Create(ctx, model.SandboxSpec{})
			if err != nil {
				t.Fatal(err)
			}
			if err := duringPause(t, s, sb.ID, c.refuse, func() error { return c.end(s, sb.ID) }); err != nil {
				t.Fatal(err)
			}
			if got, _ := s.Get(ctx, sb.ID); got.State != c.want {
				t.Errorf("state %s, want %s", got.State, c.want)
			}
		})
	}
}

// An operation that arrives while a pause is under way waits for it and answers for
// what it left: with auto_resume the op resumes the sandbox and runs, without it the op
// is told the sandbox is paused, and after a refused pause it runs in the sandbox that
// kept running. (It used to fail with "not running (state paused)" in the window
// between the saved VM being recorded and the sandbox leaving the live set.)
func TestOpDuringPause(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name       string
		autoResume bool
		refuse     error
		wantErr    error
		resumes    int
	}{
		{"auto_resume", true, nil, nil, 1},
		{"no auto_resume", false, nil, ErrPaused, 0},
		{"refused pause", true, fmt.Errorf("%w: no", backend.ErrUnsupported), nil, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := &resumingLauncher{fakeLauncher: fakeLauncher{t: t}}
			s, _ := newService(t, Config{PausedDir: t.TempDir()}, l, "")
			sb, err := s.Create(ctx, model.SandboxSpec{AutoResume: c.autoResume})
			if err != nil {
				t.Fatal(err)
			}
			err = duringPause(t, s, sb.ID, c.refuse, func() error {
				_, err := s.Do(ctx, sb.ID, &protocol.Request{Op: protocol.OpFSStat, Path: "/x"})
				return err
			})
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("op during the pause: %v, want %v", err, c.wantErr)
			}
			if len(l.resumed) != c.resumes {
				t.Errorf("%d resumes, want %d", len(l.resumed), c.resumes)
			}
		})
	}
}

// duringPause pauses sandbox id, holding the pause at its machine (which refuses it with
// refuse, when set) while during runs, then lets it finish: during is meant to wait for
// it. It returns during's error.
func duringPause(t *testing.T, s *Service, id string, refuse error, during func() error) error {
	t.Helper()
	m := s.lookup(id).m.(*pausingMachine)
	m.refuse, m.gate, m.entered = refuse, make(chan struct{}), make(chan struct{})
	paused := make(chan error, 1)
	go func() { _, err := s.Pause(context.Background(), id); paused <- err }()
	<-m.entered
	done := make(chan error, 1)
	go func() { done <- during() }()
	time.Sleep(50 * time.Millisecond) // during waits for the pause
	close(m.gate)
	if err := <-paused; (err != nil) != (refuse != nil) {
		t.Fatalf("pause: %v", err)
	}
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("what ran during the pause never returned")
		return nil
	}
}
