package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/network/dnsgate"
	"github.com/vulcanhq/vulcan/internal/network/netrules"
	"github.com/vulcanhq/vulcan/internal/nic"
)

// NetNSDir is where named network namespaces are bind-mounted (as by `ip netns add`;
// /var/run/netns is the same directory).
const NetNSDir = "/run/netns"

// hostLockFile serialises, across every server on the host, checking the subnet is free
// and putting the gateway address on the bridge, so two servers starting their first VMs
// at once cannot both take one subnet.
const hostLockFile = "/run/vulcan-network.lock"

// Manager attaches VMs to the network and detaches them.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	names  Names
	files  layout
	sub    subnetInfo
	cni    *libcni.CNIConfig
	list   *libcni.NetworkConfigList
	policy nft

	prepMu   sync.Mutex
	prepared bool

	// gate is the DNS gate (nil without upstream resolvers); it serves from the first
	// Prepare on. guests maps an attached egress VM to the address it is registered by.
	gate     *dnsgate.Gate
	gateUp   bool
	guestsMu sync.Mutex
	guests   map[string]netip.Addr
}

// New checks the host can give VMs a network, writes the conflist, reclaims what a
// crashed run of this instance left and checks no other interface holds an address of
// the subnet. The bridge and the base policy come with the first Attach (or Prepare), so a
// server whose workloads never ask for a network changes nothing in the host's network.
// Prerequisite failures wrap ErrUnavailable (a subnet in use also ErrSubnetInUse).
func New(ctx context.Context, cfg Config) (*Manager, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if err := Check(cfg.BinDir); err != nil {
		return nil, err
	}
	sub, err := parseSubnet(cfg.Subnet)
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	names := NamesFor(cfg.Instance)
	m := &Manager{
		cfg:    cfg,
		log:    cfg.Logger.With("component", "network", "instance", cfg.Instance),
		names:  names,
		files:  layout{dir: cfg.StateDir, network: names.Network},
		sub:    sub,
		policy: nft{netnsPath: cfg.HostNetNS, table: names.Table},
		guests: map[string]netip.Addr{},
	}
	if len(cfg.DNS) > 0 {
		var ups []string
		for _, ip := range cfg.DNS {
			ups = append(ups, net.JoinHostPort(ip.String(), "53"))
		}
		gc := dnsgate.Config{Upstreams: ups, Logger: m.log}
		if cfg.HostNetNS != "" {
			// The upstreams are reached from the host namespace, like the guests' traffic.
			gc.Dial = func(network, addr string) (c net.Conn, err error) {
				err = ns.WithNetNSPath(cfg.HostNetNS, func(ns.NetNS) error {
					c, err = net.DialTimeout(network, addr, 2*time.Second)
					return err
				})
				return c, err
			}
		}
		m.gate = dnsgate.New(gc)
	}
	for _, d := range []string{m.files.dir, m.files.ipamDir(), m.files.cacheDir()} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("network: %w", err)
		}
	}
	conf := Conflist(names, sub, m.files.ipamDir())
	if err := os.WriteFile(m.files.conflist(), conf, 0o640); err != nil {
		return nil, fmt.Errorf("network: write conflist: %w", err)
	}
	if m.list, err = libcni.NetworkConfFromBytes(conf); err != nil {
		return nil, fmt.Errorf("network: parse conflist: %w", err)
	}
	m.cni = libcni.NewCNIConfigWithCacheDir([]string{cfg.BinDir}, m.files.cacheDir(), nil)

	r, err := m.Reclaim(ctx)
	if err != nil {
		m.log.Warn("network reclaim incomplete", "err", err)
	} else if r.total() > 0 {
		m.log.Info("reclaimed network state left by an earlier run", "attachments", r.Attachments,
			"netns", r.NetNS, "veths", r.Veths, "leases", r.Leases, "rules", r.Rules, "legacy", r.Legacy)
	}
	if err := m.inHost(m.checkSubnet); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return m, nil
}

