package bench

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
)

var (
	rowP1a = Row{"P1a", "control-plane overhead", "a no-op workload's sync POST /v1/workloads (HTTP + engine + SQLite) vs a direct call of the same backend, p50 difference"}
	rowP1b = Row{"P1b", "control-plane rate", "sustained no-op workloads/s through the API, 32 clients, every transition and line persisted"}
)

// P1 targets.
const (
	ControlPlaneMaxOverhead = time.Millisecond
	ControlPlaneMinRate     = 2000.0
)

// ControlPlane is P1: what the control plane adds on top of a backend that does nothing,
// and how many such workloads it sustains per second.
func ControlPlane(ctx context.Context, o Options) ([]Result, error) {
	samples := o.n(500, 100)
	total := 8 * samples
	b := &stubBackend{run: noop}
	s, err := startStack(ctx, o.tempDir(), b, engine.Config{MaxConcurrent: 64, QueueSize: 1024})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: 128}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	post := func() error { return postNoop(ctx, hc, s.URL) }
	job := backend.Job{WorkloadID: "bench", Spec: model.Spec{Runtime: model.RuntimePython, Code: "pass"}}
	discard := backend.SinkFunc(func(model.Stream, string, bool) {})
	// Warm both paths (connections, SQLite pages) before timing.
	if err := post(); err != nil {
		return nil, err
	}
	direct := make([]time.Duration, samples)
	viaAPI := make([]time.Duration, samples)
	for i := range samples {
		t0 := time.Now()
		if _, err := b.Execute(ctx, job, discard); err != nil {
			return nil, err
		}
		t1 := time.Now()
		if err := post(); err != nil {
			return nil, err
		}
		direct[i], viaAPI[i] = t1.Sub(t0), time.Since(t1)
	}
	overhead := rowP1a.Compare(Overhead,
		NewSample("direct call", direct), NewSample("via API", viaAPI),
		AtMost(ControlPlaneMaxOverhead.Seconds()))

	const clients = 32
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Go(func() {
			for next.Add(1) <= int64(total) {
				if err := post(); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return []Result{overhead}, firstErr
	}
	rate := rowP1b.Rate(total, elapsed, "workloads/s", AtLeast(ControlPlaneMinRate))
	rate.Note = fmt.Sprintf("%s workloads in %s", thousands(int64(total)), formatSeconds(elapsed.Seconds()))
	return []Result{overhead, rate}, nil
}
