package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/server/servertest"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// cli runs the vulcan command in-process.
func cli(t *testing.T, server string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	err = run(context.Background(), append([]string{"--server", server}, args...), &o, &e)
	return o.String(), e.String(), err
}

// fakeServer is the real API and engine over the fake backend, in-process.
func fakeServer(t *testing.T, fake *backendtest.Fake) string {
	return servertest.NewStack(t, engine.Config{}, fake, nil).URL
}

func TestCLIRunPrintsOutputAndExitCode(t *testing.T) {
	var gotSpec model.Spec
	fake := &backendtest.Fake{Run: func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
		gotSpec = job.Spec
		sink.Line(model.Stdout, "hello from "+string(job.Spec.Runtime))
		sink.Line(model.Stderr, "warning")
		return backend.Result{ExitCode: 7}, nil
	}}
	url := fakeServer(t, fake)
	dir := t.TempDir()
	file := filepath.Join(dir, "job.py")
	os.WriteFile(file, []byte("print('hi')"), 0o644)
	input := filepath.Join(dir, "in.txt")
	os.WriteFile(input, []byte("some input"), 0o644)

	out, errOut, err := cli(t, url, "run", "--file", file, "--input", input, "--env", "A=1", "--env", "B=x=y", "--timeout", "9")
	var exit exitError
	if !errors.As(err, &exit) || exit.code != 7 {
		t.Fatalf("err %v", err)
	}
	if out != "hello from python\n" || !strings.Contains(errOut, "warning\n") {
		t.Fatalf("stdout %q stderr %q", out, errOut)
	}
	if gotSpec.Code != "print('hi')" || string(gotSpec.Stdin()) != "some input" || gotSpec.Env["B"] != "x=y" || gotSpec.Resources.TimeoutS != 9 {
		t.Fatalf("spec %+v", gotSpec)
	}
}

func TestCLIRunDirSendsArchive(t *testing.T) {
	var archive []byte
	fake := &backendtest.Fake{Run: func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
		archive = job.Spec.Archive
		return backend.Result{}, nil
	}}
	url := fakeServer(t, fake)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "index.js"), []byte("console.log(1)"), 0o644)
	os.MkdirAll(filepath.Join(dir, "lib"), 0o755)
	os.WriteFile(filepath.Join(dir, "lib", "x.js"), []byte("x"), 0o644)
	if _, _, err := cli(t, url, "run", "--runtime", "node", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	names, err := tarNames(archive)
	if err != nil || strings.Join(names, ",") != "index.js,lib,lib/x.js" {
		t.Fatalf("archive entries %v %v", names, err)
	}
}

func TestCLIAsyncStatusLogsLsKill(t *testing.T) {
	b := backendtest.NewBlocker(1)
	url := fakeServer(t, &backendtest.Fake{Run: b.Run})
	out, _, err := cli(t, url, "run", "--runtime", "go", "--code", "package main", "--async")
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(out)
	<-b.Started
	if out, _, err := cli(t, url, "status", id); err != nil || !strings.Contains(out, "status:     running") {
		t.Fatalf("status: %q %v", out, err)
	}
	if out, _, err := cli(t, url, "ls"); err != nil || !strings.Contains(out, id) || !strings.Contains(out, "1 of 1 workloads") {
		t.Fatalf("ls: %q %v", out, err)
	}
	if out, _, err := cli(t, url, "kill", id); err != nil || out != id+" killed\n" {
		t.Fatalf("kill: %q %v", out, err)
	}
	if _, _, err := cli(t, url, "kill", id); err == nil || !strings.Contains(err.Error(), "already finished") {
		t.Fatalf("second kill: %v", err)
	}
	out, _, err = cli(t, url, "logs", id)
	if err != nil || !strings.Contains(out, "stdout started") || !strings.Contains(out, "system killed by request") {
		t.Fatalf("logs: %q %v", out, err)
	}
	if out2, _, err := cli(t, url, "logs", "-f", id); err != nil || out2 != out {
		t.Fatalf("logs -f of a finished workload differs: %q vs %q (%v)", out2, out, err)
	}
	if _, _, err := cli(t, url, "status", "nope"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("status of unknown: %v", err)
	}
}

func TestCLIUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"run", "--runtime", "go"},
		{"run", "--code", "x", "--file", "y"},
		{"run", "--code", "x"},
		{"status"},
	} {
		if _, _, err := cli(t, "http://127.0.0.1:1", args...); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	_, _, err := cli(t, "http://127.0.0.1:1", "ls")
	if err == nil || !strings.Contains(err.Error(), "cannot reach the Vulcan server") {
		t.Fatalf("unreachable server: %v", err)
	}
}

// The real binary never links the fake backend.
func TestBinaryHasNoFakeBackend(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "backendtest") {
		t.Fatal("cmd/vulcan depends on internal/backend/backendtest")
	}
}

// TestAgainstServeProcess builds vulcan and checks what a user sees from a real server
// that has no microVM backend.
func TestAgainstServeProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts the binary")
	}
	// No images: what a user sees before `make images`.
	srv := startServe(t, "--images-dir", t.TempDir())
	out, code := srv.vulcan(t, "backends")
	if code != 0 || !strings.Contains(out, "microvm") || !strings.Contains(out, "no kernel image") || !strings.Contains(out, "make images") {
		t.Fatalf("backends: %q exit %d", out, code)
	}
	if out, code := srv.vulcan(t, "run", "--runtime", "python", "--code", "print(1)"); code == 0 || !strings.Contains(out, "no kernel image") {
		t.Fatalf("run without a backend: %q exit %d", out, code)
	}
	if out, code := srv.vulcan(t, "ls"); code != 0 || !strings.Contains(out, "0 of 0 workloads") {
		t.Fatalf("ls: %q exit %d", out, code)
	}
	if out, code := srv.vulcan(t, "status", "01NOPE"); code == 0 || !strings.Contains(out, "not found") {
		t.Fatalf("status: %q exit %d", out, code)
	}
	if out, code := srv.vulcan(t, "version"); code != 0 || !strings.HasPrefix(out, "vulcan ") {
		t.Fatalf("version: %q exit %d", out, code)
	}

	// SIGTERM is a clean stop.
	srv.cmd.Process.Signal(os.Interrupt)
	if err := <-srv.exited; err != nil {
		t.Fatalf("server exit after SIGINT: %v", err)
	}
	srv.exited <- nil // for the cleanup's wait
	if !strings.Contains(srv.logs.String(), "stopped") {
		t.Fatalf("no clean stop in log:\n%s", srv.logs.String())
	}
}

func TestServeRefusesPublicAddressWithoutToken(t *testing.T) {
	t.Chdir(t.TempDir())
	err := run(context.Background(), []string{"serve", "--listen", "0.0.0.0:0", "--data-dir", t.TempDir()}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "VULCAN_API_TOKEN") {
		t.Fatalf("got %v", err)
	}
}

type serveProcess struct {
	bin, url string
	cmd      *exec.Cmd
	exited   chan error
	logs     bytes.Buffer
}

// startServe builds vulcan and runs `vulcan serve` on a free loopback port with a fresh
// data dir; it is stopped with SIGINT when the test ends.
func startServe(t *testing.T, args ...string) *serveProcess {
	t.Helper()
	p := &serveProcess{bin: filepath.Join(t.TempDir(), "vulcan"), exited: make(chan error, 1)}
	if err := testenv.GoBuild(p.bin, "."); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p.cmd = exec.Command(p.bin, append([]string{"serve", "--listen", addr, "--data-dir", t.TempDir()}, args...)...)
	p.cmd.Dir = t.TempDir() // no stray .env
	p.cmd.Stdout, p.cmd.Stderr = &p.logs, &p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(os.Interrupt)
		<-p.exited
		if t.Failed() {
			t.Logf("server log:\n%s", p.logs.String())
		}
	})
	p.url = "http://" + addr
	waitHealthy(t, p.url, p.exited)
	return p
}

// vulcan runs the CLI against the server.
func (p *serveProcess) vulcan(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(p.bin, append([]string{"--server", p.url}, args...)...)
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return string(out), exit.ExitCode()
	}
	if err != nil {
		t.Fatalf("vulcan %v: %v", args, err)
	}
	return string(out), 0
}

func waitHealthy(t *testing.T, url string, exited <-chan error) {
	t.Helper()
	for i := 0; ; i++ {
		resp, err := http.Get(url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("server exited: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if i > 600 {
			t.Fatal(fmt.Sprint("server not healthy: ", err))
		}
	}
}
