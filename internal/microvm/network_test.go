package microvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/instance"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/network"
	"github.com/vulcanhq/vulcan/internal/network/nettest"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// TestNetworkQEMU boots real VMs (QEMU microvm, TCG here) with each network policy. All
// traffic stays inside namespaces the test makes: a "host" namespace holding the bridge,
// the NAT and an HTTP server on the gateway address, and a peer namespace behind it
// standing in for "the outside".
func TestNetworkQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	testenv.RequiresRoot(t)
	testenv.RequiresBinary(t, "qemu-system-x86_64")
	testenv.RequiresBinary(t, "nsenter")
	dir := testenv.RequiresImages(t, "python")

	host := nettest.HostNS(t)
	m, err := network.New(context.Background(), network.Config{
		StateDir: t.TempDir(), BinDir: nettest.PluginDir(t), Subnet: "10.213.78.0/24",
		Instance: instance.New(), HostNetNS: host,
		DNS: []net.IP{net.ParseIP("10.214.0.2")}, // the peer's resolver, below
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	if err := m.Prepare(); err != nil {
		t.Fatal(err)
	}
	gw := m.Gateway().String()

	// The host's service, on the bridge address: it answers with the caller's address.
	hostLn := nettest.Listen(t, host, gw+":0")
	go serveRemoteAddr(hostLn, "host")
	// "The outside": a peer namespace, 10.214.0.2, reached from the host over a veth.
	peer := nettest.Peer(t, host, "10.214.0.1/30", "10.214.0.2/30")
	peerLn := nettest.Listen(t, peer, "10.214.0.2:0")
	go serveRemoteAddr(peerLn, "peer")
	// The outside's resolver: every name is the peer.
	nettest.ServeDNS(t, peer, "10.214.0.2:53", net.ParseIP("10.214.0.2"))

	state := shortDir(t)
	reg := prometheus.NewRegistry()
	b, err := New(Config{ImagesDir: dir, StateDir: state, Metrics: reg, BootTimeout: 90 * time.Second, Networker: m},
		ResolveDriver(DriverOptions{VMM: "qemu", Kernel: filepath.Join(dir, "vmlinux")}))
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{b: b, reg: reg, state: state, vmm: "qemu"}

	code := fmt.Sprintf(`import urllib.request
def get(u):
    try:
        return urllib.request.urlopen(u, timeout=4).read().decode()
    except Exception as e:
        return "ERR " + type(e).__name__ + " " + str(e)
print("host=" + get("http://%s/"))
print("peer=" + get("http://%s/"))
print("resolv=" + open("/etc/resolv.conf").read().strip().replace("\n", ";"))
print("byname=" + get("http://outside.test:%d/"))
`, hostLn.Addr(), peerLn.Addr(), peerLn.Addr().(*net.TCPAddr).Port)

	run := func(t *testing.T, policy model.NetworkPolicy) (backend.Result, map[string]string) {
		t.Helper()
		job := h.job(model.RuntimePython, code, func(s *model.Spec) { s.Network = policy })
		res, rec, err := h.run(t, context.Background(), job)
		if err != nil {
			t.Fatalf("execute: %v", err)
		}
		if res.ExitCode != 0 {
			t.Fatalf("exit %d stderr %q", res.ExitCode, rec.text(model.Stderr))
		}
		out := map[string]string{}
		for _, l := range strings.Split(rec.text(model.Stdout), "\n") {
			if k, v, ok := strings.Cut(l, "="); ok {
				out[k] = v
			}
		}
		assertNetworkReleased(t, m)
		return res, out
	}

	t.Run("host", func(t *testing.T) {
		res, out := run(t, model.NetworkHost)
		ip := res.Metadata["guest_ip"]
		if net.ParseIP(ip) == nil || res.Metadata["tap"] != network.TAPName {
			t.Fatalf("metadata %v", res.Metadata)
		}
		if out["host"] != "host saw "+ip {
			t.Errorf("guest → host service: %q, want %q", out["host"], "host saw "+ip)
		}
		if !strings.HasPrefix(out["peer"], "ERR") {
			t.Errorf("guest with policy host reached the outside: %q", out["peer"])
		}
		// A host-only guest is given no resolver it could not reach anyway.
		if out["resolv"] != "" || !strings.HasPrefix(out["byname"], "ERR") {
			t.Errorf("host-only guest: resolv %q, by name %q", out["resolv"], out["byname"])
		}
	})
	t.Run("egress", func(t *testing.T) {
		res, out := run(t, model.NetworkEgress)
		ip := res.Metadata["guest_ip"]
		if out["host"] != "host saw "+ip {
			t.Errorf("guest → host service: %q", out["host"])
		}
		// Masqueraded: the peer sees the host's address on its link, not the guest's.
		if out["peer"] != "peer saw 10.214.0.1" {
			t.Errorf("guest → outside: %q, want %q", out["peer"], "peer saw 10.214.0.1")
		}
		// The resolver the host passed reached the guest, and names resolve through it.
		if out["resolv"] != "nameserver 10.214.0.2" {
			t.Errorf("guest resolv.conf: %q", out["resolv"])
		}
		if out["byname"] != "peer saw 10.214.0.1" {
			t.Errorf("guest → outside by name: %q", out["byname"])
		}
	})
	t.Run("none", func(t *testing.T) {
		res, out := run(t, model.NetworkNone)
		if _, ok := res.Metadata["guest_ip"]; ok {
			t.Errorf("metadata has a guest_ip without a network: %v", res.Metadata)
		}
		if !strings.HasPrefix(out["host"], "ERR") || !strings.HasPrefix(out["peer"], "ERR") {
			t.Errorf("guest without a NIC reached something: %v", out)
		}
	})
}

func serveRemoteAddr(ln net.Listener, who string) {
	_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "%s saw %s", who, ip)
	}))
}