// Prepare creates the bridge (with the gateway address) and Vulcan's nft tables with
// the base rules, once; Attach calls it. A failed Prepare is retried by the next call.
func (m *Manager) Prepare() error {
	m.prepMu.Lock()
	defer m.prepMu.Unlock()
	if m.prepared {
		return nil
	}
	unlock, err := lockHost()
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	defer unlock()
	// Again, under the lock: another server may have taken the subnet since New.
	if err := m.inHost(m.checkSubnet); err != nil {
		return err
	}
	if err := m.inHost(m.ensureBridge); err != nil {
		return fmt.Errorf("network: bridge %s: %w", m.names.Bridge, err)
	}
	if err := m.policy.reset(baseRules(m.names.Bridge, m.sub.gateway, m.services())); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := m.startGate(); err != nil {
		return fmt.Errorf("network: DNS gate: %w", err)
	}
	m.prepared = true
	return nil
}

// services are the gateway's ports guests reach: the DNS gate's and Config.Services.
func (m *Manager) services() []Service {
	var s []Service
	if m.gate != nil {
		s = append(s, DNSServices...)
	}
	return append(s, m.cfg.Services...)
}

// startGate opens the DNS gate's sockets on the gateway address (in the host namespace),
// once per Manager.
func (m *Manager) startGate() error {
	if m.gate == nil || m.gateUp {
		return nil
	}
	addr := net.JoinHostPort(m.sub.gateway.String(), "53")
	var pc net.PacketConn
	var ln net.Listener
	err := m.inHost(func() (err error) {
		if pc, err = net.ListenPacket("udp4", addr); err != nil {
			return err
		}
		if ln, err = net.Listen("tcp4", addr); err != nil {
			pc.Close()
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("%w (is another DNS server bound to port 53 on every address?)", err)
	}
	m.gate.Serve(pc, ln)
	m.gateUp = true
	return nil
}

// Check reports whether this host can give VMs a network: root, /dev/net/tun, and the
// CNI plugins in binDir. The error wraps ErrUnavailable and says how to fix it.
func Check(binDir string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: VM networking needs root (namespaces, TAPs, nftables)", ErrUnavailable)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("%w: /dev/net/tun: %v (load the tun module: modprobe tun)", ErrUnavailable, err)
	}
	var missing []string
	for _, p := range Plugins {
		if fi, err := os.Stat(filepath.Join(binDir, p)); err != nil || fi.Mode()&0o111 == 0 {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: CNI plugins %s missing in %s; run `make` (it builds them into bin/cni) or set VULCAN_CNI_BIN_DIR",
			ErrUnavailable, strings.Join(missing, ", "), binDir)
	}
	return nil
}

// Gateway is the bridge's address, the one a guest with policy host may reach.
func (m *Manager) Gateway() net.IP { return m.sub.gateway }

// Names are the host-global names of this Manager's objects.
func (m *Manager) Names() Names { return m.names }

// NetNSPath is where the namespace of vmID is mounted.
func (m *Manager) NetNSPath(vmID string) string {
	return filepath.Join(NetNSDir, m.names.NetNS(vmID))
}

// inHost runs fn in the host namespace, on a locked thread: netlink calls and the CNI
// plugins (child processes inherit the thread's namespace) act there.
func (m *Manager) inHost(fn func() error) error {
	if m.cfg.HostNetNS == "" {
		return fn()
	}
	return ns.WithNetNSPath(m.cfg.HostNetNS, func(ns.NetNS) error { return fn() })
}

func (m *Manager) rt(vmID string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: vmID, NetNS: m.NetNSPath(vmID), IfName: ContainerIfName}
}

