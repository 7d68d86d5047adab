// Package nic describes a VM's network interface as the network manager prepares it and
// the VMM drivers attach it. It is its own small package so that networking and the
// VMMs share the description without importing each other.
package nic

import "net"

// NIC is a network interface prepared by the network manager for a VM.
type NIC struct {
	NetNS   string // path of the network namespace holding the TAP
	TAP     string // TAP device name inside NetNS
	MAC     string // guest MAC
	GuestIP *net.IPNet
	Gateway net.IP
	// DNS are up to two name servers the guest uses (egress only: a host-only guest can
	// reach nothing else).
	DNS []net.IP
}

// KernelIPArg is the guest kernel's static configuration of eth0 (CONFIG_IP_PNP):
// ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>, with no server,
// no hostname and no autoconfiguration.
func (n *NIC) KernelIPArg() string {
	if n == nil || n.GuestIP == nil {
		return ""
	}
	mask := n.GuestIP.Mask
	if len(mask) == net.IPv6len {
		mask = mask[12:] // an IPv4 mask in 16-byte form
	}
	arg := "ip=" + n.GuestIP.IP.String() + "::" + n.Gateway.String() + ":" + net.IP(mask).String() + "::eth0:off"
	// The kernel's dns0/dns1 fields: it lists them in /proc/net/pnp, which the agent
	// turns into /etc/resolv.conf.
	for i, ip := range n.DNS {
		if i == 2 {
			break
		}
		arg += ":" + ip.String()
	}
	return arg
}
