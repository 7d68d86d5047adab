// Package dnsgate is the name-aware half of the guest network policy: a DNS forwarder
// each server runs on its bridge's gateway address (UDP and TCP port 53), the only
// resolver its egress guests are given.
//
// A query is answered by who asked (the source address, which the bridge's anti-spoofing
// rule makes the guest's own) and the guest's netrules: an unknown source is REFUSED, a
// name the rules do not allow gets NXDOMAIN (with the extended DNS error "Blocked" when
// the query carries EDNS), AAAA gets an empty answer (guests have no IPv6), and anything
// else goes to the upstream resolvers. When the guest's rules need it (an allow list with
// names), the A records of the answer are first handed to the guest's Learn — the network
// package adds them to the VM's nft set for their TTL — and only then is the answer sent,
// so the guest's connection never races its address into the set.
//
// What it does not do: it trusts the upstream resolvers' answers; it does not validate
// DNSSEC; names that resolve through a resolver the guest cannot reach (DoH to an allowed
// address, a hard-coded IP) are the guest's business, and only the nft policy decides
// whether those packets pass.
package dnsgate

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/vulcanhq/vulcan/internal/network/netrules"
)

// Guest is one registered guest's policy.
type Guest struct {
	VM    string // for logs
	Rules netrules.Rules
	// Learn, when set, is given the addresses of every A answer (with the TTL the gate
	// settled on) before the answer goes out; an error turns the answer into SERVFAIL.
	Learn func(addrs []net.IP, ttl time.Duration) error
}

// Config configures a Gate.
type Config struct {
	// Upstreams are the resolvers queries are forwarded to ("ip:port"), tried in order.
	Upstreams []string
	// Timeout bounds one exchange with one upstream (default 2 s).
	Timeout time.Duration
	// MinTTL and MaxTTL clamp how long a learnt address stays reachable (default 30 s and
	// 1 h): a TTL of 0 would otherwise expire before the guest connects, and a huge one
	// would keep an address long after the name moved.
	MinTTL, MaxTTL time.Duration
	// Dial opens the connection to an upstream ("udp" or "tcp"); the default is net.Dial
	// with Timeout. The network package dials in its host namespace with it: a socket
	// belongs to the namespace of the thread that made it.
	Dial func(network, addr string) (net.Conn, error)
	// MaxInFlight bounds the queries being forwarded at once (default 256); past it a
	// query is REFUSED.
	MaxInFlight int
	Logger      *slog.Logger
}

// Gate is a DNS forwarder that answers registered guests under their rules.
type Gate struct {
	cfg      Config
	log      *slog.Logger
	inflight chan struct{}
	udp, tcp *dns.Client

	mu      sync.RWMutex
	guests  map[netip.Addr]Guest
	servers []*dns.Server
}

// New makes a gate; Serve starts it on sockets the caller opened (in the namespace it
// wants).
func New(cfg Config) *Gate {
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.MinTTL == 0 {
		cfg.MinTTL = 30 * time.Second
	}
	if cfg.MaxTTL == 0 {
		cfg.MaxTTL = time.Hour
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = 256
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Dial == nil {
		timeout := cfg.Timeout
		cfg.Dial = func(network, addr string) (net.Conn, error) { return net.DialTimeout(network, addr, timeout) }
	}
	return &Gate{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "dnsgate"),
		inflight: make(chan struct{}, cfg.MaxInFlight),
		udp:      &dns.Client{Net: "udp", Timeout: cfg.Timeout, UDPSize: dns.DefaultMsgSize},
		tcp:      &dns.Client{Net: "tcp", Timeout: cfg.Timeout},
		guests:   map[netip.Addr]Guest{},
	}
}

// Serve answers queries on pc (UDP) and ln (TCP) until Close; either may be nil.
func (g *Gate) Serve(pc net.PacketConn, ln net.Listener) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if pc != nil {
		s := &dns.Server{PacketConn: pc, Handler: g, UDPSize: dns.DefaultMsgSize}
		g.servers = append(g.servers, s)
		go func() { _ = s.ActivateAndServe() }()
	}
	if ln != nil {
		s := &dns.Server{Listener: ln, Handler: g, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
			MaxTCPQueries: 16}
		g.servers = append(g.servers, s)
		go func() { _ = s.ActivateAndServe() }()
	}
}

// Close stops serving (the sockets are closed); registrations stay.
func (g *Gate) Close() error {
	g.mu.Lock()
	servers := g.servers
	g.servers = nil
	g.mu.Unlock()
	for _, s := range servers {
		// Shutdown waits for the server to have started; a socket closed under it also stops it.
		if s.PacketConn != nil {
			s.PacketConn.Close()
		}
		if s.Listener != nil {
			s.Listener.Close()
		}
	}
	return nil
}

// Register answers the guest at addr under its rules (replacing any earlier one).
func (g *Gate) Register(addr netip.Addr, guest Guest) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.guests[addr.Unmap()] = guest
}

