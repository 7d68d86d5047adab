package network

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
)

// Defaults.
const (
	DefaultSubnet      = "10.213.0.0/24"
	DefaultBridge      = "vulcan0"
	DefaultNetNSPrefix = "vulcan-"
	// NetworkName names the CNI network (and keys libcni's cache).
	NetworkName = "vulcan"
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

// layout is where the Manager keeps its files under the state dir.
type layout struct{ dir string }

func (l layout) conflist() string { return filepath.Join(l.dir, "vulcan.conflist") }
func (l layout) ipamDir() string  { return filepath.Join(l.dir, "ipam") }
func (l layout) cacheDir() string { return filepath.Join(l.dir, "cache") }

// leaseDir is where host-local keeps this network's leases.
func (l layout) leaseDir() string { return filepath.Join(l.ipamDir(), NetworkName) }

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
func Conflist(bridge string, sub subnetInfo, ipamDir string) []byte {
	type obj = map[string]any
	list := obj{
		"cniVersion": CNIVersion,
		"name":       NetworkName,
		"plugins": []obj{
			{
				"type":   "bridge",
				"bridge": bridge,
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
