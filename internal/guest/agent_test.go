package guest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/protocol"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// Tests run the real agent on a unix socket with this machine's runtimes.
// As root (CI) the workload drops to uid 1000, so every shared directory is
// made reachable for that uid.
const testUID, testGID = 1000, 1000

var shared struct {
	base     string // 0755, removed after the tests
	workRoot string
	goCache  string // GOCACHE shared by the go subtests
}

func TestMain(m *testing.M) {
	base, err := os.MkdirTemp("", "vulcan-guest-test-")
	if err != nil {
		panic(err)
	}
	os.Chmod(base, 0o755)
	shared.base = base
	shared.workRoot = filepath.Join(base, "work")
	shared.goCache = filepath.Join(base, "gocache")
	os.Mkdir(shared.workRoot, 0o755)
	os.Mkdir(shared.goCache, 0o755)
	if os.Geteuid() == 0 {
		os.Chown(shared.goCache, testUID, testGID)
	}
	code := m.Run()
	os.RemoveAll(base)
	os.Exit(code)
}

type testAgent struct {
	sock  string
	serve chan error
}

func startAgent(t testing.TB, cfg Config) *testAgent {
	t.Helper()
	cfg.WorkRoot = shared.workRoot
	cfg.UID, cfg.GID = testUID, testGID
	if cfg.RuntimesFile == "" {
		cfg.RuntimesFile = filepath.Join(shared.base, "no-runtimes.json")
	}
	dir, err := os.MkdirTemp(shared.base, "sock-")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	l, err := Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ta := &testAgent{sock: sock, serve: make(chan error, 1)}
	a := New(cfg)
	go func() { ta.serve <- a.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-ta.serve:
		case <-time.After(10 * time.Second):
			t.Error("agent did not stop")
		}
	})
	return ta
}

func (ta *testAgent) dial(t testing.TB) (*protocol.Conn, *protocol.Hello) {
	t.Helper()
	nc, err := net.Dial("unix", ta.sock)
	if err != nil {
		t.Fatal(err)
	}
	c := protocol.NewConn(nc)
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h, err := c.ReadHello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return c, h
}

var (
	agentOnce sync.Once
	agent     *testAgent
)

// sharedAgent serves the tests that need no special config.
func sharedAgent(t *testing.T) *testAgent {
	agentOnce.Do(func() {
		// Not tied to t: it lives for the whole test binary.
		cfg := Config{WorkRoot: shared.workRoot, UID: testUID, GID: testGID,
			RuntimesFile: filepath.Join(shared.base, "no-runtimes.json")}
		sock := filepath.Join(shared.base, "shared.sock")
		l, err := Listen("unix:" + sock)
		if err != nil {
			panic(err)
		}
		agent = &testAgent{sock: sock, serve: make(chan error, 1)}
		go func() { agent.serve <- New(cfg).Serve(context.Background(), l) }()
	})
	return agent
}

type result struct {
	exit   *protocol.Exit
	err    error
	stdout []string
	stderr []string
	all    []*protocol.Output
}

func (r result) out() string { return strings.Join(r.stdout, "\n") }

func run(t *testing.T, ex *protocol.Exec) result {
	t.Helper()
	return runCtx(t, context.Background(), ex, nil)
}

func runCtx(t *testing.T, ctx context.Context, ex *protocol.Exec, on func(*protocol.Output)) result {
	t.Helper()
	c, _ := sharedAgent(t).dial(t)
	if ex.TimeoutMS == 0 {
		ex.TimeoutMS = 60_000
	}
	var r result
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	r.exit, r.err = c.Run(ctx, ex, func(o *protocol.Output) {
		r.all = append(r.all, o)
		if o.Stream == protocol.Stdout {
			r.stdout = append(r.stdout, o.Data)
		} else {
			r.stderr = append(r.stderr, o.Data)
		}
		if on != nil {
			on(o)
		}
	})
	return r
}

func requireRuntime(t testing.TB, rt string) {
	t.Helper()
	if _, err := lookPath(runtimes[rt].binary, defaultPath); err != nil {
		if testenv.InCI() {
			t.Fatalf("runtime %s missing, and CI should have it: %v", rt, err)
		}
		t.Skipf("runtime %s not on this machine: %v", rt, err)
	}
}

func mustExit(t *testing.T, r result, code int) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("Run: %v", r.err)
	}
	if r.exit.Code != code || r.exit.Error != "" {
		t.Fatalf("exit %+v, want code %d\nstdout: %q\nstderr: %q", *r.exit, code, r.stdout, r.stderr)
	}
}

