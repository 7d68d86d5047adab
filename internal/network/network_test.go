package network

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/network/netrules"
)

func TestConflistPinned(t *testing.T) {
	sub, err := parseSubnet("10.213.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "cniVersion": "1.1.0",
  "name": "vulcan-k3f9q2zt",
  "plugins": [
    {
      "bridge": "vulcan-k3f9q2zt",
      "hairpinMode": false,
      "ipMasq": false,
      "ipam": {
        "dataDir": "/var/lib/vulcan/cni/ipam",
        "ranges": [
          [
            {
              "gateway": "10.213.0.1",
              "subnet": "10.213.0.0/24"
            }
          ]
        ],
        "type": "host-local"
      },
      "isGateway": true,
      "type": "bridge"
    },
    {
      "tapName": "tap0",
      "type": "vulcan-cni-tap"
    }
  ]
}`
	if got := string(Conflist(NamesFor("k3f9q2zt"), sub, "/var/lib/vulcan/cni/ipam")); got != want {
		t.Errorf("conflist:\n%s\nwant:\n%s", got, want)
	}
}

// TestNamesPinned: every host-global name carries the instance id, and the bridge's
// still fits an interface name at the id's full length.
func TestNamesPinned(t *testing.T) {
	n := NamesFor("k3f9q2zt")
	if got, want := fmt.Sprintf("%+v", n), "{Bridge:vulcan-k3f9q2zt Table:vulcan-k3f9q2zt Network:vulcan-k3f9q2zt NetNSPrefix:vulcan-k3f9q2zt-}"; got != want {
		t.Errorf("names %s, want %s", got, want)
	}
	if got := n.NetNS("01JZ3Q8W1K2V5XG7H9M4N6P8RT"); got != "vulcan-k3f9q2zt-01JZ3Q8W1K2V5XG7H9M4N6P8RT" {
		t.Errorf("netns %s", got)
	}
	if err := validIfName(n.Bridge); err != nil || len(n.Bridge) != 15 {
		t.Errorf("bridge %q (%d bytes): %v", n.Bridge, len(n.Bridge), err)
	}
	l := layout{dir: "/d/cni", network: n.Network}
	if l.conflist() != "/d/cni/vulcan-k3f9q2zt.conflist" || l.leaseDir() != "/d/cni/ipam/vulcan-k3f9q2zt" || l.cacheDir() != "/d/cni/cache" {
		t.Errorf("layout %s %s %s", l.conflist(), l.leaseDir(), l.cacheDir())
	}
	// What servers before instance ids used, and where they kept their conflist.
	if got := fmt.Sprintf("%+v", legacy); got != "{Bridge:vulcan0 Table:vulcan Network:vulcan NetNSPrefix:vulcan-}" {
		t.Errorf("legacy names %s", got)
	}
	if got := (layout{dir: "/d/cni", network: legacy.Network}).conflist(); got != "/d/cni/vulcan.conflist" {
		t.Errorf("legacy conflist %s", got)
	}
	// One instance's prefix never matches another's namespaces, even when one id is a
	// prefix of the other; legacy names (vulcan-<ULID>) are told apart from current ones.
	if strings.HasPrefix(NamesFor("abcd").NetNS("x"), NamesFor("abc").NetNSPrefix) {
		t.Error("instance abc's prefix matches instance abcd's namespaces")
	}
	for name, current := range map[string]bool{
		"vulcan-k3f9q2zt-01JZ3Q8W1K2V5XG7H9M4N6P8RT": true,
		"vulcan-01JZ3Q8W1K2V5XG7H9M4N6P8RT":          false,
		"vulcan-abc-vm1":                             true,
	} {
		if currentNetNSRe.MatchString(name) != current {
			t.Errorf("%s: current naming %v, want %v", name, !current, current)
		}
	}
}

func TestParseSubnet(t *testing.T) {
	for _, tc := range []struct{ in, gw, err string }{
		{"10.213.0.0/24", "10.213.0.1", ""},
		{"10.213.0.0/16", "10.213.0.1", ""},
		{"192.168.50.0/29", "192.168.50.1", ""},
		{"10.213.0.1/24", "", "host bits"},
		{"10.213.0.0/30", "", "too small"},
		{"8.8.8.0/24", "", "not a private range"},
		{"fd00::/64", "", "only IPv4"},
		{"nonsense", "", "invalid CIDR"},
	} {
		s, err := parseSubnet(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || s.gateway.String() != tc.gw {
			t.Errorf("%s: gateway %v err %v, want %s", tc.in, s.gateway, err, tc.gw)
		}
	}
}

func TestRulesPinned(t *testing.T) {
	render := func(rs []rule) string {
		var out []string
		for _, r := range rs {
			out = append(out, r.String())
		}
		return strings.Join(out, "\n")
	}
	if got, want := render(baseRules("vulcan0", net.ParseIP("10.213.0.1"), append(DNSServices, Service{"tcp", 8000}))), strings.Join([]string{
		`inet input: iifname "vulcan0" ip daddr 10.213.0.1 udp dport 53 accept`,
		`inet input: iifname "vulcan0" ip daddr 10.213.0.1 tcp dport 53 accept`,
		`inet input: iifname "vulcan0" ip daddr 10.213.0.1 tcp dport 8000 accept`,
		`inet input: iifname "vulcan0" drop`,
		`inet forward: oifname "vulcan0" ct state established,related accept`,
		`inet forward: oifname "vulcan0" drop`,
		`inet forward: iifname "vulcan0" drop`,
	}, "\n"); got != want {
		t.Errorf("base rules:\n%s\nwant:\n%s", got, want)
	}
	// Without a DNS gate or services, no port of the host is open to guests.
	if got := render(baseRules("vulcan0", net.ParseIP("10.213.0.1"), nil)); strings.Contains(got, "accept") && strings.Contains(got, "inet input") && strings.Contains(got, "dport") {
		t.Errorf("ports open without services:\n%s", got)
	}
	_, subnet, _ := net.ParseCIDR("10.213.0.0/24")
	spec := vmSpec{id: "wl1", policy: model.NetworkHost, bridge: "vulcan0", hostVeth: "veth1234",
		guest: net.ParseIP("10.213.0.5"), subnet: subnet}
	host := []string{
		`bridge prerouting: iifname "veth1234" meta protocol ip ip saddr != 10.213.0.5 drop comment "vulcan:vm=wl1"`,
		`bridge prerouting: iifname "veth1234" meta protocol ip6 drop comment "vulcan:vm=wl1"`,
		`bridge forward: iifname "veth1234" drop comment "vulcan:vm=wl1"`,
	}
	if got := render(vmRules(spec)); got != strings.Join(host, "\n") {
		t.Errorf("host policy:\n%s", got)
	}
	// The egress chain, in the order netrules documents: established flows, never
	// (Fixed, the guest subnet), deny, allow, blocked by default, then the rest.
	head := append(append([]string{}, host...),
		`inet forward: iifname "vulcan0" ip saddr 10.213.0.5 jump vm-wl1 comment "vulcan:vm=wl1"`,
		`inet postrouting: ip saddr 10.213.0.5 oifname != "vulcan0" masquerade comment "vulcan:vm=wl1"`,
		`inet vm-wl1: ct state established,related accept comment "vulcan:vm=wl1"`,
		`inet vm-wl1: ip daddr 0.0.0.0/8 drop comment "vulcan:vm=wl1"`,
		`inet vm-wl1: ip daddr 127.0.0.0/8 drop comment "vulcan:vm=wl1"`,
		`inet vm-wl1: ip daddr 169.254.0.0/16 drop comment "vulcan:vm=wl1"`,
		`inet vm-wl1: ip daddr 224.0.0.0/4 drop comment "vulcan:vm=wl1"`,
		`inet vm-wl1: ip daddr 240.0.0.0/4 drop comment "vulcan:vm=wl1"`,
		`inet vm-wl1: ip daddr 10.213.0.0/24 drop comment "vulcan:vm=wl1"`,
	)
	blocked := []string{
		`inet vm-wl1: ip daddr 10.0.0.0/8 drop comment "vulcan:vm=wl1"`,
		`inet vm-wl1: ip daddr 100.64.0.0/10 drop comment "vulcan:vm=wl1"`,
		`inet vm-wl1: ip daddr 172.16.0.0/12 drop comment "vulcan:vm=wl1"`,
		`inet vm-wl1: ip daddr 192.0.0.0/24 drop comment "vulcan:vm=wl1"`,
		`inet vm-wl1: ip daddr 192.88.99.0/24 drop comment "vulcan:vm=wl1"`,
		`inet vm-wl1: ip daddr 192.168.0.0/16 drop comment "vulcan:vm=wl1"`,
		`inet vm-wl1: ip daddr 198.18.0.0/15 drop comment "vulcan:vm=wl1"`,
	}
	spec.policy = model.NetworkEgress
	rs := vmRules(spec)
	want := append(append(append([]string{}, head...), blocked...), `inet vm-wl1: accept comment "vulcan:vm=wl1"`)
	if got := render(rs); got != strings.Join(want, "\n") {
		t.Errorf("egress policy:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	// The jump must precede the base drops of its chain; nothing else is at a head.
	for i, r := range rs {
		if r.head != (i == 3) {
			t.Errorf("rule %d (%s): head %v", i, r, r.head)
		}
	}
	if spec.usesDNSSet() {
		t.Error("a DNS set without name rules")
	}

	// With lists: deny before allow, an allowed private CIDR before the default blocks,
	// the DNS set last; with an allow list in force nothing else is accepted.
	parse := func(allow, deny []string) netrules.Rules {
		r, err := netrules.Parse(&model.NetworkRules{Allow: allow, Deny: deny})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	spec.rules = parse([]string{"203.0.113.0/24", "10.1.2.0/24", "example.com", "*.pypi.org"}, []string{"203.0.113.66", "bad.example.com"})
	want = append(append([]string{}, head...),
		`inet vm-wl1: ip daddr 203.0.113.66/32 drop comment "vulcan:vm=wl1"`,
		`inet vm-wl1: ip daddr 203.0.113.0/24 accept comment "vulcan:vm=wl1"`,
		`inet vm-wl1: ip daddr 10.1.2.0/24 accept comment "vulcan:vm=wl1"`,
	)
	want = append(append(want, blocked...), `inet vm-wl1: ip daddr @dns-wl1 accept comment "vulcan:vm=wl1"`)
	if got := render(vmRules(spec)); got != strings.Join(want, "\n") {
		t.Errorf("egress with lists:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	if !spec.usesDNSSet() {
		t.Error("no DNS set with allowed names")
	}
	// An allow list of CIDRs only: no set, and no accept-the-rest.
	spec.rules = parse([]string{"203.0.113.0/24"}, nil)
	got := render(vmRules(spec))
	if strings.Contains(got, "@dns-") || strings.HasSuffix(got, `vm-wl1: accept comment "vulcan:vm=wl1"`) || spec.usesDNSSet() {
		t.Errorf("CIDR allow list:\n%s", got)
	}
	// Deny names only: the open policy, names are the gate's business.
	spec.rules = parse(nil, []string{"*.tracker.test"})
	if got := render(vmRules(spec)); !strings.HasSuffix(got, `inet vm-wl1: accept comment "vulcan:vm=wl1"`) || spec.usesDNSSet() {
		t.Errorf("deny names only:\n%s", got)
	}
}

func result(t *testing.T, js string) *current.Result {
	t.Helper()
	r, err := current.NewResult([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return r.(*current.Result)
}

// shaped is a result as vulcan-cni-tap returns it after bridge.
const shaped = `{"cniVersion":"1.1.0",
 "interfaces":[
  {"name":"vulcan0","mac":"aa:aa:aa:aa:aa:aa"},
  {"name":"veth0a1b2c3d","mac":"bb:bb:bb:bb:bb:bb"},
  {"name":"eth0","mac":"02:00:00:00:00:05","sandbox":"/run/netns/vulcan-wl1"},
  {"name":"tap0","mac":"cc:cc:cc:cc:cc:cc","sandbox":"/run/netns/vulcan-wl1"},
  {"name":"tap0","mac":"02:00:00:00:00:05","sandbox":"wl1"}],
 "ips":[{"interface":4,"address":"10.213.0.5/24","gateway":"10.213.0.1"}]}`

func TestParseResult(t *testing.T) {
	a, err := parseResult(result(t, shaped), "wl1", "/run/netns/vulcan-wl1", "vulcan0")
	if err != nil {
		t.Fatal(err)
	}
	if a.tap != "tap0" || a.mac != "02:00:00:00:00:05" || a.hostVeth != "veth0a1b2c3d" ||
		a.guest.String() != "10.213.0.5/24" || a.gateway.String() != "10.213.0.1" {
		t.Errorf("%+v", a)
	}
	for name, js := range map[string]string{
		"no VM interface (bridge alone)": strings.Replace(shaped, `"sandbox":"wl1"`, `"sandbox":"other"`, 1),
		"IP still on the veth":           strings.Replace(shaped, `"interface":4`, `"interface":2`, 1),
		"no TAP in the namespace":        strings.Replace(shaped, `"name":"tap0","mac":"cc`, `"name":"tap9","mac":"cc`, 1),
		"no gateway":                     strings.Replace(shaped, `,"gateway":"10.213.0.1"`, ``, 1),
	} {
		if _, err := parseResult(result(t, js), "wl1", "/run/netns/vulcan-wl1", "vulcan0"); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestCheckNamesWhatIsMissing(t *testing.T) {
	err := Check(t.TempDir())
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err %v, want ErrUnavailable", err)
	}
	if !strings.Contains(err.Error(), "root") && !strings.Contains(err.Error(), "bridge, host-local, vulcan-cni-tap") {
		t.Errorf("reason does not say what is missing: %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	for name, c := range map[string]Config{
		"no state dir":         {BinDir: "/x", Instance: "abc"},
		"no bin dir":           {StateDir: "/x", Instance: "abc"},
		"no instance":          {StateDir: "/x", BinDir: "/x"},
		"instance too long":    {StateDir: "/x", BinDir: "/x", Instance: "abcdefghj"},
		"instance upper case":  {StateDir: "/x", BinDir: "/x", Instance: "ABC"},
		"instance with a dash": {StateDir: "/x", BinDir: "/x", Instance: "a-b"},
	} {
		if err := c.defaults(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for _, id := range []string{"", "../etc", "a b", strings.Repeat("x", 65)} {
		if checkVMID(id) == nil {
			t.Errorf("VM id %q accepted", id)
		}
	}
}

func TestHostDNS(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte("# generated\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch example\nnameserver ::1\nnameserver 2001:db8::1\nnameserver 192.0.2.2\n"), 0o644)
	var got []string
	for _, ip := range HostDNS(p) {
		got = append(got, ip.String())
	}
	// Loopback stubs and IPv6 are useless to a guest.
	if strings.Join(got, ",") != "192.0.2.1,192.0.2.2" {
		t.Errorf("HostDNS = %v", got)
	}
	if HostDNS(filepath.Join(t.TempDir(), "absent")) != nil {
		t.Error("servers from a missing file")
	}
}
