package network

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/network/netrules"
)

// The nft policy, as data: base rules installed with the tables and per-VM rules keyed by
// the VM's id. The Linux side compiles each rule to nftables expressions; String renders
// it the way `nft list` does, so tests pin the policy without root.

// vmTagPrefix starts the comment of every per-VM rule.
const vmTagPrefix = "vulcan:vm="

type matchKind int

const (
	mIIF      matchKind = iota // iifname (inet: the bridge; bridge family: the port)
	mOIF                       // oifname
	mBrIIF                     // meta ibrname: frames that entered through this bridge
	mIPv4                      // meta protocol ip
	mIPv6                      // meta protocol ip6
	mSaddr                     // ip saddr (an address)
	mDaddr                     // ip daddr (an address or a CIDR)
	mDaddrSet                  // ip daddr @set
	mL4                        // "udp dport 53": the transport protocol and destination port
	mCtEstRel                  // ct state established,related
)

type match struct {
	kind  matchKind
	neg   bool
	value string
}

type verdict string

const (
	vAccept     verdict = "accept"
	vDrop       verdict = "drop"
	vMasquerade verdict = "masquerade"
	vJump       verdict = "jump"
)

type family string

const (
	famInet   family = "inet"
	famBridge family = "bridge"
)

// rule is one nft rule; vm is "" for base rules. head puts a per-VM rule before the
// chain's base rules. target is the chain a jump goes to.
type rule struct {
	family  family
	chain   string
	matches []match
	verdict verdict
	target  string
	vm      string
	head    bool
}

func (r rule) comment() string {
	if r.vm == "" {
		return ""
	}
	return vmTagPrefix + r.vm
}

// String renders the rule like `nft list ruleset` does, prefixed by family and chain.
func (r rule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s:", r.family, r.chain)
	for _, m := range r.matches {
		op := " "
		if m.neg {
			op = " != "
		}
		switch m.kind {
		case mIIF:
			fmt.Fprintf(&b, " iifname%s%q", op, m.value)
		case mOIF:
			fmt.Fprintf(&b, " oifname%s%q", op, m.value)
		case mIPv4:
			b.WriteString(" meta protocol ip")
		case mIPv6:
			b.WriteString(" meta protocol ip6")
		case mSaddr:
			fmt.Fprintf(&b, " ip saddr%s%s", op, m.value)
		case mDaddr:
			fmt.Fprintf(&b, " ip daddr%s%s", op, m.value)
		case mDaddrSet:
			fmt.Fprintf(&b, " ip daddr%s@%s", op, m.value)
		case mL4:
			proto, port, _ := strings.Cut(m.value, "/")
			fmt.Fprintf(&b, " %s dport %s", proto, port)
		case mCtEstRel:
			b.WriteString(" ct state established,related")
		}
	}
	fmt.Fprintf(&b, " %s", r.verdict)
	if r.target != "" {
		fmt.Fprintf(&b, " %s", r.target)
	}
	if c := r.comment(); c != "" {
		fmt.Fprintf(&b, " comment %q", c)
	}
	return b.String()
}

// chainSpec is a base chain of one of the tables.
type chainSpec struct {
	family   family
	name     string
	hook     string // input, forward, prerouting, postrouting
	nat      bool
	priority int
}

// chains are the base chains, all with policy accept: Vulcan's rules only ever drop
// traffic of its own bridge, and leave the rest of the host alone.
var chains = []chainSpec{
	{famInet, "input", "input", false, 0},
	{famInet, "forward", "forward", false, 0},
	{famInet, "postrouting", "postrouting", true, 100},
	{famBridge, "forward", "forward", false, 0},
	{famBridge, "prerouting", "prerouting", false, 0},
}

// Service is a port Vulcan itself serves guests on the gateway address: the only ports of
// the host a guest reaches.
type Service struct {
	Proto string // "udp" or "tcp"
	Port  uint16
}

func (s Service) String() string { return fmt.Sprintf("%s/%d", s.Proto, s.Port) }

// DNSServices are the DNS gate's ports.
var DNSServices = []Service{{"udp", 53}, {"tcp", 53}}

// vmChain is the regular chain holding one egress VM's verdicts; dnsSet the set of the
// addresses the DNS gate answered it, each for its TTL.
func vmChain(vmID string) string { return "vm-" + vmID }
func dnsSet(vmID string) string  { return "dns-" + vmID }

