package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/config"
)

// registerBackends is the one place backends are wired into the server. It registers each
// backend this build can offer (or records with reg.Missing why it cannot) and returns a
// cleanup that serve runs after the engine has shut down. It must never register a fake.
func registerBackends(ctx context.Context, cfg *config.Config, reg *backend.Registry, metrics prometheus.Registerer, log *slog.Logger) (cleanup func(), err error) {
	reg.Missing("microvm", "microvm: backend not built yet")
	return func() {}, nil
}
