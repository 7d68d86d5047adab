package api

import (
	"errors"
	"slices"

	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
)

// fieldError names the request field a validation failure concerns, so a form can show
// the message next to it. It wraps the failure, which keeps its status and message.
type fieldError struct {
	field string
	err   error
}

func (e *fieldError) Error() string { return e.err.Error() }
func (e *fieldError) Unwrap() error { return e.err }

// withField attaches the field at fault to an engine validation error, when one can be
// found; other errors pass through unchanged.
func (s *Server) withField(spec model.Spec, err error) error {
	if !errors.Is(err, engine.ErrInvalid) {
		return err
	}
	if f := s.invalidField(spec); f != "" {
		return &fieldError{field: f, err: err}
	}
	return err
}

// invalidField finds which field of an invalid spec the engine objects to without
// reading its message: each candidate field alone is copied onto a spec the engine
// accepts, and the first copy the engine rejects names the field. The order follows the
// form top to bottom; the engine's own rules stay the only rules.
func (s *Server) invalidField(spec model.Spec) string {
	base := func() model.Spec { return model.Spec{Runtime: model.RuntimePython, Code: "pass"} }
	rejects := func(sp model.Spec) bool {
		_, err := s.o.Engine.Validate(sp)
		return err != nil
	}
	if b := base(); rejects(b) {
		return "" // the engine's limits reject even the smallest spec; nothing to isolate
	}
	type probe struct {
		field string
		apply func(*model.Spec)
	}
	probes := []probe{
		{"runtime", func(b *model.Spec) { b.Runtime = spec.Runtime }},
		{"isolation", func(b *model.Spec) { b.Isolation = spec.Isolation }},
		{"code", func(b *model.Spec) { b.Code, b.Archive = spec.Code, spec.Archive }},
		// The entrypoint's default depends on the runtime; check it against the user's.
		{"entrypoint", func(b *model.Spec) { b.Entrypoint = spec.Entrypoint }},
		{"input", func(b *model.Spec) { b.Input = spec.Input }},
		{"resources.cpus", func(b *model.Spec) { b.Resources.CPUs = spec.Resources.CPUs }},
		{"resources.mem_mb", func(b *model.Spec) { b.Resources.MemMB = spec.Resources.MemMB }},
		{"resources.timeout_s", func(b *model.Spec) { b.Resources.TimeoutS = spec.Resources.TimeoutS }},
		{"network", func(b *model.Spec) { b.Network = spec.Network }},
	}
	for _, p := range probes {
		b := base()
		p.apply(&b)
		if rejects(b) {
			if p.field == "code" && spec.Code == "" && len(spec.Archive) > 0 {
				return "code_archive"
			}
			return p.field
		}
	}
	// Env last, one name at a time in a stable order, so the field names the variable.
	names := make([]string, 0, len(spec.Env))
	for k := range spec.Env {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		b := base()
		b.Env = map[string]string{k: spec.Env[k]}
		if rejects(b) {
			return "env." + k
		}
	}
	return ""
}
