package guest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/creack/pty"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// Session processes. Each process has one emitter (Seq, caps) whose send fans the
// output out to the streams watching it: the stream that started it and any that
// attached later. A watcher that goes away (the host closed its stream, or it took no
// frame for streamWriteTimeout) is dropped; the process keeps running and its other
// watchers keep receiving. While a watcher is slow the process's output waits for it
// (bounded by streamWriteTimeout), which is what makes the starting stream lossless.

// procTable holds the running session processes.
type procTable struct {
	mu    sync.Mutex
	byPID map[int]*process
	byTag map[string]*process
}

type process struct {
	pid   int
	tag   string
	echo  *protocol.ProcessSpec // for process.list
	start time.Time
	pty   *os.File // the PTY master; nil without a PTY
	out   *emitter

	inMu  sync.Mutex
	stdin *os.File // the stdin pipe (or the PTY master); nil when closed or never open

	mu       sync.Mutex
	watchers map[*watcher]struct{}
	exit     *protocol.Exit // set once the process has ended
}

// watcher is one stream receiving a process's events.
type watcher struct {
	st   net.Conn
	mu   sync.Mutex // serialises writes; held across the response so no event precedes it
	done chan struct{}
	once sync.Once
}

func newWatcher(st net.Conn) *watcher { return &watcher{st: st, done: make(chan struct{})} }

func (w *watcher) send(e *protocol.Event) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	select {
	case <-w.done:
		return net.ErrClosed
	default:
	}
	w.st.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	return protocol.SendEvent(w.st, e)
}

func (w *watcher) close() { w.once.Do(func() { close(w.done) }) }

// broadcast is the emitter's send: it never fails, a failing watcher is dropped.
func (p *process) broadcast(m *protocol.Message) error {
	ev := &protocol.Event{Output: m.Output}
	p.mu.Lock()
	ws := make([]*watcher, 0, len(p.watchers))
	for w := range p.watchers {
		ws = append(ws, w)
	}
	p.mu.Unlock()
	for _, w := range ws {
		if err := w.send(ev); err != nil {
			p.detach(w)
		}
	}
	return nil
}

func (p *process) detach(w *watcher) {
	p.mu.Lock()
	delete(p.watchers, w)
	p.mu.Unlock()
	w.close()
}

// watch holds the operation's stream open until the process has ended (its exit was
// sent), the host closed the stream, or the session ended.
func (p *process) watch(ctx context.Context, w *watcher) {
	go func() {
		// The host sends nothing after its request: any read result means it is done
		// with this stream. The read ends when the stream is closed at the latest.
		var b [1]byte
		w.st.Read(b[:])
		p.detach(w)
	}()
	select {
	case <-w.done:
	case <-ctx.Done():
		p.detach(w)
	}
}

// finish records the exit and sends it to every watcher.
func (p *process) finish(exit *protocol.Exit) {
	p.mu.Lock()
	p.exit = exit
	ws := p.watchers
	p.watchers = nil
	p.mu.Unlock()
	ev := &protocol.Event{Exit: exit}
	for w := range ws {
		w.send(ev)
		w.close()
	}
}

func (t *procTable) lookup(pid int, tag string) (*process, *protocol.OpError) {
	if pid < 0 || len(tag) > maxTagLen {
		return nil, opErr(protocol.ErrCodeInvalid, "bad pid or tag")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var p *process
	switch {
	case pid != 0:
		p = t.byPID[pid]
		if p != nil && tag != "" && p.tag != tag {
			p = nil
		}
	case tag != "":
		p = t.byTag[tag]
	default:
		return nil, opErr(protocol.ErrCodeInvalid, "pid or tag required")
	}
	if p == nil {
		if pid != 0 {
			return nil, opErr(protocol.ErrCodeNoProcess, "no running process with pid %d", pid)
		}
		return nil, opErr(protocol.ErrCodeNoProcess, "no running process tagged %q", tag)
	}
	return p, nil
}

func (t *procTable) remove(p *process) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.byPID, p.pid)
	if p.tag != "" && t.byTag[p.tag] == p {
		delete(t.byTag, p.tag)
	}
}

