package dnsgate

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/network/netrules"
)

// upstream is a test resolver on loopback: names map to addresses (TTL 5), "alias.test."
// is a CNAME to "cdn.test.", unknown names are NXDOMAIN. It counts the queries it got.
type upstream struct {
	addr string
	mu   sync.Mutex
	asks []string
}

func newUpstream(t *testing.T, names map[string]string) *upstream {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{addr: pc.LocalAddr().String()}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		q := r.Question[0]
		u.mu.Lock()
		u.asks = append(u.asks, dns.TypeToString[q.Qtype]+" "+q.Name)
		u.mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(r)
		name := strings.ToLower(q.Name)
		if name == "alias.test." {
			m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 300}, Target: "cdn.test."})
			name = "cdn.test."
		}
		ip, ok := names[name]
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.ParseIP(ip)})
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { pc.Close() })
	return u
}

func (u *upstream) asked() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return strings.Join(u.asks, ",")
}

func rules(t *testing.T, allow, deny []string) netrules.Rules {
	t.Helper()
	r, err := netrules.Parse(&model.NetworkRules{Allow: allow, Deny: deny})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func query(name string, qtype uint16, edns bool) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	if edns {
		m.SetEdns0(1232, false)
	}
	return m
}

type learnt struct {
	mu  sync.Mutex
	got []string
	err error
}

func (l *learnt) learn(addrs []net.IP, ttl time.Duration) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, a := range addrs {
		l.got = append(l.got, a.String()+"@"+ttl.String())
	}
	return l.err
}

// TestAnswer: the gate's decision for each kind of query.
func TestAnswer(t *testing.T) {
	up := newUpstream(t, map[string]string{"example.com.": "203.0.113.10", "files.pypi.org.": "203.0.113.11",
		"cdn.test.": "203.0.113.12", "bad.example.com.": "203.0.113.13", "other.test.": "203.0.113.14"})
	g := New(Config{Upstreams: []string{up.addr}, MaxTTL: 2 * time.Minute})
	l := &learnt{}
	guest := Guest{VM: "vm1", Rules: rules(t, []string{"example.com", "*.pypi.org", "alias.test", "*.example.com"}, []string{"bad.example.com"}), Learn: l.learn}

	// Allowed: forwarded, answered, its address learnt for at least MinTTL (the
	// upstream's TTL is 5 s) before the answer is returned.
	r := g.Answer(guest, true, query("Example.COM", dns.TypeA, false))
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "203.0.113.10" {
		t.Fatalf("allowed name: %v", r)
	}
	if strings.Join(l.got, ",") != "203.0.113.10@30s" {
		t.Errorf("learnt %v", l.got)
	}
	// A CNAME chain: the final addresses are learnt too.
	l.got = nil
	if r := g.Answer(guest, true, query("alias.test", dns.TypeA, false)); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 {
		t.Errorf("alias: %v", r)
	}
	if strings.Join(l.got, ",") != "203.0.113.12@30s" {
		t.Errorf("learnt through a CNAME: %v", l.got)
	}
	if r := g.Answer(guest, true, query("files.pypi.org", dns.TypeA, false)); r.Rcode != dns.RcodeSuccess {
		t.Errorf("*.pypi.org: %v", r)
	}

	// Not allowed, or denied (deny beats *.example.com): NXDOMAIN, the upstream never asked;
	// with EDNS the answer says Blocked.
	before := up.asked()
	for _, name := range []string{"other.test", "bad.example.com", "pypi.org", "example.com.evil.test"} {
		r := g.Answer(guest, true, query(name, dns.TypeA, true))
		if r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 {
			t.Errorf("%s: %v", name, r)
		}
		var ede *dns.EDNS0_EDE
		if o := r.IsEdns0(); o != nil {
			for _, op := range o.Option {
				if e, ok := op.(*dns.EDNS0_EDE); ok {
					ede = e
				}
			}
		}
		if ede == nil || ede.InfoCode != dns.ExtendedErrorCodeBlocked {
			t.Errorf("%s: no Blocked EDE in %v", name, r)
		}
	}
	// AAAA of an allowed name: no data, answered locally.
	if r := g.Answer(guest, true, query("example.com", dns.TypeAAAA, false)); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("AAAA: %v", r)
	}
	if up.asked() != before {
		t.Errorf("upstream asked for refused names: %s", strings.TrimPrefix(up.asked(), before))
	}
	// Unknown source, other class, bad shapes.
	if r := g.Answer(Guest{}, false, query("example.com", dns.TypeA, false)); r.Rcode != dns.RcodeRefused {
		t.Errorf("unknown source: %v", r)
	}
	chaos := query("example.com", dns.TypeTXT, false)
	chaos.Question[0].Qclass = dns.ClassCHAOS
	if r := g.Answer(guest, true, chaos); r.Rcode != dns.RcodeRefused {
		t.Errorf("CHAOS: %v", r)
	}
	two := query("example.com", dns.TypeA, false)
	two.Question = append(two.Question, two.Question[0])
	if r := g.Answer(guest, true, two); r.Rcode != dns.RcodeFormatError {
		t.Errorf("two questions: %v", r)
	}
	upd := query("example.com", dns.TypeA, false)
	upd.Opcode = dns.OpcodeUpdate
	if r := g.Answer(guest, true, upd); r.Rcode != dns.RcodeNotImplemented {
		t.Errorf("update: %v", r)
	}
	resp := query("example.com", dns.TypeA, false)
	resp.Response = true
	if r := g.Answer(guest, true, resp); r != nil {
		t.Errorf("answered a response: %v", r)
	}
	// The set cannot take the addresses: SERVFAIL, never an answer the guest cannot use.
	l.err = errors.New("nft says no")
	if r := g.Answer(guest, true, query("example.com", dns.TypeA, false)); r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 {
		t.Errorf("learn failed: %v", r)
	}
	// Without an allow list (deny only), names resolve and nothing is learnt.
	open := Guest{VM: "vm2", Rules: rules(t, nil, []string{"*.example.com"})}
	if r := g.Answer(open, true, query("other.test", dns.TypeA, false)); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("open policy: %v", r)
	}
	if r := g.Answer(open, true, query("x.example.com", dns.TypeA, false)); r.Rcode != dns.RcodeNameError {
		t.Errorf("open policy, denied: %v", r)
	}
	// Upstream unreachable: SERVFAIL.
	dead := New(Config{Upstreams: []string{"127.0.0.1:1"}, Timeout: 200 * time.Millisecond})
	if r := dead.Answer(open, true, query("other.test", dns.TypeA, false)); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("dead upstream: %v", r)
	}
}

