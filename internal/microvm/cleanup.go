package microvm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// cleanupStack holds the undo of every acquire a VM made, run last-in first-out exactly
// once. Each acquire registers its undo on the line after it succeeds, so a failure at any
// step of a VM's start releases precisely what was taken so far.
type cleanupStack struct {
	mu    sync.Mutex
	steps []cleanupStep
	done  bool
	err   error
}

type cleanupStep struct {
	name string
	fn   func(ctx context.Context) error
}

// add registers an undo. Adding after the stack has run runs the undo at once, so a
// late acquire racing a teardown is still released.
func (c *cleanupStack) add(name string, fn func(ctx context.Context) error) {
	c.mu.Lock()
	if !c.done {
		c.steps = append(c.steps, cleanupStep{name, fn})
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	_ = fn(context.Background())
}

// run executes every undo, newest first, once; later calls wait for that run and return
// its result with ran false. Teardown never inherits cancellation: it gets its own deadline.
func (c *cleanupStack) run(ctx context.Context, timeout time.Duration) (ran bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return false, c.err
	}
	c.done = true
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	var errs []error
	for i := len(c.steps) - 1; i >= 0; i-- {
		if err := c.steps[i].fn(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c.steps[i].name, err))
		}
	}
	c.steps = nil
	c.err = errors.Join(errs...)
	return true, c.err
}