func (t *procTable) list() []protocol.ProcessInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]protocol.ProcessInfo, 0, len(t.byPID))
	for _, p := range t.byPID {
		out = append(out, protocol.ProcessInfo{PID: p.pid, Tag: p.tag, Spec: p.echo, Start: p.start.UnixMilli()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out
}

// echoBudget bounds one process's spec in process.list, so that maxProcesses of them
// fit one session frame: long command lines are shortened there.
const echoBudget = 2 << 10

// echoSpec is spec as process.list shows it: no env values, argv/shell shortened.
func echoSpec(spec *protocol.ProcessSpec) *protocol.ProcessSpec {
	e := *spec
	budget := echoBudget
	short := func(s string) string {
		n := runeCut([]byte(s), max(budget, 0))
		budget -= n
		return s[:n]
	}
	e.Shell = short(spec.Shell)
	e.Argv = nil
	for _, a := range spec.Argv {
		if budget <= 0 {
			break
		}
		e.Argv = append(e.Argv, short(a))
	}
	e.Env = nil
	if len(spec.Env) > 0 {
		e.Env = map[string]string{}
		for k := range spec.Env {
			if budget -= len(k) + 8; budget < 0 {
				break
			}
			e.Env[k] = ""
		}
	}
	return &e
}

var signals = map[string]syscall.Signal{
	"TERM": syscall.SIGTERM, "KILL": syscall.SIGKILL, "INT": syscall.SIGINT, "HUP": syscall.SIGHUP,
	"QUIT": syscall.SIGQUIT, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2,
}

func validateSpec(s *protocol.ProcessSpec) *protocol.OpError {
	bad := func(format string, args ...any) *protocol.OpError {
		return opErr(protocol.ErrCodeInvalid, format, args...)
	}
	if (len(s.Argv) > 0) == (s.Shell != "") {
		return bad("exactly one of argv and shell is required")
	}
	if len(s.Argv) > maxArgs {
		return bad("more than %d arguments", maxArgs)
	}
	n := len(s.Shell)
	for _, a := range s.Argv {
		n += len(a)
	}
	if n > maxArgvBytes {
		return bad("command line longer than %d bytes", maxArgvBytes)
	}
	if strings.IndexByte(s.Shell, 0) >= 0 || (len(s.Argv) > 0 && s.Argv[0] == "") {
		return bad("bad command")
	}
	for _, a := range s.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return bad("argument contains a NUL byte")
		}
	}
	if len(s.Env) > maxEnvVars {
		return bad("more than %d environment variables", maxEnvVars)
	}
	n = 0
	for k, v := range s.Env {
		n += len(k) + len(v) + 2
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.IndexByte(v, 0) >= 0 {
			return bad("bad environment variable %.64q", k)
		}
	}
	if n > maxEnvBytes {
		return bad("environment larger than %d bytes", maxEnvBytes)
	}
	if len(s.Tag) > maxTagLen || !utf8.ValidString(s.Tag) || strings.ContainsFunc(s.Tag, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return bad("tag: at most %d printable bytes", maxTagLen)
	}
	if s.TimeoutMS < 0 || s.OutputLimit < 0 || s.LineLimit < 0 {
		return bad("negative timeout or limit")
	}
	if sz := s.PTY; sz != nil && (sz.Rows > maxTermSize || sz.Cols > maxTermSize) {
		return bad("terminal larger than %dx%d", maxTermSize, maxTermSize)
	}
	return nil
}

// winsize is a requested terminal size, 80x24 where unset.
func winsize(s *protocol.Size) *pty.Winsize {
	ws := &pty.Winsize{Rows: s.Rows, Cols: s.Cols}
	if ws.Rows == 0 {
		ws.Rows = 24
	}
	if ws.Cols == 0 {
		ws.Cols = 80
	}
	return ws
}

// shellArgv runs a command line with bash as a login shell, or sh where bash is missing.
func shellArgv(line string) []string {
	if fi, err := os.Stat("/bin/bash"); err == nil && fi.Mode().IsRegular() {
		return []string{"/bin/bash", "-l", "-c", line}
	}
	return []string{"/bin/sh", "-c", line}
}

func sessionEnv(spec *protocol.ProcessSpec, u sessUser, defaults map[string]string) []string {
	env := map[string]string{
		"PATH": defaultPath, "HOME": u.home, "USER": u.name, "LOGNAME": u.name, "LANG": "C.UTF-8",
	}
	if spec.PTY != nil {
		env["TERM"] = "xterm-256color"
	}
	for k, v := range defaults { // the sandbox's env (sys.identity)
		env[k] = v
	}
	for k, v := range spec.Env {
		env[k] = v
	}
	list := make([]string, 0, len(env))
	for k, v := range env {
		list = append(list, k+"="+v)
	}
	sort.Strings(list)
	return list
}