// TestServeBySource: over real sockets, the gate tells guests apart by source address,
// and forgets one that is unregistered.
func TestServeBySource(t *testing.T) {
	up := newUpstream(t, map[string]string{"example.com.": "203.0.113.10"})
	g := New(Config{Upstreams: []string{up.addr}})
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	g.Serve(pc, ln)
	t.Cleanup(func() { g.Close() })
	lo := netip.MustParseAddr("127.0.0.1")
	g.Register(lo, Guest{VM: "vm", Rules: rules(t, []string{"example.com"}, nil)})
	for _, proto := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: proto, Timeout: 2 * time.Second}
		r, _, err := c.Exchange(query("example.com", dns.TypeA, false), pc.LocalAddr().String())
		if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Errorf("%s allowed: %v %v", proto, r, err)
		}
		r, _, err = c.Exchange(query("other.test", dns.TypeA, false), pc.LocalAddr().String())
		if err != nil || r.Rcode != dns.RcodeNameError {
			t.Errorf("%s not allowed: %v %v", proto, r, err)
		}
	}
	g.Unregister(lo)
	r, _, err := new(dns.Client).Exchange(query("example.com", dns.TypeA, false), pc.LocalAddr().String())
	if err != nil || r.Rcode != dns.RcodeRefused {
		t.Errorf("after unregister: %v %v", r, err)
	}
}

// FuzzAnswer: whatever bytes a guest sends, the gate does not panic and answers a query
// with the query's id.
func FuzzAnswer(f *testing.F) {
	for _, m := range []*dns.Msg{query("example.com", dns.TypeA, true), query("x.test", dns.TypeAAAA, false)} {
		b, _ := m.Pack()
		f.Add(b)
	}
	g := New(Config{Upstreams: nil})
	r, _ := netrules.Parse(&model.NetworkRules{Allow: []string{"example.com"}})
	guest := Guest{Rules: r, Learn: func([]net.IP, time.Duration) error { return nil }}
	f.Fuzz(func(t *testing.T, b []byte) {
		req := new(dns.Msg)
		if req.Unpack(b) != nil {
			return
		}
		resp := g.Answer(guest, true, req)
		if resp != nil && resp.Id != req.Id {
			t.Fatalf("id %d, want %d", resp.Id, req.Id)
		}
		if resp != nil {
			if _, err := resp.Pack(); err != nil {
				t.Fatalf("answer does not pack: %v", err)
			}
		}
	})
}
