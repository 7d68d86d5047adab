package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vulcanhq/vulcan/internal/guest/archive"
	"github.com/vulcanhq/vulcan/internal/protocol"
)

// defaultPath is the workload's PATH and where runtimes are looked up. It is
// fixed rather than inherited: PID 1 has no PATH, and in tests the agent's
// own PATH may point into a home the workload's user cannot read.
const defaultPath = "/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

var (
	errCancelled = errors.New("cancelled")
	errTimeout   = errors.New("timeout")
)

// execute runs one exec and always returns an exit to send.
func (a *Agent) execute(ctx context.Context, ex *protocol.Exec, send func(*protocol.Message) error) *protocol.Exit {
	start := time.Now()
	limit := ex.OutputLimit
	if limit <= 0 {
		limit = a.cfg.OutputLimit
	}
	out := &emitter{send: send, limit: limit, lineLimit: ex.LineLimit}
	if ex.TimeoutMS > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, time.Duration(ex.TimeoutMS)*time.Millisecond, errTimeout)
		defer cancel()
	}
	exit, err := a.run(ctx, ex, out)
	if err != nil {
		exit = &protocol.Exit{Code: -1, Error: err.Error()}
	}
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errTimeout):
		exit.TimedOut = true
		exit.Error = fmt.Sprintf("timed out after %d ms", ex.TimeoutMS)
	case errors.Is(cause, errCancelled):
		exit.Cancelled = true
		exit.Error = "cancelled"
	}
	exit.Truncated, exit.OutputCut = out.state()
	took := time.Since(start)
	exit.DurationMS, exit.DurationUS = took.Milliseconds(), took.Microseconds()
	a.log.Info("exec done", "id", ex.ID, "runtime", ex.Runtime, "code", exit.Code,
		"signal", exit.Signal, "error", exit.Error, "ms", exit.DurationMS)
	return exit
}

// user is who the workload runs as.
type user_ struct {
	cred *syscall.Credential // nil: as the agent
	uid  int
	gid  int
	home string
}

func (a *Agent) workloadUser(workDir string) user_ {
	if os.Geteuid() != 0 || a.cfg.UID < 0 {
		home := os.Getenv("HOME")
		if home == "" {
			home = workDir
		}
		return user_{uid: os.Geteuid(), gid: os.Getegid(), home: home}
	}
	u := user_{
		cred: &syscall.Credential{Uid: uint32(a.cfg.UID), Gid: uint32(a.cfg.GID), Groups: []uint32{}},
		uid:  a.cfg.UID, gid: a.cfg.GID, home: workDir,
	}
	if home := a.userHome(); home != "" {
		u.home = home
	}
	return u
}

// userHome is the home of cfg.UID when it exists in /etc/passwd and the
// user can write it (the uid need not exist). Looked up once: NSS is slow
// next to a python start.
func (a *Agent) userHome() string {
	a.homeOnce.Do(func() {
		if pw, err := user.LookupId(strconv.Itoa(a.cfg.UID)); err == nil && writableBy(pw.HomeDir, a.cfg.UID, a.cfg.GID) {
			a.home = pw.HomeDir
		}
	})
	return a.home
}