// processStart starts a process and streams its events to st.
func (a *Agent) processStart(agentCtx, ctx context.Context, req *protocol.Request, st net.Conn) *protocol.OpError {
	spec := req.Process
	if spec == nil {
		return opErr(protocol.ErrCodeInvalid, "process.start without a process")
	}
	if e := validateSpec(spec); e != nil {
		return e
	}
	u, e := a.sessionUser(spec.User)
	if e != nil {
		return e
	}
	env := sessionEnv(spec, u, a.sess.defaultEnv())
	argv := spec.Argv
	if spec.Shell != "" {
		argv = shellArgv(spec.Shell)
	}
	bin, err := lookPath(argv[0], envValue(env, "PATH"))
	if err != nil {
		return opErr(protocol.ErrCodeNotFound, "%s: command not found", filepath.Base(argv[0]))
	}
	cwd := u.home
	if spec.Cwd != "" {
		if cwd, e = resolvePath(u.home, spec.Cwd); e != nil {
			return e
		}
	}
	if fi, err := os.Stat(cwd); err != nil {
		return fsError(err)
	} else if !fi.IsDir() {
		return opErr(protocol.ErrCodeNotDir, "cwd %s is not a directory", cwd)
	}

	// The child's ends of its stdio, closed once it has started; ours in p.
	var child []*os.File
	var outR, errR, stdin, master *os.File
	var sys *syscall.SysProcAttr
	ok := false
	defer func() {
		for _, f := range child {
			f.Close()
		}
		if !ok {
			for _, f := range []*os.File{outR, errR, stdin, master} {
				if f != nil {
					f.Close()
				}
			}
		}
	}()
	if spec.PTY != nil {
		m, tty, err := pty.Open()
		if err != nil {
			return opErr(protocol.ErrCodeInternal, "open a pty: %v", err)
		}
		master, stdin = m, m
		child = []*os.File{tty, tty, tty}
		if err := pty.Setsize(m, winsize(spec.PTY)); err != nil {
			return opErr(protocol.ErrCodeInternal, "pty size: %v", err)
		}
		if u.cred != nil {
			tty.Chown(u.uid, u.gid) // as login does: the terminal is its user's
		}
		// Its own session, so the PTY is its controlling terminal and the session's
		// process group is the process's pid, like Setpgid.
		sys = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Credential: u.cred}
	} else {
		var in *os.File
		if spec.Stdin {
			r, w, err := os.Pipe()
			if err != nil {
				return opErr(protocol.ErrCodeInternal, "pipe: %v", err)
			}
			in, stdin = r, w
		} else if in, err = os.Open(os.DevNull); err != nil {
			return opErr(protocol.ErrCodeInternal, "%v", err)
		}
		child = append(child, in)
		r1, w1, err := os.Pipe()
		if err != nil {
			return opErr(protocol.ErrCodeInternal, "pipe: %v", err)
		}
		outR = r1
		child = append(child, w1)
		r2, w2, err := os.Pipe()
		if err != nil {
			return opErr(protocol.ErrCodeInternal, "pipe: %v", err)
		}
		errR = r2
		child = append(child, w2)
		sys = &syscall.SysProcAttr{Setpgid: true, Credential: u.cred}
	}

	limit := spec.OutputLimit
	if limit <= 0 {
		limit = a.cfg.OutputLimit
	}
	p := &process{tag: spec.Tag, echo: echoSpec(spec), pty: master, stdin: stdin, watchers: map[*watcher]struct{}{}}
	p.out = &emitter{send: p.broadcast, limit: limit, lineLimit: spec.LineLimit}
	w := newWatcher(st)
	p.watchers[w] = struct{}{}
	w.mu.Lock() // no event before the response

	t := &a.sess.procs
	t.mu.Lock()
	if len(t.byPID) >= maxProcesses {
		t.mu.Unlock()
		w.mu.Unlock()
		return opErr(protocol.ErrCodeTooLarge, "too many processes (%d running)", maxProcesses)
	}
	if p.tag != "" && t.byTag[p.tag] != nil {
		t.mu.Unlock()
		w.mu.Unlock()
		return opErr(protocol.ErrCodeExists, "a running process is tagged %q", p.tag)
	}
	pid, wait, err := a.spawn.start(bin, argv, &os.ProcAttr{Dir: cwd, Env: env, Files: child, Sys: sys})
	// The child's ends must go now: the pumps see EOF only when no copy is left.
	for _, f := range child {
		f.Close()
	}
	child = nil
	if err != nil {
		t.mu.Unlock()
		w.mu.Unlock()
		e := fsError(err)
		if inner := errors.Unwrap(err); inner != nil {
			err = inner
		}
		e.Message = "start " + filepath.Base(argv[0]) + ": " + err.Error()
		if e.Code == protocol.ErrCodeInternal || e.Code == protocol.ErrCodeExists {
			e.Code = protocol.ErrCodeInvalid
		}
		return e
	}
	ok = true
	p.pid, p.start = pid, time.Now()
	t.byPID[pid] = p
	if p.tag != "" {
		t.byTag[p.tag] = p
	}
	t.mu.Unlock()

	a.log.Info("process started", "pid", pid, "tag", p.tag, "user", u.name, "pty", master != nil, "argv0", filepath.Base(argv[0]))
	rerr := respond(st, &protocol.Response{PID: pid})
	w.mu.Unlock()
	if rerr != nil {
		p.detach(w)
	}
	go a.runProcess(agentCtx, p, spec, wait, outR, errR)
	p.watch(ctx, w)
	return nil
}

