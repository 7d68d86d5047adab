package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// Sandbox sessions (protocol/session.go): after TypeSession the connection is a yamux
// session and every stream the host opens is one operation. What the operations
// create — processes — belongs to the agent, not to the connection: a host that goes
// away and comes back (a new connection, a new session) finds its processes still
// running and can list and attach to them.

// Caps on what the host may ask for. The host is trusted more than the workload, but
// a bug there must not be able to exhaust the guest.
const (
	maxProcesses   = 256       // running processes started by sessions
	maxWatchers    = 16        // attached streams per process, the starting one included
	maxArgs        = 4096      // argv elements
	maxArgvBytes   = 256 << 10 // argv (or Shell) bytes in all
	maxEnvVars     = 1024
	maxEnvBytes    = 256 << 10
	maxTagLen      = 128
	maxPathLen     = 4096
	maxStdinData   = protocol.SessionFrameSize / 2
	maxTermSize    = 4096 // rows or columns of a PTY
	maxFSOps       = 32   // file operations at once; more wait
	maxListEntries = 10000
	maxListDepth   = 64

	// streamWriteTimeout drops a watcher (or fails a file read) whose host side has not
	// taken a frame for this long: one stalled stream must not stall a process's other
	// watchers for ever.
	streamWriteTimeout = 30 * time.Second
	// streamIdleTimeout fails an fs.write whose host sent nothing for this long.
	streamIdleTimeout = 2 * time.Minute
	// stdinWriteTimeout fails a process.stdin whose process does not read its stdin.
	stdinWriteTimeout = 30 * time.Second
)

// sessions is the agent's session state, shared by all connections.
type sessions struct {
	procs  procTable
	fsSem  chan struct{}
	cpuMu  sync.Mutex
	cpuPrv cpuSample // the previous sys.metrics sample

	homeOnce sync.Once
	home     string

	envMu sync.Mutex
	env   map[string]string // every process's env under its own (sys.identity)
}

func (s *sessions) defaultEnv() map[string]string {
	s.envMu.Lock()
	defer s.envMu.Unlock()
	return s.env
}

func (s *sessions) setDefaultEnv(env map[string]string) {
	s.envMu.Lock()
	s.env = env
	s.envMu.Unlock()
}

func newSessions() *sessions {
	return &sessions{procs: procTable{byPID: map[int]*process{}, byTag: map[string]*process{}}, fsSem: make(chan struct{}, maxFSOps)}
}

// sessionConn is the connection once it carries yamux: reads go through the bufio
// reader that read the TypeSession frame (it may hold the first yamux bytes).
type sessionConn struct {
	io.Reader
	io.Writer
	rw io.ReadWriter
}

func (c sessionConn) Close() error {
	if cl, ok := c.rw.(io.Closer); ok {
		return cl.Close()
	}
	return nil
}

// serveSession serves one session until the host goes away. Processes get agentCtx
// (they outlive the session); streams get ctx.
func (a *Agent) serveSession(agentCtx, ctx context.Context, conn io.ReadWriteCloser) {
	a.log.Info("session started")
	ctx, end := context.WithCancel(ctx)
	defer end()
	err := protocol.ServeSession(ctx, conn, func(ctx context.Context, req *protocol.Request, st net.Conn) {
		if req.Op == protocol.OpQuiesce {
			a.quiesce(req, st, end)
			return
		}
		a.handle(agentCtx, ctx, req, st)
	})
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, context.Canceled) {
		a.log.Warn("session ended", "err", err)
		return
	}
	a.log.Info("session ended")
}

