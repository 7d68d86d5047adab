package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/firecracker-microvm/firecracker-go-sdk/cni/vmconf"
	"github.com/vishvananda/netlink"

	"github.com/vulcanhq/vulcan/internal/instance"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/network/nettest"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// env is one test's private network world: a host namespace, a state dir and an
// instance id nobody else uses, which names the bridge, tables and namespaces.
type env struct {
	host, state, bins string
	names             Names
	cfg               Config
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvIn(t, nettest.HostNS(t), "10.213.77.0/24")
}

// newEnvIn is another server's world in the same host namespace: its own instance id,
// state dir and subnet.
func newEnvIn(t *testing.T, host, subnet string) *env {
	t.Helper()
	id := instance.New()
	e := &env{host: host, state: t.TempDir(), bins: nettest.PluginDir(t), names: NamesFor(id)}
	e.cfg = Config{StateDir: e.state, BinDir: e.bins, Subnet: subnet, Instance: id, HostNetNS: host}
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

// world is what exists of one instance's network: links of the host namespace,
// namespaces with its prefix, its leases, its per-VM nft rules.
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
		if strings.HasPrefix(en.Name(), e.names.NetNSPrefix) {
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

// nftList is `nft list table <family> vulcan-<instance>` in the host namespace: the
// kernel's own rendering of the rules compiled here.
func (e *env) nftList(t *testing.T, fam string) string {
	t.Helper()
	testenv.RequiresBinary(t, "nft")
	out, err := exec.Command("nsenter", "--net="+e.host, "nft", "list", "table", fam, e.names.Table).CombinedOutput()
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

	n, err := m.Attach(ctx, "vm-a", model.NetworkHost, nil)
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
		len(during.netns) != 1 || len(during.rules) != 3 {
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
		if _, err := netlink.LinkByName(e.names.Bridge); err == nil {
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
	a, err := m.Attach(ctx, "vm-eg", model.NetworkEgress, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Detach(ctx, "vm-eg") })
	h, err := m.Attach(ctx, "vm-h", model.NetworkHost, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Detach(ctx, "vm-h") })
	g, br := a.GuestIP.IP.String(), e.names.Bridge
	inet := e.nftList(t, "inet")
	for _, want := range []string{
		`ip saddr ` + g + ` oifname != "` + br + `" masquerade comment "vulcan:vm=vm-eg"`,
		`iifname "` + br + `" ip saddr ` + g + ` jump vm-vm-eg comment "vulcan:vm=vm-eg"`,
		`iifname "` + br + `" drop`,
		`oifname "` + br + `" ct state established,related accept`,
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
	if rs, _ := m.policy.rulesOf("vm-h"); len(rs) != 3 {
		t.Errorf("detaching vm-eg touched vm-h's rules: %d left", len(rs))
	}
}

// TestResultReadableByFirecrackerSDK: the chained result is what the SDK's CNI reader
// expects from tc-redirect-tap.
func TestResultReadableByFirecrackerSDK(t *testing.T) {
	e := newEnv(t)
	m := e.manager(t)
	n, err := m.Attach(context.Background(), "vm-fc", model.NetworkEgress, nil)
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
			nw, err := m.Attach(ctx, "vm-p"+string(rune('a'+i)), model.NetworkHost, nil)
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
		if _, err := m.Attach(context.Background(), id, policy, nil); err != nil {
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
		if _, err := m.Attach(ctx, id, model.NetworkEgress, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Leftovers no cache knows about.
	nettest.NewNS(t, e.names.NetNS("stray"))
	nettest.Do(t, e.host, func() error {
		br, err := netlink.LinkByName(e.names.Bridge)
		if err != nil {
			return err
		}
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vstray0", MasterIndex: br.Attrs().Index}, PeerName: "vstray1"}
		return netlink.LinkAdd(v)
	})
	if err := os.WriteFile(filepath.Join(m.files.leaseDir(), "10.213.77.200"), []byte("ghost\neth0"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.policy.addVM(vmRules(vmSpec{id: "ghost", policy: model.NetworkEgress, bridge: e.names.Bridge,
		hostVeth: "vstray0", guest: net.ParseIP("10.213.77.200")}), ""); err != nil {
		t.Fatal(err)
	}
	crashed := e.snapshot(t, m)
	if len(crashed.netns) != 3 || len(crashed.leases) != 3 || len(crashed.rules) != 15 {
		t.Fatalf("setup: %v", crashed)
	}

	m2 := e.manager(t) // the next start
	if after := e.snapshot(t, m2); after.String() != clean.String() {
		t.Errorf("after reclaim: %v, want %v", after, clean)
	}
	// The reclaimed manager works, with the same VM id.
	if _, err := m2.Attach(ctx, "vm-c1", model.NetworkHost, nil); err != nil {
		t.Fatal(err)
	}
	if w := e.snapshot(t, m2); len(w.leases) != 1 || len(w.netns) != 1 {
		t.Errorf("after a fresh attach: %v", w)
	}
	if err := m2.Detach(ctx, "vm-c1"); err != nil {
		t.Fatal(err)
	}
}

// hostObjects is what exists of an instance in the host namespace, as the kernel and the
// filesystem show it: its bridge with its ports, its nft tables with their per-VM rules,
// its namespaces and its leases.
func (e *env) hostObjects(t *testing.T, m *Manager) string {
	t.Helper()
	var ports []string
	bridge := "absent"
	nettest.Do(t, e.host, func() error {
		ps, err := bridgePorts(e.names.Bridge)
		for _, p := range ps {
			ports = append(ports, p.Attrs().Name)
		}
		if _, lerr := netlink.LinkByName(e.names.Bridge); lerr == nil {
			bridge = "present"
		}
		return err
	})
	sort.Strings(ports)
	tables, _ := exec.Command("nsenter", "--net="+e.host, "nft", "list", "tables").CombinedOutput()
	var mine []string
	for _, l := range strings.Split(strings.TrimSpace(string(tables)), "\n") {
		if strings.HasSuffix(l, " "+e.names.Table) {
			mine = append(mine, l)
		}
	}
	w := e.snapshot(t, m)
	return fmt.Sprintf("bridge %s ports %v tables %v netns %v leases %v rules %d", bridge, ports, mine, w.netns, w.leases, len(w.rules))
}

// TestTwoInstancesCoexist: two servers' Managers in one host namespace, each with VMs
// attached. One crashes and restarts on its state dir, and a third starts with a fresh
// state dir: both reclaims take only their own instance's objects, and the survivor's
// namespaces, bridge ports, tables, rules and leases are as they were, its VMs' CNI
// CHECK still passes, and it detaches cleanly.
func TestTwoInstancesCoexist(t *testing.T) {
	testenv.RequiresBinary(t, "nft")
	host := nettest.HostNS(t)
	a, b := newEnvIn(t, host, "10.213.81.0/24"), newEnvIn(t, host, "10.213.82.0/24")
	ma, mb := a.manager(t), b.manager(t)
	ctx := context.Background()
	for _, id := range []string{"vm-1", "vm-2"} {
		if _, err := ma.Attach(ctx, id, model.NetworkEgress, nil); err != nil {
			t.Fatal(err)
		}
	}
	// The same VM id in both: names must not collide either.
	for _, id := range []string{"vm-1", "vm-b"} {
		if _, err := mb.Attach(ctx, id, model.NetworkEgress, nil); err != nil {
			t.Fatal(err)
		}
	}
	bBefore := b.hostObjects(t, mb)
	if w := b.snapshot(t, mb); len(w.netns) != 2 || len(w.leases) != 2 || len(w.rules) != 10 {
		t.Fatalf("setup of b: %s", bBefore)
	}
	if w := a.snapshot(t, ma); len(w.netns) != 2 || len(w.leases) != 2 {
		t.Fatalf("setup of a: %v", w)
	}

	// a crashes (its Manager is abandoned with VMs attached) and restarts.
	ma2, err := New(ctx, a.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ma2.Close(context.Background()) })
	// Its tables go until the next attach rebuilds them; the bridge stays, bare.
	if got := a.hostObjects(t, ma2); got != "bridge present ports [] tables [] netns [] leases [] rules 0" {
		t.Errorf("a after its restart: %s", got)
	}
	// A server with a fresh data dir (a new instance) reclaims nothing of anyone's.
	c := newEnvIn(t, host, "10.213.83.0/24")
	mc, err := New(ctx, c.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mc.Close(context.Background()) })
	if r, err := mc.Reclaim(ctx); err != nil || r.total() != 0 {
		t.Errorf("fresh instance reclaimed %+v (%v)", r, err)
	}

	if got := b.hostObjects(t, mb); got != bBefore {
		t.Errorf("b after the others' reclaims:\n%s\nwant:\n%s", got, bBefore)
	}
	t.Logf("b before and after a's restart and c's start: %s", bBefore)
	for _, id := range []string{"vm-1", "vm-b"} {
		nettest.Do(t, host, func() error { return mb.cni.CheckNetworkList(ctx, mb.list, mb.rt(id)) })
	}
	// The restarted a works again, beside b.
	if _, err := ma2.Attach(ctx, "vm-3", model.NetworkHost, nil); err != nil {
		t.Fatal(err)
	}
	if err := ma2.Detach(ctx, "vm-3"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"vm-1", "vm-b"} {
		if err := mb.Detach(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if w := b.snapshot(t, mb); len(w.netns)+len(w.leases)+len(w.rules) != 0 {
		t.Errorf("b after detaching: %v", w)
	}
}

// TestSubnetInUse: a second server whose subnet overlaps the first's bridge is told so,
// naming the bridge: at start when the bridge exists, else at its first attach (the
// first server's bridge came later); nothing of the first server's is touched.
func TestSubnetInUse(t *testing.T) {
	host := nettest.HostNS(t)
	a := newEnvIn(t, host, "10.213.84.0/24")
	ma, err := New(context.Background(), a.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ma.Close(context.Background()) })

	// a has no bridge yet: b starts, with the same subnet.
	b := newEnvIn(t, host, "10.213.84.0/24")
	mb, err := New(context.Background(), b.cfg)
	if err != nil {
		t.Fatalf("b refused before any bridge existed: %v", err)
	}
	if err := ma.Prepare(); err != nil {
		t.Fatal(err)
	}
	_, err = mb.Attach(context.Background(), "vm-x", model.NetworkHost, nil)
	want := "subnet 10.213.84.0/24 overlaps 10.213.84.1/24 on " + a.names.Bridge + " (another Vulcan server's bridge)"
	if !errors.Is(err, ErrSubnetInUse) || !strings.Contains(err.Error(), want) {
		t.Errorf("b's attach: %v, want ErrSubnetInUse and %q", err, want)
	}
	if w := b.snapshot(t, mb); len(w.netns)+len(w.leases)+len(w.rules) != 0 {
		t.Errorf("b's failed attach left %v", w)
	}
	nettest.Do(t, host, func() error {
		if _, err := netlink.LinkByName(b.names.Bridge); err == nil {
			t.Errorf("b made its bridge %s", b.names.Bridge)
		}
		return nil
	})

	// Now at start: a larger subnet that contains a's, and one inside it.
	for _, sub := range []string{"10.213.0.0/16", "10.213.84.128/25"} {
		c := newEnvIn(t, host, sub)
		_, err := New(context.Background(), c.cfg)
		if !errors.Is(err, ErrSubnetInUse) || !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), a.names.Bridge) {
			t.Errorf("%s: %v, want ErrUnavailable and ErrSubnetInUse naming %s", sub, err, a.names.Bridge)
		}
	}
	// A neighbouring subnet is fine, and a still works.
	d := newEnvIn(t, host, "10.213.85.0/24")
	d.manager(t)
	if _, err := ma.Attach(context.Background(), "vm-a", model.NetworkHost, nil); err != nil {
		t.Fatal(err)
	}
	if err := ma.Detach(context.Background(), "vm-a"); err != nil {
		t.Fatal(err)
	}
}

// legacyAttach makes what a server from before instance ids made for one VM, with that
// version's names: conflist vulcan.conflist in state, namespace vulcan-<vm>, bridge
// vulcan0, tables "vulcan" with the VM's rules. It returns the namespace's path.
func legacyAttach(t *testing.T, host, state, bins, subnet, vmID string) string {
	t.Helper()
	sub, err := parseSubnet(subnet)
	if err != nil {
		t.Fatal(err)
	}
	files := layout{dir: state, network: legacy.Network}
	conf := Conflist(legacy, sub, files.ipamDir())
	if err := os.WriteFile(files.conflist(), conf, 0o640); err != nil {
		t.Fatal(err)
	}
	list, err := libcni.NetworkConfFromBytes(conf)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(NetNSDir, legacy.NetNS(vmID))
	if err := createNetNS(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = removeNetNS(path) })
	cni := libcni.NewCNIConfigWithCacheDir([]string{bins}, files.cacheDir(), nil)
	var res *current.Result
	nettest.Do(t, host, func() error {
		r, err := cni.AddNetworkList(context.Background(), list,
			&libcni.RuntimeConf{ContainerID: vmID, NetNS: path, IfName: ContainerIfName})
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	att, err := parseResult(res, vmID, path, legacy.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	policy := nft{netnsPath: host, table: legacy.Table}
	if rs, _ := policy.rulesOf(""); rs == nil {
		if err := policy.reset(baseRules(legacy.Bridge, sub.gateway, nil)); err != nil {
			t.Fatal(err)
		}
	}
	if err := policy.addVM(vmRules(vmSpec{id: vmID, policy: model.NetworkEgress, bridge: legacy.Bridge,
		hostVeth: att.hostVeth, guest: att.guest.IP}), ""); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestReclaimLegacy: a data dir last used by a server from before instance ids gets its
// recorded leftovers reclaimed at the first start with an id. When nothing else uses the
// old bridge and tables they go too; when another old-style server's VM is on them, only
// this data dir's attachment goes, the rest stays, and the default-like subnet that the
// old bridge still holds is refused with a hint.
func TestReclaimLegacy(t *testing.T) {
	testenv.RequiresBinary(t, "nft")
	ctx := context.Background()
	vm := func() string { return "01LEGACY" + strings.ToUpper(nettest.Suffix()) }
	legacyTables := func(host string) string {
		out, _ := exec.Command("nsenter", "--net="+host, "nft", "list", "tables").CombinedOutput()
		return strings.TrimSpace(string(out))
	}

	t.Run("alone", func(t *testing.T) {
		e := newEnv(t)
		id := vm()
		ns := legacyAttach(t, e.host, e.state, e.bins, "10.213.77.0/24", id)
		m, err := New(ctx, e.cfg) // the same subnet: the old bridge must be gone first
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close(ctx) })
		if _, err := os.Stat(ns); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("old namespace %s: %v", ns, err)
		}
		nettest.Do(t, e.host, func() error {
			if l, err := netlink.LinkByName(legacy.Bridge); err == nil {
				t.Errorf("old bridge %s left", l.Attrs().Name)
			}
			return nil
		})
		if tl := legacyTables(e.host); tl != "" {
			t.Errorf("tables left: %s", tl)
		}
		old := layout{dir: e.state, network: legacy.Network}
		if _, err := os.Stat(old.conflist()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("old conflist: %v", err)
		}
		if _, err := os.Stat(old.leaseDir()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("old lease dir: %v", err)
		}
		if att, _ := m.cni.GetCachedAttachments(""); len(att) != 0 {
			t.Errorf("cache holds %d attachments", len(att))
		}
		if _, err := m.Attach(ctx, "vm-new", model.NetworkHost, nil); err != nil {
			t.Fatal(err)
		}
		if err := m.Detach(ctx, "vm-new"); err != nil {
			t.Fatal(err)
		}
		// Once: a second start finds no old state.
		if r, err := m.Reclaim(ctx); err != nil || r.Legacy != 0 {
			t.Errorf("second reclaim: %+v %v", r, err)
		}
	})

	t.Run("shared", func(t *testing.T) {
		e := newEnv(t)
		mine, theirs := vm(), vm()
		myNS := legacyAttach(t, e.host, e.state, e.bins, "10.213.77.0/24", mine)
		otherState := t.TempDir() // another old-style server's data dir
		theirNS := legacyAttach(t, e.host, otherState, e.bins, "10.213.77.0/24", theirs)
		_, err := New(ctx, e.cfg)
		if !errors.Is(err, ErrSubnetInUse) || !strings.Contains(err.Error(), "on vulcan0 (the bridge of a Vulcan server from before instance ids") {
			t.Errorf("start beside the old bridge: %v", err)
		}
		if _, err := os.Stat(myNS); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("this data dir's old namespace: %v", err)
		}
		if _, err := os.Stat(theirNS); err != nil {
			t.Errorf("the other server's namespace: %v", err)
		}
		nettest.Do(t, e.host, func() error {
			ps, err := bridgePorts(legacy.Bridge)
			if len(ps) != 1 {
				t.Errorf("old bridge has %d ports, want the other server's one", len(ps))
			}
			return err
		})
		other := nft{netnsPath: e.host, table: legacy.Table}
		if rs, _ := other.rulesOf(mine); len(rs) != 0 {
			t.Errorf("this data dir's old rules: %d left", len(rs))
		}
		if rs, _ := other.rulesOf(theirs); len(rs) != 5 {
			t.Errorf("the other server's rules: %d, want 5", len(rs))
		}
		if _, err := os.Stat(layout{dir: e.state, network: legacy.Network}.conflist()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("old conflist: %v", err)
		}
		if _, err := os.Stat(layout{dir: otherState, network: legacy.Network}.conflist()); err != nil {
			t.Errorf("the other server's conflist: %v", err)
		}
		// With a subnet of its own the new server works beside the old one.
		e.cfg.Subnet = "10.213.78.0/24"
		m := e.manager(t)
		if _, err := m.Attach(ctx, "vm-new", model.NetworkHost, nil); err != nil {
			t.Fatal(err)
		}
		if err := m.Detach(ctx, "vm-new"); err != nil {
			t.Fatal(err)
		}
	})
}

// TestEgressListsInKernel: a VM with allow/deny lists gets its chain and DNS set as the
// kernel's own nft renders them; the gate's ports are the only ones open on the gateway;
// learnt addresses carry their timeout, refreshed on a second answer; Detach removes the
// chain and the set with the rules.
func TestEgressListsInKernel(t *testing.T) {
	e := newEnv(t)
	e.cfg.DNS = []net.IP{net.ParseIP("192.0.2.53")} // never asked here
	m := e.manager(t)
	ctx := context.Background()
	n, err := m.Attach(ctx, "vm-l", model.NetworkEgress, &model.NetworkRules{
		Allow: []string{"203.0.113.0/24", "10.1.2.0/24", "example.com", "*.pypi.org"},
		Deny:  []string{"203.0.113.66", "bad.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Detach(ctx, "vm-l") })
	if len(n.DNS) != 1 || !n.DNS[0].Equal(m.Gateway()) {
		t.Errorf("guest resolvers %v, want the gateway only", n.DNS)
	}
	inet := e.nftList(t, "inet")
	// Order matters: the kernel lists a chain's rules in evaluation order.
	var at []int
	for _, want := range []string{
		`set dns-vm-l {`,
		`flags timeout`,
		`iifname "` + e.names.Bridge + `" ip daddr 10.213.77.1 udp dport 53 accept`,
		`iifname "` + e.names.Bridge + `" ip daddr 10.213.77.1 tcp dport 53 accept`,
		`iifname "` + e.names.Bridge + `" drop`,
		`chain vm-vm-l {`,
		`ct state established,related accept comment "vulcan:vm=vm-l"`,
		`ip daddr 169.254.0.0/16 drop comment "vulcan:vm=vm-l"`,
		`ip daddr 10.213.77.0/24 drop comment "vulcan:vm=vm-l"`,
		`ip daddr 203.0.113.66 drop comment "vulcan:vm=vm-l"`,
		`ip daddr 203.0.113.0/24 accept comment "vulcan:vm=vm-l"`,
		`ip daddr 10.1.2.0/24 accept comment "vulcan:vm=vm-l"`,
		`ip daddr 10.0.0.0/8 drop comment "vulcan:vm=vm-l"`,
		`ip daddr @dns-vm-l accept comment "vulcan:vm=vm-l"`,
	} {
		i := strings.Index(inet, want)
		if i < 0 {
			t.Errorf("inet table lacks %q", want)
			continue
		}
		at = append(at, i)
	}
	if !sort.IntsAreSorted(at) {
		t.Errorf("rules out of order: %v", at)
	}
	if t.Failed() {
		t.Logf("inet table:\n%s", inet)
	}
	// Learnt addresses: a second answer with a longer TTL replaces the first timeout.
	if err := m.policy.addAddrs(dnsSet("vm-l"), []net.IP{net.ParseIP("198.51.100.7")}, 40*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := m.policy.addAddrs(dnsSet("vm-l"), []net.IP{net.ParseIP("198.51.100.7"), net.ParseIP("198.51.100.8")}, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	els, err := m.policy.setAddrs(dnsSet("vm-l"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, el := range els {
		got = append(got, fmt.Sprintf("%s/%s", net.IP(el.Key), el.Timeout))
	}
	sort.Strings(got)
	if strings.Join(got, ",") != "198.51.100.7/1m30s,198.51.100.8/1m30s" {
		t.Errorf("set elements %v", got)
	}
	if err := m.Detach(ctx, "vm-l"); err != nil {
		t.Fatal(err)
	}
	if inet := e.nftList(t, "inet"); strings.Contains(inet, "vm-l") {
		t.Errorf("the VM's chain or set is left:\n%s", inet)
	}
	// Domain rules need the gate: without upstreams, Attach refuses them.
	e2 := newEnvIn(t, e.host, "10.213.79.0/24")
	m2 := e2.manager(t)
	if _, err := m2.Attach(ctx, "vm-n", model.NetworkEgress, &model.NetworkRules{Allow: []string{"example.com"}}); err == nil || !strings.Contains(err.Error(), "DNS gate") {
		t.Errorf("domain rules without a gate: %v", err)
	}
	if _, err := m2.Attach(ctx, "vm-n", model.NetworkHost, &model.NetworkRules{Allow: []string{"203.0.113.0/24"}}); err == nil {
		t.Error("rules accepted with policy host")
	}
	if inet := e2.nftList(t, "inet"); strings.Contains(inet, "dport 53") {
		t.Errorf("port 53 open without a gate:\n%s", inet)
	}
}