// run prepares the work dir, builds if needed and runs the workload. An
// error is an environment failure, reported in Exit.Error.
func (a *Agent) run(ctx context.Context, ex *protocol.Exec, out *emitter) (*protocol.Exit, error) {
	if ex.ProtocolVersion != protocol.Version {
		return nil, fmt.Errorf("exec speaks protocol %d, agent speaks %d", ex.ProtocolVersion, protocol.Version)
	}
	rt, ok := runtimes[ex.Runtime]
	if !ok {
		return nil, fmt.Errorf("unknown runtime %q", ex.Runtime)
	}
	entry := ex.Entrypoint
	if entry == "" {
		entry = rt.entry
	}
	entry, err := cleanEntry(entry)
	if err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp(a.cfg.WorkRoot, "vulcan-exec-")
	if err != nil {
		return nil, fmt.Errorf("work dir: %w", err)
	}
	defer func() {
		if err := os.RemoveAll(dir); err != nil {
			a.log.Warn("remove work dir", "dir", dir, "err", err)
		}
	}()
	u := a.workloadUser(dir)
	owner := archive.NoOwner
	if u.cred != nil {
		owner = archive.Owner{UID: u.uid, GID: u.gid}
		if err := os.Chown(dir, u.uid, u.gid); err != nil {
			return nil, fmt.Errorf("work dir: %w", err)
		}
	}

	if len(ex.Archive) > 0 {
		if err := archive.Extract(ctx, bytes.NewReader(ex.Archive), dir, archive.DefaultLimits, owner); err != nil {
			return nil, fmt.Errorf("bad archive: %w", err)
		}
	} else if err := writeEntry(dir, entry, ex.Code, owner); err != nil {
		return nil, err
	}

	env := a.environ(ex, rt, dir, u)
	var argv []string
	switch ex.Runtime {
	case "go":
		bin, exit, err := a.goBuild(ctx, dir, entry, env, u, owner, out)
		if err != nil || exit != nil {
			return exit, err
		}
		argv = []string{bin}
	default:
		bin, err := lookPath(rt.binary, envValue(env, "PATH"))
		if err != nil {
			return nil, fmt.Errorf("runtime %s not installed: %w", ex.Runtime, err)
		}
		argv = []string{bin, entry}
	}
	return a.spawnWorkload(ctx, argv, dir, env, ex.Stdin, u, out)
}

// goBuild builds the package holding the entrypoint. A failed build is the
// user's error: its output is streamed and its status returned as the exit.
func (a *Agent) goBuild(ctx context.Context, dir, entry string, env []string, u user_, owner archive.Owner, out *emitter) (string, *protocol.Exit, error) {
	gobin, err := lookPath("go", envValue(env, "PATH"))
	if err != nil {
		return "", nil, fmt.Errorf("runtime go not installed: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); errors.Is(err, fs.ErrNotExist) {
		mod := "module main\n"
		if v := a.Runtimes(ctx)["go"]; v != "" {
			mod += "\ngo " + v + "\n"
		}
		if err := writeEntry(dir, "go.mod", mod, owner); err != nil {
			return "", nil, err
		}
	}
	// Outside the package tree: a leading dot hides it from ./... patterns.
	binDir := filepath.Join(dir, ".vulcan")
	if err := os.Mkdir(binDir, 0o755); err != nil {
		return "", nil, err
	}
	if owner.UID >= 0 {
		os.Chown(binDir, owner.UID, owner.GID)
	}
	bin := filepath.Join(binDir, "main")
	pkg := "./" + path.Dir(entry)
	exit, err := a.spawnWorkload(ctx, []string{gobin, "build", "-o", bin, pkg}, dir, env, nil, u, out)
	if err != nil {
		return "", nil, fmt.Errorf("go build: %w", err)
	}
	if exit.Code != 0 || ctx.Err() != nil {
		return "", exit, nil
	}
	return bin, nil, nil
}

func (a *Agent) environ(ex *protocol.Exec, rt runtimeSpec, dir string, u user_) []string {
	env := map[string]string{
		"PATH":   defaultPath,
		"HOME":   u.home,
		"LANG":   "C.UTF-8",
		"TMPDIR": os.TempDir(),
	}
	if ex.Runtime == "go" {
		cache := filepath.Join(dir, ".vulcan", "gocache")
		if writableBy(a.cfg.GoCache, u.uid, u.gid) {
			cache = a.cfg.GoCache
		}
		for k, v := range map[string]string{
			"GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "-mod=mod",
			"CGO_ENABLED": "0", "GOCACHE": cache, "GOPATH": filepath.Join(u.home, "go"),
		} {
			env[k] = v
		}
	}
	for k, v := range ex.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			continue // the kernel cannot represent it
		}
		env[k] = v
	}
	list := make([]string, 0, len(env))
	for k, v := range env {
		list = append(list, k+"="+v)
	}
	sort.Strings(list)
	return list
}

