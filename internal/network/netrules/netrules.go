// Package netrules reads a workload's network_rules (model.NetworkRules): allow and deny
// lists of IPv4 addresses or CIDRs, exact domain names and "*.suffix" patterns. It is pure
// Go without the host's networking, so the engine validates with it and the network
// package and the DNS gate decide with it.
//
// The precedence, for an egress guest (the README's Networking section says the same):
//
//  1. Never reachable, whatever the rules: Fixed (loopback, "this network", link-local with
//     the cloud metadata address, multicast, the reserved 240/4 and broadcast), the
//     server's own guest subnet (other guests) and the host's own addresses.
//  2. Deny beats allow: an address in a deny CIDR, or a name a deny entry matches, is
//     refused even when an allow entry covers it too.
//  3. An allow CIDR opens what it covers, private ranges included (an explicit
//     "10.1.2.0/24" reaches a LAN), except what 1 holds.
//  4. Blocked by default (private and reserved ranges: RFC 1918, CGNAT 100.64/10, ...) unless
//     3 opened it: also when an allowed name resolves into them.
//  5. With an allow list in force (any allow entry), only what it names is reachable: its
//     CIDRs, and the addresses the DNS gate answered for its names, for their TTL. Names
//     it does not match do not resolve. Without one, the rest of the internet is reachable
//     and every name not denied resolves.
package netrules

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/vulcanhq/vulcan/internal/model"
)

// Limits on one workload's rules.
const (
	MaxEntries   = 64  // per list
	MaxEntryLen  = 255 // bytes of one entry ("*." and a 253-byte name)
	maxNameBytes = 253 // RFC 1035, in text form without the final dot
)

// Range is a named IPv4 range of the policy.
type Range struct {
	Prefix netip.Prefix
	Why    string
}

func r(cidr, why string) Range { return Range{netip.MustParsePrefix(cidr), why} }

// Fixed can never be reached by a guest: no rule opens them.
var Fixed = []Range{
	r("0.0.0.0/8", `"this network"`),
	r("127.0.0.0/8", "loopback"),
	r("169.254.0.0/16", "link-local (the cloud metadata address 169.254.169.254)"),
	r("224.0.0.0/4", "multicast"),
	r("240.0.0.0/4", "reserved (and the broadcast address)"),
}

