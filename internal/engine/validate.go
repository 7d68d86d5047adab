package engine

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/vulcanhq/vulcan/internal/model"
)

// Validate checks a submitted spec and fills its defaults (isolation auto, network none,
// the runtime's entrypoint, resources). Every error wraps ErrInvalid and its text is meant
// for the user.
func (e *Engine) Validate(spec model.Spec) (model.Spec, error) {
	return validate(spec, e.cfg.Limits)
}

func validate(spec model.Spec, limits model.Limits) (model.Spec, error) {
	bad := func(format string, args ...any) (model.Spec, error) {
		return spec, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
	}
	switch {
	case spec.Runtime == "":
		return bad("runtime is required (one of go, node, python)")
	case !spec.Runtime.Valid():
		return bad("unknown runtime %q (want go, node or python)", spec.Runtime)
	}
	if spec.Isolation == "" {
		spec.Isolation = model.IsolationAuto
	}
	if !spec.Isolation.Valid() {
		return bad("unknown isolation %q (want auto or microvm)", spec.Isolation)
	}
	if spec.Network == "" {
		spec.Network = model.NetworkNone
	}
	if !spec.Network.Valid() {
		return bad("unknown network policy %q (want none, host or egress)", spec.Network)
	}
	switch {
	case spec.Code != "" && len(spec.Archive) > 0:
		return bad("give either code or code_archive, not both")
	case spec.Code == "" && len(spec.Archive) == 0:
		return bad("one of code or code_archive is required")
	case len(spec.Archive) > 0:
		if _, err := gzip.NewReader(bytes.NewReader(spec.Archive)); err != nil {
			return bad("code_archive must be a gzip-compressed tar archive: %v", err)
		}
	}
	if spec.Entrypoint == "" {
		spec.Entrypoint = spec.Runtime.DefaultEntrypoint()
	}
	if !filepath.IsLocal(spec.Entrypoint) || strings.ContainsAny(spec.Entrypoint, "\\\x00") {
		return bad("entrypoint %q must be a relative path inside the code", spec.Entrypoint)
	}
	for k, v := range spec.Env {
		if !envName(k) {
			return bad("env name %q must match [A-Za-z_][A-Za-z0-9_]*", k)
		}
		if strings.ContainsRune(v, 0) {
			return bad("env %s contains a NUL byte", k)
		}
	}
	if len(spec.Input) > 0 && !json.Valid(spec.Input) {
		return bad("input must be a JSON value")
	}
	r, err := limits.Apply(spec.Resources)
	if err != nil {
		return bad("%v", err)
	}
	spec.Resources = r
	// The whole payload goes to the guest in one agent frame: refuse here, with a clear
	// message, what would otherwise fail after queueing.
	if n, err := spec.WireSize(); err != nil {
		return bad("%v", err)
	} else if n > model.MaxSpecBytes {
		return bad("code, code_archive, input and env take %.1f MiB encoded; the limit is %d MiB", float64(n)/(1<<20), model.MaxSpecBytes>>20)
	}
	return spec, nil
}

func envName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
