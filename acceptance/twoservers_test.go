//go:build linux

package acceptance

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/instance"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/network"
	"github.com/vulcanhq/vulcan/internal/network/nettest"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// guestHold is python that finds its gateway (its server's bridge address), fetches the
// test's page there ("wait" until the test releases it, then "go"), tries the other
// server's gateway once, and polls until released: a VM whose network must keep working
// for as long as the test says.
const guestHold = `import socket, struct, time, urllib.request
gw = None
for line in open('/proc/net/route').read().splitlines()[1:]:
    f = line.split()
    if f[1] == '00000000':
        gw = socket.inet_ntoa(struct.pack('<L', int(f[2], 16)))
def get(host):
    try:
        return urllib.request.urlopen('http://%s:PORT/' % host, timeout=3).read().decode()
    except Exception as e:
        return 'ERR ' + type(e).__name__
print('before', get(gw), flush=True)
print('other', get('OTHER'), flush=True)
r = ''
for i in range(500):
    r = get(gw)
    if r == 'go':
        break
    time.sleep(0.5)
print('after', r, flush=True)
`

// TestTwoServersOneHost (issue 11, "host state that is not ours"): two `vulcan serve`
// processes on one host (one private host namespace; distinct data dirs, ports and
// subnets), each with a running VM with a network. One is killed with -9 and restarted on
// its data dir: it reclaims its own orphans (VMM, namespace, veth, lease) and nothing of
// the other's, whose VM keeps its namespace, bridge port and nft rules, still reaches its
// gateway afterwards, and completes. Neither server's guests reach the other's gateway.
func TestTwoServersOneHost(t *testing.T) {
	requireVMs(t)
	testenv.RequiresRoot(t)
	testenv.RequiresBinary(t, "nsenter")
	testenv.RequiresBinary(t, "nft")
	host := nettest.HostNS(t)
	plugins := nettest.PluginDir(t)
	// The test's page, on every address of the host namespace; each server lists its port
	// as a gateway service (guests reach no other host port).
	var released atomic.Bool
	ln := nettest.Listen(t, host, "0.0.0.0:0")
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if released.Load() {
			fmt.Fprint(w, "go")
		} else {
			fmt.Fprint(w, "wait")
		}
	}))
	port := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
	envA := []string{"VULCAN_CNI_BIN_DIR=" + plugins, "VULCAN_NETWORK_SUBNET=10.213.91.0/24", "VULCAN_NETWORK_SERVICES=tcp/" + port}
	envB := []string{"VULCAN_CNI_BIN_DIR=" + plugins, "VULCAN_NETWORK_SUBNET=10.213.92.0/24", "VULCAN_NETWORK_SERVICES=tcp/" + port}
	a := startServerIn(t, host, "", envA...)
	b := startServerIn(t, host, "", envB...)
	idA, idB := instanceID(t, a), instanceID(t, b)
	if idA == idB {
		t.Fatalf("both servers are instance %s", idA)
	}
	namesA, namesB := network.NamesFor(idA), network.NamesFor(idB)
	code := func(other string) string {
		return strings.NewReplacer("PORT", port, "OTHER", other).Replace(guestHold)
	}
	submit := func(s *server, policy model.NetworkPolicy, other string) string {
		out, exit := s.vulcan("run", "--async", "--runtime", "python", "--network", string(policy), "--timeout", "600", "--code", code(other))
		if exit != 0 {
			t.Fatalf("submit: exit %d: %s", exit, out)
		}
		return strings.TrimSpace(out)
	}
	wa := submit(a, model.NetworkHost, "10.213.92.1")
	wb := submit(b, model.NetworkEgress, "10.213.91.1")
	for _, w := range []struct {
		s  *server
		id string
	}{{a, wa}, {b, wb}} {
		// Both fetches done: its own gateway answered, the other server's is out of reach.
		if out := waitLines(t, w.s, w.id, 2); !strings.Contains(out, "stdout before wait\n") || !strings.Contains(out, "stdout other ERR") {
			t.Fatalf("workload %s before the crash:\n%s", w.id, out)
		}
	}
	nsA := filepath.Join(network.NetNSDir, namesA.NetNS(wa))
	nsB := filepath.Join(network.NetNSDir, namesB.NetNS(wb))
	bBefore := hostState(t, host, b, namesB, wb)
	for _, p := range []string{nsA, nsB} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("VM namespace: %v", err)
		}
	}
	// bridge: source check, no IPv6, no port-to-port; inet: the jump, the masquerade and
	// the VM's egress chain.
	if !strings.Contains(bBefore, "inet ") || strings.Contains(bBefore, "inet 0 rule") || !strings.Contains(bBefore, "bridge 3 rule") || !strings.Contains(bBefore, "ports [veth") ||
		!strings.Contains(bBefore, "netns true") {
		t.Fatalf("b's VM has no rules or port: %s", bBefore)
	}

	a.crash()
	if len(a.leftovers()) == 0 {
		t.Fatal("a's VM died with its server: the restart has no orphan to reclaim")
	}
	restart := time.Now()
	a2 := startServerIn(t, host, a.dataDir, envA...)
	restarted := time.Since(restart)
	if id := instanceID(t, a2); id != idA {
		t.Fatalf("a came back as instance %s, was %s", id, idA)
	}

	// a reclaimed its own: the VMM and its state, the namespace, the veth, the lease.
	if w := status(t, a2, wa); w.Status != model.StatusFailed || !strings.Contains(w.Error, "restart") {
		t.Errorf("a's unfinished workload after the restart: %s %q", w.Status, w.Error)
	}
	if left := a2.leftovers(); len(left) != 0 {
		t.Errorf("a's orphans after its restart: %v", left)
	}
	if _, err := os.Stat(nsA); !os.IsNotExist(err) {
		t.Errorf("a's VM namespace %s after its restart: %v", nsA, err)
	}
	if got := hostState(t, host, a2, namesA, wa); !strings.Contains(got, "ports [] ") || !strings.Contains(got, "leases []") {
		t.Errorf("a after its restart: %s", got)
	}
	// b lost nothing, and its VM is still running.
	if got := hostState(t, host, b, namesB, wb); got != bBefore {
		t.Errorf("b after a's restart:\n%s\nwant:\n%s", got, bBefore)
	}
	if w := status(t, b, wb); w.Status != model.StatusRunning {
		t.Errorf("b's workload after a's restart: %s %q", w.Status, w.Error)
	}

	released.Store(true)
	wB := waitDone(t, b, wb)
	if wB.Status != model.StatusCompleted || !held(wB.Stdout, "wait") {
		t.Errorf("b's VM: %s exit %v stdout %q stderr %q error %q", wB.Status, wB.ExitCode, wB.Stdout, wB.Stderr, wB.Error)
	}
	// The restarted a works again beside b.
	out, exit := a2.vulcan("run", "--runtime", "python", "--network", "host", "--timeout", "300", "--code", code("10.213.92.1"))
	if exit != 0 || !held(out, "go") {
		t.Errorf("a's VM after its restart: exit %d output %q", exit, out)
	}
	for _, s := range []*server{a2, b} {
		if left := s.leftovers(); len(left) != 0 {
			t.Errorf("left behind: %v", left)
		}
	}
	if _, err := os.Stat(nsB); !os.IsNotExist(err) {
		t.Errorf("b's VM namespace after it finished: %v", err)
	}

	a2.stop()
	var reclaimed []string
	for _, l := range strings.Split(a2.logs.String(), "\n") {
		if strings.Contains(l, "reclaimed") {
			reclaimed = append(reclaimed, l[strings.Index(l, "msg="):])
		}
	}
	t.Logf("instances a=%s b=%s; a killed -9 and back in %s; b's VM ran %d ms through it; a's restart: %s; b before and after: %s",
		idA, idB, restarted.Round(time.Millisecond), wB.DurationMS, strings.Join(reclaimed, "; "), bBefore)
}

