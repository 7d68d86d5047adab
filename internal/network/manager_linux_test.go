package network

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firecracker-microvm/firecracker-go-sdk/cni/vmconf"
	"github.com/vishvananda/netlink"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/network/nettest"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// env is one test's private network world: a host namespace, a state dir and a
// namespace prefix nobody else uses.
type env struct {
	host, state, prefix, bins string
	cfg                       Config
}

func newEnv(t *testing.T) *env {
	t.Helper()
	host := nettest.HostNS(t)
	e := &env{host: host, state: t.TempDir(), prefix: "vt-" + nettest.Suffix() + "-", bins: nettest.PluginDir(t)}
	e.cfg = Config{StateDir: e.state, BinDir: e.bins, Subnet: "10.213.77.0/24", NetNSPrefix: e.prefix, HostNetNS: host}
	return e
}

func (e *env) manager(t *testing.T) *Manager {
	t.Helper()
	m, err := New(context.Background(), e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	if err := m.Prepare(); err != nil {
		t.Fatal(err)
	}
	return m
}

// world is what exists of Vulcan's network: links of the host namespace, namespaces
// with the prefix, leases, per-VM nft rules.
type world struct {
	links, netns, leases, rules []string
}

func (e *env) snapshot(t *testing.T, m *Manager) world {
	t.Helper()
	var w world
	nettest.Do(t, e.host, func() error {
		ls, err := netlink.LinkList()
		for _, l := range ls {
			w.links = append(w.links, l.Attrs().Name)
		}
		return err
	})
	entries, _ := os.ReadDir(NetNSDir)
	for _, en := range entries {
		if strings.HasPrefix(en.Name(), e.prefix) {
			w.netns = append(w.netns, en.Name())
		}
	}
	leases, _ := os.ReadDir(m.files.leaseDir())
	for _, l := range leases {
		if net.ParseIP(l.Name()) != nil {
			w.leases = append(w.leases, l.Name())
		}
	}
	rs, err := m.policy.rulesOf("")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		w.rules = append(w.rules, string(r.UserData))
	}
	sort.Strings(w.links)
	return w
}

func (w world) String() string {
	b, _ := json.Marshal(map[string][]string{"links": w.links, "netns": w.netns, "leases": w.leases, "rules": w.rules})
	return string(b)
}

// nftList is `nft list table <family> vulcan` in the host namespace: the kernel's own
// rendering of the rules compiled here.
func (e *env) nftList(t *testing.T, fam string) string {
	t.Helper()
	testenv.RequiresBinary(t, "nft")
	out, err := exec.Command("nsenter", "--net="+e.host, "nft", "list", "table", fam, "vulcan").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v\n%s", err, out)
	}
	return string(out)
}

func TestAttachDetach(t *testing.T) {
	e := newEnv(t)
	m := e.manager(t)
	before := e.snapshot(t, m)
	ctx := context.Background()

	n, err := m.Attach(ctx, "vm-a", model.NetworkHost)
	if err != nil {
		t.Fatal(err)
	}
	if n.NetNS != m.NetNSPath("vm-a") || n.TAP != TAPName || n.MAC == "" ||
		!n.Gateway.Equal(net.ParseIP("10.213.77.1")) || n.GuestIP.String() != "10.213.77.2/24" {
		t.Fatalf("network %+v (ip %v)", n, n.GuestIP)
	}
	// In the VM's namespace: a persistent TAP without packet info, and redirects both ways.
	nettest.Do(t, n.NetNS, func() error {
		l, err := netlink.LinkByName(TAPName)
		if err != nil {
			return err
		}
		tap, ok := l.(*netlink.Tuntap)
		if !ok || tap.Mode != netlink.TUNTAP_MODE_TAP || tap.Flags&netlink.TUNTAP_NO_PI == 0 || tap.NonPersist {
			t.Errorf("tap0: %T %+v", l, l)
		}
		veth, err := netlink.LinkByName(ContainerIfName)
		if err != nil {
			return err
		}
		if veth.Attrs().HardwareAddr.String() != n.MAC {
			t.Errorf("guest MAC %s, veth MAC %s", n.MAC, veth.Attrs().HardwareAddr)
		}
		for _, pair := range [][2]netlink.Link{{veth, l}, {l, veth}} {
			fs, err := netlink.FilterList(pair[0], netlink.MakeHandle(0xffff, 0))
			if err != nil {
				return err
			}
			if len(fs) != 1 || len(fs[0].(*netlink.U32).Actions) != 1 ||
				fs[0].(*netlink.U32).Actions[0].(*netlink.MirredAction).Ifindex != pair[1].Attrs().Index {
				t.Errorf("%s ingress filters %+v, want one redirect to %s", pair[0].Attrs().Name, fs, pair[1].Attrs().Name)
			}
		}
		return nil
	})
	// CNI CHECK of the whole chain (bridge, host-local, our plugin's real netlink reads).
	nettest.Do(t, e.host, func() error { return m.cni.CheckNetworkList(ctx, m.list, m.rt("vm-a")) })
	// In the host namespace: the veth on the bridge, the lease, the VM's rules.
	during := e.snapshot(t, m)
	if len(during.links) != len(before.links)+1 || len(during.leases) != 1 || during.leases[0] != "10.213.77.2" ||
		len(during.netns) != 1 || len(during.rules) != 2 {
		t.Errorf("after attach: %v (before %v)", during, before)
	}
	lease, _ := os.ReadFile(filepath.Join(m.files.leaseDir(), "10.213.77.2"))
	if !strings.HasPrefix(string(lease), "vm-a") {
		t.Errorf("lease holder %q", lease)
	}
	if s := e.nftList(t, "bridge"); !strings.Contains(s, `ip saddr != 10.213.77.2 drop comment "vulcan:vm=vm-a"`) {
		t.Errorf("bridge table lacks the VM's anti-spoof rule:\n%s", s)
	}

	if err := m.Detach(ctx, "vm-a"); err != nil {
		t.Fatal(err)
	}
	if after := e.snapshot(t, m); after.String() != before.String() {
		t.Errorf("after detach: %v, want %v", after, before)
	}
	// Idempotent: a second detach and a bare CNI DEL of a VM that is gone succeed.
	if err := m.Detach(ctx, "vm-a"); err != nil {
		t.Errorf("second detach: %v", err)
	}
	if err := m.cniDel(ctx, "vm-a"); err != nil {
		t.Errorf("CNI DEL of a gone VM: %v", err)
	}
	if err := m.Detach(context.Background(), "never-attached"); err != nil {
		t.Errorf("detach of an unknown VM: %v", err)
	}
	// Close takes the bridge and the tables away.
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	nettest.Do(t, e.host, func() error {
		if _, err := netlink.LinkByName(DefaultBridge); err == nil {
			t.Error("bridge left after Close")
		}
		return nil
	})
	if out, _ := exec.Command("nsenter", "--net="+e.host, "nft", "list", "tables").CombinedOutput(); strings.Contains(string(out), "vulcan") {
		t.Errorf("tables left after Close: %s", out)
	}
}