// Unregister forgets the guest at addr: its queries are REFUSED from now on.
func (g *Gate) Unregister(addr netip.Addr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.guests, addr.Unmap())
}

func (g *Gate) guest(a net.Addr) (Guest, bool) {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	default:
		return Guest{}, false
	}
	g.mu.RLock()
	defer g.mu.RUnlock()
	gu, ok := g.guests[ap.Addr().Unmap()]
	return gu, ok
}

// ServeDNS implements dns.Handler.
func (g *Gate) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	guest, ok := g.guest(w.RemoteAddr())
	resp := g.Answer(guest, ok, req)
	if resp == nil {
		return
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if o := req.IsEdns0(); o != nil && int(o.UDPSize()) > size {
			size = int(o.UDPSize())
		}
		resp.Truncate(size)
	}
	_ = w.WriteMsg(resp)
}

// Answer decides a query from a guest (known says it is registered) and returns the
// reply; nil means no reply (not a query at all).
func (g *Gate) Answer(guest Guest, known bool, req *dns.Msg) *dns.Msg {
	if req.Response {
		return nil
	}
	resp := new(dns.Msg)
	fail := func(rcode int) *dns.Msg {
		resp.SetRcode(req, rcode)
		resp.RecursionAvailable = true
		return resp
	}
	switch {
	case req.Opcode != dns.OpcodeQuery:
		return fail(dns.RcodeNotImplemented)
	case len(req.Question) != 1:
		return fail(dns.RcodeFormatError)
	case !known:
		return fail(dns.RcodeRefused)
	}
	q := req.Question[0]
	if q.Qclass != dns.ClassINET {
		return fail(dns.RcodeRefused)
	}
	if !guest.Rules.NameAllowed(q.Name) {
		g.log.Debug("name refused", "vm", guest.VM, "name", q.Name)
		fail(dns.RcodeNameError)
		if o := req.IsEdns0(); o != nil {
			resp.SetEdns0(dns.DefaultMsgSize, false)
			resp.IsEdns0().Option = append(resp.IsEdns0().Option,
				&dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeBlocked, ExtraText: "not allowed by the workload's network_rules"})
		}
		return resp
	}
	if q.Qtype == dns.TypeAAAA {
		resp.SetReply(req) // NOERROR, no data: guests have no IPv6
		resp.RecursionAvailable = true
		return resp
	}
	select {
	case g.inflight <- struct{}{}:
		defer func() { <-g.inflight }()
	default:
		return fail(dns.RcodeRefused)
	}
	up, err := g.forward(req)
	if err != nil {
		g.log.Warn("upstream DNS failed", "vm", guest.VM, "name", q.Name, "err", err)
		return fail(dns.RcodeServerFailure)
	}
	if guest.Learn != nil && up.Rcode == dns.RcodeSuccess {
		if err := g.learn(guest, up); err != nil {
			g.log.Warn("could not open the answer's addresses", "vm", guest.VM, "name", q.Name, "err", err)
			return fail(dns.RcodeServerFailure)
		}
	}
	up.Id = req.Id
	up.Compress = true
	return up
}

// learn hands the A answers to the guest's Learn, grouped by TTL.
func (g *Gate) learn(guest Guest, up *dns.Msg) error {
	byTTL := map[time.Duration][]net.IP{}
	for _, rr := range up.Answer {
		a, ok := rr.(*dns.A)
		if !ok {
			continue
		}
		ttl := min(max(time.Duration(a.Hdr.Ttl)*time.Second, g.cfg.MinTTL), g.cfg.MaxTTL)
		byTTL[ttl] = append(byTTL[ttl], a.A)
	}
	for ttl, addrs := range byTTL {
		if err := guest.Learn(addrs, ttl); err != nil {
			return err
		}
	}
	return nil
}

// forward asks the upstreams in order (over TCP when the UDP answer is truncated) and
// returns the first answer.
func (g *Gate) forward(req *dns.Msg) (*dns.Msg, error) {
	if len(g.cfg.Upstreams) == 0 {
		return nil, fmt.Errorf("no upstream resolver")
	}
	q := req.Copy()
	q.Id = dns.Id()
	q.RecursionDesired = true
	var last error
	for _, u := range g.cfg.Upstreams {
		r, err := g.exchange(g.udp, q, u)
		if err == nil && r.Truncated {
			r, err = g.exchange(g.tcp, q, u)
		}
		if err == nil {
			return r, nil
		}
		last = fmt.Errorf("%s: %w", u, err)
	}
	return nil, last
}

// exchange sends q to one upstream over a connection of its own.
func (g *Gate) exchange(c *dns.Client, q *dns.Msg, upstream string) (*dns.Msg, error) {
	conn, err := g.cfg.Dial(c.Net, upstream)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	co := &dns.Conn{Conn: conn, UDPSize: c.UDPSize}
	r, _, err := c.ExchangeWithConn(q, co)
	return r, err
}