// Attach gives vmID a NIC under policy (host or egress): its namespace, CNI ADD (bridge,
// host-local, TAP) and its nft rules. Anything a failed Attach acquired is released
// before it returns. Attach deletes first, so a VM id left over by a failed run is reused
// cleanly.
func (m *Manager) Attach(ctx context.Context, vmID string, policy model.NetworkPolicy, rules *model.NetworkRules) (_ *nic.NIC, err error) {
	if err := checkVMID(vmID); err != nil {
		return nil, err
	}
	if policy != model.NetworkHost && policy != model.NetworkEgress {
		return nil, fmt.Errorf("network: policy %q gets no NIC", policy)
	}
	nr, err := netrules.Parse(rules)
	if err != nil {
		return nil, fmt.Errorf("network: rules: %w", err)
	}
	if !nr.Empty() && policy != model.NetworkEgress {
		return nil, fmt.Errorf("network: rules apply to policy egress only, not %q", policy)
	}
	if nr.HasNames() && m.gate == nil {
		return nil, errors.New("network: domain rules need the DNS gate, which runs only with upstream resolvers (VULCAN_NETWORK_DNS is none, or the host has none)")
	}
	if err := m.Prepare(); err != nil {
		return nil, err
	}
	start := time.Now()
	var undo []func(context.Context) error
	defer func() {
		if err != nil {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.Timeout)
			defer cancel()
			for i := len(undo) - 1; i >= 0; i-- {
				if uerr := undo[i](uctx); uerr != nil {
					m.log.Warn("network attach undo", "vm", vmID, "err", uerr)
				}
			}
		}
	}()
	// Delete before create.
	if err := m.Detach(ctx, vmID); err != nil {
		return nil, fmt.Errorf("network: clear leftovers of %s: %w", vmID, err)
	}

	path := m.NetNSPath(vmID)
	if err := createNetNS(path); err != nil {
		return nil, fmt.Errorf("network: create namespace: %w", err)
	}
	undo = append(undo, func(context.Context) error { return removeNetNS(path) })

	actx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	defer cancel()
	var res *current.Result
	err = m.inHost(func() error {
		r, err := m.cni.AddNetworkList(actx, m.list, m.rt(vmID))
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	// The DEL is registered even when ADD failed: a plugin may have acquired something
	// (a lease, a veth) before the one after it failed.
	undo = append(undo, func(ctx context.Context) error { return m.cniDel(ctx, vmID) })
	if err != nil {
		return nil, fmt.Errorf("network: CNI ADD: %w", err)
	}
	added := time.Since(start)

	a, err := parseResult(res, vmID, path, m.names.Bridge)
	if err != nil {
		return nil, fmt.Errorf("network: CNI result: %w", err)
	}
	spec := vmSpec{id: vmID, policy: policy, bridge: m.names.Bridge, hostVeth: a.hostVeth,
		guest: a.guest.IP, subnet: m.sub.net, rules: nr}
	set := ""
	if spec.usesDNSSet() {
		set = dnsSet(vmID)
	}
	if err := m.policy.addVM(vmRules(spec), set); err != nil {
		return nil, fmt.Errorf("network: policy: %w", err)
	}
	undo = append(undo, func(context.Context) error { return m.policy.removeVM(vmID) })

	n := &nic.NIC{NetNS: path, TAP: a.tap, MAC: a.mac, GuestIP: a.guest, Gateway: a.gateway}
	if policy == model.NetworkEgress && m.gate != nil {
		addr, ok := netip.AddrFromSlice(a.guest.IP.To4())
		if !ok {
			return nil, fmt.Errorf("network: guest address %s", a.guest.IP)
		}
		g := dnsgate.Guest{VM: vmID, Rules: nr}
		if set != "" {
			g.Learn = func(addrs []net.IP, ttl time.Duration) error { return m.policy.addAddrs(set, addrs, ttl) }
		}
		m.gate.Register(addr, g)
		m.guestsMu.Lock()
		m.guests[vmID] = addr
		m.guestsMu.Unlock()
		undo = append(undo, func(context.Context) error { m.unregister(vmID); return nil })
		n.DNS = []net.IP{m.sub.gateway}
	}
	m.log.Debug("network attached", "vm", vmID, "policy", policy, "ip", a.guest, "rules", !nr.Empty(),
		"cni_add", added, "total", time.Since(start))
	return n, nil
}

// unregister takes vmID's address off the DNS gate.
func (m *Manager) unregister(vmID string) {
	m.guestsMu.Lock()
	addr, ok := m.guests[vmID]
	delete(m.guests, vmID)
	m.guestsMu.Unlock()
	if ok && m.gate != nil {
		m.gate.Unregister(addr)
	}
}

// Detach releases everything Attach acquired for vmID: its nft rules, CNI DEL (TAP, veth,
// lease) and its namespace. What is already gone is success, so it can run any number of
// times, and it ignores ctx's cancellation (it gets its own deadline).
func (m *Manager) Detach(ctx context.Context, vmID string) error {
	if err := checkVMID(vmID); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.Timeout)
	defer cancel()
	var errs []error
	m.unregister(vmID)
	if err := m.policy.removeVM(vmID); err != nil {
		errs = append(errs, fmt.Errorf("policy: %w", err))
	}
	if err := m.cniDel(ctx, vmID); err != nil {
		errs = append(errs, fmt.Errorf("CNI DEL: %w", err))
	}
	if err := removeNetNS(m.NetNSPath(vmID)); err != nil {
		errs = append(errs, fmt.Errorf("namespace: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("network: detach %s: %w", vmID, err)
	}
	return nil
}

// cniDel runs CNI DEL for vmID. libcni uses the cached result when there is one; without
// a namespace the plugins still release what they hold outside it (the lease).
func (m *Manager) cniDel(ctx context.Context, vmID string) error {
	rt := m.rt(vmID)
	if _, err := os.Stat(rt.NetNS); err != nil {
		rt.NetNS = ""
	}
	return m.inHost(func() error { return m.cni.DelNetworkList(ctx, m.list, rt) })
}

// Reclaim removes what a crashed run of this instance left: cached attachments (a CNI DEL
// of each through GC, which frees their leases), namespaces with this instance's
// prefix, veths still on its bridge, lease files GC missed and per-VM nft rules (its
// tables are dropped; the next Prepare rebuilds them). Everything it touches carries this
// instance's id or is recorded under its state dir: other servers' namespaces, bridges
// and tables are left alone. Then it reclaims what a run of this data dir from before
// instance ids left (reclaimLegacy). It must only run when no VM of this Manager's is
// attached.
func (m *Manager) Reclaim(ctx context.Context) (Reclaimed, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.Timeout)
	defer cancel()
	var r Reclaimed
	var errs []error
	if att, err := m.cni.GetCachedAttachments(""); err == nil {
		for _, a := range att {
			if a.Network == m.names.Network {
				r.Attachments++
			}
		}
	}
	if r.Attachments > 0 || len(m.leases()) > 0 {
		if err := m.inHost(func() error { return m.cni.GCNetworkList(ctx, m.list, &libcni.GCArgs{}) }); err != nil {
			errs = append(errs, fmt.Errorf("CNI GC: %w", err))
		}
	}
	entries, _ := os.ReadDir(NetNSDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), m.names.NetNSPrefix) {
			if err := removeNetNS(filepath.Join(NetNSDir, e.Name())); err != nil {
				errs = append(errs, err)
				continue
			}
			r.NetNS++
		}
	}
	if err := m.inHost(func() error {
		n, err := deleteBridgePorts(m.names.Bridge)
		r.Veths = n
		return err
	}); err != nil {
		errs = append(errs, fmt.Errorf("veths: %w", err))
	}
	for _, l := range m.leases() {
		if err := os.Remove(l); err == nil {
			r.Leases++
		}
	}
	if rs, err := m.policy.rulesOf(""); err == nil {
		r.Rules = len(rs)
	}
	if _, err := m.policy.drop(); err != nil {
		errs = append(errs, fmt.Errorf("nft: %w", err))
	}
	m.prepMu.Lock()
	m.prepared = false // the tables are gone: the next Attach rebuilds them
	m.prepMu.Unlock()
	n, err := m.reclaimLegacy(ctx)
	r.Legacy = n
	if err != nil {
		errs = append(errs, fmt.Errorf("pre-instance-id leftovers: %w", err))
	}
	return r, errors.Join(errs...)
}

