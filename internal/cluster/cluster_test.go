package cluster_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/client"
	"github.com/vulcanhq/vulcan/internal/cluster"
	"github.com/vulcanhq/vulcan/internal/cluster/clustertest"
	"github.com/vulcanhq/vulcan/internal/e2b/e2btest"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/sandbox"
	"github.com/vulcanhq/vulcan/internal/sandbox/sandboxtest"
	"github.com/vulcanhq/vulcan/internal/server/servertest"
	"github.com/vulcanhq/vulcan/internal/store"
)

// node is one in-process cluster node: a whole server (fake workload backend, real
// agents for sandboxes) joined to the test's nats-server.
type node struct {
	*servertest.Stack
	id   string
	fake *backendtest.Fake
	c    *client.Client
}

func startNode(t *testing.T, natsURL, id string, sbc sandbox.Config, slots int) *node {
	t.Helper()
	return startNodeWith(t, cluster.Config{URL: natsURL, NodeID: id}, sbc, slots)
}

// startNodeWith starts a node with cc (its timings made short for tests).
func startNodeWith(t *testing.T, cc cluster.Config, sbc sandbox.Config, slots int) *node {
	t.Helper()
	cc.Heartbeat, cc.NodeTTL, cc.AckWait = 200*time.Millisecond, time.Second, 3*time.Second
	fake := &backendtest.Fake{}
	st := servertest.New(t, servertest.Options{
		Engine: engine.Config{MaxConcurrent: slots, QueueSize: 64}, Fake: fake,
		Launcher: sandboxtest.NewAgentLauncher(t), Sandbox: sbc, Cluster: &cc,
	})
	return &node{Stack: st, id: cc.NodeID, fake: fake, c: client.New(st.URL, "")}
}

