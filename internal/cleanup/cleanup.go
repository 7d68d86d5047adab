// Package cleanup is the undo stack every privileged acquire registers with, and the
// context teardown runs under.
//
// Each acquire registers its undo on the line after it succeeds, so a failure at any step
// releases precisely what was taken so far; the stack runs last-in first-out exactly once.
package cleanup

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Detach returns a context for teardown: it ignores the caller's cancellation (teardown
// must run even when the request that asked for it is gone) but keeps the caller's
// deadline, so a bound set above — the engine's teardown timeout, a shutdown deadline —
// still applies. With no deadline above, fallback bounds it.
func Detach(ctx context.Context, fallback time.Duration) (context.Context, context.CancelFunc) {
	d := context.WithoutCancel(ctx)
	if dl, ok := ctx.Deadline(); ok {
		return context.WithDeadline(d, dl)
	}
	return context.WithTimeout(d, fallback)
}

// Stack holds undo steps. The zero value is ready to use.
type Stack struct {
	mu    sync.Mutex
	steps []step
	done  bool
	err   error
}

type step struct {
	name string
	fn   func(ctx context.Context) error
}

// Add registers an undo. Adding after the stack has run runs the undo at once (with a
// fresh bounded context), so a late acquire racing a teardown is still released.
func (s *Stack) Add(name string, fn func(ctx context.Context) error) {
	s.mu.Lock()
	if !s.done {
		s.steps = append(s.steps, step{name, fn})
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), lateTimeout)
	defer cancel()
	_ = fn(ctx)
}

// lateTimeout bounds an undo added after the stack ran.
const lateTimeout = 30 * time.Second

// Run executes every undo, newest first, once; later calls wait for that run and return
// its result with ran false. The steps run under Detach(ctx, fallback): a cancelled ctx
// does not skip them, its deadline bounds them. Every step runs even when an earlier one
// failed or the deadline passed (each sees the expired context and can do what needs no
// time, such as closing a file); the errors are joined.
func (s *Stack) Run(ctx context.Context, fallback time.Duration) (ran bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return false, s.err
	}
	s.done = true
	ctx, cancel := Detach(ctx, fallback)
	defer cancel()
	var errs []error
	for i := len(s.steps) - 1; i >= 0; i-- {
		if err := s.steps[i].fn(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.steps[i].name, err))
		}
	}
	s.steps = nil
	s.err = errors.Join(errs...)
	return true, s.err
}
