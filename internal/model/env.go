package model

import (
	"fmt"
	"strings"
)

// MaxEnvBytes bounds an environment ("NAME=value" strings with their NULs), and
// MaxEnvVarBytes one "NAME=value". Linux starts a program only when its arguments and
// environment fit in a quarter of the stack limit (2 MiB under the default 8 MiB) and each
// string, NUL included, in 128 KiB: an environment past these could only fail in the
// guest, after a VM was booted for it. Half the kernel's total leaves room for the
// variables the guest adds.
const (
	MaxEnvBytes    = 1 << 20
	MaxEnvVarBytes = 128<<10 - 1
)

// CheckEnv checks every variable, and the environment's size as the guest's kernel will
// count it, in one pass; of several bad names it reports the first in sort order, so the
// answer does not depend on map order. Workloads and sandbox processes share it.
func CheckEnv(env map[string]string) *FieldError {
	var bad, why string
	total := 0
	for k, v := range env {
		reason := ""
		switch n := len(k) + 1 + len(v); {
		case !EnvName(k):
			reason = fmt.Sprintf("env name %.64q must match [A-Za-z_][A-Za-z0-9_]*", k)
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
		return &FieldError{Field: "env." + bad, Reason: why}
	case total > MaxEnvBytes:
		return &FieldError{Field: "env", Reason: fmt.Sprintf("env takes %d KiB (%d variables); the limit is %d KiB, beyond which a program cannot be started",
			total>>10, len(env), MaxEnvBytes>>10)}
	}
	return nil
}

// EnvName reports whether s is a portable environment variable name.
func EnvName(s string) bool {
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