// waitNodes waits until n sees want live nodes.
func waitNodes(t *testing.T, n *node, want int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		live := 0
		for _, info := range n.Cluster.Nodes() {
			if info.Alive {
				live++
			}
		}
		if live == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s sees %d live nodes, want %d: %+v", n.id, live, want, n.Cluster.Nodes())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func eventually(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func do(t *testing.T, method, url string, body any) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// TestClusterThreeNodes: a sandbox created through A is placed on B (the most room),
// used through C (exec, terminal, files, MCP, list), killed through A; workloads submitted anywhere
// run once each, on whichever nodes have slots; no room anywhere is 429 with nothing
// made.
func TestClusterThreeNodes(t *testing.T) {
	nats := clustertest.Start(t)
	small := sandbox.Config{MaxSandboxes: 1, MemBudgetMB: 1024, CPUBudget: 4}
	a := startNode(t, nats.URL, "node-a", small, 2)
	b := startNode(t, nats.URL, "node-b", sandbox.Config{MaxSandboxes: 2, MemBudgetMB: 4096, CPUBudget: 4}, 2)
	c := startNode(t, nats.URL, "node-c", small, 2)
	for _, n := range []*node{a, b, c} {
		waitNodes(t, n, 3)
	}
	ctx := context.Background()

	// Placement: through A, onto B.
	resp, body := do(t, http.MethodPost, a.URL+"/v1/sandboxes", map[string]any{"template": "python", "resources": map[string]int{"mem_mb": 512}})
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		t.Fatalf("create through A: %d %s", resp.StatusCode, body)
	}
	var sb api.Sandbox
	if err := json.Unmarshal(body, &sb); err != nil {
		t.Fatal(err)
	}
	if got := resp.Header.Get(api.NodeHeader); got != "node-b" {
		t.Fatalf("sandbox served by %q, want node-b (the most free memory)", got)
	}
	if _, err := b.Sandboxes.Get(ctx, sb.ID); err != nil {
		t.Fatalf("node B does not hold the sandbox: %v", err)
	}
	// A create answers once the directory has the sandbox: C finds it at once.
	if loc := c.Cluster.Locate(ctx, "s", sb.ID); !loc.Known || loc.Node != "node-b" || !loc.Alive {
		t.Fatalf("right after the create, C locates the sandbox as %+v", loc)
	}
	if _, err := a.Store.GetSandbox(ctx, sb.ID); err == nil {
		t.Fatal("node A stored the sandbox it placed elsewhere")
	}

	// Exec and files through C.
	var out strings.Builder
	exit, err := c.c.Exec(ctx, sb.ID, api.ProcessRequest{Cmd: "echo hello-from-$((6*7))"}, func(e api.ProcessEvent) {
		if e.Type == "stdout" || e.Stream == "stdout" {
			out.WriteString(e.Data)
		}
	})
	if err != nil || exit.ExitCode == nil || *exit.ExitCode != 0 {
		t.Fatalf("exec through C: %+v %v", exit, err)
	}
	if !strings.Contains(out.String(), "hello-from-42") {
		t.Fatalf("exec through C printed %q", out.String())
	}
	term, err := c.c.OpenTerminal(ctx, sb.ID, 80, 24, "echo pty-$((2+3))")
	if err != nil {
		t.Fatalf("terminal through C: %v", err)
	}
	var screen bytes.Buffer
	if ex, err := term.Copy(ctx, &screen); err != nil || !strings.Contains(screen.String(), "pty-5") {
		t.Fatalf("terminal through C: %+v %v, screen %q", ex, err, screen.String())
	}
	payload := bytes.Repeat([]byte("vulcan cluster "), 40_000) // 600 KB, through two proxies' worth of streaming
	if _, err := c.c.WriteFile(ctx, sb.ID, "/tmp/blob", 0o644, bytes.NewReader(payload)); err != nil {
		t.Fatalf("write through C: %v", err)
	}
	var got bytes.Buffer
	if _, err := a.c.ReadFile(ctx, sb.ID, "/tmp/blob", &got); err != nil || !bytes.Equal(got.Bytes(), payload) {
		t.Fatalf("read back through A: %d bytes, err %v (want %d identical)", got.Len(), err, len(payload))
	}
	// MCP through C, with the official MCP Go SDK: its tools reach the sandbox on B.
	mc := mcp.NewClient(&mcp.Implementation{Name: "cluster-test", Version: "1"}, nil)
	ms, err := mc.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: c.URL + "/mcp"}, nil)
	if err != nil {
		t.Fatalf("MCP through C: %v", err)
	}
	res, err := ms.CallTool(ctx, &mcp.CallToolParams{Name: "sandbox_exec", Arguments: map[string]any{"id": sb.ID, "cmd": "cat /tmp/blob | wc -c"}})
	ms.Close()
	if err != nil || res.IsError {
		t.Fatalf("MCP sandbox_exec through C: %+v %v", res, err)
	}
	var mout struct {
		ExitCode int    `json:"exit_code"`
		Stdout   string `json:"stdout"`
	}
	if b, _ := json.Marshal(res.StructuredContent); json.Unmarshal(b, &mout) != nil || mout.ExitCode != 0 ||
		strings.TrimSpace(mout.Stdout) != strconv.Itoa(len(payload)) {
		t.Fatalf("MCP sandbox_exec through C: %+v, want %d bytes counted", mout, len(payload))
	}
	eventually(t, "C lists the sandbox", 5*time.Second, func() bool {
		l, err := c.c.ListSandboxes(ctx, nil)
		if err != nil {
			return false
		}
		for _, s := range l.Sandboxes {
			if s.ID == sb.ID {
				return true
			}
		}
		return false
	})

	// Capacity: B has one more, A and C one each; the fifth finds no room.
	var made []string
	for i := range 4 {
		resp, body := do(t, http.MethodPost, c.URL+"/v1/sandboxes", map[string]any{"template": "python", "resources": map[string]int{"mem_mb": 256}})
		if resp.StatusCode == http.StatusTooManyRequests {
			if i < 3 {
				t.Fatalf("create %d: 429 with room left: %s", i, body)
			}
			if resp.Header.Get("Retry-After") == "" {
				t.Fatal("429 without Retry-After")
			}
			break
		}
		if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
			t.Fatalf("create %d: %d %s", i, resp.StatusCode, body)
		}
		var s api.Sandbox
		json.Unmarshal(body, &s)
		made = append(made, s.ID)
		// Let the announcements catch up with the new load.
		time.Sleep(600 * time.Millisecond)
	}
	if len(made) != 3 {
		t.Fatalf("made %d more sandboxes, want 3 (then 429)", len(made))
	}
	live := a.Sandboxes.Load().Live + b.Sandboxes.Load().Live + c.Sandboxes.Load().Live
	if live != 4 {
		t.Fatalf("%d sandboxes live in the cluster after the refusal, want 4", live)
	}

	// Kill through A (the owner is B).
	if _, err := a.c.KillSandbox(ctx, sb.ID); err != nil {
		t.Fatalf("kill through A: %v", err)
	}
	eventually(t, "C sees the sandbox killed", 5*time.Second, func() bool {
		s, err := c.c.GetSandbox(ctx, sb.ID)
		return err == nil && s.State == model.SandboxKilled
	})
	for _, id := range made {
		if _, err := b.c.KillSandbox(ctx, id); err != nil {
			t.Fatalf("kill %s through B: %v", id, err)
		}
	}

	// Workloads through every node: each runs exactly once somewhere.
	const n = 45
	ids := make([]string, 0, n)
	for i := range n {
		via := []*node{a, b, c}[i%3]
		w, err := via.c.Submit(ctx, model.Spec{Runtime: model.RuntimePython, Code: fmt.Sprintf("print(%d)", i)})
		if err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
		ids = append(ids, w.ID)
	}
	for i, id := range ids {
		var w *api.Workload
		eventually(t, "workload "+id+" completes", 20*time.Second, func() bool {
			var err error
			w, err = c.c.Get(ctx, id)
			return err == nil && w.Status == model.StatusCompleted
		})
		if want := fmt.Sprintf("print(%d)", i); !strings.Contains(w.Stdout, want) {
			t.Fatalf("workload %d read through C: stdout %q, want %q", i, w.Stdout, want)
		}
	}
	runs := map[string]int{}
	perNode := map[string]int{}
	for _, nd := range []*node{a, b, c} {
		for _, id := range nd.fake.Executed() {
			runs[id]++
			perNode[nd.id]++
		}
	}
	for _, id := range ids {
		if runs[id] != 1 {
			t.Fatalf("workload %s ran %d times", id, runs[id])
		}
	}
	t.Logf("workloads per node: %v", perNode)
	if l, err := a.c.List(ctx, client.ListOptions{Limit: 100}); err != nil || l.Total != n {
		t.Fatalf("A lists %v workloads (err %v), want the cluster's %d", l, err, n)
	}

	// A synchronous run through A answers with the output, wherever it ran.
	w, err := a.c.Run(ctx, model.Spec{Runtime: model.RuntimePython, Code: "print('sync')"})
	if err != nil || w.Status != model.StatusCompleted || !strings.Contains(w.Stdout, "print('sync')") {
		t.Fatalf("sync run through A: %+v %v", w, err)
	}

	// GET /v1/cluster names the nodes.
	resp, body = do(t, http.MethodGet, b.URL+"/v1/cluster", nil)
	var cs api.ClusterStatus
	if resp.StatusCode != 200 || json.Unmarshal(body, &cs) != nil || len(cs.Nodes) != 3 || cs.Self != "node-b" {
		t.Fatalf("cluster status: %d %s", resp.StatusCode, body)
	}
}

