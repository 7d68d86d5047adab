package nic

import (
	"net"
	"testing"
)

func TestKernelIPArg(t *testing.T) {
	for _, tc := range []struct {
		cidr, gw, want string
	}{
		{"10.213.0.5/24", "10.213.0.1", "ip=10.213.0.5::10.213.0.1:255.255.255.0::eth0:off"},
		{"10.213.3.200/16", "10.213.0.1", "ip=10.213.3.200::10.213.0.1:255.255.0.0::eth0:off"},
		{"172.16.0.9/29", "172.16.0.9", "ip=172.16.0.9::172.16.0.9:255.255.255.248::eth0:off"},
	} {
		ip, n, err := net.ParseCIDR(tc.cidr)
		if err != nil {
			t.Fatal(err)
		}
		nw := &NIC{GuestIP: &net.IPNet{IP: ip, Mask: n.Mask}, Gateway: net.ParseIP(tc.gw)}
		if got := nw.KernelIPArg(); got != tc.want {
			t.Errorf("%s via %s: got %q, want %q", tc.cidr, tc.gw, got, tc.want)
		}
	}
	long := &NIC{GuestIP: &net.IPNet{IP: net.ParseIP("10.213.0.7"), Mask: net.CIDRMask(120, 128)}, Gateway: net.ParseIP("10.213.0.1")}
	if got, want := long.KernelIPArg(), "ip=10.213.0.7::10.213.0.1:255.255.255.0::eth0:off"; got != want {
		t.Errorf("16-byte mask: got %q, want %q", got, want)
	}
	dns := &NIC{GuestIP: &net.IPNet{IP: net.ParseIP("10.213.0.7"), Mask: net.CIDRMask(24, 32)}, Gateway: net.ParseIP("10.213.0.1"),
		DNS: []net.IP{net.ParseIP("192.0.2.53"), net.ParseIP("192.0.2.54"), net.ParseIP("192.0.2.55")}}
	if got, want := dns.KernelIPArg(), "ip=10.213.0.7::10.213.0.1:255.255.255.0::eth0:off:192.0.2.53:192.0.2.54"; got != want {
		t.Errorf("with DNS: got %q, want %q (the kernel takes two)", got, want)
	}
	if got := (*NIC)(nil).KernelIPArg(); got != "" {
		t.Errorf("nil network: %q", got)
	}
}
