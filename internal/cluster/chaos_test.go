package cluster_test

import (
	"bufio"
	"bytes"
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
	"github.com/vulcanhq/vulcan/internal/images"
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
// Sandboxes are in-process agents that pause into <data>/paused.
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
		if n, ok := strings.CutPrefix(job.Spec.Code, "out:"); ok {
			lines, _ := strconv.Atoi(n)
			for i := range lines {
				sink.Line(model.Stdout, outLine(i))
			}
			return backend.Result{}, nil
		}
		ms, _ := strconv.Atoi(strings.TrimPrefix(job.Spec.Code, "sleep:"))
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
			return backend.Result{}, ctx.Err()
		}
		sink.Line(model.Stdout, "slept "+strconv.Itoa(ms))
		return backend.Result{}, nil
	}}
	// A resume holds for ever while <data>/hold-resume exists, once it has said so in
	// <data>/resuming: the node can be killed mid-takeover.
	launcher := sandboxtest.NewAgentLauncher(t)
	launcher.BeforeResume = func(ctx context.Context, id string) error {
		if _, err := os.Stat(filepath.Join(data, "hold-resume")); err != nil {
			return nil
		}
		if err := os.WriteFile(filepath.Join(data, "resuming"), []byte(id), 0o644); err != nil {
			return err
		}
		<-ctx.Done()
		return ctx.Err()
	}
	// VULCAN_HELPER_TEMPLATES (comma-separated) are the templates the node announces, from
	// an images dir of empty stand-ins (its sandboxes are agents: they need no image).
	imagesDir := ""
	if list := os.Getenv("VULCAN_HELPER_TEMPLATES"); list != "" {
		imagesDir = filepath.Join(data, "images")
		if err := os.MkdirAll(imagesDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, tpl := range strings.Split(list, ",") {
			rt := model.Runtime(tpl)
			os.WriteFile(filepath.Join(imagesDir, images.RootFSFile(rt)), nil, 0o644)
			os.WriteFile(filepath.Join(imagesDir, images.RootFSManifestFile(rt)), []byte(`{"runtime":"`+tpl+`"}`), 0o644)
		}
	}
	s := servertest.New(t, servertest.Options{
		Engine: engine.Config{MaxConcurrent: 2, QueueSize: 16}, Fake: fake, Store: st, ImagesDir: imagesDir,
		Launcher: launcher, Sandbox: sandbox.Config{MemBudgetMB: 2048, PausedDir: filepath.Join(data, "paused")},
		Cluster: &cluster.Config{URL: os.Getenv("VULCAN_HELPER_NATS"), NodeID: os.Getenv("VULCAN_HELPER_ID"),
			Heartbeat: 200 * time.Millisecond, NodeTTL: time.Second, AckWait: 3 * time.Second},
	})
	fmt.Printf("READY %s\n", s.URL)
	select {} // until killed
}

// outLine is line i of an "out:N" workload's stdout (64 bytes with its newline).
func outLine(i int) string { return fmt.Sprintf("line %08d %s", i, strings.Repeat("x", 49)) }

func outText(lines int) string {
	var b strings.Builder
	for i := range lines {
		b.WriteString(outLine(i) + "\n")
	}
	return b.String()
}

type proc struct {
	id, data, url string
	cmd           *exec.Cmd
}

