package network

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/vulcanhq/vulcan/internal/instance"
)

// ErrSubnetInUse is why a Manager refuses its subnet: an address of an overlapping network
// is on another interface of the host namespace (another Vulcan server's bridge, a LAN).
// It comes wrapped with ErrUnavailable from New, alone from Prepare and Attach.
var ErrSubnetInUse = errors.New("subnet in use")

// ErrUnavailable wraps every reason networking cannot work on this host (not root, a
// plugin missing, no /dev/net/tun); its text tells the user what to do.
var ErrUnavailable = errors.New("networking unavailable")

// Config configures a Manager.
type Config struct {
	// StateDir holds the conflist, host-local's leases and libcni's cache
	// (normally <VULCAN_DATA_DIR>/cni). Everything in it belongs to the Manager.
	StateDir string
	// BinDir holds the CNI plugins: bridge, host-local and vulcan-cni-tap (`make` builds
	// them into bin/cni).
	BinDir string
	// Subnet is the private IPv4 range guests get addresses from (DefaultSubnet). Two
	// servers on one host need subnets that do not overlap: a Manager refuses one that
	// overlaps an address on another interface of the host namespace.
	Subnet string
	// Instance is the server's instance id (package instance): it names the bridge, the
	// nft tables, the CNI network and the VM namespaces (NamesFor), and the startup
	// reclaim touches nothing without it.
	Instance string
	// HostNetNS is the path of the namespace the bridge, the NAT and the policy live in;
	// "" is the namespace the Manager is created in.
	HostNetNS string
	// DNS are the upstream name servers of the server's DNS gate (package dnsgate), which
	// listens on the gateway address and is the one resolver egress guests are told to
	// use; it answers each guest under its network_rules. None: no gate, guests get no
	// resolver, and domain rules are refused at Attach.
	DNS []net.IP
	// Services are ports of the gateway address, besides the DNS gate's, that guests may
	// reach: services Vulcan itself offers guests (none today; tests list their own). No
	// other port of the host is reachable from a guest.
	Services []Service
	// Timeout bounds each CNI call and the teardown of a VM (default 30 s).
	Timeout time.Duration
	Logger  *slog.Logger
}

func (c *Config) defaults() error {
	if c.StateDir == "" {
		return errors.New("network: no state dir")
	}
	if c.BinDir == "" {
		return errors.New("network: no CNI bin dir")
	}
	if c.Subnet == "" {
		c.Subnet = DefaultSubnet
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if err := instance.Check(c.Instance); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := validIfName(NamesFor(c.Instance).Bridge); err != nil {
		return fmt.Errorf("network: bridge: %w", err)
	}
	return nil
}

func validIfName(n string) error {
	if n == "" || len(n) > 15 || !regexp.MustCompile(`^[A-Za-z0-9_.-]+$`).MatchString(n) {
		return fmt.Errorf("%q is not a valid interface name", n)
	}
	return nil
}

// vmIDRe is what a VM id may look like: it names a namespace file and keys CNI's cache.
var vmIDRe = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

func checkVMID(id string) error {
	if !vmIDRe.MatchString(id) {
		return fmt.Errorf("network: VM id %q: want 1-64 letters, digits, '-', '_' or '.'", id)
	}
	return nil
}

// Reclaimed counts what a startup reclaim removed.
type Reclaimed struct {
	Attachments int // cached CNI attachments deleted
	NetNS       int // namespaces removed
	Veths       int // veths left on the bridge
	Leases      int // lease files removed after GC
	Rules       int // per-VM nft rules dropped with the tables
	// Legacy counts what a run from before instance ids left that this data dir's records
	// name (attachments with their namespaces, and the old bridge and tables when nothing
	// else used them).
	Legacy int
}

func (r Reclaimed) total() int {
	return r.Attachments + r.NetNS + r.Veths + r.Leases + r.Rules + r.Legacy
}

// HostDNS returns the IPv4 name servers listed in a resolv.conf that a guest can use:
// loopback resolvers (a local stub such as 127.0.0.53) are the host's own and unreachable
// from a guest, and guests have no IPv6.
func HostDNS(resolvConf string) []net.IP {
	b, err := os.ReadFile(resolvConf)
	if err != nil || len(b) > 64<<10 {
		return nil
	}
	var out []net.IP
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		ip := net.ParseIP(f[1]).To4()
		if ip == nil || ip.IsLoopback() || ip.IsUnspecified() {
			continue
		}
		out = append(out, ip)
	}
	return out
}