// spawnWorkload runs argv in its own process group, streams its output and
// kills the whole group when it exits, times out or is cancelled.
func (a *Agent) spawnWorkload(ctx context.Context, argv []string, dir string, env []string, stdin []byte, u user_, out *emitter) (*protocol.Exit, error) {
	if ctx.Err() != nil {
		return &protocol.Exit{Code: -1}, nil
	}
	var files [6]*os.File // stdin r/w, stdout r/w, stderr r/w
	for i := 0; i < 6; i += 2 {
		r, w, err := os.Pipe()
		if err != nil {
			for _, f := range files[:i] {
				f.Close()
			}
			return nil, err
		}
		files[i], files[i+1] = r, w
	}
	inR, inW, outR, outW, errR, errW := files[0], files[1], files[2], files[3], files[4], files[5]
	pid, wait, err := a.spawn.start(argv[0], argv, &os.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: []*os.File{inR, outW, errW},
		Sys:   &syscall.SysProcAttr{Setpgid: true, Credential: u.cred},
	})
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("start %s: %w", filepath.Base(argv[0]), err)
	}

	go func() {
		// EPIPE when the program never reads its stdin is fine.
		inW.Write(stdin)
		inW.Close()
	}()
	exitSig := newExitSignal()
	var pumps sync.WaitGroup
	pumps.Go(func() { pump(outR, protocol.Stdout, a.cfg.MaxLine, out, exitSig) })
	pumps.Go(func() { pump(errR, protocol.Stderr, a.cfg.MaxLine, out, exitSig) })

	exited := make(chan syscall.WaitStatus, 1)
	go func() { exited <- wait() }()
	var ws syscall.WaitStatus
	select {
	case ws = <-exited:
	case <-ctx.Done():
		syscall.Kill(-pid, syscall.SIGKILL)
		ws = <-exited
	}
	// Whatever the program left running in its group goes with it; then the
	// pipes are drained (see pump) — to EOF, unless something outside the
	// group still holds them.
	syscall.Kill(-pid, syscall.SIGKILL)
	exitSig.fire(outR, errR)
	deadline := time.Now().Add(drainIdle)
	outR.SetReadDeadline(deadline)
	errR.SetReadDeadline(deadline)
	pumps.Wait()
	outR.Close()
	errR.Close()

	exit := &protocol.Exit{}
	switch {
	case ws.Signaled():
		exit.Code = 128 + int(ws.Signal())
		exit.Signal = ws.Signal().String()
	default:
		exit.Code = ws.ExitStatus()
	}
	return exit, nil
}

// cleanEntry refuses entrypoints that leave the work dir.
func cleanEntry(e string) (string, error) {
	if e == "" || strings.HasPrefix(e, "/") || strings.ContainsRune(e, 0) {
		return "", fmt.Errorf("bad entrypoint %q: want a relative path", e)
	}
	for _, p := range strings.Split(e, "/") {
		if p == ".." {
			return "", fmt.Errorf("bad entrypoint %q: contains '..'", e)
		}
	}
	return path.Clean(e), nil
}

func writeEntry(dir, name, content string, owner archive.Owner) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	if d := path.Dir(name); d != "." {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
		if owner.UID >= 0 {
			for p := d; p != "."; p = path.Dir(p) {
				root.Chown(p, owner.UID, owner.GID)
			}
		}
	}
	if err := root.WriteFile(name, []byte(content), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if owner.UID >= 0 {
		return root.Chown(name, owner.UID, owner.GID)
	}
	return nil
}

// lookPath finds an executable in pathList (exec.LookPath uses the agent's
// own PATH, which is not the workload's).
func lookPath(name, pathList string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, d := range filepath.SplitList(pathList) {
		if d == "" {
			continue
		}
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in %s", name, pathList)
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v
		}
	}
	return ""
}

// writableBy reports whether uid/gid may create files in dir, judged from
// its mode bits: the agent runs as root, so access(2) would say yes to
// everything.
func writableBy(dir string, uid, gid int) bool {
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	m := fi.Mode().Perm()
	switch {
	case uid == 0:
		return true
	case int(st.Uid) == uid:
		return m&0o300 == 0o300
	case int(st.Gid) == gid:
		return m&0o030 == 0o030
	default:
		return m&0o003 == 0o003
	}
}