// TestEgressRules: the masquerade and forward rules exist for that VM (and only it), as
// the kernel's own nft shows them, and go with it.
func TestEgressRules(t *testing.T) {
	e := newEnv(t)
	m := e.manager(t)
	ctx := context.Background()
	a, err := m.Attach(ctx, "vm-eg", model.NetworkEgress)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Detach(ctx, "vm-eg") })
	h, err := m.Attach(ctx, "vm-h", model.NetworkHost)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Detach(ctx, "vm-h") })
	g := a.GuestIP.IP.String()
	inet := e.nftList(t, "inet")
	for _, want := range []string{
		`ip saddr ` + g + ` oifname != "vulcan0" masquerade comment "vulcan:vm=vm-eg"`,
		`iifname "vulcan0" ip saddr ` + g + ` accept comment "vulcan:vm=vm-eg"`,
		`iifname "vulcan0" ip daddr 10.213.77.1 accept`,
		`oifname "vulcan0" ct state established,related accept`,
	} {
		if !strings.Contains(inet, want) {
			t.Errorf("inet table lacks %q:\n%s", want, inet)
		}
	}
	if strings.Contains(inet, h.GuestIP.IP.String()) {
		t.Errorf("the host-policy VM has inet rules:\n%s", inet)
	}
	if err := m.Detach(ctx, "vm-eg"); err != nil {
		t.Fatal(err)
	}
	if inet := e.nftList(t, "inet"); strings.Contains(inet, "vm-eg") || strings.Contains(inet, "masquerade") {
		t.Errorf("egress rules remain after detach:\n%s", inet)
	}
	if rs, _ := m.policy.rulesOf("vm-h"); len(rs) != 2 {
		t.Errorf("detaching vm-eg touched vm-h's rules: %d left", len(rs))
	}
}

// TestResultReadableByFirecrackerSDK: the chained result is what the SDK's CNI reader
// expects from tc-redirect-tap.
func TestResultReadableByFirecrackerSDK(t *testing.T) {
	e := newEnv(t)
	m := e.manager(t)
	n, err := m.Attach(context.Background(), "vm-fc", model.NetworkEgress)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Detach(context.Background(), "vm-fc") })
	res, err := m.cni.GetNetworkListCachedResult(m.list, m.rt("vm-fc"))
	if err != nil || res == nil {
		t.Fatalf("cached result: %v %v", res, err)
	}
	var conf *vmconf.StaticNetworkConf
	nettest.Do(t, e.host, func() (err error) {
		conf, err = vmconf.StaticNetworkConfFrom(res, "vm-fc")
		return err
	})
	if conf.TapName != n.TAP || conf.NetNSPath != n.NetNS || conf.VMMacAddr != n.MAC ||
		conf.VMIPConfig.Address.String() != n.GuestIP.String() || !conf.VMIPConfig.Gateway.Equal(n.Gateway) {
		t.Errorf("SDK reads %+v, manager %+v", conf, n)
	}
	if got, want := conf.IPBootParam(), "10.213.77.2::10.213.77.1:255.255.255.0:::off:::"; got != want {
		t.Errorf("SDK ip= %q, want %q", got, want)
	}
}

