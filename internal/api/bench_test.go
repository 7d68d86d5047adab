package api_test

import (
	"bytes"
	"context"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
)

// BenchmarkControlPlane is P1: the cost the control plane adds on top of a backend. It
// times, in one run, (a) a direct Execute of a no-op fake backend, (b) the same workload
// through the real HTTP server, engine and SQLite store (sync POST /v1/workloads), and
// (c) sustained no-op workloads per second with every transition and line persisted.
func BenchmarkControlPlane(b *testing.B) {
	fake := &backendtest.Fake{Run: func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
		sink.Line(model.Stdout, "ok")
		return backend.Result{}, nil
	}}
	ts := newServer(b, engine.Config{MaxConcurrent: 64, QueueSize: 1024}, fake, "")
	body := []byte(`{"runtime":"python","code":"pass"}`)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}}
	post := func() {
		resp, err := client.Post(ts.URL+"/v1/workloads", "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		var buf [4096]byte
		for {
			if _, err := resp.Body.Read(buf[:]); err != nil {
				break
			}
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	p50 := func(d []time.Duration) time.Duration {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d[len(d)/2]
	}
	b.ResetTimer()
	for range b.N {
		const samples = 500
		direct := make([]time.Duration, samples)
		job := backend.Job{WorkloadID: "bench", Spec: model.Spec{Runtime: model.RuntimePython, Code: "pass"}}
		sink := backend.SinkFunc(func(model.Stream, string) {})
		for i := range direct {
			start := time.Now()
			fake.Execute(context.Background(), job, sink)
			direct[i] = time.Since(start)
		}
		viaAPI := make([]time.Duration, samples)
		for i := range viaAPI {
			start := time.Now()
			post()
			viaAPI[i] = time.Since(start)
		}
		overhead := p50(viaAPI) - p50(direct)

		const total, clients = 4000, 32
		var next atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= total {
					post()
				}
			}()
		}
		wg.Wait()
		rate := total / time.Since(start).Seconds()

		b.ReportMetric(float64(p50(direct).Microseconds()), "direct-p50-µs")
		b.ReportMetric(float64(p50(viaAPI).Microseconds()), "api-p50-µs")
		b.ReportMetric(float64(overhead.Microseconds()), "overhead-p50-µs")
		b.ReportMetric(rate, "workloads/s")
	}
}
