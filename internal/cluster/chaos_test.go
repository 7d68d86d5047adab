package cluster_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/client"
	"github.com/vulcanhq/vulcan/internal/cluster"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/sandbox"
	"github.com/vulcanhq/vulcan/internal/sandbox/sandboxtest"
	"github.com/vulcanhq/vulcan/internal/server/servertest"
	"github.com/vulcanhq/vulcan/internal/store"

	"github.com/vulcanhq/vulcan/internal/cluster/clustertest"
)

// TestHelperNode is not a test: TestClusterChaos runs this test binary again with
// VULCAN_HELPER_NODE set, and each such process is one cluster node (a whole server on
// the fake backend, its store in a data dir that outlives the process) that the test
// can kill -9. A workload "sleep:MS" records its start in <data>/started, then sleeps.
func TestHelperNode(t *testing.T) {
	data := os.Getenv("VULCAN_HELPER_NODE")
	if data == "" {
		t.Skip("runs only as TestClusterChaos's node process")
	}
	st, err := store.Open(context.Background(), filepath.Join(data, "db"))
	if err != nil {
		t.Fatal(err)
	}
	started, err := os.OpenFile(filepath.Join(data, "started"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fake := &backendtest.Fake{Run: func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
		fmt.Fprintln(started, job.WorkloadID) // O_APPEND: one whole line per start
		ms, _ := strconv.Atoi(strings.TrimPrefix(job.Spec.Code, "sleep:"))
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
			return backend.Result{}, ctx.Err()
		}
		sink.Line(model.Stdout, "slept "+strconv.Itoa(ms))
		return backend.Result{}, nil
	}}
	s := servertest.New(t, servertest.Options{
		Engine: engine.Config{MaxConcurrent: 2, QueueSize: 16}, Fake: fake, Store: st,
		Launcher: sandboxtest.NewAgentLauncher(t), Sandbox: sandbox.Config{MemBudgetMB: 2048},
		Cluster: &cluster.Config{URL: os.Getenv("VULCAN_HELPER_NATS"), NodeID: os.Getenv("VULCAN_HELPER_ID"),
			Heartbeat: 200 * time.Millisecond, NodeTTL: time.Second, AckWait: 3 * time.Second},
	})
	fmt.Printf("READY %s\n", s.URL)
	select {} // until killed
}

type proc struct {
	id, data, url string
	cmd           *exec.Cmd
}

func startProc(t *testing.T, natsURL, id, data string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperNode$", "-test.v")
	cmd.Env = append(os.Environ(), "VULCAN_HELPER_NODE="+data, "VULCAN_HELPER_NATS="+natsURL, "VULCAN_HELPER_ID="+id)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{id: id, data: data, cmd: cmd}
	t.Cleanup(func() { p.kill() })
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
				ready <- u
			}
		}
	}()
	select {
	case p.url = <-ready:
	case <-time.After(60 * time.Second):
		t.Fatalf("node %s did not start", id)
	}
	return p
}

func (p *proc) kill() {
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_, _ = p.cmd.Process.Wait()
	}
}