func TestHello(t *testing.T) {
	_, h := sharedAgent(t).dial(t)
	if h.ProtocolVersion != protocol.Version || h.AgentVersion == "" {
		t.Fatalf("hello %+v", h)
	}
	for _, rt := range []string{"python", "node", "go"} {
		if _, err := lookPath(runtimes[rt].binary, defaultPath); err == nil && h.Runtimes[rt] == "" {
			t.Errorf("%s is installed but hello reports %v", rt, h.Runtimes)
		}
	}
	t.Logf("hello: %+v", h)
}

func TestHelloRuntimesFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "runtimes.json")
	os.WriteFile(f, []byte(`{"python":"3.99.0"}`), 0o644)
	_, h := startAgent(t, Config{RuntimesFile: f}).dial(t)
	if len(h.Runtimes) != 1 || h.Runtimes["python"] != "3.99.0" {
		t.Fatalf("runtimes %v, want those of the file", h.Runtimes)
	}
}

func goEnv() map[string]string { return map[string]string{"GOCACHE": shared.goCache} }

func TestHelloWorld(t *testing.T) {
	cases := []struct{ runtime, code string }{
		{"python", `print("hello from python")`},
		{"node", `console.log("hello from node")`},
		{"go", "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello from go\") }\n"},
	}
	for _, tc := range cases {
		t.Run(tc.runtime, func(t *testing.T) {
			requireRuntime(t, tc.runtime)
			r := run(t, &protocol.Exec{ID: "hello-" + tc.runtime, Runtime: tc.runtime, Code: tc.code, Env: goEnv()})
			mustExit(t, r, 0)
			if r.out() != "hello from "+tc.runtime {
				t.Fatalf("stdout %q stderr %q", r.stdout, r.stderr)
			}
		})
	}
}

func TestGoBuildFailure(t *testing.T) {
	requireRuntime(t, "go")
	r := run(t, &protocol.Exec{Runtime: "go", Code: "package main\nfunc main() { undefined() }\n", Env: goEnv()})
	if r.err != nil || r.exit.Code == 0 || !strings.Contains(strings.Join(r.stderr, "\n"), "undefined") {
		t.Fatalf("exit %+v err %v stderr %q", r.exit, r.err, r.stderr)
	}
}

func TestStreamsSeparatedAndOrdered(t *testing.T) {
	requireRuntime(t, "python")
	r := run(t, &protocol.Exec{Runtime: "python", Code: `
import sys
for i in range(3):
    print("out", i, flush=True)
    print("err", i, file=sys.stderr, flush=True)
`})
	mustExit(t, r, 0)
	if got := strings.Join(r.stdout, "|"); got != "out 0|out 1|out 2" {
		t.Errorf("stdout %q", got)
	}
	if got := strings.Join(r.stderr, "|"); got != "err 0|err 1|err 2" {
		t.Errorf("stderr %q", got)
	}
	// Seq numbers both streams together; order across the two pipes is
	// only as precise as the scheduler, so it is not asserted here.
	for i, o := range r.all {
		if o.Seq != uint64(i+1) {
			t.Errorf("message %d has seq %d", i, o.Seq)
		}
	}
}

// The program waits for a file the test creates only after receiving its
// first line: without live streaming it would time out.
func TestOutputIsLive(t *testing.T) {
	requireRuntime(t, "python")
	gate := filepath.Join(shared.base, fmt.Sprintf("gate-%d", time.Now().UnixNano()))
	t.Cleanup(func() { os.Remove(gate) })
	r := runCtx(t, context.Background(), &protocol.Exec{Runtime: "python", TimeoutMS: 30_000,
		Env: map[string]string{"GATE": gate}, Code: `
import os, time
print("first", flush=True)
while not os.path.exists(os.environ["GATE"]):
    time.sleep(0.01)
print("second")
`}, func(o *protocol.Output) {
		if o.Data == "first" {
			os.WriteFile(gate, nil, 0o644)
		}
	})
	mustExit(t, r, 0)
	if r.out() != "first\nsecond" {
		t.Fatalf("stdout %q", r.stdout)
	}
}

