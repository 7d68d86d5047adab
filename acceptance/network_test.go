//go:build linux

package acceptance

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/vulcanhq/vulcan/internal/network/nettest"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// guestFetch is python that finds its default gateway (the host's bridge address) and
// fetches a page from it.
const guestFetch = `import socket, struct, urllib.request
gw = None
for line in open('/proc/net/route').read().splitlines()[1:]:
    f = line.split()
    if f[1] == '00000000':
        gw = socket.inet_ntoa(struct.pack('<L', int(f[2], 16)))
if gw is None:
    raise SystemExit('no default route')
print(urllib.request.urlopen('http://%s:%d/' % (gw, PORT), timeout=10).read().decode())
`

// AC3: networking. The whole server runs in a "host" namespace this test made (its
// bridge, the VMs' namespaces and NAT live there); the guest reaches an HTTP server the
// test runs in it on the bridge address; the TAP, the VM's namespace and its IP lease are
// gone after; with network "none" the same code fails.
func TestAC3Networking(t *testing.T) {
	requireVMs(t)
	testenv.RequiresRoot(t)
	testenv.RequiresBinary(t, "nsenter")
	host := nettest.HostNS(t)
	const token = "hello-from-the-host"
	ln := nettest.Listen(t, host, "0.0.0.0:0")
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, token) }))
	port := ln.Addr().(*net.TCPAddr).Port
	// Guests reach only the gateway ports the server lists: this page is one.
	s := startServerIn(t, host, "", "VULCAN_CNI_BIN_DIR="+nettest.PluginDir(t), fmt.Sprintf("VULCAN_NETWORK_SERVICES=tcp/%d", port))
	code := strings.Replace(guestFetch, "PORT", fmt.Sprint(port), 1)

	out, exit := s.vulcan("run", "--runtime", "python", "--network", "host", "--code", code)
	if exit != 0 || strings.TrimSpace(out) != token {
		t.Fatalf("guest with network host: exit %d output %q", exit, out)
	}
	ls, _ := s.vulcan("ls")
	id := strings.Fields(strings.Split(ls, "\n")[1])[0] // newest first
	status, _ := s.vulcan("status", id)
	for _, want := range []string{"guest_ip:", "tap:"} {
		if !strings.Contains(status, want) {
			t.Errorf("status lacks %s:\n%s", want, status)
		}
	}

	out, exit = s.vulcan("run", "--runtime", "python", "--network", "none", "--code", code)
	if exit == 0 || strings.Contains(out, token) {
		t.Errorf("guest without a network reached the host: exit %d output %q", exit, out)
	}

	// Gone after: the VM's namespace, its veth on the bridge, its lease.
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.Contains(strings.ToLower(e.Name()), strings.ToLower(id)) {
			t.Errorf("VM namespace %s left behind", e.Name())
		}
	}
	nettest.Do(t, host, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Type() == "veth" || l.Type() == "tuntap" {
				t.Errorf("link %s (%s) left in the host namespace", l.Attrs().Name, l.Type())
			}
		}
		return nil
	})
	leases, _ := filepath.Glob(filepath.Join(s.dataDir, "cni", "ipam", "*", "*.*.*.*"))
	if len(leases) != 0 {
		t.Errorf("IP leases left: %v", leases)
	}
	if left := s.leftovers(); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}
