package main

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/guest"
	"github.com/vulcanhq/vulcan/internal/protocol"
)

// The agent ships in every image and runs as PID 1: it may depend on the
// standard library and these only.
var allowedDeps = []string{
	"github.com/vulcanhq/vulcan/internal/protocol",
	"github.com/vulcanhq/vulcan/internal/guest",
	"github.com/vulcanhq/vulcan/internal/layer", // template builds: tar trees and diffs
	"github.com/vulcanhq/vulcan/internal/version",
	"github.com/mdlayher/vsock",
	"github.com/mdlayher/socket",
	"github.com/hashicorp/yamux",   // sandbox sessions (internal/protocol/mux.go)
	"github.com/creack/pty",        // session processes on a terminal
	"github.com/fsnotify/fsnotify", // directory watches (inotify)
	"golang.org/x/sys/",
	"golang.org/x/net/",
	"golang.org/x/sync/",
}

func allowed(pkg string) bool {
	for _, a := range allowedDeps {
		if pkg == a || strings.HasPrefix(pkg, strings.TrimSuffix(a, "/")+"/") {
			return true
		}
	}
	return false
}

func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "github.com/vulcanhq/vulcan/cmd/vulcan-guest" {
			continue
		}
		if !allowed(pkg) {
			t.Errorf("vulcan-guest depends on %s", pkg)
		}
	}
}

func TestStaticBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "vulcan-guest")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("binary has an ELF interpreter: not static")
		}
	}
	fi, _ := os.Stat(bin)
	t.Logf("static binary: %d bytes (%.1f MiB)", fi.Size(), float64(fi.Size())/(1<<20))
}

// The command, outside PID 1, serves a unix socket end to end.
func TestRunServesUnixSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "vulcan-guest-cmd-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "agent.sock")
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(context.Background(), []string{"--listen", "unix:" + sock, "--oneshot", "--work-root", dir,
			"--runtimes-file", filepath.Join(dir, "none.json")}, &bytes.Buffer{}, &stderr, false)
	}()
	var nc net.Conn
	for i := 0; i < 500; i++ {
		if nc, err = net.Dial("unix", sock); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c := protocol.NewConn(nc)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.ReadHello(ctx); err != nil {
		t.Fatal(err)
	}
	exit, err := c.Run(ctx, &protocol.Exec{Runtime: "cobol"}, nil)
	if err != nil || !strings.Contains(exit.Error, "unknown runtime") {
		t.Fatalf("exit %+v err %v", exit, err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, guest.ErrPowerOff) {
			t.Fatalf("run returned %v, want ErrPowerOff (oneshot)\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("oneshot agent did not stop")
	}
}