// reclaimLegacy removes what a run of this data dir from before instance ids left, as far
// as this data dir's records name it. Such a run kept its conflist as vulcan.conflist
// (network "vulcan") and named its objects for the whole host: bridge vulcan0, tables
// "vulcan", namespaces vulcan-<vm id>, which every server of that version shared. The
// attachments in this data dir's libcni cache are its own: each is deleted through CNI
// (veth, lease), with its nft rules and the namespace the record names. The bridge and the
// tables were shared, so they go only when no port is left on the bridge and no namespace
// of that naming remains; else they stay, for whoever else uses them, and the log says so.
// The old conflist goes once its attachments are gone, so this runs once per data dir.
func (m *Manager) reclaimLegacy(ctx context.Context) (int, error) {
	old := layout{dir: m.files.dir, network: legacy.Network}
	conf, err := os.ReadFile(old.conflist())
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	list, err := libcni.NetworkConfFromBytes(conf)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", old.conflist(), err)
	}
	bridge := legacyBridge(conf)
	policy := nft{netnsPath: m.cfg.HostNetNS, table: legacy.Table}
	n := 0
	var errs []error
	atts, _ := m.cni.GetCachedAttachments("")
	for _, a := range atts {
		if a.Network != list.Name {
			continue
		}
		rt := &libcni.RuntimeConf{ContainerID: a.ContainerID, NetNS: a.NetNS, IfName: a.IfName}
		if _, err := os.Stat(rt.NetNS); err != nil {
			rt.NetNS = ""
		}
		if err := m.inHost(func() error { return m.cni.DelNetworkList(ctx, list, rt) }); err != nil {
			errs = append(errs, fmt.Errorf("CNI DEL %s: %w", a.ContainerID, err))
			continue
		}
		if err := policy.removeVM(a.ContainerID); err != nil {
			errs = append(errs, err)
		}
		if a.NetNS == filepath.Join(NetNSDir, legacy.NetNS(a.ContainerID)) {
			if err := removeNetNS(a.NetNS); err != nil {
				errs = append(errs, err)
			}
		}
		m.log.Info("reclaimed a pre-instance-id attachment", "vm", a.ContainerID, "netns", a.NetNS)
		n++
	}
	if err := errors.Join(errs...); err != nil {
		return n, err // the old conflist stays: the next start tries again
	}
	// The old network's leases are this data dir's alone (those no cache entry knew too).
	if err := os.RemoveAll(old.leaseDir()); err != nil {
		return n, err
	}

	var ports []netlink.Link
	if err := m.inHost(func() (err error) { ports, err = bridgePorts(bridge); return err }); err != nil {
		return n, err
	}
	var others []string
	entries, _ := os.ReadDir(NetNSDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), legacy.NetNSPrefix) && !currentNetNSRe.MatchString(e.Name()) {
			others = append(others, e.Name())
		}
	}
	if len(ports) > 0 || len(others) > 0 {
		m.log.Warn("left the pre-instance-id bridge and nft tables: something else still uses them",
			"bridge", bridge, "tables", legacy.Table, "ports", len(ports), "namespaces", others)
	} else {
		var gone bool
		if err := m.inHost(func() (err error) { gone, err = deleteLink(bridge); return err }); err != nil {
			return n, fmt.Errorf("bridge %s: %w", bridge, err)
		}
		k, err := policy.drop()
		if err != nil {
			return n, fmt.Errorf("nft: %w", err)
		}
		if gone || k > 0 {
			m.log.Info("removed the pre-instance-id bridge and nft tables", "bridge", bridge, "tables", k)
			n += k
			if gone {
				n++
			}
		}
	}
	return n, os.Remove(old.conflist())
}