// Blocked are closed by default for egress guests; an allow CIDR may open them. The
// documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) are not here: they
// are never routed on the internet, and the tests use them as the internet.
var Blocked = []Range{
	r("10.0.0.0/8", "private (RFC 1918)"),
	r("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
	r("172.16.0.0/12", "private (RFC 1918)"),
	r("192.0.0.0/24", "IETF protocol assignments"),
	r("192.88.99.0/24", "6to4 relay anycast (deprecated)"),
	r("192.168.0.0/16", "private (RFC 1918)"),
	r("198.18.0.0/15", "benchmarking (RFC 2544)"),
}

// Name is one name rule: the exact Domain, or with Suffix any name below it.
type Name struct {
	Domain string // lower case, no final dot
	Suffix bool
}

func (n Name) String() string {
	if n.Suffix {
		return "*." + n.Domain
	}
	return n.Domain
}

// Matches reports whether the query name (any case, final dot or not) is covered.
func (n Name) Matches(qname string) bool {
	q := strings.TrimSuffix(strings.ToLower(qname), ".")
	if n.Suffix {
		return strings.HasSuffix(q, "."+n.Domain)
	}
	return q == n.Domain
}

// Rules are parsed network rules.
type Rules struct {
	AllowNets, DenyNets   []netip.Prefix
	AllowNames, DenyNames []Name
}

// Empty reports whether there is no rule at all (the default egress policy).
func (r Rules) Empty() bool {
	return len(r.AllowNets)+len(r.DenyNets)+len(r.AllowNames)+len(r.DenyNames) == 0
}

// AllowList reports whether an allow list is in force: then only what it names is reached.
func (r Rules) AllowList() bool { return len(r.AllowNets)+len(r.AllowNames) > 0 }

// HasNames reports whether any rule is a name (the guest's names then need the DNS gate).
func (r Rules) HasNames() bool { return len(r.AllowNames)+len(r.DenyNames) > 0 }

// NameAllowed says whether the DNS gate may resolve qname for a guest under these rules.
func (r Rules) NameAllowed(qname string) bool {
	for _, n := range r.DenyNames {
		if n.Matches(qname) {
			return false
		}
	}
	if !r.AllowList() {
		return true
	}
	for _, n := range r.AllowNames {
		if n.Matches(qname) {
			return true
		}
	}
	return false
}

// Check validates a spec's rules for its policy and returns them normalised (names lower
// case without a final dot, bare addresses as /32, duplicates dropped; nil when there is
// no entry). Its error is a *model.FieldError naming the entry at fault.
func Check(policy model.NetworkPolicy, in *model.NetworkRules) (*model.NetworkRules, error) {
	if in == nil || len(in.Allow)+len(in.Deny) == 0 {
		return nil, nil
	}
	if policy != model.NetworkEgress {
		return nil, &model.FieldError{Field: "network_rules",
			Reason: fmt.Sprintf("network_rules apply to network egress only (network is %q)", policy)}
	}
	out := &model.NetworkRules{}
	for _, l := range []struct {
		name string
		in   []string
		out  *[]string
		deny bool
	}{{"allow", in.Allow, &out.Allow, false}, {"deny", in.Deny, &out.Deny, true}} {
		if len(l.in) > MaxEntries {
			return nil, &model.FieldError{Field: "network_rules." + l.name,
				Reason: fmt.Sprintf("network_rules.%s has %d entries; at most %d", l.name, len(l.in), MaxEntries)}
		}
		for i, e := range l.in {
			field := fmt.Sprintf("network_rules.%s[%d]", l.name, i)
			norm, err := entry(e, l.deny)
			if err != nil {
				return nil, &model.FieldError{Field: field, Reason: fmt.Sprintf("%s: %v", field, err)}
			}
			if !slices.Contains(*l.out, norm) {
				*l.out = append(*l.out, norm)
			}
		}
	}
	return out, nil
}

// Parse reads rules Check has accepted (it checks again: what comes from the store or a
// caller other than the engine is not trusted).
func Parse(in *model.NetworkRules) (Rules, error) {
	var out Rules
	if in == nil {
		return out, nil
	}
	n, err := Check(model.NetworkEgress, in)
	if err != nil || n == nil {
		return out, err
	}
	for _, l := range []struct {
		in    []string
		nets  *[]netip.Prefix
		names *[]Name
	}{{n.Allow, &out.AllowNets, &out.AllowNames}, {n.Deny, &out.DenyNets, &out.DenyNames}} {
		for _, e := range l.in {
			if p, err := netip.ParsePrefix(e); err == nil {
				*l.nets = append(*l.nets, p)
				continue
			}
			if d, ok := strings.CutPrefix(e, "*."); ok {
				*l.names = append(*l.names, Name{Domain: d, Suffix: true})
			} else {
				*l.names = append(*l.names, Name{Domain: e})
			}
		}
	}
	return out, nil
}

// entry checks one entry and returns its normal form.
func entry(e string, deny bool) (string, error) {
	if e == "" {
		return "", fmt.Errorf("empty entry")
	}
	if len(e) > MaxEntryLen {
		return "", fmt.Errorf("%d bytes; an entry has at most %d", len(e), MaxEntryLen)
	}
	if strings.ContainsAny(e, ":/") || isAddrLike(e) {
		return prefix(e, deny)
	}
	s := strings.TrimSuffix(strings.ToLower(e), ".")
	suffix := false
	if rest, ok := strings.CutPrefix(s, "*."); ok {
		s, suffix = rest, true
	}
	if err := domain(s); err != nil {
		if strings.Contains(s, "*") {
			return "", fmt.Errorf("%q: a wildcard is only a leading \"*.\" (\"*.example.com\")", e)
		}
		return "", fmt.Errorf("%q: %v", e, err)
	}
	if suffix {
		return "*." + s, nil
	}
	return s, nil
}

// isAddrLike: digits and dots only, so meant as an address (a name's last label is never
// all digits).
func isAddrLike(e string) bool {
	return strings.Trim(e, "0123456789.") == ""
}

func prefix(e string, deny bool) (string, error) {
	var p netip.Prefix
	if strings.Contains(e, "/") {
		var err error
		if p, err = netip.ParsePrefix(e); err != nil {
			return "", fmt.Errorf("%q is not a CIDR", e)
		}
	} else {
		a, err := netip.ParseAddr(e)
		if err != nil {
			return "", fmt.Errorf("%q is not an IP address", e)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if !p.Addr().Is4() {
		return "", fmt.Errorf("%q: guests have no IPv6; give IPv4 addresses and CIDRs", e)
	}
	if p.Masked() != p {
		return "", fmt.Errorf("%q has bits set past its /%d (did you mean %s?)", e, p.Bits(), p.Masked())
	}
	if !deny {
		for _, f := range Fixed {
			if f.Prefix.Bits() <= p.Bits() && f.Prefix.Contains(p.Addr()) {
				return "", fmt.Errorf("%s is %s, which no rule opens", p, f.Why)
			}
		}
	}
	return p.String(), nil
}

// domain checks a name in text form: 1-63-byte labels of letters, digits, '-' (not at a
// label's ends) and '_', at most 253 bytes, at least two labels, the last not all digits.
func domain(s string) error {
	if s == "" {
		return fmt.Errorf("empty name")
	}
	if len(s) > maxNameBytes {
		return fmt.Errorf("name of %d bytes; at most %d", len(s), maxNameBytes)
	}
	labels := strings.Split(s, ".")
	if len(labels) < 2 {
		return fmt.Errorf("not a domain name (want at least two labels, e.g. example.com)")
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return fmt.Errorf("label %q: want 1-63 bytes", l)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", l)
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("label %q: only letters, digits, '-' and '_'", l)
			}
		}
	}
	if isAddrLike(labels[len(labels)-1]) {
		return fmt.Errorf("the last label is all digits")
	}
	return nil
}
