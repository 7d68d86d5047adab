package backend

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/vulcanhq/vulcan/internal/model"
)

type stub struct {
	caps  Capabilities
	avail error
}

func (s stub) Name() string                          { return "microvm" }
func (s stub) Capabilities() Capabilities            { return s.caps }
func (s stub) Available(context.Context) error       { return s.avail }
func (s stub) Cleanup(context.Context, string) error { return nil }
func (s stub) Execute(context.Context, Job, Sink) (Result, error) {
	return Result{}, nil
}

func TestResolve(t *testing.T) {
	ctx := context.Background()
	r := NewRegistry()
	if _, err := r.Resolve(ctx, model.IsolationAuto, model.RuntimePython, model.NetworkNone); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "no backend registered") {
		t.Fatalf("empty registry: %v", err)
	}
	r.Missing("microvm", "no kernel image; run `make images`")
	if _, err := r.Resolve(ctx, model.IsolationMicroVM, model.RuntimePython, ""); err == nil || !strings.Contains(err.Error(), "make images") {
		t.Fatalf("missing backend: %v", err)
	}
	r.Register(stub{caps: Capabilities{Runtimes: []model.Runtime{model.RuntimePython},
		Details: map[string]string{"network_error": "networking needs root"}}})
	if b, err := r.Resolve(ctx, model.IsolationAuto, model.RuntimePython, model.NetworkNone); err != nil || b.Name() != "microvm" {
		t.Fatalf("auto → microvm: %v", err)
	}
	if _, err := r.Resolve(ctx, model.IsolationAuto, model.RuntimeGo, ""); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), `runtime "go"`) {
		t.Fatalf("missing runtime: %v", err)
	}
	// A network the backend cannot give is refused up front, with the backend's reason.
	if _, err := r.Resolve(ctx, model.IsolationAuto, model.RuntimePython, model.NetworkHost); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "networking needs root") {
		t.Fatalf("network without support: %v", err)
	}
	r.Register(stub{avail: errors.New("no VMM")})
	if _, err := r.Resolve(ctx, model.IsolationAuto, model.RuntimePython, ""); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "no VMM") {
		t.Fatalf("unavailable backend: %v", err)
	}
}
