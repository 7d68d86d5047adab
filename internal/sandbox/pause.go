package sandbox

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/store"
)

// Pause and resume. A paused sandbox has no VM: its memory and disk are saved in
// PausedDir/<id> and its capacity is free. It is not live (not in s.live); its record
// says paused, and it outlives the server: a restarted server resumes it from the same
// dir. Resuming admits it again like a create (it may be refused for capacity) and
// restores its VM with its processes and files as they were; its timeout starts again.

// pauseTimeout bounds saving one sandbox (a few hundred MiB of RAM and a disk rename).
const pauseTimeout = 2 * time.Minute

func (s *Service) pausedDir(id string) string { return filepath.Join(s.cfg.PausedDir, id) }

// PausedDir is where a paused sandbox's saved VM lives ("" without pausing).
func (s *Service) PausedDir(id string) string {
	if s.cfg.PausedDir == "" {
		return ""
	}
	return s.pausedDir(id)
}

// Adopt takes over a paused sandbox another server saved: sb (its record, paused) is
// stored here and its saved VM must already be in PausedDir(sb.ID); Resume then runs it
// here. A cluster node does this when the sandbox's own node is gone. This server never
// learns its env: the guest keeps it (resumed without one, it keeps its own).
func (s *Service) Adopt(ctx context.Context, sb *model.Sandbox) error {
	if s.cfg.PausedDir == "" {
		return fmt.Errorf("%w: pausing (no paused dir)", ErrUnsupported)
	}
	if sb.State != model.SandboxPaused {
		return fmt.Errorf("%w (state %s)", ErrEnded, sb.State)
	}
	if !fileExists(filepath.Join(s.pausedDir(sb.ID), "paused.json")) {
		return fmt.Errorf("sandbox %s: no saved VM in %s to adopt", sb.ID, s.pausedDir(sb.ID))
	}
	if s.lookup(sb.ID) != nil {
		return fmt.Errorf("%w: sandbox %s is live here", ErrInvalid, sb.ID)
	}
	switch cur, err := s.st.GetSandbox(ctx, sb.ID); {
	case err == nil && cur.State == model.SandboxPaused:
		return nil // this server paused it (and came back): it is already here
	case err == nil:
		return fmt.Errorf("%w (state %s here)", ErrEnded, cur.State)
	case !errors.Is(err, store.ErrSandboxNotFound):
		return err
	}
	if err := s.st.CreateSandbox(ctx, sb); err != nil {
		return fmt.Errorf("sandbox: adopt: %w", err)
	}
	return nil
}

// Pause saves a running sandbox and stops its VM. A pause that fails ends the sandbox as
// failed (its VM has stopped part-way and cannot be trusted).
func (s *Service) Pause(ctx context.Context, id string) (*model.Sandbox, error) {
	if s.cfg.PausedDir == "" {
		return nil, fmt.Errorf("%w: pausing (no paused dir)", ErrUnsupported)
	}
	b := s.lookup(id)
	if b == nil {
		sb, err := s.st.GetSandbox(ctx, id)
		if err != nil {
			return nil, err
		}
		if sb.State == model.SandboxPaused {
			return nil, ErrAlreadyPaused
		}
		return nil, fmt.Errorf("%w (state %s)", ErrEnded, sb.State)
	}
	b.mu.Lock()
	if b.sb.State != model.SandboxRunning || b.ending || b.pausing {
		st := b.sb.State
		b.mu.Unlock()
		return nil, fmt.Errorf("%w (state %s)", ErrNotRunning, st)
	}
	p, ok := b.m.(Pauser)
	if !ok {
		b.mu.Unlock()
		return nil, fmt.Errorf("%w: pausing", ErrUnsupported)
	}
	b.pausing, b.pauseDone = true, make(chan struct{})
	b.timer.Stop()
	b.mu.Unlock()
	defer close(b.pauseDone)

	dir := s.pausedDir(id)
	_ = os.RemoveAll(dir) // delete before create
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.mu.Lock()
		b.pausing = false
		b.mu.Unlock()
		b.timer.Reset(time.Until(b.expires()))
		return nil, fmt.Errorf("sandbox %s: pause: %w", id, err)
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pauseTimeout)
	defer cancel()
	start := time.Now()
	if err := p.Pause(pctx, dir); err != nil {
		_ = os.RemoveAll(dir)
		b.mu.Lock()
		b.pausing = false
		b.mu.Unlock()
		if errors.Is(err, ErrUnsupported) { // refused before anything was done: it runs on
			b.timer.Reset(time.Until(b.expires()))
			return nil, err
		}
		s.end(b, model.SandboxFailed, "pause failed: "+err.Error())
		return nil, fmt.Errorf("sandbox %s: pause: %w", id, err)
	}
	took := time.Since(start)
	b.mu.Lock()
	now := time.Now().UTC()
	b.sb.State, b.sb.Error, b.pausing = model.SandboxPaused, "", false
	b.sb.VM = maps.Clone(b.sb.VM)
	b.sb.VM["paused_at"] = now.Format(time.RFC3339Nano)
	b.sb.VM["pause_ms"] = strconv.FormatInt(took.Milliseconds(), 10)
	b.m = nil
	sb := b.copyLocked()
	env := b.env
	b.mu.Unlock()
	if err := s.st.UpdateSandbox(context.WithoutCancel(ctx), sb); err != nil {
		s.log.Error("persisting paused sandbox", "sandbox", id, "err", err)
	}
	s.mu.Lock()
	s.envs[id] = env
	s.mu.Unlock()
	s.release(b)
	s.m.paused.Observe(took.Seconds())
	close(b.ended)
	return sb, nil
}

