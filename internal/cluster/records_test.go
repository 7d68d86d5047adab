package cluster

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/cluster/clustertest"
	"github.com/vulcanhq/vulcan/internal/model"
)

// Every node holds every record in memory, so those copies go without workloads'
// outputs; Result reads a record's output from the bucket. A record over the output cap
// travels without it and says its node holds it.
func TestRecordsInMemoryWithoutOutput(t *testing.T) {
	nats := clustertest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := Join(ctx, Config{URL: nats.URL, NodeID: "mem", Advertise: "http://127.0.0.1:1",
		Heartbeat: 200 * time.Millisecond, NodeTTL: time.Second}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	now := time.Now().UTC()
	small := &model.Workload{ID: "01ARZ3NDEKTSV4RRFFQ69G5FA1", Status: model.StatusCompleted, CreatedAt: now, FinishedAt: &now,
		Output: "hello\n", Stdout: "hello\n"}
	big := &model.Workload{ID: "01ARZ3NDEKTSV4RRFFQ69G5FA2", Status: model.StatusCompleted, CreatedAt: now, FinishedAt: &now,
		Output: strings.Repeat("y", recordOutputCap), Stdout: strings.Repeat("y", recordOutputCap)}
	for _, w := range []*model.Workload{small, big} {
		r := workloadRecord(w)
		r.Node = "elsewhere" // written by another node: it reaches this one through the watcher
		b, _ := json.Marshal(r)
		if _, err := n.recKV.Put(ctx, workloadKey(w.ID), b); err != nil {
			t.Fatal(err)
		}
	}
	n.CatchUp(ctx)
	n.mu.Lock()
	for key, c := range n.records {
		if w := c.rec.Workload; w != nil && (w.Output != "" || w.Stdout != "" || w.Stderr != "") {
			t.Errorf("record %s holds %d bytes of output in memory", key, len(w.Output)+len(w.Stdout))
		}
	}
	n.mu.Unlock()
	got, err := n.Result(ctx, small.ID)
	if err != nil || got.Stdout != small.Stdout || got.Output != small.Output {
		t.Fatalf("Result of the small one: %+v %v", got, err)
	}
	got, err = n.Result(ctx, big.ID)
	if err != nil || got.Stdout != "" || n.OutputHeldBy(big.ID) != "elsewhere" || n.OutputHeldBy(small.ID) != "" {
		t.Fatalf("Result of the big one: %d bytes, %v; held by %q", len(got.Stdout), err, n.OutputHeldBy(big.ID))
	}
}
