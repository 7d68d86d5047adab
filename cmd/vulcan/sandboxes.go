package main

import (
	"context"

	"github.com/vulcanhq/vulcan/internal/microvm"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/sandbox"
)

// launcher adapts the microVM backend to the sandbox service.
type launcher struct{ b *microvm.Backend }

var _ sandbox.Resumer = launcher{}

func vmSpec(id string, spec model.SandboxSpec) microvm.VMSpec {
	return microvm.VMSpec{ID: id, Template: spec.Template, Resources: spec.Resources,
		Network: spec.Network, NetworkRules: spec.NetworkRules, Env: spec.Env}
}

func (l launcher) Launch(ctx context.Context, id string, spec model.SandboxSpec) (sandbox.Machine, error) {
	return l.b.StartSandbox(ctx, vmSpec(id, spec))
}

func (l launcher) Resume(ctx context.Context, id string, spec model.SandboxSpec, dir string) (sandbox.Machine, error) {
	return l.b.ResumeSandbox(ctx, vmSpec(id, spec), dir)
}
