package backend

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/vulcanhq/vulcan/internal/model"
)

// Registry maps isolations to backends and resolves "auto".
type Registry struct {
	mu       sync.RWMutex
	backends map[string]Backend
	// reasons records why an expected backend is not registered at all (e.g. the microvm
	// backend could not even be constructed), so "auto" and /v1/backends can say so.
	reasons map[string]string
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{backends: map[string]Backend{}, reasons: map[string]string{}}
}

// Register adds b under its name, replacing any earlier one.
func (r *Registry) Register(b Backend) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.backends[b.Name()] = b
	delete(r.reasons, b.Name())
}

// Missing records that the named backend cannot be offered at all, and why.
func (r *Registry) Missing(name, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.backends[name]; !ok {
		r.reasons[name] = reason
	}
}

// Get returns the backend registered under name.
func (r *Registry) Get(name string) (Backend, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	b, ok := r.backends[name]
	return b, ok
}

// All returns every registered backend, by name.
func (r *Registry) All() []Backend {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Backend, 0, len(r.backends))
	for _, b := range r.backends {
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

// Status is one backend's entry in /v1/backends.
type Status struct {
	Name         string        `json:"name"`
	Available    bool          `json:"available"`
	Reason       string        `json:"reason,omitempty"`
	Capabilities *Capabilities `json:"capabilities,omitempty"`
}

// Statuses reports every known backend, registered or missing.
func (r *Registry) Statuses(ctx context.Context) []Status {
	var out []Status
	for _, b := range r.All() {
		caps := b.Capabilities()
		st := Status{Name: b.Name(), Available: true, Capabilities: &caps}
		if err := b.Available(ctx); err != nil {
			st.Available, st.Reason = false, err.Error()
		}
		out = append(out, st)
	}
	r.mu.RLock()
	for name, reason := range r.reasons {
		out = append(out, Status{Name: name, Reason: reason})
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Resolve picks the backend for a workload. "auto" resolves to microvm for every runtime
// Vulcan knows. The error wraps ErrUnavailable and says why when nothing can run it —
// including a network policy the backend cannot give, so such a workload is refused at
// submission rather than failing after it was queued.
func (r *Registry) Resolve(ctx context.Context, iso model.Isolation, rt model.Runtime, netPolicy model.NetworkPolicy) (Backend, error) {
	name := string(iso)
	if iso == model.IsolationAuto {
		name = string(model.IsolationMicroVM)
	}
	b, ok := r.Get(name)
	if !ok {
		r.mu.RLock()
		reason := r.reasons[name]
		r.mu.RUnlock()
		if reason == "" {
			reason = "no backend registered"
		}
		return nil, fmt.Errorf("%w: %s: %s", ErrUnavailable, name, reason)
	}
	if err := b.Available(ctx); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnavailable, name, err)
	}
	caps := b.Capabilities()
	if netPolicy != "" && netPolicy != model.NetworkNone && !caps.Network {
		reason := caps.Details["network_error"]
		if reason == "" {
			reason = "this backend gives workloads no network"
		}
		return nil, fmt.Errorf("%w: %s: network %q is not available: %s", ErrUnavailable, name, netPolicy, reason)
	}
	for _, have := range caps.Runtimes {
		if have == rt {
			return b, nil
		}
	}
	return nil, fmt.Errorf("%w: %s: runtime %q is not available (have %v)", ErrUnavailable, name, rt, caps.Runtimes)
}