// Resume restores a paused sandbox and returns it running; timeoutS (0: its own) counts
// from now. Resuming a running sandbox returns it as it is. A resume that fails leaves
// it paused, with the reason in its error.
func (s *Service) Resume(ctx context.Context, id string, timeoutS int) (*model.Sandbox, error) {
	r, ok := s.launch.(Resumer)
	if !ok || s.cfg.PausedDir == "" {
		return nil, fmt.Errorf("%w: resuming", ErrUnsupported)
	}
	if timeoutS < 0 || timeoutS > model.MaxSandboxTimeoutS {
		return nil, invalid("timeout_s", "timeout_s must be between 1 and %d, got %d", model.MaxSandboxTimeoutS, timeoutS)
	}
	s.pmu.Lock()
	if b := s.lookup(id); b != nil { // running, or another resume is under way
		s.pmu.Unlock()
		return s.whenStarted(ctx, b)
	}
	sb, err := s.st.GetSandbox(ctx, id)
	if err != nil {
		s.pmu.Unlock()
		return nil, err
	}
	if sb.State != model.SandboxPaused {
		s.pmu.Unlock()
		return nil, fmt.Errorf("%w (state %s)", ErrEnded, sb.State)
	}
	if timeoutS == 0 {
		timeoutS = sb.Spec.TimeoutS
	}
	now := time.Now().UTC()
	sb.State, sb.Error, sb.ExpiresAt = model.SandboxStarting, "", now.Add(time.Duration(timeoutS)*time.Second)
	s.mu.Lock()
	env := s.envs[id]
	s.mu.Unlock()
	b := &box{ended: make(chan struct{}), env: env, sb: sb}
	if err := s.admit(b); err != nil {
		s.pmu.Unlock()
		s.m.rejected.WithLabelValues(rejectReason(err)).Inc()
		return nil, err
	}
	if err := s.st.UpdateSandbox(ctx, b.copyLocked()); err != nil {
		s.release(b)
		s.pmu.Unlock()
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	s.pmu.Unlock()

	spec := sb.Spec
	spec.Env = env
	bootCtx, cancel := context.WithTimeout(s.base, s.cfg.BootTimeout)
	start := time.Now()
	m, err := r.Resume(bootCtx, id, spec, s.pausedDir(id))
	cancel()
	if err != nil {
		// The saved VM is intact: the sandbox stays paused, saying why it did not resume.
		b.mu.Lock()
		b.sb.State, b.sb.Error = model.SandboxPaused, "resume failed: "+err.Error()
		back := b.copyLocked()
		killed := b.killed
		b.mu.Unlock()
		if perr := s.st.UpdateSandbox(context.WithoutCancel(ctx), back); perr != nil {
			s.log.Error("persisting sandbox paused again", "sandbox", id, "err", perr)
		}
		s.release(b)
		close(b.ended)
		if killed {
			_, _ = s.killPaused(context.WithoutCancel(ctx), id)
		}
		return nil, fmt.Errorf("sandbox %s: resume: %w", id, err)
	}
	s.m.resumed.Observe(time.Since(start).Seconds())
	_ = os.RemoveAll(s.pausedDir(id))
	s.mu.Lock()
	delete(s.envs, id)
	s.mu.Unlock()
	return s.run(ctx, b, m)
}

// whenStarted waits for a live box to be running (or to end) and returns it.
func (s *Service) whenStarted(ctx context.Context, b *box) (*model.Sandbox, error) {
	for {
		b.mu.Lock()
		st, m := b.sb.State, b.m
		sb := b.copyLocked()
		b.mu.Unlock()
		if st == model.SandboxRunning && m != nil {
			return sb, nil
		}
		select {
		case <-b.ended:
			got, err := s.st.GetSandbox(ctx, b.sb.ID)
			if err != nil {
				return nil, err
			}
			if got.State == model.SandboxPaused {
				return nil, fmt.Errorf("sandbox %s did not resume: %s", got.ID, got.Error)
			}
			return nil, fmt.Errorf("%w (state %s)", ErrEnded, got.State)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// killPaused kills a sandbox that is not live: a paused one ends killed and its saved
// VM is deleted; any other has ended already.
func (s *Service) killPaused(ctx context.Context, id string) (*model.Sandbox, error) {
	s.pmu.Lock()
	if s.lookup(id) != nil { // a resume began meanwhile: kill it the live way
		s.pmu.Unlock()
		return s.Kill(ctx, id)
	}
	defer s.pmu.Unlock()
	sb, err := s.st.GetSandbox(ctx, id)
	if err != nil {
		return nil, err
	}
	if sb.State != model.SandboxPaused {
		return nil, fmt.Errorf("%w (state %s)", ErrEnded, sb.State)
	}
	now := time.Now().UTC()
	sb.State, sb.Error, sb.EndedAt = model.SandboxKilled, "killed by request (while paused)", &now
	if err := s.st.UpdateSandbox(ctx, sb); err != nil {
		return nil, err
	}
	_ = os.RemoveAll(s.pausedDir(id))
	s.mu.Lock()
	delete(s.envs, id)
	s.mu.Unlock()
	s.m.ended.WithLabelValues(string(model.SandboxKilled)).Inc()
	return sb, nil
}

// expire is a running sandbox's timeout: it pauses when the sandbox asked for that and
// the backend can, else it ends timed out.
func (s *Service) expire(b *box) {
	b.mu.Lock()
	auto, id := b.sb.Spec.AutoPause, b.sb.ID
	b.mu.Unlock()
	if auto {
		_, err := s.Pause(context.Background(), id)
		if err == nil || !errors.Is(err, ErrUnsupported) {
			return // paused, or the failed pause ended it
		}
	}
	s.end(b, model.SandboxTimedOut, fmt.Sprintf("timed out at %s", b.expires().Format(time.RFC3339)))
}

// repairPaused runs at start-up: a resume the last server did not finish leaves its
// sandbox paused again (its saved VM is still there); saved VMs of sandboxes that are not
// paused are removed; a paused sandbox whose saved VM is gone has failed.
func (s *Service) repairPaused(ctx context.Context) {
	if s.cfg.PausedDir == "" {
		return
	}
	if err := os.MkdirAll(s.cfg.PausedDir, 0o700); err != nil {
		s.log.Warn("paused dir", "err", err)
		return
	}
	entries, _ := os.ReadDir(s.cfg.PausedDir)
	for _, e := range entries {
		dir := filepath.Join(s.cfg.PausedDir, e.Name())
		sb, err := s.st.GetSandbox(ctx, e.Name())
		switch {
		case errors.Is(err, store.ErrSandboxNotFound):
			_ = os.RemoveAll(dir)
		case err != nil:
			s.log.Warn("paused dir", "dir", dir, "err", err)
		case sb.State == model.SandboxStarting && fileExists(filepath.Join(dir, "paused.json")):
			sb.State, sb.Error = model.SandboxPaused, "a resume was interrupted by a server restart"
			if err := s.st.UpdateSandbox(ctx, sb); err != nil {
				s.log.Warn("restoring a paused sandbox", "sandbox", sb.ID, "err", err)
			}
		case sb.State != model.SandboxPaused:
			_ = os.RemoveAll(dir)
		}
	}
	paused, _, err := s.st.ListSandboxes(ctx, store.SandboxFilter{States: []model.SandboxState{model.SandboxPaused}, Limit: 1000})
	if err != nil {
		s.log.Warn("listing paused sandboxes", "err", err)
		return
	}
	for _, sb := range paused {
		if !fileExists(filepath.Join(s.pausedDir(sb.ID), "paused.json")) {
			now := time.Now().UTC()
			sb.State, sb.Error, sb.EndedAt = model.SandboxFailed, "its saved VM is gone from "+s.pausedDir(sb.ID), &now
			if err := s.st.UpdateSandbox(ctx, sb); err != nil {
				s.log.Warn("failing a paused sandbox", "sandbox", sb.ID, "err", err)
			}
		}
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
