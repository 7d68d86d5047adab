package cluster_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/client"
	"github.com/vulcanhq/vulcan/internal/cluster/clustertest"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/sandbox"
)

// TestClusterNATSOutage: while the nats-server is down, nodes keep serving what does not
// need it. A workload submit is refused at once (503 cluster_unreachable with
// Retry-After; nothing recorded), the nodes still take each other for alive (they cannot
// tell, so a call about another node's sandbox is still forwarded to it: exec and files
// work through either node), and each node lists itself alive. Once NATS is back,
// workloads run again.
func TestClusterNATSOutage(t *testing.T) {
	nats := clustertest.Start(t)
	a := startNode(t, nats.URL, "o-a", sandbox.Config{MemBudgetMB: 4096}, 2)
	b := startNode(t, nats.URL, "o-b", sandbox.Config{MemBudgetMB: 1024}, 2)
	waitNodes(t, a, 2)
	waitNodes(t, b, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sb, err := b.c.CreateSandbox(ctx, model.SandboxSpec{Template: model.RuntimePython})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Sandboxes.Get(ctx, sb.ID); err != nil {
		t.Fatalf("the sandbox is not on A (the most room): %v", err)
	}

	nats.Stop()
	eventually(t, "both nodes see NATS gone", 20*time.Second, func() bool { return !a.Cluster.Connected() && !b.Cluster.Connected() })
	time.Sleep(1500 * time.Millisecond) // past the announcements' TTL

	resp, body := do(t, http.MethodPost, b.URL+"/v1/workloads", map[string]any{"runtime": "python", "code": "print(1)"})
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !bytes.Contains(body, []byte("cluster_unreachable")) {
		t.Fatalf("a submit while NATS is down: %d %s (Retry-After %q)", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	for _, n := range []*node{a, b} {
		exit, err := n.c.Exec(ctx, sb.ID, api.ProcessRequest{Cmd: "echo up"}, nil)
		if err != nil || exit.ExitCode == nil || *exit.ExitCode != 0 {
			t.Fatalf("exec through %s while NATS is down: %+v %v", n.id, exit, err)
		}
	}
	payload := bytes.Repeat([]byte("outage "), 40_000)
	if _, err := b.c.WriteFile(ctx, sb.ID, "during-outage", 0o644, bytes.NewReader(payload)); err != nil {
		t.Fatalf("write through B while NATS is down: %v", err)
	}
	var got bytes.Buffer
	if _, err := b.c.ReadFile(ctx, sb.ID, "during-outage", &got); err != nil || !bytes.Equal(got.Bytes(), payload) {
		t.Fatalf("read through B while NATS is down: %d bytes, %v", got.Len(), err)
	}
	for _, n := range []*node{a, b} {
		st, err := n.c.ClusterStatus(ctx)
		if err != nil || st.Connected {
			t.Fatalf("status through %s: %+v %v", n.id, st, err)
		}
		for _, info := range st.Nodes {
			if !info.Alive {
				t.Errorf("%s lists %s dead while it cannot see the cluster", n.id, info.ID)
			}
		}
	}

	nats.Restart()
	eventually(t, "both nodes reconnect", 20*time.Second, func() bool { return a.Cluster.Connected() && b.Cluster.Connected() })
	waitNodes(t, a, 2)
	w, err := b.c.Run(ctx, model.Spec{Runtime: model.RuntimePython, Code: "print('back')"})
	if err != nil || w.Status != model.StatusCompleted {
		t.Fatalf("a workload once NATS is back: %+v %v", w, err)
	}
	l, err := a.c.List(ctx, client.ListOptions{Limit: 10})
	if err != nil || l.Total != 1 {
		t.Fatalf("workloads after the outage: %+v %v (the refused submit left a record?)", l, err)
	}
	var apiErr *client.Error
	if _, err := a.c.Get(ctx, "01ARZ3NDEKTSV4RRFFQ69G5FAV"); !errors.As(err, &apiErr) || apiErr.Status != http.StatusNotFound {
		t.Fatalf("an unknown workload: %v", err)
	}
}

// TestClusterListsReadYourWrites: what a client just did through one node is in the next
// list through another — a workload run there (completed, as it was answered), a sandbox
// created there (running) and killed there (killed) — round after round, with the node
// that ran or placed it picked by the cluster.
func TestClusterListsReadYourWrites(t *testing.T) {
	nats := clustertest.Start(t)
	a := startNode(t, nats.URL, "l-a", sandbox.Config{MemBudgetMB: 4096}, 2)
	b := startNode(t, nats.URL, "l-b", sandbox.Config{MemBudgetMB: 4096}, 2)
	waitNodes(t, a, 2)
	waitNodes(t, b, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes := []*node{a, b}
	for i := range 40 {
		via, other := nodes[i%2], nodes[(i+1)%2]
		w, err := via.c.Run(ctx, model.Spec{Runtime: model.RuntimePython, Code: "print(1)"})
		if err != nil || w.Status != model.StatusCompleted {
			t.Fatalf("round %d: run: %+v %v", i, w, err)
		}
		l, err := other.c.List(ctx, client.ListOptions{Limit: 1})
		if err != nil || len(l.Workloads) != 1 || l.Workloads[0].ID != w.ID || l.Workloads[0].Status != model.StatusCompleted || l.Total != i+1 {
			t.Fatalf("round %d: the list through %s right after a run through %s: %+v %v", i, other.id, via.id, l, err)
		}
		if i%5 != 0 {
			continue
		}
		sb, err := via.c.CreateSandbox(ctx, model.SandboxSpec{Template: model.RuntimePython})
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []model.SandboxState{model.SandboxRunning, model.SandboxKilled} {
			if want == model.SandboxKilled {
				if _, err := via.c.KillSandbox(ctx, sb.ID); err != nil {
					t.Fatal(err)
				}
			}
			list, err := other.c.ListSandboxes(ctx, url.Values{"limit": {"1"}})
			if err != nil || len(list.Sandboxes) != 1 || list.Sandboxes[0].ID != sb.ID || list.Sandboxes[0].State != want {
				t.Fatalf("round %d: the sandbox list through %s right after a %s through %s: %+v %v", i, other.id, want, via.id, list, err)
			}
		}
	}
}
