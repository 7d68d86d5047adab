package backendtest

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/store"
)

// Stack is the real SQLite store, engine and API over a fake backend, served on loopback
// by httptest and torn down with the test.
type Stack struct {
	*httptest.Server
	Store  *store.Store
	Engine *engine.Engine
}

// NewStack serves fake (or, when nil, no backend: microvm reported missing) through the
// real stack. apiOpts, when set, adjusts the API's options (token, heartbeat).
func NewStack(t testing.TB, cfg engine.Config, fake *Fake, apiOpts func(*api.Options)) *Stack {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	reg := backend.NewRegistry()
	if fake != nil {
		reg.Register(fake)
	} else {
		reg.Missing("microvm", "microvm: no kernel image; run `make images`")
	}
	quiet := slog.New(slog.DiscardHandler)
	metrics := prometheus.NewRegistry()
	e, err := engine.New(context.Background(), engine.Options{Config: cfg, Store: st, Registry: reg, Metrics: metrics, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	o := api.Options{Engine: e, Registry: reg, Logger: quiet, Metrics: metrics, Gatherer: metrics}
	if apiOpts != nil {
		apiOpts(&o)
	}
	srv, err := api.New(o)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		hs.CloseClientConnections()
		hs.Close()
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // shut down at once: cancel whatever still runs
		e.Shutdown(ctx)
		st.Close()
	})
	return &Stack{Server: hs, Store: st, Engine: e}
}