// legacyBridge reads the bridge's name from an old conflist (it was always vulcan0).
func legacyBridge(conf []byte) string {
	var c struct {
		Plugins []struct{ Type, Bridge string }
	}
	if json.Unmarshal(conf, &c) == nil {
		for _, p := range c.Plugins {
			if p.Type == "bridge" && validIfName(p.Bridge) == nil {
				return p.Bridge
			}
		}
	}
	return legacy.Bridge
}

// checkSubnet fails when an interface other than this instance's bridge holds an address
// whose network overlaps the subnet: another server's bridge (two servers on one host need
// distinct VULCAN_NETWORK_SUBNETs), a LAN, a VPN. Guests there would be unreachable or
// shadow the host's routes.
func (m *Manager) checkSubnet() error {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if a.IPNet == nil || !(a.IPNet.Contains(m.sub.net.IP) || m.sub.net.Contains(a.IP)) {
			continue
		}
		name := fmt.Sprintf("interface %d", a.LinkIndex)
		if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
			name = l.Attrs().Name
		}
		if name == m.names.Bridge {
			continue
		}
		hint := ""
		switch {
		case name == legacy.Bridge:
			hint = " (the bridge of a Vulcan server from before instance ids: if none runs, `ip link del vulcan0`)"
		case strings.HasPrefix(name, "vulcan-"):
			hint = " (another Vulcan server's bridge)"
		}
		return fmt.Errorf("%w: subnet %s overlaps %s on %s%s; give each server on a host its own VULCAN_NETWORK_SUBNET",
			ErrSubnetInUse, m.sub.net, a.IPNet, name, hint)
	}
	return nil
}