func (p *proc) started(t *testing.T) []string {
	b, err := os.ReadFile(filepath.Join(p.data, "started"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

func clusterStatus(t *testing.T, url string) api.ClusterStatus {
	t.Helper()
	resp, body := do(t, http.MethodGet, url+"/v1/cluster", nil)
	var cs api.ClusterStatus
	if resp.StatusCode != 200 || json.Unmarshal(body, &cs) != nil {
		t.Fatalf("GET /v1/cluster: %d %s", resp.StatusCode, body)
	}
	return cs
}

func liveNodes(cs api.ClusterStatus) int {
	n := 0
	for _, info := range cs.Nodes {
		if info.Alive {
			n++
		}
	}
	return n
}

// TestClusterChaos kills -9 a node with queued and running workloads and a live
// sandbox: the queued ones complete elsewhere, the ones it had started end failed
// "node lost" (never run again), its sandbox shows lost, the cluster keeps serving, and
// the node restarts and rejoins without duplicates.
func TestClusterChaos(t *testing.T) {
	nats := clustertest.Start(t)
	dir := t.TempDir()
	a := startProc(t, nats.URL, "chaos-a", filepath.Join(dir, "a"))
	b := startProc(t, nats.URL, "chaos-b", filepath.Join(dir, "b"))
	v := startProc(t, nats.URL, "chaos-v", filepath.Join(dir, "v"))
	eventually(t, "three live nodes", 20*time.Second, func() bool { return liveNodes(clusterStatus(t, a.url)) == 3 })
	ctx := context.Background()
	ca := client.New(a.url, "")

	// A sandbox on the victim (a forwarded create is served where it lands).
	req, _ := http.NewRequest(http.MethodPost, v.url+"/v1/sandboxes", strings.NewReader(`{"template":"python"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(cluster.ForwardedHeader, "test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var sb api.Sandbox
	json.NewDecoder(resp.Body).Decode(&sb)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || sb.ID == "" {
		t.Fatalf("sandbox on the victim: %d", resp.StatusCode)
	}

	// Twelve 4-second workloads on six slots: six run, six wait in the queue.
	var ids []string
	for range 12 {
		w, err := ca.Submit(ctx, model.Spec{Runtime: model.RuntimePython, Code: "sleep:4000"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, w.ID)
	}
	eventually(t, "the victim runs two", 20*time.Second, func() bool { return len(v.started(t)) == 2 })
	onVictim := v.started(t)
	v.kill()
	killedAt := time.Now()

	// The cluster keeps serving while (and after) it notices.
	w, err := ca.Run(ctx, model.Spec{Runtime: model.RuntimePython, Code: "sleep:10"})
	if err != nil || w.Status != model.StatusCompleted {
		t.Fatalf("a workload after the kill: %+v %v", w, err)
	}
	ids = append(ids, w.ID)

	final := map[string]*api.Workload{}
	eventually(t, "every workload ends", 60*time.Second, func() bool {
		for _, id := range ids {
			if final[id] != nil {
				continue
			}
			w, err := ca.Get(ctx, id)
			if err == nil && w.Status.Terminal() {
				final[id] = w
			}
		}
		return len(final) == len(ids)
	})
	t.Logf("all %d workloads ended %v after the kill", len(ids), time.Since(killedAt).Round(time.Millisecond))
	lost := map[string]bool{}
	for _, id := range onVictim {
		lost[id] = true
	}
	for _, id := range ids {
		w := final[id]
		switch {
		case lost[id]:
			if w.Status != model.StatusFailed || !strings.Contains(w.Error, cluster.LostReason) {
				t.Errorf("workload %s started on the victim: %s %q, want failed %q", id, w.Status, w.Error, cluster.LostReason)
			}
		case w.Status != model.StatusCompleted:
			t.Errorf("workload %s: %s %q, want completed elsewhere", id, w.Status, w.Error)
		}
	}
	starts := map[string]int{}
	for _, p := range []*proc{a, b, v} {
		for _, id := range p.started(t) {
			starts[id]++
		}
	}
	for _, id := range ids {
		if starts[id] != 1 {
			t.Errorf("workload %s started %d times", id, starts[id])
		}
	}
	eventually(t, "the victim's sandbox shows lost", 10*time.Second, func() bool {
		s, err := ca.GetSandbox(ctx, sb.ID)
		return err == nil && s.State == model.SandboxLost
	})
	if _, err := ca.Exec(ctx, sb.ID, api.ProcessRequest{Cmd: "true"}, nil); err == nil {
		t.Fatal("exec in a lost sandbox succeeded")
	}

	// The victim comes back on its data: it rejoins once, its lost records stay lost.
	v2 := startProc(t, nats.URL, "chaos-v", v.data)
	eventually(t, "three live nodes again", 20*time.Second, func() bool { return liveNodes(clusterStatus(t, b.url)) == 3 })
	cs := clusterStatus(t, v2.url)
	if len(cs.Nodes) != 3 {
		t.Fatalf("after the rejoin the cluster lists %d nodes: %+v", len(cs.Nodes), cs.Nodes)
	}
	time.Sleep(time.Second) // let a reconcile pass run
	for _, id := range onVictim {
		w, err := client.New(v2.url, "").Get(ctx, id)
		if err != nil || w.Status != model.StatusFailed {
			t.Fatalf("victim's workload %s after the rejoin: %+v %v", id, w, err)
		}
	}
	l, err := client.New(v2.url, "").List(ctx, client.ListOptions{Limit: 100})
	if err != nil || l.Total != len(ids) {
		t.Fatalf("after the rejoin the cluster lists %v workloads (err %v), want %d", l, err, len(ids))
	}
	if len(v2.started(t)) != 2 {
		t.Fatalf("the restarted victim started workloads again: %v", v2.started(t))
	}
	w, err = client.New(v2.url, "").Run(ctx, model.Spec{Runtime: model.RuntimePython, Code: "sleep:10"})
	if err != nil || w.Status != model.StatusCompleted {
		t.Fatalf("a workload through the rejoined node: %+v %v", w, err)
	}
}
