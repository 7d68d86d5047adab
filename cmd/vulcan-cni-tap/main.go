// Command vulcan-cni-tap is a chained CNI plugin that gives a microVM a network device: in
// the container network namespace it creates a TAP device and redirects every frame
// between the veth a previous plugin (bridge) made and the TAP with tc (an ingress qdisc
// plus a match-all u32 filter with a mirred egress redirect, both ways). The guest then
// owns the veth's MAC and IP: the VMM attaches to the TAP and the kernel stack of the
// namespace never sees the traffic.
//
// It does what awslabs/tc-redirect-tap does and shapes its result the same way, because
// firecracker-go-sdk reads it: the TAP interface with sandbox = the netns path, and a
// pseudo-interface with the TAP's name and sandbox = the container (VM) id, carrying the
// veth's MAC; the IPs point at that pseudo-interface.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

func main() {
	p := &plugin{ops: newNetlinkOps()}
	skel.PluginMainFuncs(skel.CNIFuncs{Add: p.cmdAdd, Del: p.cmdDel, Check: p.cmdCheck, GC: p.cmdGC, Status: p.cmdStatus},
		version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"),
		"vulcan-cni-tap: a TAP device redirected to the CNI veth, for microVMs")
}
