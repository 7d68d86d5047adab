package engine_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/store"
)

// Every engine series with known labels is on /metrics, at 0, before the first workload.
func TestMetricsExistFromStartUp(t *testing.T) {
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg := prometheus.NewRegistry()
	e, err := engine.New(context.Background(), engine.Options{Store: st, Registry: backend.NewRegistry(), Metrics: reg, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown(context.Background())
	expo := `
# HELP vulcan_workloads_finished_total Workloads that reached a terminal status, by status.
# TYPE vulcan_workloads_finished_total counter
vulcan_workloads_finished_total{status="completed"} 0
vulcan_workloads_finished_total{status="failed"} 0
vulcan_workloads_finished_total{status="killed"} 0
# HELP vulcan_workloads_rejected_total Submissions refused, by reason (invalid, unavailable, busy, shutting_down).
# TYPE vulcan_workloads_rejected_total counter
vulcan_workloads_rejected_total{reason="busy"} 0
vulcan_workloads_rejected_total{reason="invalid"} 0
vulcan_workloads_rejected_total{reason="shutting_down"} 0
vulcan_workloads_rejected_total{reason="unavailable"} 0
# HELP vulcan_workloads_submitted_total Workloads admitted, by runtime.
# TYPE vulcan_workloads_submitted_total counter
vulcan_workloads_submitted_total{runtime="go"} 0
vulcan_workloads_submitted_total{runtime="node"} 0
vulcan_workloads_submitted_total{runtime="python"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expo),
		"vulcan_workloads_finished_total", "vulcan_workloads_rejected_total", "vulcan_workloads_submitted_total"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "vulcan_workload_duration_seconds", "vulcan_workload_queue_seconds",
		"vulcan_workloads_running", "vulcan_queue_depth"); err != nil || n != 3+1+1+1 {
		t.Errorf("duration, queue, running, depth series: %d (%v)", n, err)
	}
}