func TestExitCodes(t *testing.T) {
	cases := []struct {
		runtime, code string
		want          int
		signal        string
	}{
		{"python", "import sys; sys.exit(3)", 3, ""},
		{"python", "raise SystemExit('boom')", 1, ""},
		{"python", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 137, "killed"},
		{"node", "process.exit(4)", 4, ""},
		{"node", "throw new Error('boom')", 1, ""},
	}
	for _, tc := range cases {
		t.Run(tc.runtime+"/"+strconv.Itoa(tc.want), func(t *testing.T) {
			requireRuntime(t, tc.runtime)
			r := run(t, &protocol.Exec{Runtime: tc.runtime, Code: tc.code})
			mustExit(t, r, tc.want)
			if r.exit.Signal != tc.signal {
				t.Fatalf("signal %q, want %q", r.exit.Signal, tc.signal)
			}
		})
	}
}

func TestStdin(t *testing.T) {
	requireRuntime(t, "python")
	r := run(t, &protocol.Exec{Runtime: "python", Stdin: []byte("abc\ndef\n"),
		Code: "import sys\nfor l in sys.stdin: print(l.strip().upper())"})
	mustExit(t, r, 0)
	if r.out() != "ABC\nDEF" {
		t.Fatalf("stdout %q", r.stdout)
	}
	// No stdin: the program sees EOF at once rather than hanging.
	r = run(t, &protocol.Exec{Runtime: "python", Code: "import sys; print(repr(sys.stdin.read()))"})
	mustExit(t, r, 0)
	if r.out() != "''" {
		t.Fatalf("stdout %q", r.stdout)
	}
}

func TestEnv(t *testing.T) {
	requireRuntime(t, "python")
	r := run(t, &protocol.Exec{Runtime: "python", Env: map[string]string{"FOO": "bar baz", "LANG": "C"},
		Code: `import os; print(os.environ["FOO"]); print(os.environ["LANG"]); print(os.environ["PATH"]); print(os.environ["HOME"] != "")`})
	mustExit(t, r, 0)
	want := "bar baz\nC\n" + defaultPath + "\nTrue"
	if r.out() != want {
		t.Fatalf("stdout %q, want %q", r.out(), want)
	}
}

func TestRunsUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the agent only drops privileges when it is root")
	}
	requireRuntime(t, "python")
	r := run(t, &protocol.Exec{Runtime: "python", Code: `import os; print(os.getuid(), os.getgid(), os.getgroups(), os.getpgrp() == os.getpid())
open("mine.txt", "w").write("x")`})
	mustExit(t, r, 0)
	if want := fmt.Sprintf("%d %d [] True", testUID, testGID); r.out() != want {
		t.Fatalf("stdout %q, want %q", r.out(), want)
	}
}

func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// A zombie is dead; it only waits for its new parent to reap it.
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(rest, "Z")
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 200 && !processGone(pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if !processGone(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("process %d survived the workload", pid)
	}
}

func TestTimeoutKillsProcessTree(t *testing.T) {
	requireRuntime(t, "python")
	r := run(t, &protocol.Exec{Runtime: "python", TimeoutMS: 1000, Code: `
import subprocess, time
p = subprocess.Popen(["sleep", "60"])
print(p.pid, flush=True)
time.sleep(60)
`})
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !r.exit.TimedOut || r.exit.Code != 137 || r.exit.Signal != "killed" || !strings.Contains(r.exit.Error, "timed out") {
		t.Fatalf("exit %+v", *r.exit)
	}
	if len(r.stdout) != 1 {
		t.Fatalf("stdout %q", r.stdout)
	}
	pid, _ := strconv.Atoi(r.stdout[0])
	waitGone(t, pid)
}

// Background processes must not hold back the exit, even one that left the
// process group and still holds stdout.
func TestBackgroundChildrenDoNotBlockExit(t *testing.T) {
	requireRuntime(t, "python")
	r := run(t, &protocol.Exec{Runtime: "python", TimeoutMS: 20_000, Code: `
import subprocess
a = subprocess.Popen(["sleep", "30"])
b = subprocess.Popen(["sleep", "5"], start_new_session=True)
print(a.pid, b.pid, flush=True)
`})
	mustExit(t, r, 0)
	if r.exit.DurationMS > 15_000 {
		t.Fatalf("exit took %d ms: waited for the background child", r.exit.DurationMS)
	}
	f := strings.Fields(r.out())
	pid, _ := strconv.Atoi(f[0])
	waitGone(t, pid)
}

func TestOutputLimit(t *testing.T) {
	requireRuntime(t, "python")
	r := run(t, &protocol.Exec{Runtime: "python", OutputLimit: 1000, Code: `
import sys
for i in range(20000):
    print("line %05d" % i)
print("the end", file=sys.stderr)
sys.exit(7)
`})
	mustExit(t, r, 7) // kept running to the end: not killed by a closed pipe
	if !r.exit.Truncated {
		t.Fatal("not truncated")
	}
	n := 0
	for _, o := range r.all {
		n += len(o.Data)
	}
	if n > 1000 || n < 900 {
		t.Fatalf("sent %d bytes of output, limit 1000", n)
	}
}