// runProcess streams a started process's output, waits for it (killing its group on
// timeout or when the agent stops), drains what it left and sends the exit.
func (a *Agent) runProcess(agentCtx context.Context, p *process, spec *protocol.ProcessSpec, wait func() syscall.WaitStatus, outR, errR *os.File) {
	exitSig := newExitSignal()
	var pumps sync.WaitGroup
	if p.pty != nil {
		pumps.Go(func() { ptyPump(p.pty, a.cfg.MaxLine, p.out, exitSig) })
	} else {
		pumps.Go(func() { pump(outR, protocol.Stdout, a.cfg.MaxLine, p.out, exitSig) })
		pumps.Go(func() { pump(errR, protocol.Stderr, a.cfg.MaxLine, p.out, exitSig) })
	}
	exited := make(chan syscall.WaitStatus, 1)
	go func() { exited <- wait() }()
	var timeout <-chan time.Time
	if spec.TimeoutMS > 0 {
		tm := time.NewTimer(time.Duration(spec.TimeoutMS) * time.Millisecond)
		defer tm.Stop()
		timeout = tm.C
	}
	exit := &protocol.Exit{}
	var ws syscall.WaitStatus
	select {
	case ws = <-exited:
	case <-timeout:
		exit.TimedOut = true
		exit.Error = fmt.Sprintf("timed out after %d ms", spec.TimeoutMS)
		syscall.Kill(-p.pid, syscall.SIGKILL)
		ws = <-exited
	case <-agentCtx.Done():
		exit.Cancelled = true
		exit.Error = "cancelled: the agent is stopping"
		syscall.Kill(-p.pid, syscall.SIGKILL)
		ws = <-exited
	}
	// As for exec: what it left in its group goes with it, then the output is drained.
	syscall.Kill(-p.pid, syscall.SIGKILL)
	p.inMu.Lock()
	if p.stdin != nil && p.stdin != p.pty {
		p.stdin.Close()
	}
	p.stdin = nil
	p.inMu.Unlock()
	exitSig.fire(outR, errR, p.pty)
	deadline := time.Now().Add(drainIdle)
	for _, f := range []*os.File{outR, errR, p.pty} {
		if f != nil {
			f.SetReadDeadline(deadline)
		}
	}
	pumps.Wait()
	for _, f := range []*os.File{outR, errR, p.pty} {
		if f != nil {
			f.Close()
		}
	}
	if ws.Signaled() {
		exit.Code = 128 + int(ws.Signal())
		exit.Signal = ws.Signal().String()
	} else {
		exit.Code = ws.ExitStatus()
	}
	exit.Truncated, exit.OutputCut = p.out.state()
	took := time.Since(p.start)
	exit.DurationMS, exit.DurationUS = took.Milliseconds(), took.Microseconds()
	a.sess.procs.remove(p)
	p.finish(exit)
	a.log.Info("process exited", "pid", p.pid, "tag", p.tag, "code", exit.Code, "signal", exit.Signal,
		"error", exit.Error, "ms", exit.DurationMS)
}

