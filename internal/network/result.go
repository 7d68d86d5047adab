package network

import (
	"errors"
	"fmt"
	"net"

	current "github.com/containernetworking/cni/pkg/types/100"
)

// attachment is what Attach needs from the CNI result.
type attachment struct {
	tap, mac, hostVeth string
	guest              *net.IPNet
	gateway            net.IP
}

// parseResult reads the result shaped by vulcan-cni-tap (the same reading as
// firecracker-go-sdk's vmconf): the VM's pseudo-interface has sandbox = the VM id and the
// TAP's name, the TAP has sandbox = the namespace path, the guest IP points at the
// pseudo-interface; the host veth is the interface outside any sandbox that is not the
// bridge.
func parseResult(res *current.Result, vmID, netnsPath, bridge string) (attachment, error) {
	var a attachment
	vmIdx := -1
	for i, iface := range res.Interfaces {
		switch {
		case iface.Sandbox == vmID:
			if vmIdx >= 0 {
				return a, fmt.Errorf("more than one interface in sandbox %s", vmID)
			}
			vmIdx, a.mac = i, iface.Mac
		case iface.Sandbox == "" && iface.Name != bridge:
			a.hostVeth = iface.Name
		}
	}
	if vmIdx < 0 {
		return a, fmt.Errorf("no VM interface (sandbox %s); is %s last in the chain?", vmID, TAPPlugin)
	}
	a.tap = res.Interfaces[vmIdx].Name
	tapFound := false
	for _, iface := range res.Interfaces {
		if iface.Name == a.tap && iface.Sandbox == netnsPath {
			tapFound = true
		}
	}
	switch {
	case !tapFound:
		return a, fmt.Errorf("no TAP %s in %s", a.tap, netnsPath)
	case a.hostVeth == "":
		return a, errors.New("no host-side veth")
	case a.mac == "":
		return a, errors.New("VM interface has no MAC")
	}
	for _, ip := range res.IPs {
		if ip.Interface != nil && *ip.Interface == vmIdx && ip.Address.IP.To4() != nil {
			if a.guest != nil {
				return a, errors.New("more than one IPv4 address for the VM")
			}
			g := ip.Address
			a.guest, a.gateway = &g, ip.Gateway
		}
	}
	if a.guest == nil || a.gateway == nil {
		return a, errors.New("no IPv4 address with a gateway for the VM")
	}
	return a, nil
}