// TestClusterQueueNeverRunsTwice races nodes for a flood of queued workloads, with a
// node closing mid-flood: each workload ends exactly once, run by exactly one node.
func TestClusterQueueNeverRunsTwice(t *testing.T) {
	nats := clustertest.Start(t)
	var mu sync.Mutex
	started := map[string]int{}
	mk := func(id string) *node {
		n := startNode(t, nats.URL, id, sandbox.Config{}, 3)
		n.fake.Run = func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
			mu.Lock()
			started[job.WorkloadID]++
			mu.Unlock()
			sink.Line(model.Stdout, job.Spec.Code)
			time.Sleep(time.Duration(len(job.Spec.Code)%7) * time.Millisecond)
			return backend.Result{}, nil
		}
		return n
	}
	a, b, c := mk("q-a"), mk("q-b"), mk("q-c")
	waitNodes(t, a, 3)
	ctx := context.Background()
	const total = 150
	ids := make(chan string, total)
	var wg sync.WaitGroup
	for i := range total {
		if i == total/2 {
			// Node c shuts down mid-flood, cancelling what it runs: what it had
			// started ends there, what it had not goes to a and b.
			wg.Wait()
			c.Shutdown()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			via := []*node{a, b}[i%2]
			if i < total/2 {
				via = []*node{a, b, c}[i%3]
			}
			w, err := via.c.Submit(ctx, model.Spec{Runtime: model.RuntimeNode, Code: fmt.Sprintf("console.log(%d)", i)})
			if err != nil {
				t.Errorf("submit: %v", err)
				return
			}
			ids <- w.ID
		}()
	}
	wg.Wait()
	close(ids)
	var all []string
	for id := range ids {
		all = append(all, id)
	}
	for _, id := range all {
		eventually(t, "workload "+id+" ends", 30*time.Second, func() bool {
			w, _, ok := a.Cluster.Record("w", id)
			return ok && w.Status.Terminal()
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if len(all) != total {
		t.Fatalf("%d of %d submissions admitted", len(all), total)
	}
	completed := 0
	for _, id := range all {
		w, _, _ := a.Cluster.Record("w", id)
		if w.Status == model.StatusCompleted {
			completed++
			if started[id] != 1 {
				t.Fatalf("completed workload %s started %d times", id, started[id])
			}
		} else if started[id] > 1 {
			t.Fatalf("workload %s (%s) started %d times", id, w.Status, started[id])
		}
	}
	t.Logf("%d of %d completed; the rest ended with node c's shutdown", completed, total)
	if completed < total/2 {
		t.Fatalf("only %d of %d completed", completed, total)
	}
}

// TestClusterSurvivesNATSRestart: the nodes reconnect to a restarted nats-server, and
// the cluster takes workloads and serves sandboxes across nodes again.
func TestClusterSurvivesNATSRestart(t *testing.T) {
	nats := clustertest.Start(t)
	a := startNode(t, nats.URL, "r-a", sandbox.Config{MemBudgetMB: 1024}, 2)
	b := startNode(t, nats.URL, "r-b", sandbox.Config{MemBudgetMB: 4096}, 2)
	waitNodes(t, a, 2)
	ctx := context.Background()
	sb, err := a.c.CreateSandbox(ctx, model.SandboxSpec{Template: model.RuntimePython})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	nats.Restart()
	t.Logf("restarted in %v", time.Since(t0))
	eventually(t, "both nodes reconnect", 20*time.Second, func() bool { return a.Cluster.Connected() && b.Cluster.Connected() })
	waitNodes(t, a, 2)
	waitNodes(t, b, 2)
	t.Logf("reconnected in %v", time.Since(t0))
	w, err := a.c.Run(ctx, model.Spec{Runtime: model.RuntimePython, Code: "print('after restart')"})
	if err != nil || w.Status != model.StatusCompleted {
		t.Fatalf("workload after the restart: %+v %v", w, err)
	}
	t.Logf("ran a workload %v after the restart", time.Since(t0))
	exit, err := a.c.Exec(ctx, sb.ID, api.ProcessRequest{Cmd: "true"}, nil)
	if err != nil || exit.ExitCode == nil || *exit.ExitCode != 0 {
		t.Fatalf("exec on B's sandbox through A after the restart: %+v %v", exit, err)
	}
	// A record written while NATS was away reaches the directory once it is back.
	if _, err := a.c.KillSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the kill reaches the directory", 10*time.Second, func() bool {
		_, s, ok := a.Cluster.Record("s", sb.ID)
		return ok && s.State == model.SandboxKilled
	})
}