// assertNetworkReleased: no VM namespace, lease or per-VM rule is left.
func assertNetworkReleased(t *testing.T, m *network.Manager) {
	t.Helper()
	entries, _ := os.ReadDir(network.NetNSDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), m.Names().NetNSPrefix) {
			t.Errorf("namespace %s left", e.Name())
		}
	}
	if n, err := m.Attached(); err != nil || n != 0 {
		t.Errorf("%d attachments (leases or rules) left: %v", n, err)
	}
}

// TestNetworkUnavailable: a workload asking for a network where there is none fails
// with ErrUnavailable and the reason, and no VM starts.
func TestNetworkUnavailable(t *testing.T) {
	testenv.RequiresBinary(t, "qemu-system-x86_64")
	dir := testenv.RequiresImages(t, "python")
	reason := fmt.Errorf("%w: CNI plugins bridge missing in /nowhere", network.ErrUnavailable)
	state := shortDir(t)
	b, err := New(Config{ImagesDir: dir, StateDir: state, Metrics: prometheus.NewRegistry(), NetworkUnavailable: reason},
		ResolveDriver(DriverOptions{VMM: "qemu", QEMUAccel: "tcg", Kernel: filepath.Join(dir, "vmlinux")}))
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{b: b, state: state, vmm: "qemu"}
	if caps := b.Capabilities(); caps.Network || !strings.Contains(caps.Details["network_error"], "bridge missing") {
		t.Errorf("capabilities %+v", caps)
	}
	for _, p := range []model.NetworkPolicy{model.NetworkHost, model.NetworkEgress} {
		res, _, err := h.run(t, context.Background(), h.job(model.RuntimePython, "print(1)", func(s *model.Spec) { s.Network = p }))
		if !errors.Is(err, backend.ErrUnavailable) || !strings.Contains(err.Error(), "bridge missing") {
			t.Errorf("%s: err %v, want ErrUnavailable with the reason", p, err)
		}
		if res.Metadata["vmm_pid"] != "" {
			t.Errorf("%s: a VMM started: %v", p, res.Metadata)
		}
	}
}
