// Package clustertest runs a real nats-server with JetStream for tests (package
// natsserver). Without the binary the test skips, except under CI, where it fails.
package clustertest

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/vulcanhq/vulcan/internal/cluster/natsserver"
)

// NATS is a nats-server on loopback with JetStream storing under a test dir.
type NATS struct {
	URL  string
	t    testing.TB
	bin  string
	port int
	dir  string
	srv  *natsserver.Server

	netns string
	dial  func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Binary finds nats-server, or skips (fails under CI) saying how to get it.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := natsserver.Find()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return bin
}

// Start runs a nats-server for the test, stopped when it ends.
func Start(t testing.TB) *NATS {
	t.Helper()
	return StartIn(t, "", nil)
}

// StartIn runs it inside the network namespace at netns (its URL's loopback is that
// namespace's), where dial reaches it ("" and nil: this namespace).
func StartIn(t testing.TB, netns string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *NATS {
	t.Helper()
	port, err := natsserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	n := &NATS{t: t, bin: Binary(t), dir: t.TempDir(), port: port, netns: netns, dial: dial}
	n.start()
	n.URL = n.srv.URL
	t.Cleanup(n.Stop)
	return n
}

func (n *NATS) start() {
	n.t.Helper()
	log := ""
	if testing.Verbose() {
		log = filepath.Join(n.dir, "nats.log")
	}
	srv, err := natsserver.Start(context.Background(), n.bin, n.dir, n.port, natsserver.Options{Log: log, NetNS: n.netns, Dial: n.dial})
	if err != nil {
		n.t.Fatal(err)
	}
	n.srv = srv
}

// Stop stops the server (its JetStream data stays for Restart). Idempotent.
func (n *NATS) Stop() {
	if n.srv != nil {
		n.srv.Stop()
		n.srv = nil
	}
}

// Restart stops the server and starts it again on the same port and data.
func (n *NATS) Restart() {
	n.t.Helper()
	n.Stop()
	n.start()
}
