package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/cluster"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/server"
	"github.com/vulcanhq/vulcan/internal/store"
)

// stubBackend runs workloads without isolating anything: run does the work. It is named
// microvm so that "auto" resolves to it, which is safe only because it lives in the
// benchmark's private server; `vulcan serve` never registers it.
type stubBackend struct {
	run func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error)
}

var _ backend.Backend = (*stubBackend)(nil)

func (*stubBackend) Name() string { return string(model.IsolationMicroVM) }

func (*stubBackend) Capabilities() backend.Capabilities {
	return backend.Capabilities{Isolation: model.IsolationMicroVM, Runtimes: model.Runtimes,
		MaxCPUs: 8, MaxMemMB: 8192, Details: map[string]string{"bench": "no isolation"}}
}

func (*stubBackend) Available(context.Context) error { return nil }

func (b *stubBackend) Execute(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
	return b.run(ctx, job, sink)
}

func (*stubBackend) Cleanup(context.Context, string) error { return nil }

// noop is P1's workload: one line, exit 0.
func noop(_ context.Context, _ backend.Job, sink backend.Sink) (backend.Result, error) {
	sink.Line(model.Stdout, "ok")
	return backend.Result{}, nil
}

// stack is the real API, engine and SQLite store over b, served on a loopback port the
// way `vulcan serve` serves them.
type stack struct {
	URL   string
	close func()
}

func startStack(ctx context.Context, tmp string, b backend.Backend, cfg engine.Config, join ...*cluster.Config) (_ *stack, err error) {
	var undo []func()
	cleanup := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	dir, err := os.MkdirTemp(tmp, "vulcan-bench-")
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { os.RemoveAll(dir) })
	st, err := store.Open(ctx, filepath.Join(dir, "vulcan.db"))
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { st.Close() })
	reg := backend.NewRegistry()
	reg.Register(b)
	quiet := slog.New(slog.DiscardHandler)
	metrics := prometheus.NewRegistry() // collected as in serve, so their cost is counted
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	undo = append(undo, func() { ln.Close() })
	so := server.Options{Store: st, Registry: reg, Engine: cfg, NoSandboxes: true, Logger: quiet, Metrics: metrics}
	if len(join) > 0 && join[0] != nil {
		c := *join[0]
		c.Advertise, c.Logger = "http://"+ln.Addr().String(), quiet
		so.Cluster = &c
	}
	vs, err := server.New(ctx, so)
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() {
		// Everything has ended by now; an already-cancelled context just skips waiting.
		done, cancel := context.WithCancel(context.Background())
		cancel()
		vs.Shutdown(done)
	})
	srv := vs.Handler()
	hs := &http.Server{Handler: srv}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	undo = append(undo, func() {
		hs.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			slog.Debug("bench server", "err", err)
		}
	})
	return &stack{URL: "http://" + ln.Addr().String(), close: cleanup}, nil
}

func (s *stack) Close() { s.close() }

// noopBody is P1's and K2's workload.
var noopBody = []byte(`{"runtime":"python","code":"pass"}`)

// postNoop runs one no-op workload synchronously through base's API.
func postNoop(ctx context.Context, hc *http.Client, base string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/workloads", bytes.NewReader(noopBody))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /v1/workloads: status %d", resp.StatusCode)
	}
	return err
}