// held reports whether out is guestHold's output: the first fetch answered first, the
// other server's gateway unreachable, the last fetch answered "go".
func held(out, first string) bool {
	l := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	return len(l) == 3 && l[0] == "before "+first && strings.HasPrefix(l[1], "other ERR") && l[2] == "after go"
}

// instanceID is the server's id as kept in its data dir.
func instanceID(t *testing.T, s *server) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dataDir, instance.FileName))
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(string(b))
	if err := instance.Check(id); err != nil {
		t.Fatal(err)
	}
	return id
}

// hostState is what exists on the host of one server's network, as the kernel shows it:
// its bridge's ports, its nft tables with the per-VM rules of vm, the namespace of vm and
// its lease files.
func hostState(t *testing.T, host string, s *server, n network.Names, vm string) string {
	t.Helper()
	var ports []string
	bridge := "bridge " + n.Bridge
	nettest.Do(t, host, func() error {
		br, err := netlink.LinkByName(n.Bridge)
		if err != nil {
			bridge += " absent"
			return nil
		}
		links, err := netlink.LinkList()
		for _, l := range links {
			if l.Attrs().MasterIndex == br.Attrs().Index {
				ports = append(ports, l.Attrs().Name)
			}
		}
		return err
	})
	sort.Strings(ports)
	var tables []string
	for _, fam := range []string{"inet", "bridge"} {
		out, err := exec.Command("nsenter", "--net="+host, "nft", "list", "table", fam, n.Table).CombinedOutput()
		if err != nil {
			tables = append(tables, fam+" absent")
			continue
		}
		rules := strings.Count(string(out), `comment "vulcan:vm=`+vm+`"`)
		tables = append(tables, fmt.Sprintf("%s %d rule vulcan:vm=%s", fam, rules, vm))
	}
	_, nsErr := os.Stat(filepath.Join(network.NetNSDir, n.NetNS(vm)))
	leases, _ := filepath.Glob(filepath.Join(s.dataDir, "cni", "ipam", n.Network, "*.*.*.*"))
	for i := range leases {
		leases[i] = filepath.Base(leases[i])
	}
	return fmt.Sprintf("%s ports %v tables %v netns %v leases %v", bridge, ports, tables, nsErr == nil, leases)
}

// status is the workload as the server reports it (through the CLI, which runs in the
// server's namespace).
func status(t *testing.T, s *server, id string) *api.Workload {
	t.Helper()
	out, exit := s.vulcan("status", "--json", id)
	if exit != 0 {
		t.Fatalf("status %s: exit %d: %s", id, exit, out)
	}
	var w api.Workload
	if err := json.Unmarshal([]byte(out), &w); err != nil {
		t.Fatalf("status %s: %v: %s", id, err, out)
	}
	return &w
}

// waitLines waits until the workload has printed n lines on stdout and returns its logs
// (as `vulcan logs` prints them).
func waitLines(t *testing.T, s *server, id string, n int) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		out, _ := s.vulcan("logs", id)
		if strings.Count(out, " stdout ") >= n {
			return out
		}
		if w := status(t, s, id); w.Status.Terminal() || time.Now().After(deadline) {
			t.Fatalf("workload %s (%s, error %q) has not printed %d lines; logs:\n%s", id, w.Status, w.Error, n, out)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitDone waits for the workload to end.
func waitDone(t *testing.T, s *server, id string) *api.Workload {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		w := status(t, s, id)
		if w.Status.Terminal() {
			return w
		}
		if time.Now().After(deadline) {
			t.Fatalf("workload %s still %s", id, w.Status)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
