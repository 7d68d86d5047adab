//go:build linux

// Package nettest builds what networking tests need: a private "host" network namespace
// (every test's bridge, NAT and servers live there, never in the machine's own
// namespace), peer namespaces reached through it, and the CNI plugins.
package nettest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/vulcanhq/vulcan/internal/testenv"
)

// Suffix is a random name fragment, so parallel test binaries never share names.
func Suffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NewNS creates a named network namespace with lo up and removes it when the test ends.
func NewNS(t testing.TB, name string) string {
	t.Helper()
	path := filepath.Join("/run/netns", name)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
			if l, lerr := netlink.LinkByName("lo"); lerr == nil {
				err = netlink.LinkSetUp(l)
			}
		}
		if serr := netns.Set(orig); serr != nil {
			errc <- errors.Join(err, serr) // the locked thread dies with this goroutine
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = unix.Unmount(path, unix.MNT_DETACH)
		_ = os.Remove(path)
	})
	return path
}

// HostNS is a fresh "host" namespace for one test.
func HostNS(t testing.TB) string {
	t.Helper()
	testenv.RequiresRoot(t)
	return NewNS(t, "vt-host-"+Suffix())
}

// Do runs fn inside the namespace at path.
func Do(t testing.TB, path string, fn func() error) {
	t.Helper()
	if err := ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() }); err != nil {
		t.Fatal(err)
	}
}

// Peer makes a namespace joined to host by a veth pair: hostAddr on the host side,
// peerAddr in the peer (both CIDRs inside a private range the test chose). It returns the
// peer namespace's path.
func Peer(t testing.TB, host, hostAddr, peerAddr string) string {
	t.Helper()
	peer := NewNS(t, "vt-peer-"+Suffix())
	hostEnd, peerEnd := "vpeer"+Suffix(), "eth0"
	Do(t, host, func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostEnd}, PeerName: "vtmp" + Suffix()}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		p, err := netlink.LinkByName(veth.PeerName)
		if err != nil {
			return err
		}
		f, err := os.Open(peer)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := netlink.LinkSetNsFd(p, int(f.Fd())); err != nil {
			return err
		}
		if err := configure(hostEnd, hostAddr); err != nil {
			return err
		}
		return ns.WithNetNSPath(peer, func(ns.NetNS) error {
			l, err := netlink.LinkByName(veth.PeerName)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetName(l, peerEnd); err != nil {
				return err
			}
			return configure(peerEnd, peerAddr)
		})
	})
	return peer
}

func configure(name, cidr string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

// Listen opens a TCP listener inside the namespace at path (a socket keeps the namespace
// it was created in).
func Listen(t testing.TB, path, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	Do(t, path, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Dialer dials TCP inside the namespace at path: the socket is made there (a thread
// entered for the moment), so the connection reaches that namespace's addresses, its
// loopback included, from anywhere in the test.
func Dialer(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.WithNetNSPath(path, func(ns.NetNS) (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

var (
	pluginsOnce sync.Once
	pluginsDir  string
	pluginsErr  error
)

// PluginDir returns a directory with the CNI plugins: `make`'s bin/cni when
// VULCAN_BIN_DIR points at a complete one, else freshly built ones (the Go build cache
// makes that quick after the first time).
func PluginDir(t testing.TB) string {
	t.Helper()
	names := []string{"bridge", "host-local", "vulcan-cni-tap"}
	if bin := testenv.BinDir(); bin != "" {
		dir := filepath.Join(bin, "cni")
		ok := true
		for _, n := range names {
			if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
				ok = false
			}
		}
		if ok {
			return dir
		}
	}
	pluginsOnce.Do(func() {
		// One dir per test process, named by its pid; dirs of processes that are gone
		// are removed here, as the process cannot remove its own at exit.
		stale, _ := filepath.Glob(filepath.Join(os.TempDir(), "vulcan-cni-test-*"))
		for _, d := range stale {
			pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), "vulcan-cni-test-"))
			if err == nil && unix.Kill(pid, 0) == unix.ESRCH {
				os.RemoveAll(d)
			}
		}
		pluginsDir = filepath.Join(os.TempDir(), fmt.Sprintf("vulcan-cni-test-%d", os.Getpid()))
		if pluginsErr = os.MkdirAll(pluginsDir, 0o755); pluginsErr != nil {
			return
		}
		for pkg, name := range map[string]string{
			"github.com/vulcanhq/vulcan/cmd/vulcan-cni-tap":                  "vulcan-cni-tap",
			"github.com/containernetworking/plugins/plugins/main/bridge":     "bridge",
			"github.com/containernetworking/plugins/plugins/ipam/host-local": "host-local",
		} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(pluginsDir, name), pkg).CombinedOutput()
			if err != nil {
				pluginsErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if pluginsErr != nil {
		t.Fatal(pluginsErr)
	}
	return pluginsDir
}

// ServeDNS answers every A query that reaches addr (UDP, inside the namespace at path)
// with answer: a stand-in for the outside world's resolver in egress tests.
func ServeDNS(t testing.TB, path, addr string, answer net.IP) {
	t.Helper()
	var pc net.PacketConn
	Do(t, path, func() (err error) {
		pc, err = net.ListenPacket("udp4", addr)
		return err
	})
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp, err := dnsAnswer(buf[:n], answer); err == nil {
				_, _ = pc.WriteTo(resp, from)
			}
		}
	}()
}

func dnsAnswer(query []byte, answer net.IP) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	if q.Type == dnsmessage.TypeA {
		var a [4]byte
		copy(a[:], answer.To4())
		if err := b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: a}); err != nil {
			return nil, err
		}
	}
	return b.Finish()
}

// AddAddr puts cidr on the link named link inside the namespace at path (a peer serving on
// several test addresses).
func AddAddr(t testing.TB, path, link, cidr string) {
	t.Helper()
	Do(t, path, func() error {
		l, err := netlink.LinkByName(link)
		if err != nil {
			return err
		}
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			return err
		}
		return netlink.AddrAdd(l, a)
	})
}

// AddRoute routes dst (a CIDR) via the gateway address via, inside the namespace at path.
func AddRoute(t testing.TB, path, dst, via string) {
	t.Helper()
	Do(t, path, func() error {
		_, d, err := net.ParseCIDR(dst)
		if err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Dst: d, Gw: net.ParseIP(via)})
	})
}

// ServeDNSNames is a test upstream resolver on addr (UDP, inside the namespace at path):
// A queries for the names in names (lower case, with the final dot) get their address
// with a TTL of 60 s, other A queries NXDOMAIN, anything else an empty answer.
func ServeDNSNames(t testing.TB, path, addr string, names map[string]net.IP) {
	t.Helper()
	var pc net.PacketConn
	Do(t, path, func() (err error) {
		pc, err = net.ListenPacket("udp4", addr)
		return err
	})
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp, err := dnsAnswerNames(buf[:n], names); err == nil {
				_, _ = pc.WriteTo(resp, from)
			}
		}
	}()
}

func dnsAnswerNames(query []byte, names map[string]net.IP) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	ip, known := names[strings.ToLower(q.Name.String())]
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	if q.Type == dnsmessage.TypeA && !known {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	if q.Type == dnsmessage.TypeA && known {
		var a [4]byte
		copy(a[:], ip.To4())
		if err := b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: a}); err != nil {
			return nil, err
		}
	}
	return b.Finish()
}