// TestClusterBytesThroughNodes moves bytes through the cluster's two extra paths and
// compares what arrived with what was sent: a workload's log stream followed through a
// node that does not run it (from while it is queued to its end, random line counts),
// and a spec too large for a NATS message (a 1.5 MB archive, queued in the object
// store), whose archive the running node must receive byte for byte. The runner is slow
// to store what it claims, so a follow forwarded the moment the directory names it
// arrives before the store has the workload. A second process under a live node's id is
// refused.
func TestClusterBytesThroughNodes(t *testing.T) {
	nats := clustertest.Start(t)
	runner := startNode(t, nats.URL, "bytes-run", sandbox.Config{}, 1)
	front := startNode(t, nats.URL, "bytes-front", sandbox.Config{}, 1)
	// The front node takes no work: its one slot is held by a workload that waits for
	// the test's end, so every workload after it runs on the runner.
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	front.fake.Run = func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return backend.Result{}, nil
	}
	runner.fake.Run = func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
		if len(job.Spec.Archive) > 0 {
			sum := sha256.Sum256(job.Spec.Archive)
			sink.Line(model.Stdout, hex.EncodeToString(sum[:]))
			return backend.Result{}, nil
		}
		n, _ := strconv.Atoi(strings.TrimPrefix(job.Spec.Code, "lines:"))
		for i := range n {
			sink.Line(model.Stdout, fmt.Sprintf("line %d of %d %s", i, n, strings.Repeat("x", i%97)))
			if i%50 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		return backend.Result{}, nil
	}
	runner.fake.Probe = func(context.Context) error {
		time.Sleep(150 * time.Millisecond) // between the claim and the store
		return nil
	}
	waitNodes(t, front, 2)
	ctx := context.Background()
	eventually(t, "the front's slot is taken", 20*time.Second, func() bool {
		if front.Engine.Free() == 0 {
			return true
		}
		if _, err := front.c.Submit(ctx, model.Spec{Runtime: model.RuntimePython, Code: "lines:0"}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
		return front.Engine.Free() == 0
	})

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for round := range 4 {
		n := 1 + rng.IntN(3000)
		w, err := front.c.Submit(ctx, model.Spec{Runtime: model.RuntimePython, Code: fmt.Sprintf("lines:%d", n)})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		final, err := front.c.Follow(ctx, w.ID, func(l model.LogLine) { got = append(got, l.Text) })
		if err != nil {
			t.Fatalf("round %d: follow through the front: %v", round, err)
		}
		if ran := runner.fake.Executed(); ran[len(ran)-1] != w.ID {
			t.Fatalf("round %d: the runner did not run %s", round, w.ID)
		}
		if final.Status != model.StatusCompleted || len(got) != n {
			t.Fatalf("round %d: %s with %d lines followed, want completed with %d", round, final.Status, len(got), n)
		}
		for i, line := range got {
			if want := fmt.Sprintf("line %d of %d %s", i, n, strings.Repeat("x", i%97)); line != want {
				t.Fatalf("round %d: line %d is %q, want %q", round, i, line, want)
			}
		}
	}

	archive := randomArchive(t, rng, 1500<<10)
	want := sha256.Sum256(archive)
	w, err := front.c.Run(ctx, model.Spec{Runtime: model.RuntimePython, Archive: archive})
	if err != nil || w.Status != model.StatusCompleted {
		t.Fatalf("archive workload: %+v %v", w, err)
	}
	if strings.TrimSpace(w.Stdout) != hex.EncodeToString(want[:]) {
		t.Fatalf("the running node got an archive hashing %q, want %x", w.Stdout, want)
	}

	_, err = cluster.Join(ctx, cluster.Config{URL: nats.URL, NodeID: "bytes-run", Advertise: "http://127.0.0.1:1",
		Heartbeat: 200 * time.Millisecond, NodeTTL: time.Second}, cluster.Deps{})
	if !errors.Is(err, cluster.ErrNodeIDInUse) {
		t.Fatalf("a second node under a live id joined: %v", err)
	}
}

