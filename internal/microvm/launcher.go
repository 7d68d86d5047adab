package microvm

import (
	"context"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/sandbox"
)

// Launcher adapts the backend to the sandbox service: it launches, and resumes paused,
// sandbox VMs.
type Launcher struct{ B *Backend }

var _ sandbox.Resumer = Launcher{}

func vmSpec(id string, spec model.SandboxSpec) VMSpec {
	return VMSpec{ID: id, Template: spec.Template, Resources: spec.Resources,
		Network: spec.Network, NetworkRules: spec.NetworkRules, Env: spec.Env}
}

// Launch boots (or takes from the pool, or restores) a sandbox's VM.
func (l Launcher) Launch(ctx context.Context, id string, spec model.SandboxSpec) (sandbox.Machine, error) {
	return l.B.StartSandbox(ctx, vmSpec(id, spec))
}

// Resume restores a sandbox paused into dir.
func (l Launcher) Resume(ctx context.Context, id string, spec model.SandboxSpec, dir string) (sandbox.Machine, error) {
	return l.B.ResumeSandbox(ctx, vmSpec(id, spec), dir)
}
