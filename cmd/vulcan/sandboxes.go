package main

import (
	"context"

	"github.com/vulcanhq/vulcan/internal/microvm"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/sandbox"
)

// launcher adapts the microVM backend to the sandbox service.
type launcher struct{ b *microvm.Backend }

func (l launcher) Launch(ctx context.Context, id string, spec model.SandboxSpec) (sandbox.Machine, error) {
	return l.b.StartSandbox(ctx, microvm.VMSpec{ID: id, Template: spec.Template, Resources: spec.Resources,
		Network: spec.Network, NetworkRules: spec.NetworkRules})
}