// randomArchive is a tar.gz with main.py and size bytes of random (incompressible) data.
func randomArchive(t *testing.T, rng *rand.Rand, size int) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	for _, f := range []struct {
		name string
		body []byte
	}{{"main.py", []byte("print('hi')\n")}, {"blob.bin", data}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(f.body)
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

// TestClusterE2BSDK runs the official E2B SDK (JS, pinned) against a node that holds
// none of the sandboxes: its creates are placed on the other node (more memory) and
// every envd call (commands, files, watch) is forwarded there.
func TestClusterE2BSDK(t *testing.T) {
	nats := clustertest.Start(t)
	front := startNode(t, nats.URL, "e2b-front", sandbox.Config{MemBudgetMB: 64}, 2)
	owner := startNode(t, nats.URL, "e2b-owner", sandbox.Config{MemBudgetMB: 8192}, 2)
	waitNodes(t, front, 2)
	e2btest.RunSDK(t, "e2b", front.URL, "any-key", "python")
	if front.Sandboxes.Load().Live != 0 {
		t.Fatalf("the front node holds %d sandboxes", front.Sandboxes.Load().Live)
	}
	made, _, err := owner.Store.ListSandboxes(context.Background(), store.SandboxFilter{})
	if err != nil || len(made) == 0 {
		t.Fatalf("the owner made no sandboxes: %v", err)
	}
	t.Logf("the SDK's %d sandboxes all lived on the owner", len(made))
}
