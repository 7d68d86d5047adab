package engine

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/vulcanhq/vulcan/internal/model"
)

// MaxEnvBytes bounds a spec's environment ("NAME=value" strings with their NULs), and
// MaxEnvVarBytes one "NAME=value". Linux starts a program only when its arguments and
// environment fit in a quarter of the stack limit (2 MiB under the default 8 MiB) and each
// string, NUL included, in 128 KiB: an environment past these could only fail in the
// guest, after a VM was booted for it. Half the kernel's total leaves room for the
// variables the guest adds.
const (
	MaxEnvBytes    = 1 << 20
	MaxEnvVarBytes = 128<<10 - 1
)

// Validate checks a submitted spec and fills its defaults (isolation auto, network none,
// the runtime's entrypoint, resources). Every error wraps ErrInvalid and a
// *model.FieldError naming the field at fault; its text is meant for the user.
func (e *Engine) Validate(spec model.Spec) (model.Spec, error) {
	return validate(spec, e.cfg.Limits)
}

// invalid is a validation failure of one field.
func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %w", ErrInvalid, &model.FieldError{Field: field, Reason: fmt.Sprintf(format, args...)})
}

func validate(spec model.Spec, limits model.Limits) (model.Spec, error) {
	switch {
	case spec.Runtime == "":
		return spec, invalid("runtime", "runtime is required (one of go, node, python)")
	case !spec.Runtime.Valid():
		return spec, invalid("runtime", "unknown runtime %q (want go, node or python)", spec.Runtime)
	}
	if spec.Isolation == "" {
		spec.Isolation = model.IsolationAuto
	}
	if !spec.Isolation.Valid() {
		return spec, invalid("isolation", "unknown isolation %q (want auto or microvm)", spec.Isolation)
	}
	if spec.Network == "" {
		spec.Network = model.NetworkNone
	}
	if !spec.Network.Valid() {
		return spec, invalid("network", "unknown network policy %q (want none, host or egress)", spec.Network)
	}
	switch {
	case spec.Code != "" && len(spec.Archive) > 0:
		return spec, invalid("code", "give either code or code_archive, not both")
	case spec.Code == "" && len(spec.Archive) == 0:
		return spec, invalid("code", "one of code or code_archive is required")
	case len(spec.Archive) > 0:
		if _, err := gzip.NewReader(bytes.NewReader(spec.Archive)); err != nil {
			return spec, invalid("code_archive", "code_archive must be a gzip-compressed tar archive: %v", err)
		}
	}
	if spec.Entrypoint == "" {
		spec.Entrypoint = spec.Runtime.DefaultEntrypoint()
	}
	if !filepath.IsLocal(spec.Entrypoint) || strings.ContainsAny(spec.Entrypoint, "\\\x00") {
		return spec, invalid("entrypoint", "entrypoint %q must be a relative path inside the code", spec.Entrypoint)
	}
	if err := validateEnv(spec.Env); err != nil {
		return spec, err
	}
	if len(spec.Input) > 0 && !json.Valid(spec.Input) {
		return spec, invalid("input", "input must be a JSON value")
	}
	r, err := limits.Apply(spec.Resources)
	if err != nil {
		if fe := (*model.FieldError)(nil); errors.As(err, &fe) {
			return spec, fmt.Errorf("%w: %w", ErrInvalid, fe)
		}
		return spec, invalid("resources", "%v", err)
	}
	spec.Resources = r
	// The whole payload goes to the guest in one agent frame: refuse here, with a clear
	// message, what would otherwise fail after queueing.
	if n, err := spec.WireSize(); err != nil {
		return spec, invalid(largestPart(&spec), "%v", err)
	} else if n > model.MaxSpecBytes {
		return spec, invalid(largestPart(&spec), "code, code_archive, input and env take %.1f MiB encoded; the limit is %d MiB",
			float64(n)/(1<<20), model.MaxSpecBytes>>20)
	}
	return spec, nil
}

// validateEnv checks every variable, and the environment's size as the guest's kernel
// will count it, in one pass; of several bad names it reports the first in sort order, so
// the answer does not depend on map order.
func validateEnv(env map[string]string) error {
	var bad, why string
	total := 0
	for k, v := range env {
		reason := ""
		switch n := len(k) + 1 + len(v); {
		case !envName(k):
			reason = fmt.Sprintf("env name %q must match [A-Za-z_][A-Za-z0-9_]*", k)
		case strings.ContainsRune(v, 0):
			reason = fmt.Sprintf("env %s contains a NUL byte", k)
		case n > MaxEnvVarBytes:
			reason = fmt.Sprintf("env %s is %d bytes; one variable may take at most %d", k, n, MaxEnvVarBytes)
		default:
			total += n + 1
		}
		if reason != "" && (bad == "" || k < bad) {
			bad, why = k, reason
		}
	}
	switch {
	case bad != "":
		return invalid("env."+bad, "%s", why)
	case total > MaxEnvBytes:
		return invalid("env", "env takes %d KiB (%d variables); the limit is %d KiB, beyond which a program cannot be started",
			total>>10, len(env), MaxEnvBytes>>10)
	}
	return nil
}

// largestPart names the field that contributes most to a spec's wire size, for a spec
// refused as too big: the one to shrink.
func largestPart(s *model.Spec) string {
	field, most := "code", len(s.Code)
	if n := base64.StdEncoding.EncodedLen(len(s.Archive)); n > most {
		field, most = "code_archive", n
	}
	if n := base64.StdEncoding.EncodedLen(len(s.Input)); n > most {
		field, most = "input", n
	}
	env := 0
	for k, v := range s.Env {
		env += len(k) + len(v) + 6 // quotes, colon, comma
	}
	if env > most {
		field = "env"
	}
	return field
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