// processAttach streams a running process's events from now on.
func (a *Agent) processAttach(ctx context.Context, req *protocol.Request, st net.Conn) *protocol.OpError {
	p, e := a.sess.procs.lookup(req.PID, req.Tag)
	if e != nil {
		return e
	}
	w := newWatcher(st)
	w.mu.Lock()
	p.mu.Lock()
	exit := p.exit
	if exit == nil {
		if len(p.watchers) >= maxWatchers {
			p.mu.Unlock()
			w.mu.Unlock()
			return opErr(protocol.ErrCodeTooLarge, "process %d already has %d attached streams", p.pid, maxWatchers)
		}
		p.watchers[w] = struct{}{}
	}
	p.mu.Unlock()
	rerr := respond(st, &protocol.Response{PID: p.pid})
	w.mu.Unlock()
	if rerr != nil {
		p.detach(w)
		return rerr
	}
	if exit != nil { // it ended between the lookup and now
		w.send(&protocol.Event{Exit: exit})
		return nil
	}
	p.watch(ctx, w)
	return nil
}

func (a *Agent) processSignal(req *protocol.Request, st net.Conn) *protocol.OpError {
	sig, ok := signals[strings.TrimPrefix(req.Signal, "SIG")]
	if !ok {
		return opErr(protocol.ErrCodeInvalid, "signal %.16q: want TERM, KILL, INT, HUP, QUIT, USR1 or USR2", req.Signal)
	}
	p, e := a.sess.procs.lookup(req.PID, req.Tag)
	if e != nil {
		return e
	}
	// To the whole group: a shell's children get it too. ESRCH: it has just ended.
	if err := syscall.Kill(-p.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return opErr(protocol.ErrCodeInternal, "signal %d: %v", p.pid, err)
	}
	a.log.Info("process signalled", "pid", p.pid, "signal", sig.String())
	return respond(st, &protocol.Response{})
}

// processStdin writes to a process's stdin and/or closes it. On a PTY, closing sends
// the terminal's end-of-file character (^D) instead: the terminal stays open.
func (a *Agent) processStdin(req *protocol.Request, st net.Conn) *protocol.OpError {
	if len(req.Data) > maxStdinData {
		return opErr(protocol.ErrCodeTooLarge, "stdin data: at most %d bytes per request", maxStdinData)
	}
	p, e := a.sess.procs.lookup(req.PID, req.Tag)
	if e != nil {
		return e
	}
	p.inMu.Lock()
	defer p.inMu.Unlock()
	if p.stdin == nil {
		return opErr(protocol.ErrCodeInvalid, "process %d has no open stdin", p.pid)
	}
	data := req.Data
	if req.CloseStdin && p.stdin == p.pty {
		data = append(data[:len(data):len(data)], 0x04)
	}
	if len(data) > 0 {
		p.stdin.SetWriteDeadline(time.Now().Add(stdinWriteTimeout))
		_, err := p.stdin.Write(data)
		p.stdin.SetWriteDeadline(time.Time{})
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return opErr(protocol.ErrCodeInternal, "process %d is not reading its stdin", p.pid)
		case errors.Is(err, syscall.EPIPE):
			return opErr(protocol.ErrCodeInvalid, "process %d closed its stdin", p.pid)
		case err != nil:
			return opErr(protocol.ErrCodeInternal, "stdin: %v", err)
		}
	}
	if req.CloseStdin && p.stdin != p.pty {
		p.stdin.Close()
		p.stdin = nil
	}
	return respond(st, &protocol.Response{})
}

func (a *Agent) processResize(req *protocol.Request, st net.Conn) *protocol.OpError {
	if req.Size == nil || req.Size.Rows == 0 || req.Size.Cols == 0 || req.Size.Rows > maxTermSize || req.Size.Cols > maxTermSize {
		return opErr(protocol.ErrCodeInvalid, "size: rows and cols 1..%d", maxTermSize)
	}
	p, e := a.sess.procs.lookup(req.PID, req.Tag)
	if e != nil {
		return e
	}
	if p.pty == nil {
		return opErr(protocol.ErrCodeInvalid, "process %d has no pty", p.pid)
	}
	// The kernel sends SIGWINCH to the terminal's foreground group.
	p.inMu.Lock()
	defer p.inMu.Unlock()
	if p.stdin == nil {
		return opErr(protocol.ErrCodeNoProcess, "process %d has ended", p.pid)
	}
	if err := pty.Setsize(p.pty, winsize(req.Size)); err != nil {
		return opErr(protocol.ErrCodeInternal, "resize: %v", err)
	}
	return respond(st, &protocol.Response{})
}
