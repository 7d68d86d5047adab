// Package network gives each microVM that asks for one a NIC of its own, through CNI.
//
// Per VM the Manager creates a network namespace (/run/netns/vulcan-<instance>-<vm id>)
// and runs a conflist Vulcan writes itself: the bridge plugin (bridge vulcan-<instance>,
// the gateway address on it, no ipMasq — Vulcan does NAT itself) with host-local IPAM,
// chained with vulcan-cni-tap, which makes a TAP in the namespace and redirects frames
// between the bridge's veth and the TAP. The VMM runs in that namespace on the TAP; the
// guest takes the veth's MAC and IP and configures eth0 from the kernel `ip=` argument.
//
// Namespaces, links and nft tables are global to the host, so every one of them carries
// the server's instance id (package instance, kept in the data dir; Names): two servers on
// one host never share a bridge, a table or a namespace name, and each one's startup
// reclaim removes only what has its id or is recorded in its state dir.
//
// Addresses come from one private IPv4 subnet per server, 10.213.0.0/24 by default
// (VULCAN_NETWORK_SUBNET; Vulcan reserves 10.213.0.0/16, one /24 per server); the gateway
// is the subnet's first address, on the bridge. A subnet that overlaps an address on
// another interface of the host (another server's bridge) is refused with ErrSubnetInUse:
// by New when that interface exists at start, else by the first Attach.
//
// Policy is nftables, installed through netlink (github.com/google/nftables): table
// `inet vulcan-<instance>` lets guests reach the gateway address and nothing else on the
// host, never lets new connections in, and, per VM with policy egress, accepts the guest's
// forwarded traffic and masquerades it; table `bridge vulcan-<instance>` stops guests
// talking to each other across the bridge and drops frames whose source IP is not the one
// the port's VM was given (so an address-keyed rule cannot be borrowed). Every per-VM rule
// carries the comment "vulcan:vm=<id>" and is removed by that key.
//
// All of it lives in one namespace, the "host" namespace, which is the caller's by
// default and a parameter so tests can build a private one. State (the conflist, the IP
// leases, libcni's result cache) lives under Config.StateDir. On start the Manager
// reclaims what a crashed run of its instance left: cached attachments are deleted
// through CNI, leases collected, namespaces with its prefix removed, stray veths on its
// bridge deleted and its nft tables dropped (the next Prepare rebuilds them). What a run
// from before instance ids left (bridge vulcan0, tables "vulcan", namespaces vulcan-<vm>,
// shared by every server then) is reclaimed as far as the state dir's own records name it
// (reclaimLegacy). One Manager per instance.
package network
