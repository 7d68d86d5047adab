//go:build linux

package acceptance

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/client"
	"github.com/vulcanhq/vulcan/internal/cluster/clustertest"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/network/nettest"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// TestClusterOnRealVMs: three `vulcan serve --nats` processes (separate data dirs) and a
// real nats-server, all on the loopback of a "host" network namespace this test made;
// each node's bridge and its VMs' namespaces live there too, on a subnet of its own. A
// sandbox created through A is placed on B (equal free memory everywhere: the id breaks
// the tie, node-b before node-x and node-y), with network "host"; exec and a file of
// random bytes go through C into B's real VM and back out through A, and the guest
// fetches a page from its gateway (B's bridge, in the test's namespace); a one-shot
// workload submitted through C runs in a real VM wherever the queue sends it; `vulcan
// cluster status` shows the three; the kill through A leaves nothing on B, its VM's
// namespace included.
func TestClusterOnRealVMs(t *testing.T) {
	requireVMs(t)
	testenv.RequiresRoot(t)
	testenv.RequiresBinary(t, "nsenter")
	host := nettest.HostNS(t)
	dial := nettest.Dialer(host)
	const token = "the-test-namespace-answers"
	ln := nettest.Listen(t, host, "0.0.0.0:0")
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, token) }))
	port := ln.Addr().(*net.TCPAddr).Port
	nats := clustertest.StartIn(t, host, dial)
	plugins := nettest.PluginDir(t)
	node := func(id string, subnet int) *server {
		s := startServerIn(t, host, "", "VULCAN_NATS_URL="+nats.URL, "VULCAN_NODE_ID="+id, "VULCAN_CNI_BIN_DIR="+plugins,
			fmt.Sprintf("VULCAN_NETWORK_SUBNET=10.213.%d.0/24", subnet), fmt.Sprintf("VULCAN_NETWORK_SERVICES=tcp/%d", port))
		s.dialIn(dial)
		return s
	}
	a, b, c := node("node-x", 101), node("node-b", 102), node("node-y", 103)
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
		strings.NewReader(`{"template":"python","resources":{"mem_mb":256},"network":"host"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.http().Do(req)
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
	if ns := vmNamespaces(sb.ID); len(ns) != 1 {
		t.Fatalf("the sandbox's VM namespaces: %v, want one", ns)
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

	// The guest's network: its gateway is B's bridge, in the test's namespace.
	fetch := strings.Replace(guestFetch, "PORT", strconv.Itoa(port), 1)
	if _, err := c.c.WriteFile(ctx, sb.ID, "/tmp/fetch.py", 0o644, strings.NewReader(fetch)); err != nil {
		t.Fatalf("write through C: %v", err)
	}
	out.Reset()
	exit, err = c.c.Exec(ctx, sb.ID, api.ProcessRequest{Cmd: "python3 /tmp/fetch.py"}, func(e api.ProcessEvent) {
		if e.Type == "stdout" || e.Stream == "stdout" || e.Type == "stderr" || e.Stream == "stderr" {
			out.WriteString(e.Data)
		}
	})
	if err != nil || exit.ExitCode == nil || *exit.ExitCode != 0 || strings.TrimSpace(out.String()) != token {
		t.Fatalf("the guest's fetch from its gateway, through C: %+v %v %q", exit, err, out.String())
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
	if ns := vmNamespaces(sb.ID); len(ns) != 0 {
		t.Fatalf("the sandbox's VM namespaces after the kill: %v", ns)
	}
}

// vmNamespaces are the named network namespaces for VMs of id.
func vmNamespaces(id string) []string {
	var out []string
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.Contains(strings.ToLower(e.Name()), strings.ToLower(id)) {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestClusterResumeAnywhere: a sandbox paused on B is stored in the cluster (its saved
// VM in JetStream's object store); B is killed with -9; a resume through A takes the
// sandbox over and runs it on A, with the bytes it held and the env it was created with;
// a reader polling it through A meanwhile never gets "not found".
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

	// Meanwhile a reader polls the sandbox through A: it is never "not found", not even
	// while A has claimed it in the directory and is still fetching its saved VM.
	pollCtx, stopPoll := context.WithCancel(ctx)
	polled := make(chan error, 1)
	go func() {
		n := 0
		for pollCtx.Err() == nil {
			if _, err := a.c.GetSandbox(pollCtx, sb.ID); err != nil && pollCtx.Err() == nil {
				var apiErr *client.Error
				if errors.As(err, &apiErr) && apiErr.Status == http.StatusNotFound {
					polled <- fmt.Errorf("GET %d: %v", n, err)
					return
				}
			}
			n++
			time.Sleep(20 * time.Millisecond)
		}
		polled <- nil
	}()

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
	stopPoll()
	if err := <-polled; err != nil {
		t.Fatalf("the sandbox through A during the takeover: %v", err)
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
