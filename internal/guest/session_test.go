package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// Session tests run the real agent on a unix socket and drive it through the host's
// API (protocol.StartSession, Session.Open/Do). As root (CI) "user" is uid 1000 with a
// home of its own; otherwise both users are the test's.

type sessEnv struct {
	s    *protocol.Session
	ta   *testAgent
	home string
}

// newSession starts an agent with its own user home and opens a session on it.
func newSession(t *testing.T) *sessEnv {
	t.Helper()
	home, err := os.MkdirTemp(shared.base, "home-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(home, 0o755)
	if os.Geteuid() == 0 {
		os.Chown(home, testUID, testGID)
	}
	ta := startAgent(t, Config{UserHome: home})
	return &sessEnv{s: dialSession(t, ta), ta: ta, home: home}
}

func dialSession(t *testing.T, ta *testAgent) *protocol.Session {
	t.Helper()
	nc, err := net.Dial("unix", ta.sock)
	if err != nil {
		t.Fatal(err)
	}
	// Read hello frame by frame: a buffered reader (protocol.Conn) would swallow the
	// first yamux bytes.
	nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	m, err := protocol.ReadMessage(nc)
	nc.SetReadDeadline(time.Time{})
	if err != nil || m.Type != protocol.TypeHello {
		t.Fatalf("hello: %v %+v", err, m)
	}
	if !m.Hello.Session {
		t.Fatal("hello does not announce sessions")
	}
	s, err := protocol.StartSession(nc, m.Hello)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (e *sessEnv) do(t *testing.T, req *protocol.Request) *protocol.Response {
	t.Helper()
	resp, err := e.s.Do(tctx(t), req)
	if err != nil {
		t.Fatalf("%s: %v", req.Op, err)
	}
	return resp
}

// wantCode runs req and wants it to fail with code.
func (e *sessEnv) wantCode(t *testing.T, req *protocol.Request, code string) {
	t.Helper()
	_, err := e.s.Do(tctx(t), req)
	var oe *protocol.OpError
	if !errors.As(err, &oe) || oe.Code != code {
		t.Fatalf("%s %+v: got %v, want code %s", req.Op, req, err, code)
	}
}

func (e *sessEnv) start(t *testing.T, spec *protocol.ProcessSpec) (*protocol.Stream, int) {
	t.Helper()
	st, resp, err := e.s.Open(tctx(t), &protocol.Request{Op: protocol.OpProcessStart, Process: spec})
	if err != nil {
		t.Fatalf("start %+v: %v", spec, err)
	}
	t.Cleanup(func() { st.Close() })
	if resp.PID <= 0 {
		t.Fatalf("start: pid %d", resp.PID)
	}
	return st, resp.PID
}

type procOut struct {
	streams  map[string]*bytes.Buffer
	exit     *protocol.Exit
	events   int
	firstSeq uint64
}

func (o procOut) str(stream string) string {
	if b := o.streams[stream]; b != nil {
		return b.String()
	}
	return ""
}

// collect reads a process stream to its end, checking Seq order, and rebuilds each
// output stream's bytes.
func collect(t *testing.T, st *protocol.Stream, timeout time.Duration) procOut {
	t.Helper()
	st.SetReadDeadline(time.Now().Add(timeout))
	o := procOut{streams: map[string]*bytes.Buffer{}}
	var last uint64
	for {
		ev, err := st.Event()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("event: %v (so far %d events, stdout %q)", err, o.events, o.str(protocol.Stdout))
		}
		if o.exit != nil {
			t.Fatal("event after exit")
		}
		if ev.Exit != nil {
			o.exit = ev.Exit
			continue
		}
		out := ev.Output
		if out.Seq <= last {
			t.Fatalf("seq %d after %d", out.Seq, last)
		}
		if o.firstSeq == 0 {
			o.firstSeq = out.Seq
		}
		last = out.Seq
		o.events++
		b := o.streams[out.Stream]
		if b == nil {
			b = &bytes.Buffer{}
			o.streams[out.Stream] = b
		}
		b.WriteString(out.Data)
		if !out.Partial {
			b.WriteByte('\n')
		}
	}
	if o.exit == nil {
		t.Fatal("stream ended without an exit")
	}
	return o
}

func run1(t *testing.T, e *sessEnv, spec *protocol.ProcessSpec) procOut {
	t.Helper()
	st, _ := e.start(t, spec)
	return collect(t, st, 30*time.Second)
}

func TestSessionProcesses(t *testing.T) {
	e := newSession(t)
	t.Run("concurrent", func(t *testing.T) {
		// The slow one starts first and ends last: both run at once.
		a, _ := e.start(t, &protocol.ProcessSpec{Shell: "sleep 0.5; echo slow"})
		b, _ := e.start(t, &protocol.ProcessSpec{Argv: []string{"sh", "-c", "echo fast; exit 3"}})
		start := time.Now()
		ob := collect(t, b, 10*time.Second)
		fastMS := time.Since(start).Milliseconds()
		oa := collect(t, a, 10*time.Second)
		if ob.str(protocol.Stdout) != "fast\n" || ob.exit.Code != 3 || oa.str(protocol.Stdout) != "slow\n" || oa.exit.Code != 0 {
			t.Fatalf("a %+v %q, b %+v %q", oa.exit, oa.str(protocol.Stdout), ob.exit, ob.str(protocol.Stdout))
		}
		if fastMS > 400 {
			t.Fatalf("the fast process waited for the slow one (%d ms)", fastMS)
		}
	})
	t.Run("env_cwd_user", func(t *testing.T) {
		os.MkdirAll(filepath.Join(e.home, "sub"), 0o755)
		if os.Geteuid() == 0 {
			os.Chown(filepath.Join(e.home, "sub"), testUID, testGID)
		}
		o := run1(t, e, &protocol.ProcessSpec{
			Argv: []string{"sh", "-c", `echo "$FOO|$HOME|$USER|$(pwd)|$(id -u)"; echo err >&2`},
			Env:  map[string]string{"FOO": "bar baz"}, Cwd: "sub",
		})
		uid := os.Geteuid()
		if uid == 0 {
			uid = testUID
		}
		want := fmt.Sprintf("bar baz|%s|user|%s|%d\n", e.home, filepath.Join(e.home, "sub"), uid)
		if o.str(protocol.Stdout) != want || o.str(protocol.Stderr) != "err\n" {
			t.Fatalf("stdout %q want %q, stderr %q", o.str(protocol.Stdout), want, o.str(protocol.Stderr))
		}
		if os.Geteuid() == 0 {
			o = run1(t, e, &protocol.ProcessSpec{Shell: "id -u; echo $HOME", User: "root"})
			if !strings.HasPrefix(o.str(protocol.Stdout), "0\n") {
				t.Fatalf("root: %q", o.str(protocol.Stdout))
			}
		}
	})
	t.Run("exit_codes", func(t *testing.T) {
		for _, c := range []struct {
			shell string
			code  int
			sig   string
		}{{"true", 0, ""}, {"exit 42", 42, ""}, {"kill -9 $$", 137, "killed"}} {
			o := run1(t, e, &protocol.ProcessSpec{Shell: c.shell})
			if o.exit.Code != c.code || o.exit.Signal != c.sig {
				t.Errorf("%s: exit %+v", c.shell, o.exit)
			}
		}
	})
	t.Run("stdin", func(t *testing.T) {
		st, pid := e.start(t, &protocol.ProcessSpec{Argv: []string{"cat"}, Stdin: true})
		e.do(t, &protocol.Request{Op: protocol.OpProcessStdin, PID: pid, Data: []byte("hello\n")})
		e.do(t, &protocol.Request{Op: protocol.OpProcessStdin, PID: pid, Data: []byte("world"), CloseStdin: true})
		o := collect(t, st, 10*time.Second)
		if o.str(protocol.Stdout) != "hello\nworld" || o.exit.Code != 0 {
			t.Fatalf("%q %+v", o.str(protocol.Stdout), o.exit)
		}
		// Without Stdin the process reads EOF at once.
		o = run1(t, e, &protocol.ProcessSpec{Argv: []string{"cat"}})
		if o.exit.Code != 0 || o.str(protocol.Stdout) != "" {
			t.Fatalf("%+v", o.exit)
		}
	})
	t.Run("signal", func(t *testing.T) {
		st, _ := e.start(t, &protocol.ProcessSpec{Shell: "sleep 60", Tag: "sleeper"})
		e.do(t, &protocol.Request{Op: protocol.OpProcessSignal, Tag: "sleeper", Signal: "TERM"})
		o := collect(t, st, 10*time.Second)
		// bash may exec sleep or wait for it: either way TERM reached the group.
		if o.exit.Code != 143 {
			t.Fatalf("TERM: %+v", o.exit)
		}
		// A process ignoring TERM needs KILL.
		st, pid := e.start(t, &protocol.ProcessSpec{Argv: []string{"sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"}})
		waitFor(t, st, "ready")
		e.do(t, &protocol.Request{Op: protocol.OpProcessSignal, PID: pid, Signal: "TERM"})
		time.Sleep(200 * time.Millisecond)
		e.do(t, &protocol.Request{Op: protocol.OpProcessSignal, PID: pid, Signal: "SIGKILL"})
		o = collect(t, st, 10*time.Second)
		if o.exit.Code != 137 || o.exit.Signal != "killed" {
			t.Fatalf("KILL: %+v", o.exit)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		start := time.Now()
		o := run1(t, e, &protocol.ProcessSpec{Shell: "sleep 30", TimeoutMS: 300})
		if !o.exit.TimedOut || o.exit.Code != 137 || time.Since(start) > 5*time.Second {
			t.Fatalf("%+v after %v", o.exit, time.Since(start))
		}
	})
	t.Run("output_limit", func(t *testing.T) {
		o := run1(t, e, &protocol.ProcessSpec{Shell: "yes | head -c 100000", OutputLimit: 1000})
		if !o.exit.Truncated || o.streams[protocol.Stdout].Len() != 1000 {
			t.Fatalf("%+v, %d bytes", o.exit, o.streams[protocol.Stdout].Len())
		}
	})
}

// waitFor reads events until stdout (or pty) output contains s; it returns what it read.
func waitFor(t *testing.T, st *protocol.Stream, s string) string {
	t.Helper()
	st.SetReadDeadline(time.Now().Add(15 * time.Second))
	defer st.SetReadDeadline(time.Time{})
	var got strings.Builder
	for !strings.Contains(got.String(), s) {
		ev, err := st.Event()
		if err != nil {
			t.Fatalf("waiting for %q: %v; got %q", s, err, got.String())
		}
		if ev.Exit != nil {
			t.Fatalf("waiting for %q: exit %+v; got %q", s, ev.Exit, got.String())
		}
		got.WriteString(ev.Output.Data)
		if !ev.Output.Partial {
			got.WriteByte('\n')
		}
	}
	return got.String()
}

func TestSessionAttachList(t *testing.T) {
	e := newSession(t)
	// A process that echoes its stdin lines: what an attached stream sees is driven
	// by the test, not by timing.
	st, pid := e.start(t, &protocol.ProcessSpec{Argv: []string{"sh", "-c", "echo started; while read l; do echo \"got $l\"; done; echo bye"},
		Tag: "echoer", Stdin: true, Env: map[string]string{"SECRET": "hunter2"}})
	waitFor(t, st, "started")

	resp := e.do(t, &protocol.Request{Op: protocol.OpProcessList})
	if len(resp.Processes) != 1 || resp.Processes[0].PID != pid || resp.Processes[0].Tag != "echoer" {
		t.Fatalf("list %+v", resp.Processes)
	}
	if v, ok := resp.Processes[0].Spec.Env["SECRET"]; !ok || v != "" {
		t.Fatalf("env in list: %+v", resp.Processes[0].Spec.Env)
	}

	// Two attached streams, by tag and by pid.
	a1, r1, err := e.s.Open(tctx(t), &protocol.Request{Op: protocol.OpProcessAttach, Tag: "echoer"})
	if err != nil || r1.PID != pid {
		t.Fatal(err, r1)
	}
	defer a1.Close()
	a2, _, err := e.s.Open(tctx(t), &protocol.Request{Op: protocol.OpProcessAttach, PID: pid})
	if err != nil {
		t.Fatal(err)
	}
	e.do(t, &protocol.Request{Op: protocol.OpProcessStdin, Tag: "echoer", Data: []byte("one\n")})
	for _, s := range []*protocol.Stream{st, a1, a2} {
		waitFor(t, s, "got one")
	}
	// The starting stream goes away: the process keeps running, the others still see it.
	st.Close()
	a2.Close()
	time.Sleep(100 * time.Millisecond)
	e.do(t, &protocol.Request{Op: protocol.OpProcessStdin, PID: pid, Data: []byte("two\n"), CloseStdin: true})
	o := collect(t, a1, 10*time.Second)
	if o.str(protocol.Stdout) != "got two\nbye\n" || o.exit.Code != 0 || o.firstSeq < 3 {
		t.Fatalf("attached: %q %+v first seq %d", o.str(protocol.Stdout), o.exit, o.firstSeq)
	}
	// Gone from the table once its exit is sent.
	if resp := e.do(t, &protocol.Request{Op: protocol.OpProcessList}); len(resp.Processes) != 0 {
		t.Fatalf("list after exit: %+v", resp.Processes)
	}
	e.wantCode(t, &protocol.Request{Op: protocol.OpProcessAttach, Tag: "echoer"}, protocol.ErrCodeNoProcess)
	e.wantCode(t, &protocol.Request{Op: protocol.OpProcessSignal, PID: pid, Signal: "TERM"}, protocol.ErrCodeNoProcess)

	t.Run("watchers_capped", func(t *testing.T) {
		st, pid := e.start(t, &protocol.ProcessSpec{Shell: "sleep 30"})
		for range maxWatchers - 1 {
			a, _, err := e.s.Open(tctx(t), &protocol.Request{Op: protocol.OpProcessAttach, PID: pid})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
		}
		e.wantCode(t, &protocol.Request{Op: protocol.OpProcessAttach, PID: pid}, protocol.ErrCodeTooLarge)
		e.do(t, &protocol.Request{Op: protocol.OpProcessSignal, PID: pid, Signal: "KILL"})
		collect(t, st, 10*time.Second)
	})
	t.Run("tag_unique", func(t *testing.T) {
		st, _ := e.start(t, &protocol.ProcessSpec{Shell: "sleep 30", Tag: "dup"})
		e.wantCode(t, &protocol.Request{Op: protocol.OpProcessStart, Process: &protocol.ProcessSpec{Shell: "true", Tag: "dup"}}, protocol.ErrCodeExists)
		e.do(t, &protocol.Request{Op: protocol.OpProcessSignal, Tag: "dup", Signal: "KILL"})
		collect(t, st, 10*time.Second)
	})
}

// TestSessionReconnect: the session ends when the host goes away, the agent keeps
// serving, and a new session finds the processes the last one started.
func TestSessionReconnect(t *testing.T) {
	e := newSession(t)
	st, pid := e.start(t, &protocol.ProcessSpec{Argv: []string{"sh", "-c", "read l; echo \"got $l\""}, Tag: "survivor", Stdin: true})
	st.Close()
	e.s.Close()
	s2 := dialSession(t, e.ta)
	resp, err := s2.Do(tctx(t), &protocol.Request{Op: protocol.OpProcessList})
	if err != nil || len(resp.Processes) != 1 || resp.Processes[0].PID != pid {
		t.Fatalf("list on a new session: %v %+v", err, resp)
	}
	a, _, err := s2.Open(tctx(t), &protocol.Request{Op: protocol.OpProcessAttach, Tag: "survivor"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := s2.Do(tctx(t), &protocol.Request{Op: protocol.OpProcessStdin, Tag: "survivor", Data: []byte("x\n")}); err != nil {
		t.Fatal(err)
	}
	if o := collect(t, a, 10*time.Second); o.str(protocol.Stdout) != "got x\n" {
		t.Fatalf("%q", o.str(protocol.Stdout))
	}
}

// TestSessionNoLoss: random output (sizes, line lengths past MaxLine, no final newline,
// multi-byte UTF-8, both streams) arrives byte for byte. The bytes are put in files
// with fs.write and cat'ed, so the file path is exercised too.
func TestSessionNoLoss(t *testing.T) {
	e := newSession(t)
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	cases := 24
	if testing.Short() {
		cases = 4
	}
	total := 0
	for i := range cases {
		// Log-uniform sizes up to 4 MiB of stdout and 256 KiB of stderr, the first case empty.
		out, errOut := randomText(r, r.IntN(1<<(10+r.IntN(13)))), randomText(r, r.IntN(1<<(4+r.IntN(15))))
		if i == 0 {
			out, errOut = "", ""
		}
		writeFile(t, e, "out.txt", []byte(out))
		writeFile(t, e, "err.txt", []byte(errOut))
		o := run1(t, e, &protocol.ProcessSpec{Shell: "cat out.txt; cat err.txt >&2", OutputLimit: 64 << 20})
		if o.str(protocol.Stdout) != out || o.str(protocol.Stderr) != errOut || o.exit.Code != 0 || o.exit.Truncated {
			t.Fatalf("case %d: stdout %d/%d bytes equal=%v, stderr %d/%d equal=%v, exit %+v", i,
				len(o.str(protocol.Stdout)), len(out), o.str(protocol.Stdout) == out,
				len(o.str(protocol.Stderr)), len(errOut), o.str(protocol.Stderr) == errOut, o.exit)
		}
		total += len(out) + len(errOut)
	}
	t.Logf("%d cases, %d bytes compared", cases, total)
}

// randomText is n bytes (about) of valid UTF-8 with newlines at random spacing,
// including lines longer than the agent's MaxLine.
func randomText(r *rand.Rand, n int) string {
	var b strings.Builder
	runes := []string{"a", "b", "z", " ", "\t", "é", "€", "𝄞", "{", "\"", "\\"}
	for b.Len() < n {
		line := r.IntN(1 << r.IntN(18))
		for j := 0; j < line && b.Len() < n; j++ {
			b.WriteString(runes[r.IntN(len(runes))])
		}
		if r.IntN(10) > 0 {
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func TestSessionPTY(t *testing.T) {
	e := newSession(t)
	st, pid := e.start(t, &protocol.ProcessSpec{
		Shell: `stty size; read a; stty size; read b; echo "got:$b"; echo "term:$TERM"`,
		PTY:   &protocol.Size{Rows: 24, Cols: 80},
	})
	waitFor(t, st, "24 80")
	e.do(t, &protocol.Request{Op: protocol.OpProcessResize, PID: pid, Size: &protocol.Size{Rows: 50, Cols: 132}})
	e.do(t, &protocol.Request{Op: protocol.OpProcessStdin, PID: pid, Data: []byte("x\n")})
	waitFor(t, st, "50 132")
	e.do(t, &protocol.Request{Op: protocol.OpProcessStdin, PID: pid, Data: []byte("hello\n")})
	o := collect(t, st, 10*time.Second)
	out := o.str(protocol.PTY)
	// The terminal echoes the input, then the program's answer, with the tty's CRLF.
	if !strings.Contains(out, "hello\r\ngot:hello\r\nterm:xterm-256color\r\n") || o.exit.Code != 0 {
		t.Fatalf("pty output %q exit %+v (streams %v)", out, o.exit, o.streams)
	}
	if len(o.streams) != 1 {
		t.Fatalf("a pty process has one stream, got %v", o.streams)
	}

	t.Run("prompt_without_newline", func(t *testing.T) {
		// A prompt is delivered at once, not held for a newline.
		st, pid := e.start(t, &protocol.ProcessSpec{Shell: `printf 'name? '; read n; echo "hi $n"`, PTY: &protocol.Size{}})
		waitFor(t, st, "name? ")
		e.do(t, &protocol.Request{Op: protocol.OpProcessStdin, PID: pid, Data: []byte("bob\n")})
		if o := collect(t, st, 10*time.Second); !strings.Contains(o.str(protocol.PTY), "hi bob") {
			t.Fatalf("%q", o.str(protocol.PTY))
		}
	})
	t.Run("eof_and_not_a_pty", func(t *testing.T) {
		st, pid := e.start(t, &protocol.ProcessSpec{Argv: []string{"cat"}, PTY: &protocol.Size{}})
		e.do(t, &protocol.Request{Op: protocol.OpProcessStdin, PID: pid, CloseStdin: true}) // ^D
		if o := collect(t, st, 10*time.Second); o.exit.Code != 0 {
			t.Fatalf("%+v", o.exit)
		}
		st, pid = e.start(t, &protocol.ProcessSpec{Shell: "sleep 30"})
		e.wantCode(t, &protocol.Request{Op: protocol.OpProcessResize, PID: pid, Size: &protocol.Size{Rows: 1, Cols: 1}}, protocol.ErrCodeInvalid)
		e.do(t, &protocol.Request{Op: protocol.OpProcessSignal, PID: pid, Signal: "KILL"})
		collect(t, st, 10*time.Second)
	})
}

func TestSessionErrors(t *testing.T) {
	e := newSession(t)
	for _, c := range []struct {
		name string
		req  *protocol.Request
		code string
	}{
		{"unknown op", &protocol.Request{Op: "nope"}, protocol.ErrCodeUnsupported},
		{"no process", &protocol.Request{Op: protocol.OpProcessStart}, protocol.ErrCodeInvalid},
		{"argv and shell", &protocol.Request{Op: protocol.OpProcessStart, Process: &protocol.ProcessSpec{Argv: []string{"true"}, Shell: "true"}}, protocol.ErrCodeInvalid},
		{"neither", &protocol.Request{Op: protocol.OpProcessStart, Process: &protocol.ProcessSpec{}}, protocol.ErrCodeInvalid},
		{"bad user", &protocol.Request{Op: protocol.OpProcessStart, Process: &protocol.ProcessSpec{Shell: "true", User: "bob"}}, protocol.ErrCodeInvalid},
		{"bad env", &protocol.Request{Op: protocol.OpProcessStart, Process: &protocol.ProcessSpec{Shell: "true", Env: map[string]string{"A=B": "c"}}}, protocol.ErrCodeInvalid},
		{"huge argv", &protocol.Request{Op: protocol.OpProcessStart, Process: &protocol.ProcessSpec{Argv: make([]string, maxArgs+1)}}, protocol.ErrCodeInvalid},
		{"not found", &protocol.Request{Op: protocol.OpProcessStart, Process: &protocol.ProcessSpec{Argv: []string{"no-such-binary-xyz"}}}, protocol.ErrCodeNotFound},
		{"missing cwd", &protocol.Request{Op: protocol.OpProcessStart, Process: &protocol.ProcessSpec{Shell: "true", Cwd: "/no/such/dir"}}, protocol.ErrCodeNotFound},
		{"pid and tag missing", &protocol.Request{Op: protocol.OpProcessSignal, Signal: "TERM"}, protocol.ErrCodeInvalid},
		{"bad signal", &protocol.Request{Op: protocol.OpProcessSignal, PID: 1, Signal: "STOP"}, protocol.ErrCodeInvalid},
		{"no such pid", &protocol.Request{Op: protocol.OpProcessStdin, PID: 999999}, protocol.ErrCodeNoProcess},
		{"stdin too big", &protocol.Request{Op: protocol.OpProcessStdin, PID: 1, Data: make([]byte, maxStdinData+1)}, protocol.ErrCodeTooLarge},
		{"path with NUL", &protocol.Request{Op: protocol.OpFSStat, Path: "a\x00b"}, protocol.ErrCodeInvalid},
		{"remove /", &protocol.Request{Op: protocol.OpFSRemove, Path: "/"}, protocol.ErrCodeInvalid},
	} {
		t.Run(c.name, func(t *testing.T) { e.wantCode(t, c.req, c.code) })
	}
	t.Run("stdin_not_open", func(t *testing.T) {
		st, pid := e.start(t, &protocol.ProcessSpec{Shell: "sleep 30"})
		e.wantCode(t, &protocol.Request{Op: protocol.OpProcessStdin, PID: pid, Data: []byte("x")}, protocol.ErrCodeInvalid)
		e.do(t, &protocol.Request{Op: protocol.OpProcessSignal, PID: pid, Signal: "KILL"})
		collect(t, st, 10*time.Second)
	})
	t.Run("garbage_first_frame", func(t *testing.T) {
		// The session survives a stream that does not start with a request.
		e.do(t, &protocol.Request{Op: protocol.OpMetrics})
	})
}

func TestSessionMetrics(t *testing.T) {
	e := newSession(t)
	m1 := e.do(t, &protocol.Request{Op: protocol.OpMetrics}).Metrics
	// Some CPU work between the samples.
	run1(t, e, &protocol.ProcessSpec{Shell: "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"})
	m2 := e.do(t, &protocol.Request{Op: protocol.OpMetrics}).Metrics
	for _, m := range []*protocol.Metrics{m1, m2} {
		if m.CPUCount < 1 || m.MemTotal <= 0 || m.MemUsed <= 0 || m.MemUsed > m.MemTotal ||
			m.DiskTotal <= 0 || m.DiskUsed < 0 || m.DiskUsed > m.DiskTotal || m.CPUUsedPct < 0 || m.CPUUsedPct > 100 || m.TimestampMS <= 0 {
			t.Fatalf("metrics %+v", m)
		}
	}
	if m2.TimestampMS < m1.TimestampMS {
		t.Fatal("time went backwards")
	}
	t.Logf("metrics: %+v", m2)
}

func TestCPUPercentAndParsers(t *testing.T) {
	s, n := parseProcStat(strings.NewReader("cpu  100 0 100 700 100 0 0 0 50 0\ncpu0 1 2 3 4\ncpu1 1 2 3 4\nintr 5\n"))
	if s.total != 1000 || s.idle != 800 || n != 2 {
		t.Fatalf("%+v %d", s, n)
	}
	if p := cpuPercent(cpuSample{}, s); p != 20 {
		t.Fatalf("since boot: %v", p)
	}
	if p := cpuPercent(s, cpuSample{total: 1100, idle: 850}); p != 50 {
		t.Fatalf("%v", p)
	}
	if p := cpuPercent(s, s); p != 0 {
		t.Fatalf("no time: %v", p)
	}
	total, avail := parseMeminfo(strings.NewReader("MemTotal:       1000 kB\nMemFree: 10 kB\nMemAvailable:    400 kB\n"))
	if total != 1000<<10 || avail != 400<<10 {
		t.Fatal(total, avail)
	}
}