func TestLongLinesAreChunked(t *testing.T) {
	requireRuntime(t, "python")
	r := run(t, &protocol.Exec{Runtime: "python", Code: `print("é" * 100000); print("short")`})
	mustExit(t, r, 0)
	var whole strings.Builder
	for _, s := range r.stdout[:len(r.stdout)-1] {
		if len(s) > 64<<10 {
			t.Fatalf("chunk of %d bytes", len(s))
		}
		whole.WriteString(s)
	}
	if whole.String() != strings.Repeat("é", 100000) || r.stdout[len(r.stdout)-1] != "short" {
		t.Fatalf("chunks do not reassemble (%d chunks)", len(r.stdout))
	}
}

func TestCancel(t *testing.T) {
	requireRuntime(t, "python")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := runCtx(t, ctx, &protocol.Exec{Runtime: "python", Code: `
import time
print("started", flush=True)
time.sleep(60)
`}, func(o *protocol.Output) { cancel() })
	if !errors.Is(r.err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", r.err)
	}
	if r.exit == nil || !r.exit.Cancelled || r.exit.Code != 137 {
		t.Fatalf("exit %+v", r.exit)
	}
}

type tarEntry struct {
	name, body, link string
	typ              byte
}

func tarGz(t *testing.T, entries ...tarEntry) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body))}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func TestArchive(t *testing.T) {
	requireRuntime(t, "python")
	a := tarGz(t,
		tarEntry{name: "app/main.py", body: "import helper\nprint(helper.greet(open('data/name.txt').read().strip()))\n"},
		tarEntry{name: "app/helper.py", body: "def greet(n): return 'hello ' + n\n"},
		tarEntry{name: "data/name.txt", body: "archive\n"},
	)
	r := run(t, &protocol.Exec{Runtime: "python", Archive: a, Entrypoint: "app/main.py"})
	mustExit(t, r, 0)
	if r.out() != "hello archive" {
		t.Fatalf("stdout %q stderr %q", r.stdout, r.stderr)
	}
}

func TestArchiveGoSubpackage(t *testing.T) {
	requireRuntime(t, "go")
	a := tarGz(t,
		tarEntry{name: "go.mod", body: "module example.com/app\n\ngo 1.21\n"},
		tarEntry{name: "cmd/app/main.go", body: "package main\n\nimport (\"fmt\"; \"example.com/app/lib\")\n\nfunc main() { fmt.Println(lib.Answer()) }\n"},
		tarEntry{name: "lib/lib.go", body: "package lib\n\nfunc Answer() int { return 42 }\n"},
	)
	r := run(t, &protocol.Exec{Runtime: "go", Archive: a, Entrypoint: "cmd/app/main.go", Env: goEnv()})
	mustExit(t, r, 0)
	if r.out() != "42" {
		t.Fatalf("stdout %q stderr %q", r.stdout, r.stderr)
	}
}

func TestMaliciousArchives(t *testing.T) {
	many := make([]tarEntry, 10_001)
	for i := range many {
		many[i] = tarEntry{name: fmt.Sprintf("f%05d", i)}
	}
	var bomb bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&bomb, gzip.BestCompression)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: "bomb", Typeflag: tar.TypeReg, Size: 300 << 20, Mode: 0o644})
	zeros := make([]byte, 1<<20)
	for range 300 {
		tw.Write(zeros)
	}
	tw.Close()
	zw.Close()
	cases := []struct {
		name    string
		archive []byte
	}{
		{"absolute path", tarGz(t, tarEntry{name: "/tmp/evil", body: "x"})},
		{"dot dot", tarGz(t, tarEntry{name: "../evil", body: "x"})},
		{"symlink escape", tarGz(t, tarEntry{name: "l", typ: tar.TypeSymlink, link: "../../../etc/passwd"})},
		{"hardlink escape", tarGz(t, tarEntry{name: "h", typ: tar.TypeLink, link: "../../etc/passwd"})},
		{"device file", tarGz(t, tarEntry{name: "dev", typ: tar.TypeBlock})},
		{"too many files", tarGz(t, many...)},
		{"bomb", bomb.Bytes()},
		{"garbage", []byte("not an archive")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, &protocol.Exec{Runtime: "python", Archive: tc.archive, Entrypoint: "main.py"})
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.exit.Code != -1 || !strings.HasPrefix(r.exit.Error, "bad archive: archive refused") || len(r.all) != 0 {
				t.Fatalf("exit %+v output %q", *r.exit, r.stdout)
			}
			t.Log(r.exit.Error)
		})
	}
}

