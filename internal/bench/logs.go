package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/client"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
)

var (
	rowP5a = Row{"P5a", "log streaming latency", "one line from the backend's sink to an SSE client of GET /v1/workloads/{id}/logs, one line in flight, p50 (host clock at both ends)"}
	rowP5b = Row{"P5b", "log streaming throughput", "lines/s from the backend's sink to the SSE client, the backend writing as fast as it can (first line written to last line read)"}
)

// P5 targets. The issues set none; these are ours: a line should show up faster than a
// person notices, and a chatty program (10k lines/s) should not fall behind.
const (
	LogMaxLatency    = 10 * time.Millisecond
	LogMinThroughput = 10000.0
)

// logLine pads each line to a typical log line's length (64 bytes with its newline).
const logLine = "%08d the quick brown fox jumps over the lazy dog 0123456789"

// LogStreaming is P5: the latency of one line and the throughput of many, through the
// real engine (which also persists every line to SQLite), API and client.
func LogStreaming(ctx context.Context, o Options) ([]Result, error) {
	n := o.n(200, 50)
	// Every line fits under the default output cap (1 MiB, as `vulcan serve` runs): the
	// client could not read the done event of a much larger output (it carries the output
	// twice, and the client's line buffer is 4 MiB).
	lines := 75 * n
	var (
		base    = time.Now()
		ready   = make(chan struct{}, 1) // the client has seen the first line
		ack     = make(chan struct{}, 1) // the client has seen the last timed line
		sent    = make([]atomic.Int64, n+1)
		started atomic.Int64
	)
	// The first line of each workload waits for the client, so that neither figure
	// includes the client connecting.
	waitFor := func(ctx context.Context, ch <-chan struct{}) error {
		select {
		case <-ch:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(30 * time.Second):
			return errors.New("the SSE client did not see a line within 30s")
		}
	}
	b := &stubBackend{run: func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
		sink.Line(model.Stdout, "ready")
		if err := waitFor(ctx, ready); err != nil {
			return backend.Result{ExitCode: 1}, err
		}
		switch job.Spec.Code {
		case "latency":
			for i := 1; i <= n; i++ {
				sent[i].Store(int64(time.Since(base)))
				sink.Line(model.Stdout, fmt.Sprintf(logLine, i))
				if err := waitFor(ctx, ack); err != nil {
					return backend.Result{ExitCode: 1}, err
				}
			}
		case "throughput":
			started.Store(int64(time.Since(base)))
			for i := 1; i <= lines; i++ {
				sink.Line(model.Stdout, fmt.Sprintf(logLine, i))
			}
		}
		return backend.Result{}, nil
	}}
	// The output cap must hold every line, or the throughput run would be truncated.
	lineBytes := len(fmt.Sprintf(logLine, 0)) + 1
	s, err := startStack(ctx, o.tempDir(), b, engine.Config{MaxConcurrent: 1, OutputLimit: max(1<<20, lineBytes*(lines+16)), OutputLineLimit: lines + 16})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	c := client.New(s.URL, "")

	follow := func(code string, onLine func(seq int, at time.Duration)) error {
		w, err := c.Submit(ctx, model.Spec{Runtime: model.RuntimePython, Code: code})
		if err != nil {
			return err
		}
		final, err := c.Follow(ctx, w.ID, func(l model.LogLine) {
			at := time.Since(base)
			if l.Text == "ready" {
				ready <- struct{}{}
				return
			}
			seq, err := strconv.Atoi(strings.Fields(l.Text)[0])
			if err == nil {
				onLine(seq, at)
			}
		})
		if err != nil {
			return err
		}
		if final.Status != model.StatusCompleted {
			return fmt.Errorf("%s workload ended %s", code, final.Status)
		}
		return nil
	}

	latencies := make([]time.Duration, 0, n)
	err = follow("latency", func(seq int, at time.Duration) {
		latencies = append(latencies, at-time.Duration(sent[seq].Load()))
		ack <- struct{}{}
	})
	if err != nil {
		return nil, fmt.Errorf("latency run: %w", err)
	}
	latency := rowP5a.Latency(NewSample("sink → SSE", latencies), AtMost(LogMaxLatency.Seconds()))
	latency.Note = fmt.Sprintf("%d lines, p99 %s", len(latencies), formatSeconds(Percentile(latencies, 99).Seconds()))

	const runs = 3
	var elapsed []time.Duration
	for range runs {
		var got int
		var last time.Duration
		err = follow("throughput", func(seq int, at time.Duration) {
			got++
			last = at
		})
		if err != nil {
			return []Result{latency}, fmt.Errorf("throughput run: %w", err)
		}
		if got != lines {
			return []Result{latency}, fmt.Errorf("throughput run: the client saw %d of %d lines", got, lines)
		}
		elapsed = append(elapsed, last-time.Duration(started.Load()))
	}
	med := Median(elapsed)
	rate := rowP5b.Rate(lines, med, "lines/s", AtLeast(LogMinThroughput))
	rate.Note = fmt.Sprintf("%s lines of %d bytes, median of %d runs %s", thousands(int64(lines)), lineBytes, runs, formatSeconds(med.Seconds()))
	return []Result{latency, rate}, nil
}
