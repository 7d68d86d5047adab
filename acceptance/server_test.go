package acceptance

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/client"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// vulcanBin is the binary under test: the one `make` built, else built here once.
func vulcanBin(t testing.TB) string {
	t.Helper()
	bin, err := testenv.VulcanBin()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// server is a real `vulcan serve` process.
type server struct {
	t       testing.TB
	bin     string
	dataDir string
	addr    string
	url     string
	env     []string
	cmd     *exec.Cmd
	exited  chan error
	logs    *bytes.Buffer
	c       *client.Client
	netns   string // the server's network namespace, "" = the test's
	hc      *http.Client
}

// dialIn makes the test's own calls to the server (its client, metric) dial inside the
// server's namespace with dial.
func (s *server) dialIn(dial func(ctx context.Context, network, addr string) (net.Conn, error)) {
	s.hc = &http.Client{Transport: &http.Transport{DialContext: dial}}
	s.c = client.NewHTTP(s.url, "", s.hc)
}

// http is the HTTP client that reaches the server.
func (s *server) http() *http.Client {
	if s.hc != nil {
		return s.hc
	}
	return http.DefaultClient
}

// command is the vulcan binary with args, in the server's namespace.
func (s *server) command(args ...string) *exec.Cmd {
	if s.netns == "" {
		return exec.Command(s.bin, args...)
	}
	return exec.Command("nsenter", append([]string{"--net=" + s.netns, "--", s.bin}, args...)...)
}

// requireVMs gates the suite: QEMU and the images (CI provides both).
func requireVMs(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("acceptance tests boot VMs")
	}
	testenv.RequiresBinary(t, "qemu-system-x86_64")
	return testenv.RequiresImages(t, "python", "node", "go")
}

// startServer starts vulcan serve on a free loopback port with a fresh data dir (or the
// given one, for restarts) and the real images.
func startServer(t testing.TB, dataDir string, env ...string) *server {
	t.Helper()
	return startServerIn(t, "", dataDir, env...)
}

// startServerIn runs the server inside the network namespace at netns ("" = this one);
// there its API is reachable only from that namespace, so the CLI and health checks run
// there too.
func startServerIn(t testing.TB, netns, dataDir string, env ...string) *server {
	t.Helper()
	images := requireVMs(t)
	if dataDir == "" {
		d, err := os.MkdirTemp("", "vacc")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dataDir = d
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := &server{t: t, bin: vulcanBin(t), dataDir: dataDir, addr: addr, url: "http://" + addr,
		exited: make(chan error, 1), logs: &bytes.Buffer{}, netns: netns}
	// Fast start is off unless a test turns it on (env wins, being later): a warm pool
	// and snapshot builds in every test's server would crowd two cores.
	s.env = append(os.Environ(), "VULCAN_IMAGES_DIR="+images, "VULCAN_DATA_DIR="+dataDir, "VULCAN_LISTEN_ADDR="+addr,
		"VULCAN_POOL=off", "VULCAN_SNAPSHOTS=false")
	s.env = append(s.env, env...)
	s.cmd = s.command("serve")
	s.cmd.Env = s.env
	s.cmd.Dir = dataDir
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.exited <- s.cmd.Wait() }()
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("server log (tail):\n%s", tail(s.logs.String(), 4000))
		}
	})
	s.c = client.New(s.url, "")
	deadline := time.Now().Add(60 * time.Second)
	for {
		// Through the CLI, which asks the server: it works from the server's namespace.
		if _, code := s.vulcan("backends"); code == 0 {
			break
		}
		select {
		case err := <-s.exited:
			s.exited <- err
			t.Fatalf("server exited: %v\n%s", err, s.logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not healthy within 60s:\n%s", s.logs.String())
		}
	}
	return s
}

// stop is SIGTERM and a wait (a graceful stop); idempotent.
func (s *server) stop() {
	select {
	case err := <-s.exited:
		s.exited <- err
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.exited:
		s.exited <- err
	case <-time.After(60 * time.Second):
		_ = s.cmd.Process.Kill()
		err := <-s.exited
		s.exited <- err
	}
}

// crash is kill -9: no shutdown code runs.
func (s *server) crash() {
	_ = s.cmd.Process.Kill()
	err := <-s.exited
	s.exited <- err
}

// vulcan runs the CLI against this server.
func (s *server) vulcan(args ...string) (string, int) {
	s.t.Helper()
	cmd := s.command(append([]string{"--server", s.url}, args...)...)
	cmd.Env = s.env
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		s.t.Fatalf("vulcan %v: %v", args, err)
	}
	return string(out), 0
}

// leftovers lists what VMs of this server may have left: VMM processes whose command line
// names the data dir, entries in the VM state dir (sockets, consoles, scratch, dirs). The
// warm pool's own VMs and snapshot builds (pool-*, snap-*) are the server's, not left.
func (s *server) leftovers() []string {
	var out []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte(s.dataDir)) {
			continue
		}
		if bytes.Contains(cmdline, []byte("/vms/pool-")) || bytes.Contains(cmdline, []byte("/vms/snap-")) {
			continue
		}
		name := strings.SplitN(string(cmdline), "\x00", 2)[0]
		if strings.Contains(name, "qemu") || strings.Contains(name, "firecracker") || strings.Contains(name, "nsenter") {
			out = append(out, fmt.Sprintf("process %d %s", pid, name))
		}
	}
	vms, _ := os.ReadDir(filepath.Join(s.dataDir, "vms"))
	for _, e := range vms {
		if !strings.HasPrefix(e.Name(), "pool-") && !strings.HasPrefix(e.Name(), "snap-") {
			out = append(out, "state "+e.Name())
		}
	}
	return out
}

// metric returns the sum of the samples of a Prometheus metric whose line contains every
// given label fragment.
func (s *server) metric(name string, labels ...string) float64 {
	s.t.Helper()
	resp, err := s.http().Get(s.url + "/metrics")
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	sum := 0.0
	for _, line := range strings.Split(buf.String(), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(line, l) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
