package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/config"
	"github.com/vulcanhq/vulcan/internal/microvm"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/sandbox"
	"github.com/vulcanhq/vulcan/internal/store"
)

// newSandboxes builds the sandbox service on the microVM backend (without one, creating a
// sandbox answers 503 with the reason).
func newSandboxes(ctx context.Context, cfg *config.Config, st *store.Store, vms *microvm.Backend, metrics prometheus.Registerer, log *slog.Logger) (*sandbox.Service, error) {
	o := sandbox.Options{
		Config:  sandbox.Config{MaxSandboxes: cfg.MaxSandboxes},
		Store:   st,
		Metrics: metrics,
		Logger:  log,
	}
	if vms != nil {
		o.Launcher = launcher{vms}
	} else {
		o.Unavailable = errors.New("the microVM backend could not start; see `vulcan backends`")
	}
	return sandbox.New(ctx, o)
}

// launcher adapts the microVM backend to the sandbox service.
type launcher struct{ b *microvm.Backend }

func (l launcher) Launch(ctx context.Context, id string, spec model.SandboxSpec) (sandbox.Machine, error) {
	return l.b.StartSandbox(ctx, microvm.VMSpec{ID: id, Template: spec.Template, Resources: spec.Resources,
		Network: spec.Network, NetworkRules: spec.NetworkRules})
}