// lockHost takes the host-wide lock (hostLockFile) and returns its release.
func lockHost() (func(), error) {
	f, err := os.OpenFile(hostLockFile, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("host lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("host lock: %w", err)
	}
	return func() { f.Close() }, nil
}

// leases lists host-local's lease files (named by address) for this network.
func (m *Manager) leases() []string {
	var out []string
	entries, _ := os.ReadDir(m.files.leaseDir())
	for _, e := range entries {
		if net.ParseIP(e.Name()) != nil {
			out = append(out, filepath.Join(m.files.leaseDir(), e.Name()))
		}
	}
	return out
}

// Close removes the bridge and the nft tables, if this Manager made them. VMs still
// attached lose their network; detach them first.
func (m *Manager) Close(ctx context.Context) error {
	m.prepMu.Lock()
	was := m.prepared
	m.prepared = false
	if m.gate != nil && m.gateUp {
		_ = m.gate.Close()
		m.gateUp = false
	}
	m.prepMu.Unlock()
	if !was {
		return nil
	}
	var errs []error
	if _, err := m.policy.drop(); err != nil {
		errs = append(errs, fmt.Errorf("nft: %w", err))
	}
	if err := m.inHost(func() error { _, err := deleteLink(m.names.Bridge); return err }); err != nil {
		errs = append(errs, fmt.Errorf("bridge: %w", err))
	}
	return errors.Join(errs...)
}

// deleteLink deletes the link named name; gone reports it existed.
func deleteLink(name string) (gone bool, err error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, err
	}
	return true, netlink.LinkDel(l)
}

// ensureBridge creates the bridge with the gateway address, so that the address exists
// (and host services can bind it) before the first VM; the bridge plugin adopts it.
func (m *Manager) ensureBridge() error {
	l, err := netlink.LinkByName(m.names.Bridge)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: m.names.Bridge}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		if l, err = netlink.LinkByName(m.names.Bridge); err != nil {
			return err
		}
	}
	if _, ok := l.(*netlink.Bridge); !ok {
		return fmt.Errorf("%s exists and is a %s, not a bridge", m.names.Bridge, l.Type())
	}
	ones, _ := m.sub.net.Mask.Size()
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: m.sub.gateway, Mask: net.CIDRMask(ones, 32)}}
	if err := netlink.AddrReplace(l, addr); err != nil {
		return fmt.Errorf("address %s: %w", addr.IPNet, err)
	}
	return netlink.LinkSetUp(l)
}

// bridgePorts lists the veths enslaved to the bridge named br (none when it is absent).
func bridgePorts(br string) ([]netlink.Link, error) {
	b, err := netlink.LinkByName(br)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, err
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	var out []netlink.Link
	for _, l := range links {
		if l.Attrs().MasterIndex == b.Attrs().Index && l.Type() == "veth" {
			out = append(out, l)
		}
	}
	return out, nil
}

// deleteBridgePorts deletes every veth enslaved to the bridge named br.
func deleteBridgePorts(br string) (int, error) {
	ps, err := bridgePorts(br)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, l := range ps {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// createNetNS makes a new network namespace bind-mounted at path (like `ip netns add`),
// with lo up. It unshares on a throwaway locked thread so no goroutine ever runs in the
// wrong namespace: if the thread cannot be restored it dies with its goroutine.
func createNetNS(path string) error {
	if filepath.Dir(path) != NetNSDir {
		return fmt.Errorf("namespace %s is not under %s", path, NetNSDir)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(filepath.Base(path))
		if err == nil {
			if l, lerr := netlink.LinkByName("lo"); lerr == nil {
				_ = netlink.LinkSetUp(l)
			}
			h.Close()
		}
		if serr := netns.Set(orig); serr != nil {
			// Leave the thread locked: the runtime ends it with this goroutine.
			errc <- errors.Join(err, fmt.Errorf("restore namespace: %w", serr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// removeNetNS unmounts and removes a namespace mount; a missing one is success, and so
// is a file that was never mounted (a crash between creating and mounting it).
func removeNetNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// Attached counts what is held for VMs right now: lease files plus VMs with nft rules.
// Zero when every VM has been detached.
func (m *Manager) Attached() (int, error) {
	rs, err := m.policy.rulesOf("")
	if err != nil {
		return 0, err
	}
	return len(m.leases()) + len(rs), nil
}
