package acceptance

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/cluster/clustertest"
	"github.com/vulcanhq/vulcan/internal/model"
)

// TestClusterOnRealVMs: three `vulcan serve --nats` processes on loopback (separate data
// dirs) and a real nats-server. A sandbox created through A is placed on B (equal free
// memory everywhere: the id breaks the tie, node-b before node-x and node-y), exec and
// a file of random bytes go through C into B's real VM and back out through A, a
// one-shot workload submitted through C runs in a real VM wherever the queue sends it,
// `vulcan cluster status` shows the three, and the kill through A leaves nothing on B.
func TestClusterOnRealVMs(t *testing.T) {
	requireVMs(t)
	nats := clustertest.Start(t)
	node := func(id string) *server {
		return startServer(t, "", "VULCAN_NATS_URL="+nats.URL, "VULCAN_NODE_ID="+id)
	}
	a, b, c := node("node-x"), node("node-b"), node("node-y")
	ctx := ctxFor(t, 5*time.Minute)
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := a.c.ClusterStatus(ctx)
		if err == nil && len(st.Nodes) == 3 && st.Nodes[0].Alive && st.Nodes[1].Alive && st.Nodes[2].Alive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the three nodes did not see each other: %+v %v", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, a.url+"/v1/sandboxes",
		strings.NewReader(`{"template":"python","resources":{"mem_mb":256}}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var sb api.Sandbox
	json.NewDecoder(resp.Body).Decode(&sb)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || sb.State != model.SandboxRunning {
		t.Fatalf("create through A: %d %+v", resp.StatusCode, sb)
	}
	if got := resp.Header.Get(api.NodeHeader); got != "node-b" {
		t.Fatalf("placed on %q, want node-b", got)
	}
	if len(b.leftovers()) == 0 {
		t.Fatal("node B runs no VM for the sandbox it was given")
	}
	if left := a.leftovers(); len(left) != 0 {
		t.Fatalf("node A runs VMs for a sandbox placed elsewhere: %v", left)
	}

	var out strings.Builder
	exit, err := c.c.Exec(ctx, sb.ID, api.ProcessRequest{Cmd: "uname -n; echo $((6*7))"}, func(e api.ProcessEvent) {
		if e.Type == "stdout" || e.Stream == "stdout" {
			out.WriteString(e.Data)
		}
	})
	if err != nil || exit.ExitCode == nil || *exit.ExitCode != 0 || !strings.Contains(out.String(), "42") {
		t.Fatalf("exec through C: %+v %v %q", exit, err, out.String())
	}
	payload := make([]byte, 300_000)
	rand.Read(payload)
	if _, err := c.c.WriteFile(ctx, sb.ID, "/tmp/payload", 0o644, bytes.NewReader(payload)); err != nil {
		t.Fatalf("write through C: %v", err)
	}
	var back bytes.Buffer
	if _, err := a.c.ReadFile(ctx, sb.ID, "/tmp/payload", &back); err != nil || !bytes.Equal(back.Bytes(), payload) {
		t.Fatalf("read back through A: %d bytes, %v (want the %d written)", back.Len(), err, len(payload))
	}

	w, err := c.c.Run(ctx, model.Spec{Runtime: model.RuntimePython, Code: "print(sum(range(10)))"})
	if err != nil || w.Status != model.StatusCompleted || strings.TrimSpace(w.Stdout) != "45" {
		t.Fatalf("workload through C: %+v %v", w, err)
	}

	status, code := b.vulcan("cluster", "status")
	if code != 0 || !strings.Contains(status, "3 live nodes") || !strings.Contains(status, "node-b *") {
		t.Fatalf("vulcan cluster status on B (exit %d):\n%s", code, status)
	}

	if _, err := a.c.KillSandbox(ctx, sb.ID); err != nil {
		t.Fatalf("kill through A: %v", err)
	}
	got, err := c.c.GetSandbox(ctx, sb.ID)
	if err != nil || got.State != model.SandboxKilled {
		t.Fatalf("the sandbox through C after the kill: %+v %v", got, err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for len(b.leftovers()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("node B left %v after the kill", b.leftovers())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestClusterResumeAnywhere: a sandbox paused on B is stored in the cluster (its saved
// VM in JetStream's object store); B is killed with -9; a resume through A takes the
// sandbox over and runs it on A, with the bytes it held and its processes' files.
func TestClusterResumeAnywhere(t *testing.T) {
	requireVMs(t)
	nats := clustertest.Start(t)
	a := startServer(t, "", "VULCAN_NATS_URL="+nats.URL, "VULCAN_NODE_ID=node-x")
	b := startServer(t, "", "VULCAN_NATS_URL="+nats.URL, "VULCAN_NODE_ID=node-b")
	ctx := ctxFor(t, 5*time.Minute)
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := a.c.ClusterStatus(ctx)
		if err == nil && len(st.Nodes) == 2 && st.Nodes[0].Alive && st.Nodes[1].Alive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the nodes did not see each other: %+v %v", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	sb, err := a.c.CreateSandbox(ctx, model.SandboxSpec{Template: model.RuntimePython, Resources: model.Resources{MemMB: 256}, TimeoutS: 900,
		Env: map[string]string{"VULCAN_KEPT": "set-on-b"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.leftovers()) == 0 {
		t.Fatal("the sandbox did not land on B")
	}
	payload := make([]byte, 200_000)
	rand.Read(payload)
	if _, err := a.c.WriteFile(ctx, sb.ID, "/tmp/kept", 0o644, bytes.NewReader(payload)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.PauseSandbox(ctx, sb.ID); err != nil {
		t.Fatalf("pause through A: %v", err)
	}
	deadline = time.Now().Add(2 * time.Minute)
	for b.metric("vulcan_cluster_paused_stored_total") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("B never stored the saved VM in the cluster")
		}
		time.Sleep(200 * time.Millisecond)
	}
	b.crash()

	// Resuming through A before the cluster has seen B go is served as B's (503); once
	// B's announcement lapses, A takes the sandbox over.
	var resumed *api.Sandbox
	deadline = time.Now().Add(60 * time.Second)
	for {
		resumed, err = a.c.ResumeSandbox(ctx, sb.ID, 0)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("resume through A after B died: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if resumed.State != model.SandboxRunning {
		t.Fatalf("resumed: %+v", resumed)
	}
	if len(a.leftovers()) == 0 {
		t.Fatal("A runs no VM for the sandbox it resumed")
	}
	var back bytes.Buffer
	if _, err := a.c.ReadFile(ctx, sb.ID, "/tmp/kept", &back); err != nil || !bytes.Equal(back.Bytes(), payload) {
		t.Fatalf("the file after the resume on A: %d bytes, %v (want the %d written on B)", back.Len(), err, len(payload))
	}
	// The sandbox's env lives in its guest (a default every process gets), so it comes
	// along in the saved VM although A never knew it.
	var out strings.Builder
	exit, err := a.c.Exec(ctx, sb.ID, api.ProcessRequest{Cmd: "echo kept=$VULCAN_KEPT"}, func(e api.ProcessEvent) {
		if e.Type == "stdout" || e.Stream == "stdout" {
			out.WriteString(e.Data)
		}
	})
	if err != nil || exit.ExitCode == nil || *exit.ExitCode != 0 {
		t.Fatalf("exec after the resume: %+v %v", exit, err)
	}
	if got := strings.TrimSpace(out.String()); got != "kept=set-on-b" {
		t.Fatalf("exec after the resume on A printed %q, want the env set at create (kept=set-on-b)", got)
	}
	if _, err := a.c.KillSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for len(a.leftovers()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("A left %v after the kill", a.leftovers())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
