package sandbox

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/network/netrules"
)

var errUnavailable = backend.ErrUnavailable

// MaxEnvVars caps the variables of a create request (their sizes: model.CheckEnv).
const MaxEnvVars = 1024

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %w", ErrInvalid, &model.FieldError{Field: field, Reason: fmt.Sprintf(format, args...)})
}

// Validate checks a create request and fills its defaults (template python, network
// none, resources, timeout 300 s). Every error wraps ErrInvalid and a *model.FieldError.
func Validate(spec model.SandboxSpec, limits model.Limits) (model.SandboxSpec, error) {
	return validate(spec, limits, false)
}

// validate is Validate where userTemplate says the template is a known user template.
func validate(spec model.SandboxSpec, limits model.Limits, userTemplate bool) (model.SandboxSpec, error) {
	if spec.Template == "" {
		spec.Template = model.RuntimePython
	}
	if !spec.Template.ValidTemplate() && !userTemplate {
		return spec, invalid("template", "unknown template %q (want base, go, node, python or a template built here: GET /v1/templates)", spec.Template)
	}
	res := spec.Resources
	res.TimeoutS = 1 // the sandbox's own timeout is TimeoutS; Apply checks the rest
	res, err := limits.Apply(res)
	if err != nil {
		field := "resources"
		switch {
		case strings.Contains(err.Error(), "cpus"):
			field = "resources.cpus"
		case strings.Contains(err.Error(), "mem_mb"):
			field = "resources.mem_mb"
		}
		return spec, invalid(field, "%v", err)
	}
	res.TimeoutS = 0
	spec.Resources = res
	switch {
	case spec.TimeoutS == 0:
		spec.TimeoutS = model.DefaultSandboxTimeoutS
	case spec.TimeoutS < 1 || spec.TimeoutS > model.MaxSandboxTimeoutS:
		return spec, invalid("timeout_s", "timeout_s must be between 1 and %d, got %d", model.MaxSandboxTimeoutS, spec.TimeoutS)
	}
	if spec.Network == "" {
		spec.Network = model.NetworkNone
	}
	if !spec.Network.Valid() {
		return spec, invalid("network", "unknown network policy %q (want none, host or egress)", spec.Network)
	}
	rules, err := netrules.Check(spec.Network, spec.NetworkRules)
	if err != nil {
		return spec, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	spec.NetworkRules = rules
	if err := validateEnv(spec.Env); err != nil {
		return spec, err
	}
	if err := validateMetadata(spec.Metadata); err != nil {
		return spec, err
	}
	return spec, nil
}

func validateEnv(env map[string]string) error {
	if len(env) > MaxEnvVars {
		return invalid("env", "env has %d variables; at most %d", len(env), MaxEnvVars)
	}
	if fe := model.CheckEnv(env); fe != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, fe)
	}
	return nil
}

func validateMetadata(m map[string]string) error {
	if len(m) > model.MaxMetadataEntries {
		return invalid("metadata", "metadata has %d entries; at most %d", len(m), model.MaxMetadataEntries)
	}
	for k, v := range m {
		switch {
		case k == "" || len(k) > model.MaxMetadataBytes:
			return invalid("metadata", "metadata keys must be 1 to %d bytes", model.MaxMetadataBytes)
		case len(v) > model.MaxMetadataBytes:
			return invalid("metadata."+k, "metadata values may be at most %d bytes", model.MaxMetadataBytes)
		case strings.ContainsRune(k, 0) || strings.ContainsRune(v, 0):
			return invalid("metadata", "metadata may not contain NUL bytes")
		}
	}
	return nil
}

func rejectReason(err error) string {
	switch {
	case errors.Is(err, ErrShuttingDown):
		return "shutting_down"
	case errors.Is(err, ErrBusy):
		return "busy"
	}
	return "other"
}

// hostMemMB reads MemTotal from /proc/meminfo; 0 when it cannot.
func hostMemMB() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			return kb / 1024
		}
	}
	return 0
}