// TestParallelAttach: concurrent VMs get distinct addresses and all release.
func TestParallelAttach(t *testing.T) {
	e := newEnv(t)
	m := e.manager(t)
	before := e.snapshot(t, m)
	ctx := context.Background()
	const n = 6
	ips := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nw, err := m.Attach(ctx, "vm-p"+string(rune('a'+i)), model.NetworkHost)
			if err != nil {
				errs <- err
				return
			}
			ips[i] = nw.GuestIP.IP.String()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	seen := map[string]bool{}
	for _, ip := range ips {
		if ip == "" || seen[ip] {
			t.Errorf("addresses %v not distinct", ips)
		}
		seen[ip] = true
	}
	for i := range n {
		if err := m.Detach(ctx, "vm-p"+string(rune('a'+i))); err != nil {
			t.Error(err)
		}
	}
	if after := e.snapshot(t, m); after.String() != before.String() {
		t.Errorf("after detach: %v, want %v", after, before)
	}
}

// TestNoLeakAfter50Cycles attaches and detaches 50 times (alternating policies and with
// a cancelled context for the detach every few rounds) and logs ADD/DEL times.
func TestNoLeakAfter50Cycles(t *testing.T) {
	e := newEnv(t)
	m := e.manager(t)
	before := e.snapshot(t, m)
	var adds, dels []time.Duration
	for i := range 50 {
		policy := model.NetworkHost
		if i%2 == 1 {
			policy = model.NetworkEgress
		}
		id := "vm-cycle-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		start := time.Now()
		if _, err := m.Attach(context.Background(), id, policy); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		adds = append(adds, time.Since(start))
		dctx, cancel := context.WithCancel(context.Background())
		if i%5 == 0 {
			cancel() // teardown must not inherit cancellation
		}
		start = time.Now()
		if err := m.Detach(dctx, id); err != nil {
			t.Fatalf("cycle %d detach: %v", i, err)
		}
		dels = append(dels, time.Since(start))
		cancel()
	}
	if after := e.snapshot(t, m); after.String() != before.String() {
		t.Errorf("after 50 cycles: %v, want %v", after, before)
	}
	t.Logf("attach (netns + CNI ADD + nft): %s; detach (nft + CNI DEL + netns): %s", stats(adds), stats(dels))
}

func stats(ds []time.Duration) string {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return "median " + s[len(s)/2].Round(time.Millisecond).String() + ", p90 " + s[len(s)*9/10].Round(time.Millisecond).String() +
		", max " + s[len(s)-1].Round(time.Millisecond).String()
}

// TestReclaimAfterCrash: a manager that died with VMs attached (plus a stray namespace,
// a veth on the bridge, a lease and an nft rule nobody recorded) leaves nothing once the
// next manager starts.
func TestReclaimAfterCrash(t *testing.T) {
	e := newEnv(t)
	m := e.manager(t)
	clean := e.snapshot(t, m)
	ctx := context.Background()
	for _, id := range []string{"vm-c1", "vm-c2"} {
		if _, err := m.Attach(ctx, id, model.NetworkEgress); err != nil {
			t.Fatal(err)
		}
	}
	// Leftovers no cache knows about.
	nettest.NewNS(t, e.prefix+"stray")
	nettest.Do(t, e.host, func() error {
		br, err := netlink.LinkByName(DefaultBridge)
		if err != nil {
			return err
		}
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vstray0", MasterIndex: br.Attrs().Index}, PeerName: "vstray1"}
		return netlink.LinkAdd(v)
	})
	if err := os.WriteFile(filepath.Join(m.files.leaseDir(), "10.213.77.200"), []byte("ghost\neth0"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.policy.addVM(vmRules("ghost", model.NetworkEgress, DefaultBridge, "vstray0", net.ParseIP("10.213.77.200"))); err != nil {
		t.Fatal(err)
	}
	crashed := e.snapshot(t, m)
	if len(crashed.netns) != 3 || len(crashed.leases) != 3 || len(crashed.rules) != 12 {
		t.Fatalf("setup: %v", crashed)
	}

	m2 := e.manager(t) // the next start
	if after := e.snapshot(t, m2); after.String() != clean.String() {
		t.Errorf("after reclaim: %v, want %v", after, clean)
	}
	// The reclaimed manager works, with the same VM id.
	if _, err := m2.Attach(ctx, "vm-c1", model.NetworkHost); err != nil {
		t.Fatal(err)
	}
	if w := e.snapshot(t, m2); len(w.leases) != 1 || len(w.netns) != 1 {
		t.Errorf("after a fresh attach: %v", w)
	}
	if err := m2.Detach(ctx, "vm-c1"); err != nil {
		t.Fatal(err)
	}
}
