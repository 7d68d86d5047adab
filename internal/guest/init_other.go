//go:build !linux

package guest

import (
	"context"
	"errors"
	"log/slog"
	"os"
)

// IsInit reports whether the agent is PID 1; only Linux guests exist.
func IsInit() bool { return false }

// Init is only meaningful in a Linux guest.
func Init(ctx context.Context, log *slog.Logger) (context.Context, KernelArgs, error) {
	return ctx, KernelArgs{}, errors.New("guest init is Linux-only")
}

// PowerOff exits the process outside Linux.
func PowerOff(log *slog.Logger) { os.Exit(0) }
