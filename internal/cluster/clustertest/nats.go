// Package clustertest runs a real nats-server with JetStream for tests: the binary from
// VULCAN_NATS_SERVER or PATH (scripts/install-deps.sh --test installs it). Without one
// the test skips, except under CI, where it fails.
package clustertest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// NATS is a nats-server on loopback with JetStream storing under a test dir.
type NATS struct {
	URL  string
	t    testing.TB
	bin  string
	port int
	dir  string
	cmd  *exec.Cmd
}

// Binary finds nats-server, or skips (fails under CI) saying how to get it.
func Binary(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("VULCAN_NATS_SERVER")
	if bin == "" {
		if p, err := exec.LookPath("nats-server"); err == nil {
			bin = p
		}
	}
	if bin == "" {
		msg := "nats-server not found (set VULCAN_NATS_SERVER or run scripts/install-deps.sh --test)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// Start runs a nats-server for the test, stopped when it ends.
func Start(t testing.TB) *NATS {
	t.Helper()
	n := &NATS{t: t, bin: Binary(t), dir: t.TempDir(), port: freePort(t)}
	n.URL = fmt.Sprintf("nats://127.0.0.1:%d", n.port)
	n.start()
	t.Cleanup(n.Stop)
	return n
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func (n *NATS) start() {
	n.t.Helper()
	n.cmd = exec.Command(n.bin, "-a", "127.0.0.1", "-p", strconv.Itoa(n.port), "-js", "-sd", n.dir)
	n.cmd.Stdout, n.cmd.Stderr = os.Stderr, os.Stderr
	if testing.Verbose() {
		n.cmd.Args = append(n.cmd.Args, "-l", n.dir+"/nats.log")
	} else {
		n.cmd.Stdout, n.cmd.Stderr = nil, nil
	}
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		nc, err := nats.Connect(n.URL, nats.Timeout(time.Second))
		if err == nil {
			_, jerr := nc.JetStream()
			nc.Close()
			if jerr == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("nats-server did not come up at %s: %v", n.URL, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the server (its JetStream data stays for Restart). Idempotent.
func (n *NATS) Stop() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	_ = n.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = n.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = n.cmd.Process.Kill()
		<-done
	}
	n.cmd = nil
}

// Restart stops the server and starts it again on the same port and data.
func (n *NATS) Restart() {
	n.t.Helper()
	n.Stop()
	n.start()
}
