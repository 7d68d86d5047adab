package network

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
)

// Defaults.
const (
	DefaultSubnet = "10.213.0.0/24"
	// CNIVersion is the spec version of the conflist: 1.1.0 gives GC, which the startup
	// reclaim uses to collect leases.
	CNIVersion = "1.1.0"
	// ContainerIfName is the veth's name inside the VM's namespace; TAPName the TAP's.
	ContainerIfName = "eth0"
	TAPName         = "tap0"
	// TAPPlugin is our plugin's binary name.
	TAPPlugin = "vulcan-cni-tap"
)

// Plugins are the CNI binaries the conflist runs, all expected in Config.BinDir.
var Plugins = []string{"bridge", "host-local", TAPPlugin}

// Names are the host-global names of one server instance's network objects. Namespaces,
// links and nft tables are shared by every process on the host, so each carries the
// instance id (kept in the server's data dir): a server reclaims what has its id and
// nothing else.
type Names struct {
	Bridge      string // the bridge, with the gateway address: vulcan-<id> (an ifname: ≤ 15 bytes)
	Table       string // both nft tables (families inet and bridge): vulcan-<id>
	Network     string // the CNI network: keys libcni's cache and names host-local's lease dir
	NetNSPrefix string // starts every VM namespace under /run/netns: vulcan-<id>-
}

// NamesFor are the names of instance id's objects (id as checked by instance.Check).
func NamesFor(id string) Names {
	base := "vulcan-" + id
	return Names{Bridge: base, Table: base, Network: base, NetNSPrefix: base + "-"}
}

// NetNS is the namespace name of vmID.
func (n Names) NetNS(vmID string) string { return n.NetNSPrefix + vmID }

// legacy are the names every server used before instance ids: one set per host, which is
// why a starting server used to take over another's namespaces, bridge ports and tables.
var legacy = Names{Bridge: "vulcan0", Table: "vulcan", Network: "vulcan", NetNSPrefix: "vulcan-"}

// currentNetNSRe matches namespaces named the current way (vulcan-<instance>-<vm>);
// other names under vulcan- are from servers that predate instance ids (whose VM ids,
// ULIDs, have no '-').
var currentNetNSRe = regexp.MustCompile(`^vulcan-[0-9a-z]{1,8}-`)

// layout is where the Manager keeps its files under the state dir; files are named by the
// CNI network, so what a pre-instance-id run left (network "vulcan") stays recognisable.
type layout struct{ dir, network string }

func (l layout) conflist() string { return filepath.Join(l.dir, l.network+".conflist") }
func (l layout) ipamDir() string  { return filepath.Join(l.dir, "ipam") }
func (l layout) cacheDir() string { return filepath.Join(l.dir, "cache") }

// leaseDir is where host-local keeps this network's leases (it names the dir after the
// network).
func (l layout) leaseDir() string { return filepath.Join(l.ipamDir(), l.network) }

// subnetInfo is the parsed subnet and its gateway (the first address).
type subnetInfo struct {
	net     *net.IPNet
	gateway net.IP
}

func parseSubnet(s string) (subnetInfo, error) {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		return subnetInfo{}, fmt.Errorf("subnet %q: %w", s, err)
	}
	if ip.To4() == nil {
		return subnetInfo{}, fmt.Errorf("subnet %q: only IPv4 is supported", s)
	}
	if !ip.Equal(n.IP) {
		return subnetInfo{}, fmt.Errorf("subnet %q has host bits set (did you mean %s?)", s, n)
	}
	if ones, _ := n.Mask.Size(); ones > 29 {
		return subnetInfo{}, fmt.Errorf("subnet %q is too small (want /29 or larger)", s)
	}
	if !n.IP.IsPrivate() {
		return subnetInfo{}, fmt.Errorf("subnet %q is not a private range", s)
	}
	gw := make(net.IP, 4)
	copy(gw, n.IP.To4())
	gw[3]++
	return subnetInfo{net: n, gateway: gw}, nil
}

// Conflist is the CNI network configuration list Vulcan runs: bridge with host-local
// IPAM (leases under ipamDir), then the TAP plugin.
func Conflist(n Names, sub subnetInfo, ipamDir string) []byte {
	type obj = map[string]any
	list := obj{
		"cniVersion": CNIVersion,
		"name":       n.Network,
		"plugins": []obj{
			{
				"type":   "bridge",
				"bridge": n.Bridge,
				// The gateway address goes on the bridge: the guest's route out and the one
				// address policy host lets it reach.
				"isGateway": true,
				// Vulcan masquerades per VM in its own nft table, only for policy egress.
				"ipMasq":      false,
				"hairpinMode": false,
				"ipam": obj{
					"type":    "host-local",
					"ranges":  [][]obj{{{"subnet": sub.net.String(), "gateway": sub.gateway.String()}}},
					"dataDir": ipamDir,
				},
			},
			{"type": TAPPlugin, "tapName": TAPName},
		},
	}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		panic(err) // only maps, strings and bools
	}
	return b
}
