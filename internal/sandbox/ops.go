package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"time"

	"github.com/vulcanhq/vulcan/internal/protocol"
	"net"
	"sync"
)

// Ops are the operations a running sandbox serves (protocol.Op*), as labelled in metrics.
var Ops = []string{
	protocol.OpProcessStart, protocol.OpProcessAttach, protocol.OpProcessList, protocol.OpProcessSignal,
	protocol.OpProcessStdin, protocol.OpProcessResize, protocol.OpFSRead, protocol.OpFSWrite, protocol.OpFSList,
	protocol.OpFSStat, protocol.OpFSMkdir, protocol.OpFSMove, protocol.OpFSRemove, protocol.OpFSWatch, protocol.OpMetrics,
}

// unary are the ops with nothing after their response.
var unary = map[string]bool{
	protocol.OpProcessList: true, protocol.OpProcessSignal: true, protocol.OpProcessStdin: true,
	protocol.OpProcessResize: true, protocol.OpFSList: true, protocol.OpFSStat: true, protocol.OpFSMkdir: true,
	protocol.OpFSMove: true, protocol.OpFSRemove: true, protocol.OpMetrics: true,
}

// Caps on what a process request may carry.
const (
	MaxArgvBytes  = 256 << 10
	MaxStdinChunk = protocol.SessionFrameSize / 2
	// MaxFileBytes bounds a file read or written through the API (the guest's disk is the
	// real bound; this keeps one request from streaming forever).
	MaxFileBytes = 4 << 30
)

// StartProcess starts a process in a running sandbox and returns the stream of its events
// (Output…, Exit) and its pid. The sandbox's env is under the process's own.
func (s *Service) StartProcess(ctx context.Context, id string, p protocol.ProcessSpec) (*protocol.Stream, int, error) {
	if err := checkProcess(&p); err != nil {
		return nil, 0, err
	}
	sess, env, err := s.Session(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	if len(env) > 0 {
		merged := maps.Clone(env)
		maps.Copy(merged, p.Env)
		p.Env = merged
	}
	// A user template's WORKDIR and USER are where and as whom its processes run unless
	// the request says.
	if d := s.templateDefaults(id); d != nil {
		if p.Cwd == "" {
			p.Cwd = d.Workdir
		}
		if p.User == "" {
			p.User = d.User
		}
	}
	start := time.Now()
	st, resp, err := sess.Open(ctx, &protocol.Request{Op: protocol.OpProcessStart, Process: &p})
	s.m.Op.WithLabelValues(protocol.OpProcessStart).Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, 0, opErr(err)
	}
	return st, resp.PID, nil
}

// Attach streams a running process's events from now on, by pid or tag.
func (s *Service) Attach(ctx context.Context, id string, pid int, tag string) (*protocol.Stream, int, error) {
	sess, _, err := s.Session(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	st, resp, err := sess.Open(ctx, &protocol.Request{Op: protocol.OpProcessAttach, PID: pid, Tag: tag})
	if err != nil {
		return nil, 0, opErr(err)
	}
	return st, resp.PID, nil
}

// Do runs a unary operation (list, signal, stdin, resize, fs list/stat/mkdir/move/remove,
// metrics) in a running sandbox.
func (s *Service) Do(ctx context.Context, id string, req *protocol.Request) (*protocol.Response, error) {
	if !unary[req.Op] {
		return nil, invalid("op", "unknown operation %q", req.Op)
	}
	if len(req.Data) > MaxStdinChunk {
		return nil, invalid("data", "at most %d bytes of stdin per request", MaxStdinChunk)
	}
	sess, _, err := s.Session(ctx, id)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	resp, err := sess.Do(ctx, req)
	s.m.Op.WithLabelValues(req.Op).Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, opErr(err)
	}
	return resp, nil
}

// ReadFile opens a file of a running sandbox for reading: its info and a reader of at
// most info.Size bytes (a guest that sends more is cut off, one that sends less is an
// error at the end of the read).
func (s *Service) ReadFile(ctx context.Context, id, path, user string) (io.ReadCloser, *protocol.FileInfo, error) {
	sess, _, err := s.Session(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	start := time.Now()
	st, resp, err := sess.Open(ctx, &protocol.Request{Op: protocol.OpFSRead, Path: path, User: user})
	s.m.Op.WithLabelValues(protocol.OpFSRead).Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, nil, opErr(err)
	}
	if resp.Info == nil || resp.Info.Size < 0 || resp.Info.Size > MaxFileBytes {
		st.Close()
		return nil, nil, fmt.Errorf("sandbox %s: the guest answered a read with a bad size", id)
	}
	return &exactReader{r: io.LimitReader(st, resp.Info.Size), left: resp.Info.Size, c: st}, resp.Info, nil
}

// exactReader reads exactly left bytes; fewer is io.ErrUnexpectedEOF.
type exactReader struct {
	r    io.Reader
	left int64
	c    io.Closer
}