func startProc(t *testing.T, natsURL, id, data string, env ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperNode$", "-test.v")
	cmd.Env = append(append(os.Environ(), "VULCAN_HELPER_NODE="+data, "VULCAN_HELPER_NATS="+natsURL, "VULCAN_HELPER_ID="+id), env...)
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

	// A sandbox on the victim.
	sb := sandboxOn(t, v)

	// Workloads that end before the kill, small and large output; those the victim ran
	// are read through another node after it dies.
	outputs := map[string]int{} // id → lines
	for i := range 16 {
		lines := 10 // 640 bytes: the record keeps it
		if i%2 == 1 {
			lines = 2000 // 128 KB: over the record's cap, only the node has it
		}
		w, err := ca.Run(ctx, model.Spec{Runtime: model.RuntimePython, Code: "out:" + strconv.Itoa(lines)})
		if err != nil || w.Status != model.StatusCompleted || w.Stdout != outText(lines) {
			t.Fatalf("an out:%d workload: %v %v", lines, w, err)
		}
		outputs[w.ID] = lines
	}
	ranOnVictim := map[string]bool{}
	for _, id := range v.started(t) {
		ranOnVictim[id] = true
	}
	if len(ranOnVictim) == 0 {
		t.Fatal("none of 16 workloads ran on the victim")
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
	eventually(t, "the victim runs two", 20*time.Second, func() bool { return len(v.started(t)) == len(ranOnVictim)+2 })
	var onVictim []string
	for _, id := range v.started(t) {
		if !ranOnVictim[id] {
			onVictim = append(onVictim, id)
		}
	}
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
	// What the victim had finished is read through another node: the output the record
	// kept, or a clear word that its node holds it.
	for id, lines := range outputs {
		if !ranOnVictim[id] {
			continue
		}
		resp, body := do(t, http.MethodGet, a.url+"/v1/workloads/"+id, nil)
		var w api.Workload
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &w) != nil || w.Status != model.StatusCompleted {
			t.Fatalf("the victim's finished workload %s through A: %d %s", id, resp.StatusCode, body)
		}
		switch want := outText(lines); {
		case len(want) <= 32<<10 && (w.Stdout != want || w.Truncated || w.OutputOn != ""):
			t.Errorf("small output of %s after its node died: %d bytes, truncated %v, output_on %q; want its %d bytes", id, len(w.Stdout), w.Truncated, w.OutputOn, len(want))
		case len(want) > 32<<10 && (w.Stdout != "" || !w.Truncated || w.OutputOn != v.id):
			t.Errorf("large output of %s after its node died: %d bytes, truncated %v, output_on %q; want none, truncated, on %s", id, len(w.Stdout), w.Truncated, w.OutputOn, v.id)
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
	if err != nil || l.Total != len(ids)+len(outputs) {
		t.Fatalf("after the rejoin the cluster lists %v workloads (err %v), want %d", l, err, len(ids)+len(outputs))
	}
	if len(v2.started(t)) != len(ranOnVictim)+2 {
		t.Fatalf("the restarted victim started workloads again: %v", v2.started(t))
	}
	// Back, it serves the whole output of what it ran.
	for id, lines := range outputs {
		if ranOnVictim[id] {
			w, err := ca.Get(ctx, id)
			if err != nil || w.Stdout != outText(lines) || w.Truncated || w.OutputOn != "" {
				t.Fatalf("workload %s through A after its node rejoined: %d bytes, truncated %v, output_on %q, %v", id, len(w.Stdout), w.Truncated, w.OutputOn, err)
			}
		}
	}
	w, err = client.New(v2.url, "").Run(ctx, model.Spec{Runtime: model.RuntimePython, Code: "sleep:10"})
	if err != nil || w.Status != model.StatusCompleted {
		t.Fatalf("a workload through the rejoined node: %+v %v", w, err)
	}
}

// sandboxOn creates a sandbox on p itself (a forwarded create is served where it lands).
func sandboxOn(t *testing.T, p *proc) api.Sandbox {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, p.url+"/v1/sandboxes", strings.NewReader(`{"template":"python","timeout_s":600}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(cluster.ForwardedHeader, "test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sb api.Sandbox
	json.NewDecoder(resp.Body).Decode(&sb)
	if resp.StatusCode != http.StatusCreated || sb.ID == "" {
		t.Fatalf("sandbox on %s: %d", p.id, resp.StatusCode)
	}
	return sb
}

// untilOK retries fn until it succeeds, failing the test with its last error after d: a
// call about a dead node's sandbox answers 503 until the cluster has seen the node go.
func untilOK(t *testing.T, what string, d time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// pauseStored pauses sandbox id through c and waits until its owner has stored the saved
// VM in the cluster.
func pauseStored(t *testing.T, c *client.Client, owner *proc, id string) {
	t.Helper()
	if _, err := c.PauseSandbox(context.Background(), id); err != nil {
		t.Fatalf("pause: %v", err)
	}
	eventually(t, "the saved VM stored in the cluster", 20*time.Second, func() bool {
		return metricValue(t, owner.url, "vulcan_cluster_paused_stored_total") >= 1
	})
}

// servedBy GETs the sandbox through p and returns it with the node that served it.
func servedBy(t *testing.T, p *proc, id string) (api.Sandbox, string) {
	t.Helper()
	resp, body := do(t, http.MethodGet, p.url+"/v1/sandboxes/"+id, nil)
	var sb api.Sandbox
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &sb) != nil {
		t.Fatalf("GET the sandbox through %s: %d %s", p.id, resp.StatusCode, body)
	}
	return sb, resp.Header.Get("X-Vulcan-Node")
}

// TestClusterTakeoverDies: a paused sandbox's node dies; the node a resume reaches takes
// the sandbox over and is killed -9 in the middle of resuming it. The sandbox is not
// lost: a resume through the third node takes it over from what the cluster keeps (the
// record, the saved VM in the object store) and it runs there with its files. The node
// that died mid-takeover restarts on its data and neither claims the sandbox back nor
// clobbers its record; calls through it reach the sandbox where it runs.
func TestClusterTakeoverDies(t *testing.T) {
	nats := clustertest.Start(t)
	dir := t.TempDir()
	owner := startProc(t, nats.URL, "take-o", filepath.Join(dir, "o"))
	taker := startProc(t, nats.URL, "take-t", filepath.Join(dir, "t"))
	third := startProc(t, nats.URL, "take-z", filepath.Join(dir, "z"))
	eventually(t, "three live nodes", 20*time.Second, func() bool { return liveNodes(clusterStatus(t, third.url)) == 3 })
	ctx := context.Background()
	ct, cz := client.New(taker.url, ""), client.New(third.url, "")

	sb := sandboxOn(t, owner)
	payload := make([]byte, 300_000)
	for i := range payload {
		payload[i] = byte(i*7 + i/251)
	}
	if _, err := cz.WriteFile(ctx, sb.ID, "kept", 0o644, bytes.NewReader(payload)); err != nil {
		t.Fatal(err)
	}
	pauseStored(t, ct, owner, sb.ID)
	owner.kill()

	// The taker holds its resume; it is killed there.
	if err := os.WriteFile(filepath.Join(taker.data, "hold-resume"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		for rctx.Err() == nil { // 503 until the cluster has seen the owner go
			if _, err := ct.ResumeSandbox(rctx, sb.ID, 0); err == nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	eventually(t, "the taker resuming the sandbox", 30*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(taker.data, "resuming"))
		return err == nil
	})
	taker.kill()
	stop()

	// The third node takes it over once the taker's announcement lapses.
	var resumed *api.Sandbox
	untilOK(t, "resume through the third node after the taker died mid-resume", 30*time.Second, func() (err error) {
		resumed, err = cz.ResumeSandbox(ctx, sb.ID, 0)
		return err
	})
	if resumed.State != model.SandboxRunning {
		t.Fatalf("resumed: %+v", resumed)
	}
	var back bytes.Buffer
	if _, err := cz.ReadFile(ctx, sb.ID, "kept", &back); err != nil || !bytes.Equal(back.Bytes(), payload) {
		t.Fatalf("the file after the takeover: %d bytes, %v (want the %d written)", back.Len(), err, len(payload))
	}

	// The taker comes back on its data: the sandbox stays the third node's.
	os.Remove(filepath.Join(taker.data, "hold-resume"))
	t2 := startProc(t, nats.URL, "take-t", taker.data)
	eventually(t, "two live nodes", 20*time.Second, func() bool { return liveNodes(clusterStatus(t, t2.url)) == 2 })
	time.Sleep(1500 * time.Millisecond) // a sync and a few reap passes
	for _, p := range []*proc{t2, third} {
		got, node := servedBy(t, p, sb.ID)
		if got.State != model.SandboxRunning || node != third.id {
			t.Fatalf("after the taker's restart, through %s: %s on %q (%+v), want running on %s", p.id, got.State, node, got, third.id)
		}
	}
	if _, err := os.Stat(filepath.Join(taker.data, "paused", sb.ID)); !os.IsNotExist(err) {
		t.Errorf("the restarted taker keeps the saved VM of a sandbox the third node runs: %v", err)
	}
	back.Reset()
	if _, err := client.New(t2.url, "").ReadFile(ctx, sb.ID, "kept", &back); err != nil || !bytes.Equal(back.Bytes(), payload) {
		t.Fatalf("the file through the restarted taker: %d bytes, %v", back.Len(), err)
	}
	if k, err := client.New(t2.url, "").KillSandbox(ctx, sb.ID); err != nil || k.State != model.SandboxKilled {
		t.Fatalf("kill through the restarted taker: %+v %v", k, err)
	}
}

// metricValue is the sum of a metric's series on a node's /metrics.
func metricValue(t *testing.T, url, name string) float64 {
	t.Helper()
	resp, body := do(t, http.MethodGet, url+"/metrics", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	sum := 0.0
	for _, l := range strings.Split(string(body), "\n") {
		if rest, ok := strings.CutPrefix(l, name); ok && (strings.HasPrefix(rest, " ") || strings.HasPrefix(rest, "{")) {
			f := strings.Fields(l)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// TestClusterKillPausedOfDeadNode: a paused sandbox whose node is gone can be killed
// through any node (its record ends killed, its stored saved VM goes, a resume is then
// refused), and its node, back on its data, ends its own copy and drops its saved VM.
func TestClusterKillPausedOfDeadNode(t *testing.T) {
	nats := clustertest.Start(t)
	dir := t.TempDir()
	owner := startProc(t, nats.URL, "kp-o", filepath.Join(dir, "o"))
	other := startProc(t, nats.URL, "kp-z", filepath.Join(dir, "z"))
	eventually(t, "two live nodes", 20*time.Second, func() bool { return liveNodes(clusterStatus(t, other.url)) == 2 })
	ctx := context.Background()
	cz := client.New(other.url, "")
	sb, viaE2B := sandboxOn(t, owner), sandboxOn(t, owner)
	pauseStored(t, cz, owner, sb.ID)
	if _, err := cz.PauseSandbox(ctx, viaE2B.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "both saved VMs stored", 20*time.Second, func() bool {
		return metricValue(t, owner.url, "vulcan_cluster_paused_stored_total") >= 2
	})
	owner.kill()

	var killed *api.Sandbox
	untilOK(t, "kill through the other node after the owner died", 20*time.Second, func() (err error) {
		killed, err = cz.KillSandbox(ctx, sb.ID)
		return err
	})
	if killed.State != model.SandboxKilled {
		t.Fatalf("killed: %+v", killed)
	}
	if got, err := cz.GetSandbox(ctx, sb.ID); err != nil || got.State != model.SandboxKilled {
		t.Fatalf("after the kill: %+v %v", got, err)
	}
	if _, err := cz.ResumeSandbox(ctx, sb.ID, 0); err == nil {
		t.Fatal("a killed sandbox resumed")
	}
	// E2B's kill (the SDK's Sandbox.kill) of the other: 204, and it is killed.
	req, _ := http.NewRequest(http.MethodDelete, other.url+"/sandboxes/"+viaE2B.ID, nil)
	req.Header.Set("X-API-Key", "e2b_test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("E2B kill of a paused sandbox whose node is gone: %d", resp.StatusCode)
	}
	if got, err := cz.GetSandbox(ctx, viaE2B.ID); err != nil || got.State != model.SandboxKilled {
		t.Fatalf("after the E2B kill: %+v %v", got, err)
	}

	if _, err := os.Stat(filepath.Join(owner.data, "paused", sb.ID, "paused.json")); err != nil {
		t.Fatalf("the dead owner's saved VM: %v", err)
	}
	o2 := startProc(t, nats.URL, "kp-o", owner.data)
	eventually(t, "two live nodes again", 20*time.Second, func() bool { return liveNodes(clusterStatus(t, other.url)) == 2 })
	eventually(t, "the owner ends its copy", 10*time.Second, func() bool {
		got, node := servedBy(t, o2, sb.ID)
		_, err := os.Stat(filepath.Join(owner.data, "paused", sb.ID))
		return got.State == model.SandboxKilled && node == o2.id && os.IsNotExist(err)
	})
	if _, err := client.New(o2.url, "").ResumeSandbox(ctx, sb.ID, 0); err == nil {
		t.Fatal("the returned owner resumed a sandbox the cluster killed")
	}
}

// TestClusterResumeWhereTheTemplateIs: a resume that reaches a node without the paused
// sandbox's template is sent on to a live node that has it, which takes the sandbox over
// (a node without the template would claim a sandbox it cannot run, and keep it).
func TestClusterResumeWhereTheTemplateIs(t *testing.T) {
	nats := clustertest.Start(t)
	dir := t.TempDir()
	owner := startProc(t, nats.URL, "rt-o", filepath.Join(dir, "o"), "VULCAN_HELPER_TEMPLATES=python,node")
	nodeOnly := startProc(t, nats.URL, "rt-n", filepath.Join(dir, "n"), "VULCAN_HELPER_TEMPLATES=node")
	withPython := startProc(t, nats.URL, "rt-p", filepath.Join(dir, "p"), "VULCAN_HELPER_TEMPLATES=python")
	eventually(t, "three live nodes", 20*time.Second, func() bool { return liveNodes(clusterStatus(t, nodeOnly.url)) == 3 })
	ctx := context.Background()
	cn := client.New(nodeOnly.url, "")
	sb := sandboxOn(t, owner)
	if _, err := cn.WriteFile(ctx, sb.ID, "kept", 0o644, strings.NewReader("python lives here")); err != nil {
		t.Fatal(err)
	}
	pauseStored(t, cn, owner, sb.ID)
	owner.kill()
	untilOK(t, "resume through the node without python", 20*time.Second, func() error {
		_, err := cn.ResumeSandbox(ctx, sb.ID, 0)
		return err
	})
	for _, p := range []*proc{nodeOnly, withPython} {
		got, node := servedBy(t, p, sb.ID)
		if got.State != model.SandboxRunning || node != withPython.id {
			t.Fatalf("through %s: %s on %q, want running on %s (the node with python)", p.id, got.State, node, withPython.id)
		}
	}
	var back strings.Builder
	if _, err := cn.ReadFile(ctx, sb.ID, "kept", &back); err != nil || back.String() != "python lives here" {
		t.Fatalf("the file after the takeover: %q %v", back.String(), err)
	}
}