// handle runs one operation on its stream; the stream is closed when it returns.
func (a *Agent) handle(agentCtx, ctx context.Context, req *protocol.Request, st net.Conn) {
	start := time.Now()
	var err *protocol.OpError
	switch req.Op {
	case protocol.OpProcessStart:
		err = a.processStart(agentCtx, ctx, req, st)
	case protocol.OpProcessAttach:
		err = a.processAttach(ctx, req, st)
	case protocol.OpProcessList:
		err = respond(st, &protocol.Response{Processes: a.sess.procs.list()})
	case protocol.OpProcessSignal:
		err = a.processSignal(req, st)
	case protocol.OpProcessStdin:
		err = a.processStdin(req, st)
	case protocol.OpProcessResize:
		err = a.processResize(req, st)
	case protocol.OpFSRead, protocol.OpFSWrite, protocol.OpFSList, protocol.OpFSStat,
		protocol.OpFSMkdir, protocol.OpFSMove, protocol.OpFSRemove:
		select {
		case a.sess.fsSem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		err = a.fileOp(req, st)
		<-a.sess.fsSem
	case protocol.OpNetDial:
		err = a.netDial(ctx, req, st)
	case protocol.OpFSArchive, protocol.OpFSApply:
		err = a.layerOp(ctx, req, st)
	case protocol.OpFSWatch:
		err = a.fsWatch(ctx, req, st)
	case protocol.OpExec:
		err = a.sessionExec(ctx, req, st)
	case protocol.OpIdentity:
		err = a.identity(req, st)
	case protocol.OpMetrics:
		var m *protocol.Metrics
		if m, err = a.metrics(); err == nil {
			err = respond(st, &protocol.Response{Metrics: m})
		}
	default:
		err = opErr(protocol.ErrCodeUnsupported, "unknown operation %.64q", req.Op)
	}
	if err != nil {
		if err.Code != "" {
			protocol.Fail(st, err.Code, "%s", err.Message)
		}
		a.log.Debug("session op failed", "op", req.Op, "code", err.Code, "err", err.Message)
		return
	}
	a.log.Debug("session op", "op", req.Op, "path", req.Path, "ms", time.Since(start).Milliseconds())
}

// opErr builds an OpError. An OpError with an empty Code means the stream broke and
// nothing more can be written to it.
func opErr(code, format string, args ...any) *protocol.OpError {
	if len(args) == 0 {
		return &protocol.OpError{Code: code, Message: format}
	}
	return &protocol.OpError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// respond writes a response; a failed write is a broken stream.
func respond(st net.Conn, r *protocol.Response) *protocol.OpError {
	st.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	defer st.SetWriteDeadline(time.Time{})
	if err := protocol.Respond(st, r); err != nil {
		return &protocol.OpError{Message: err.Error()}
	}
	return nil
}

// fsError maps a file-system error to the OpError the host turns into a status. The
// message is the error's own (operation, the path as resolved, reason): the paths are
// the requester's.
func fsError(err error) *protocol.OpError {
	var oe *protocol.OpError
	if errors.As(err, &oe) {
		return oe
	}
	code := protocol.ErrCodeInternal
	var errno syscall.Errno
	switch {
	case errors.Is(err, fs.ErrNotExist):
		code = protocol.ErrCodeNotFound
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS):
		code = protocol.ErrCodePermission
	case errors.Is(err, fs.ErrExist), errors.Is(err, syscall.ENOTEMPTY):
		code = protocol.ErrCodeExists
	case errors.Is(err, syscall.ENOTDIR):
		code = protocol.ErrCodeNotDir
	case errors.Is(err, syscall.EISDIR):
		code = protocol.ErrCodeIsDir
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EFBIG), errors.Is(err, syscall.EDQUOT):
		code = protocol.ErrCodeTooLarge
	case errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.ELOOP),
		errors.Is(err, syscall.EXDEV), errors.Is(err, syscall.EBUSY):
		code = protocol.ErrCodeInvalid
	case errors.As(err, &errno):
		code = protocol.ErrCodeInternal
	}
	return &protocol.OpError{Code: code, Message: err.Error()}
}

// sessUser is who a process or file operation runs as.
type sessUser struct {
	name     string // "user" or "root", for USER
	uid, gid int
	cred     *syscall.Credential // nil: as the agent
	home     string
	// drop: file operations must take on uid/gid (the agent is root, the user not).
	drop bool
}

// sessionUser resolves Request.User / ProcessSpec.User. As root the agent can be
// either; otherwise both are the agent's own identity (tests, development).
func (a *Agent) sessionUser(name string) (sessUser, *protocol.OpError) {
	switch name {
	case "", "user":
		name = "user"
	case "root":
	default:
		return sessUser{}, opErr(protocol.ErrCodeInvalid, "user %.64q: want \"user\" or \"root\"", name)
	}
	if os.Geteuid() != 0 || a.cfg.UID < 0 {
		return sessUser{name: name, uid: os.Geteuid(), gid: os.Getegid(), home: a.sessionHome()}, nil
	}
	if name == "root" {
		home := "/root"
		if fi, err := os.Stat(home); err != nil || !fi.IsDir() {
			home = "/"
		}
		return sessUser{name: name, uid: 0, gid: 0, home: home}, nil
	}
	return sessUser{
		name: name, uid: a.cfg.UID, gid: a.cfg.GID, home: a.sessionHome(), drop: true,
		cred: &syscall.Credential{Uid: uint32(a.cfg.UID), Gid: uint32(a.cfg.GID), Groups: []uint32{}},
	}, nil
}

// sessionHome is the home of "user": Config.UserHome, /home/user, the workload user's
// passwd home, or WorkRoot.
func (a *Agent) sessionHome() string {
	a.sess.homeOnce.Do(func() {
		for _, h := range []string{a.cfg.UserHome, "/home/user"} {
			if fi, err := os.Stat(h); h != "" && err == nil && fi.IsDir() {
				a.sess.home = h
				return
			}
		}
		if os.Geteuid() == 0 && a.cfg.UID >= 0 {
			if h := a.userHome(); h != "" {
				a.sess.home = h
				return
			}
		} else if h := os.Getenv("HOME"); h != "" {
			a.sess.home = h
			return
		}
		a.sess.home = a.cfg.WorkRoot
	})
	return a.sess.home
}

// resolvePath makes a request's path absolute and clean: absolute as given, or
// relative to home ("~" and "~/x" too). It refuses what no file system takes.
// Where the path leads is for the kernel to judge, as the requesting user.
func resolvePath(home, p string) (string, *protocol.OpError) {
	switch {
	case p == "":
		return "", opErr(protocol.ErrCodeInvalid, "empty path")
	case len(p) > maxPathLen:
		return "", opErr(protocol.ErrCodeInvalid, "path longer than %d bytes", maxPathLen)
	case strings.IndexByte(p, 0) >= 0:
		return "", opErr(protocol.ErrCodeInvalid, "path contains a NUL byte")
	}
	if p == "~" {
		return filepath.Clean(home), nil
	}
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		return filepath.Join(home, rest), nil // "~//x" is still under home
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(home, p)
	}
	return filepath.Clean(p), nil
}

// ownerName is a uid's name from /etc/passwd, or the number.
var ownerNames sync.Map // uint32 → string

func ownerName(uid uint32) string {
	if v, ok := ownerNames.Load(uid); ok {
		return v.(string)
	}
	name := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(name); err == nil {
		name = u.Username
	}
	ownerNames.Store(uid, name)
	return name
}