func TestEnvironmentErrors(t *testing.T) {
	cases := []struct {
		name string
		ex   protocol.Exec
		want string
	}{
		{"unknown runtime", protocol.Exec{Runtime: "cobol", Code: "x"}, "unknown runtime"},
		{"entrypoint escapes", protocol.Exec{Runtime: "python", Code: "x", Entrypoint: "../x.py"}, "bad entrypoint"},
		{"absolute entrypoint", protocol.Exec{Runtime: "python", Code: "x", Entrypoint: "/etc/x.py"}, "bad entrypoint"},
		{"wrong protocol", protocol.Exec{ProtocolVersion: 99, Runtime: "python", Code: "x"}, "protocol 99"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, &tc.ex)
			if r.err != nil || r.exit.Code != -1 || !strings.Contains(r.exit.Error, tc.want) {
				t.Fatalf("exit %+v err %v, want error containing %q", r.exit, r.err, tc.want)
			}
		})
	}
}

// Garbage from the host ends that session only; the agent keeps serving.
func TestMalformedFramesFromHost(t *testing.T) {
	ta := startAgent(t, Config{})
	frames := map[string][]byte{
		"oversize":  {0xff, 0xff, 0xff, 0xff},
		"not json":  append([]byte{0, 0, 0, 5}, "hello"...),
		"bad type":  append([]byte{0, 0, 0, 15}, `{"type":"boom"}`...),
		"truncated": append([]byte{0, 0, 1, 0}, `{"type":`...),
	}
	for name, f := range frames {
		t.Run(name, func(t *testing.T) {
			nc, err := net.Dial("unix", ta.sock)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			if _, err := protocol.ReadMessage(nc); err != nil {
				t.Fatal(err)
			}
			nc.Write(f)
			if name == "truncated" {
				nc.(*net.UnixConn).CloseWrite()
			}
			nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := protocol.ReadMessage(nc); err == nil {
				t.Fatal("agent answered a malformed frame")
			} else if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("agent kept the session open after a malformed frame")
			}
		})
	}
	if _, h := ta.dial(t); h.ProtocolVersion != protocol.Version {
		t.Fatal("no hello after malformed sessions")
	}
}

func TestOneshotPowersOff(t *testing.T) {
	requireRuntime(t, "python")
	ta := startAgent(t, Config{Oneshot: true})
	c, _ := ta.dial(t)
	exit, err := c.Run(context.Background(), &protocol.Exec{Runtime: "python", Code: "pass"}, nil)
	if err != nil || exit.Code != 0 {
		t.Fatalf("exit %+v err %v", exit, err)
	}
	select {
	case err := <-ta.serve:
		if !errors.Is(err, ErrPowerOff) {
			t.Fatalf("Serve returned %v, want ErrPowerOff", err)
		}
		ta.serve <- err // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("oneshot agent still serving")
	}
}

func TestShutdownPowersOff(t *testing.T) {
	ta := startAgent(t, Config{})
	c, _ := ta.dial(t)
	if err := c.Shutdown(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ta.serve:
		if !errors.Is(err, ErrPowerOff) {
			t.Fatalf("Serve returned %v, want ErrPowerOff", err)
		}
		ta.serve <- err
	case <-time.After(10 * time.Second):
		t.Fatal("agent ignored shutdown")
	}
}

// A oneshot VM is spent once it took its exec: when the host closes the stream (it may do
// so the moment it has the exit, or give up mid-run), the agent powers off rather than
// waiting for a host that will not come back.
func TestOneshotPowersOffWhenHostLeaves(t *testing.T) {
	requireRuntime(t, "python")
	ta := startAgent(t, Config{Oneshot: true})
	c, _ := ta.dial(t)
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	go func() {
		var once sync.Once
		c.Run(ctx, &protocol.Exec{Runtime: "python", Code: "import time\nprint('up', flush=True)\ntime.sleep(30)\n"},
			func(*protocol.Output) { once.Do(func() { close(started) }) })
	}()
	<-started
	c.Close()
	cancel()
	select {
	case err := <-ta.serve:
		if !errors.Is(err, ErrPowerOff) {
			t.Fatalf("Serve returned %v, want ErrPowerOff", err)
		}
		ta.serve <- err
	case <-time.After(10 * time.Second):
		t.Fatal("oneshot agent kept serving after its host left")
	}
}
