package network

import (
	"fmt"
	"net"
	"strings"

	"github.com/vulcanhq/vulcan/internal/model"
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
	mSaddr                     // ip saddr
	mDaddr                     // ip daddr
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
)

type family string

const (
	famInet   family = "inet"
	famBridge family = "bridge"
)

// rule is one nft rule; vm is "" for base rules. head puts a per-VM rule before the
// chain's base rules.
type rule struct {
	family  family
	chain   string
	matches []match
	verdict verdict
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
		case mSaddr:
			fmt.Fprintf(&b, " ip saddr%s%s", op, m.value)
		case mDaddr:
			fmt.Fprintf(&b, " ip daddr%s%s", op, m.value)
		case mCtEstRel:
			b.WriteString(" ct state established,related")
		}
	}
	fmt.Fprintf(&b, " %s", r.verdict)
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

// baseRules hold for every guest on bridge br, whose gateway address is gw.
func baseRules(br string, gw net.IP) []rule {
	iif := match{kind: mIIF, value: br}
	oif := match{kind: mOIF, value: br}
	return []rule{
		// To the host: the gateway address only.
		{family: famInet, chain: "input", matches: []match{iif, {kind: mDaddr, value: gw.String()}}, verdict: vAccept},
		{family: famInet, chain: "input", matches: []match{iif}, verdict: vDrop},
		// Into guests: replies only, never new connections.
		{family: famInet, chain: "forward", matches: []match{oif, {kind: mCtEstRel}}, verdict: vAccept},
		{family: famInet, chain: "forward", matches: []match{oif}, verdict: vDrop},
		// From guests beyond the host: only what a VM's egress rule (at the head) accepts.
		{family: famInet, chain: "forward", matches: []match{iif}, verdict: vDrop},
	}
}

// vmRules are one VM's rules: its port may send IPv4 only from the address it was given,
// and nothing it sends is bridged to another port (guests never reach each other); with
// egress its forwarded traffic is accepted and masqueraded behind the host.
func vmRules(vmID string, policy model.NetworkPolicy, br, hostVeth string, guest net.IP) []rule {
	g := guest.String()
	rs := []rule{
		{family: famBridge, chain: "prerouting", vm: vmID,
			matches: []match{{kind: mIIF, value: hostVeth}, {kind: mIPv4}, {kind: mSaddr, neg: true, value: g}},
			verdict: vDrop},
		{family: famBridge, chain: "forward", vm: vmID,
			matches: []match{{kind: mIIF, value: hostVeth}}, verdict: vDrop},
	}
	if policy == model.NetworkEgress {
		rs = append(rs,
			rule{family: famInet, chain: "forward", vm: vmID, head: true,
				matches: []match{{kind: mIIF, value: br}, {kind: mSaddr, value: g}}, verdict: vAccept},
			rule{family: famInet, chain: "postrouting", vm: vmID,
				matches: []match{{kind: mSaddr, value: g}, {kind: mOIF, neg: true, value: br}}, verdict: vMasquerade},
		)
	}
	return rs
}