// baseRules hold for every guest on bridge br, whose gateway address is gw and whose
// host services are services.
func baseRules(br string, gw net.IP, services []Service) []rule {
	iif := match{kind: mIIF, value: br}
	oif := match{kind: mOIF, value: br}
	var rs []rule
	// To the host: Vulcan's own services on the gateway address, and nothing else.
	for _, s := range services {
		rs = append(rs, rule{family: famInet, chain: "input",
			matches: []match{iif, {kind: mDaddr, value: gw.String()}, {kind: mL4, value: s.String()}}, verdict: vAccept})
	}
	return append(rs,
		rule{family: famInet, chain: "input", matches: []match{iif}, verdict: vDrop},
		// Into guests: replies only, never new connections.
		rule{family: famInet, chain: "forward", matches: []match{oif, {kind: mCtEstRel}}, verdict: vAccept},
		rule{family: famInet, chain: "forward", matches: []match{oif}, verdict: vDrop},
		// From guests beyond the host: only what a VM's chain (jumped to from the head) accepts.
		rule{family: famInet, chain: "forward", matches: []match{iif}, verdict: vDrop},
	)
}

// vmSpec is what one VM's rules depend on.
type vmSpec struct {
	id       string
	policy   model.NetworkPolicy
	bridge   string
	hostVeth string
	guest    net.IP
	subnet   *net.IPNet // the server's guest subnet: other guests
	rules    netrules.Rules
}

// usesDNSSet: the VM's chain accepts what the DNS gate answered it (an allow list with
// names); otherwise there is no set.
func (s vmSpec) usesDNSSet() bool {
	return s.policy == model.NetworkEgress && len(s.rules.AllowNames) > 0
}

// vmRules are one VM's rules: its port may send IPv4 only from the address it was given
// and no IPv6, and nothing it sends is bridged to another port (guests never reach each
// other). With egress, its forwarded traffic jumps to its own chain (vmChain), which
// decides in the order netrules documents, and is masqueraded behind the host.
func vmRules(s vmSpec) []rule {
	g := s.guest.String()
	rs := []rule{
		{family: famBridge, chain: "prerouting", vm: s.id,
			matches: []match{{kind: mIIF, value: s.hostVeth}, {kind: mIPv4}, {kind: mSaddr, neg: true, value: g}},
			verdict: vDrop},
		{family: famBridge, chain: "prerouting", vm: s.id,
			matches: []match{{kind: mIIF, value: s.hostVeth}, {kind: mIPv6}}, verdict: vDrop},
		{family: famBridge, chain: "forward", vm: s.id,
			matches: []match{{kind: mIIF, value: s.hostVeth}}, verdict: vDrop},
	}
	if s.policy != model.NetworkEgress {
		return rs
	}
	ch := vmChain(s.id)
	rs = append(rs,
		rule{family: famInet, chain: "forward", vm: s.id, head: true,
			matches: []match{{kind: mIIF, value: s.bridge}, {kind: mSaddr, value: g}}, verdict: vJump, target: ch},
		rule{family: famInet, chain: "postrouting", vm: s.id,
			matches: []match{{kind: mSaddr, value: g}, {kind: mOIF, neg: true, value: s.bridge}}, verdict: vMasquerade},
	)
	to := func(cidr string, v verdict) rule {
		return rule{family: famInet, chain: ch, vm: s.id, matches: []match{{kind: mDaddr, value: cidr}}, verdict: v}
	}
	// A flow the chain let start lives on when a name's TTL ends.
	rs = append(rs, rule{family: famInet, chain: ch, vm: s.id, matches: []match{{kind: mCtEstRel}}, verdict: vAccept})
	for _, f := range netrules.Fixed {
		rs = append(rs, to(f.Prefix.String(), vDrop))
	}
	if s.subnet != nil {
		rs = append(rs, to(s.subnet.String(), vDrop))
	}
	for _, p := range s.rules.DenyNets {
		rs = append(rs, to(p.String(), vDrop))
	}
	for _, p := range s.rules.AllowNets {
		rs = append(rs, to(p.String(), vAccept))
	}
	for _, b := range netrules.Blocked {
		rs = append(rs, to(b.Prefix.String(), vDrop))
	}
	switch {
	case s.usesDNSSet():
		rs = append(rs, rule{family: famInet, chain: ch, vm: s.id,
			matches: []match{{kind: mDaddrSet, value: dnsSet(s.id)}}, verdict: vAccept})
	case !s.rules.AllowList():
		rs = append(rs, rule{family: famInet, chain: ch, vm: s.id, verdict: vAccept})
	}
	// Whatever the chain leaves falls back to the forward chain's drop.
	return rs
}

// ParseServices reads "tcp/8080,udp/5000" (VULCAN_NETWORK_SERVICES); "" is none.
func ParseServices(s string) ([]Service, error) {
	var out []Service
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		proto, port, _ := strings.Cut(f, "/")
		n, err := strconv.ParseUint(port, 10, 16)
		if (proto != "tcp" && proto != "udp") || err != nil || n == 0 {
			return nil, fmt.Errorf("service %q: want tcp/PORT or udp/PORT", f)
		}
		out = append(out, Service{Proto: proto, Port: uint16(n)})
	}
	return out, nil
}