func (e *exactReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	e.left -= int64(n)
	if errors.Is(err, io.EOF) && e.left > 0 {
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

func (e *exactReader) Close() error { return e.c.Close() }

// WriteFile writes r (at most max bytes, or MaxFileBytes) to path in a running sandbox,
// creating parents, and returns the written file's info.
func (s *Service) WriteFile(ctx context.Context, id, path, user string, mode uint32, r io.Reader, max int64) (*protocol.FileInfo, error) {
	if max <= 0 || max > MaxFileBytes {
		max = MaxFileBytes
	}
	sess, _, err := s.Session(ctx, id)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	st, _, err := sess.Open(ctx, &protocol.Request{Op: protocol.OpFSWrite, Path: path, User: user, Mode: mode})
	if err != nil {
		return nil, opErr(err)
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Now()) })
	defer stop()
	n, err := io.Copy(st, io.LimitReader(r, max+1))
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: write %s: %w", id, path, err)
	}
	if n > max {
		return nil, fmt.Errorf("%w: a file may be at most %d bytes", ErrTooLarge, max)
	}
	if err := st.CloseWrite(); err != nil {
		return nil, err
	}
	resp, err := st.Response()
	s.m.Op.WithLabelValues(protocol.OpFSWrite).Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: write %s: %w", id, path, err)
	}
	if resp.Error != nil {
		return nil, resp.Error
	}
	if resp.Info == nil {
		return nil, fmt.Errorf("sandbox %s: the guest answered a write without the file's info", id)
	}
	return resp.Info, nil
}

// Watch watches a directory of a running sandbox (recursive: its subdirectories too).
// Read the returned stream with NextFSEvent; closing it ends the watch.
func (s *Service) Watch(ctx context.Context, id, path, user string, recursive bool) (*Watch, *protocol.FileInfo, error) {
	sess, _, err := s.Session(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	start := time.Now()
	st, resp, err := sess.Open(ctx, &protocol.Request{Op: protocol.OpFSWatch, Path: path, User: user, Recursive: recursive})
	s.m.Op.WithLabelValues(protocol.OpFSWatch).Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, nil, opErr(err)
	}
	if resp.Info == nil {
		st.Close()
		return nil, nil, fmt.Errorf("sandbox %s: the guest answered a watch without the directory's info", id)
	}
	return &Watch{st: st}, resp.Info, nil
}

// Watch is a directory watch's stream of changes.
type Watch struct{ st *protocol.Stream }

// Next returns the next change. An FSError event ends the watch (Next then returns
// io.EOF); so does the sandbox ending.
func (w *Watch) Next() (*protocol.FSEvent, error) {
	ev, err := w.st.Event()
	if err != nil {
		return nil, err
	}
	if ev.FS == nil {
		return nil, fmt.Errorf("%w: a watch sent a non-fs event", protocol.ErrUnexpected)
	}
	switch ev.FS.Op {
	case protocol.FSCreate, protocol.FSWrite, protocol.FSRemove, protocol.FSRename, protocol.FSChmod, protocol.FSError:
	default:
		return nil, fmt.Errorf("%w: fs event op %.16q", protocol.ErrUnexpected, ev.FS.Op)
	}
	return ev.FS, nil
}

// SetReadDeadline bounds the wait for the next event.
func (w *Watch) SetReadDeadline(t time.Time) error { return w.st.SetReadDeadline(t) }

// Close ends the watch.
func (w *Watch) Close() error { return w.st.Close() }

// ErrTooLarge: a request body over a cap.
var ErrTooLarge = errors.New("too large")

func checkProcess(p *protocol.ProcessSpec) error {
	switch {
	case len(p.Argv) == 0 && p.Shell == "":
		return invalid("cmd", "give cmd (a shell line) or argv")
	case len(p.Argv) > 0 && p.Shell != "":
		return invalid("cmd", "give either cmd or argv, not both")
	case p.User != "" && p.User != "user" && p.User != "root":
		return invalid("user", "user must be \"user\" or \"root\", got %.32q", p.User)
	case p.TimeoutMS < 0:
		return invalid("timeout_s", "timeout_s must not be negative")
	}
	n := len(p.Shell) + len(p.Cwd) + len(p.Tag)
	for _, a := range p.Argv {
		n += len(a) + 1
	}
	if n > MaxArgvBytes {
		return invalid("argv", "the command takes %d KiB; at most %d KiB", n>>10, MaxArgvBytes>>10)
	}
	if err := validateEnv(p.Env); err != nil {
		return err
	}
	if p.PTY != nil && (p.PTY.Cols == 0 || p.PTY.Rows == 0 || p.PTY.Cols > 1000 || p.PTY.Rows > 1000) {
		return invalid("pty", "pty size must be 1–1000 columns and rows")
	}
	return nil
}

// opErr keeps a guest's OpError as is (the API maps its code); other session errors are
// wrapped so the sandbox is named.
func opErr(err error) error {
	var oe *protocol.OpError
	if errors.As(err, &oe) {
		return oe
	}
	return fmt.Errorf("sandbox agent: %w", err)
}

// DialPort connects to 127.0.0.1:port inside a running sandbox, over its agent session
// (no network involved): the returned conn carries the TCP connection's bytes. Nothing
// listening there is a protocol.OpError with ErrCodeNotFound.
func (s *Service) DialPort(ctx context.Context, id string, port int) (net.Conn, error) {
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("%w: port %d: want 1 to 65535", ErrInvalid, port)
	}
	sess, _, err := s.Session(ctx, id)
	if err != nil {
		return nil, err
	}
	st, _, err := sess.Open(ctx, &protocol.Request{Op: protocol.OpNetDial, Port: port})
	if err != nil {
		return nil, opErr(err)
	}
	return &portConn{Conn: st.Conn}, nil
}

// portConn is a dialled sandbox port. Close half-closes (yamux's FIN) and reads what the
// guest still sends for a while, so the guest's side is never left blocked on a window
// no one opens.
type portConn struct {
	net.Conn
	once sync.Once
}

func (c *portConn) Close() error {
	var err error
	c.once.Do(func() {
		err = c.Conn.Close()
		c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		go io.Copy(io.Discard, io.LimitReader(c.Conn, 64<<20))
	})
	return err
}

// CloseWrite half-closes: the guest's service reads EOF and may still answer.
func (c *portConn) CloseWrite() error { return c.Conn.Close() }
