// Package backendtest provides a scriptable fake Backend for tests of the engine, the API
// and the CLI. Only tests import it; the vulcan binary never registers it (cmd/vulcan has a
// test that checks its dependency list).
package backendtest

import (
	"context"
	"sync"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/model"
)

// Fake is a Backend whose Execute runs Run. The zero value (with Run nil) echoes the
// workload's code to stdout, one sink line, and exits 0.
type Fake struct {
	// NameValue defaults to "microvm" so "auto" resolves to the fake.
	NameValue string
	// Unavailable, when non-nil, is returned by Available.
	Unavailable error
	// Probe, when non-nil, is what Available returns (a test can slow the resolve that
	// comes before a workload is stored with it).
	Probe func(context.Context) error
	// Run replaces Execute's body.
	Run func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error)

	mu       sync.Mutex
	cleaned  []string
	executed []string
}

var _ backend.Backend = (*Fake)(nil)

// Name implements backend.Backend.
func (f *Fake) Name() string {
	if f.NameValue == "" {
		return string(model.IsolationMicroVM)
	}
	return f.NameValue
}

// Capabilities implements backend.Backend.
func (f *Fake) Capabilities() backend.Capabilities {
	return backend.Capabilities{Isolation: model.Isolation(f.Name()), Runtimes: model.Runtimes, MaxCPUs: 8, MaxMemMB: 8192,
		Details: map[string]string{"fake": "true"}}
}

// Available implements backend.Backend.
func (f *Fake) Available(ctx context.Context) error {
	if f.Unavailable == nil && f.Probe != nil {
		return f.Probe(ctx)
	}
	return f.Unavailable
}

// Execute implements backend.Backend.
func (f *Fake) Execute(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
	f.mu.Lock()
	f.executed = append(f.executed, job.WorkloadID)
	f.mu.Unlock()
	if f.Run != nil {
		return f.Run(ctx, job, sink)
	}
	sink.Line(model.Stdout, job.Spec.Code)
	return backend.Result{Metadata: map[string]string{"vm_id": "fake-" + job.WorkloadID}}, nil
}

// Cleanup implements backend.Backend and records the call.
func (f *Fake) Cleanup(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleaned = append(f.cleaned, id)
	return nil
}

// Cleaned returns the workload ids Cleanup was called for, in order.
func (f *Fake) Cleaned() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.cleaned...)
}

// Executed returns the workload ids Execute was called for, in order.
func (f *Fake) Executed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.executed...)
}

// Blocker is a Run function that emits one line, reports on Started, and then blocks
// until Release is closed or ctx ends (returning exit code 0 or the ctx error).
type Blocker struct {
	Started chan string
	Release chan struct{}
}

// NewBlocker returns a Blocker with room for n start notifications.
func NewBlocker(n int) *Blocker {
	return &Blocker{Started: make(chan string, n), Release: make(chan struct{})}
}

// Run is a Fake.Run.
func (b *Blocker) Run(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
	sink.Line(model.Stdout, "started")
	b.Started <- job.WorkloadID
	select {
	case <-b.Release:
		sink.Line(model.Stdout, "released")
		return backend.Result{}, nil
	case <-ctx.Done():
		return backend.Result{ExitCode: -1}, ctx.Err()
	}
}
