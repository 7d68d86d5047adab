package e2b

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vulcanhq/vulcan/internal/e2b/envd/filesystem"
	"github.com/vulcanhq/vulcan/internal/e2b/envd/filesystem/filesystemconnect"
	"github.com/vulcanhq/vulcan/internal/e2b/envd/process"
	"github.com/vulcanhq/vulcan/internal/e2b/envd/process/processconnect"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
	"github.com/vulcanhq/vulcan/internal/sandbox"
)

// envd: the sandbox daemon's API, reached on Vulcan's port by the E2b-Sandbox-Id and
// E2b-Sandbox-Port headers and authenticated by the sandbox's X-Access-Token. Every call
// becomes operations on the sandbox's agent session.

// maxRPCBytes caps a Connect request message (stdin chunks are the largest).
const maxRPCBytes = 4 << 20

type callKey struct{}

// call is what the envd front door learned about a request.
type call struct {
	id   string // internal sandbox id
	user string // "user" or "root"; "" when the request named none
}

func callOf(ctx context.Context) call {
	c, _ := ctx.Value(callKey{}).(call)
	return c
}

func (s *Server) envdHandler() http.Handler {
	mux := http.NewServeMux()
	opts := []connect.HandlerOption{connect.WithReadMaxBytes(maxRPCBytes)}
	mux.Handle(processconnect.NewProcessHandler(&processService{s: s}, opts...))
	mux.Handle(filesystemconnect.NewFilesystemHandler(&filesystemService{s: s}, opts...))
	mux.HandleFunc("GET /files", s.fileRead)
	mux.HandleFunc("POST /files", s.fileWrite)
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "envd has no route %s %s on this Vulcan server", r.Method, clipPath(r.URL.Path))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw := r.Header.Get("E2b-Sandbox-Id")
		id, ok := internalID(raw)
		if !ok {
			writeError(w, http.StatusBadGateway, "sandbox %q not found", clipPath(raw))
			return
		}
		port := r.Header.Get("E2b-Sandbox-Port")
		// A sandbox that is not running has no daemon: 502, as E2B's proxy answers
		// (the SDKs take it for "the sandbox is gone").
		if sb, err := s.o.Sandboxes.Get(r.Context(), id); err != nil || sb.State != model.SandboxRunning {
			why := "not found"
			if err == nil {
				why = "not running (" + string(sb.State) + ")"
			}
			writeError(w, http.StatusBadGateway, "sandbox %s is %s", raw, why)
			return
		}
		if port != "" && port != EnvdPort {
			// Any other port: the sandbox's own service (the code interpreter's 49999, a
			// web app), reached over the agent channel with the envd or traffic token.
			n, err := strconv.Atoi(port)
			if err != nil || n < 1 || n > 65535 {
				writeError(w, http.StatusBadRequest, "E2b-Sandbox-Port %.16q is not a port", port)
				return
			}
			if !s.tokenOK(id, r.Header.Get("X-Access-Token")) &&
				subtle.ConstantTimeCompare([]byte(r.Header.Get("E2b-Traffic-Access-Token")), []byte(s.trafficToken(id))) != 1 {
				writeError(w, http.StatusUnauthorized, "missing or wrong X-Access-Token or E2B-Traffic-Access-Token for sandbox %s", raw)
				return
			}
			r.Header.Del("X-Access-Token")
			r.Header.Del("E2b-Traffic-Access-Token")
			s.ports.Serve(w, r, id, n, r.URL.Path)
			return
		}
		if !s.tokenOK(id, r.Header.Get("X-Access-Token")) {
			writeError(w, http.StatusUnauthorized, "missing or wrong X-Access-Token for sandbox %s", raw)
			return
		}
		user, err := basicUser(r)
		if err != nil {
			writeError(w, http.StatusUnauthorized, "%v", err)
			return
		}
		if u := r.URL.Query().Get("username"); u != "" && user == "" {
			user = u
		}
		switch user {
		case "", "user", "root":
		default:
			writeError(w, http.StatusUnauthorized, "user %q: this Vulcan server's sandboxes have the users \"user\" and \"root\"", clipPath(user))
			return
		}
		ctx := context.WithValue(r.Context(), callKey{}, call{id: id, user: user})
		mux.ServeHTTP(w, r.WithContext(ctx))
	})
}

// basicUser reads envd's "Authorization: Basic base64(user:)".
func basicUser(r *http.Request) (string, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", nil
	}
	enc, ok := strings.CutPrefix(h, "Basic ")
	if !ok {
		return "", errors.New("Authorization must be Basic base64(user:) on envd calls")
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
	if err != nil {
		return "", errors.New("Authorization: bad base64")
	}
	user, _, _ := strings.Cut(string(b), ":")
	return user, nil
}

// connectErr maps a sandbox service error to a Connect error the SDKs turn into their
// own error classes (not_found → NotFoundError, unavailable → "the sandbox is gone", ...).
func connectErr(err error) error {
	var oe *protocol.OpError
	var ce *connect.Error
	switch {
	case errors.As(err, &ce):
		return ce
	case errors.As(err, &oe):
		code := connect.CodeInternal
		switch oe.Code {
		case protocol.ErrCodeNotFound, protocol.ErrCodeNoProcess:
			code = connect.CodeNotFound
		case protocol.ErrCodePermission:
			code = connect.CodePermissionDenied
		case protocol.ErrCodeExists:
			code = connect.CodeAlreadyExists
		case protocol.ErrCodeInvalid, protocol.ErrCodeNotDir, protocol.ErrCodeIsDir:
			code = connect.CodeInvalidArgument
		case protocol.ErrCodeTooLarge:
			code = connect.CodeResourceExhausted
		case protocol.ErrCodeUnsupported:
			code = connect.CodeUnimplemented
		}
		return connect.NewError(code, errors.New(oe.Message))
	case errors.Is(err, sandbox.ErrNotFound), errors.Is(err, sandbox.ErrEnded), errors.Is(err, sandbox.ErrNotRunning),
		errors.Is(err, sandbox.ErrShuttingDown), errors.Is(err, sandbox.ErrPaused):
		return connect.NewError(connect.CodeUnavailable, err)
	case errors.Is(err, sandbox.ErrInvalid):
		return connect.NewError(connect.CodeInvalidArgument, err)
	case errors.Is(err, sandbox.ErrTooLarge):
		return connect.NewError(connect.CodeResourceExhausted, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	}
	return connect.NewError(connect.CodeInternal, err)
}

func invalidArg(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}

// keepaliveEvery is how often an idle stream sends a keepalive: what the client asks
// for in Keepalive-Ping-Interval (seconds), within bounds.
func keepaliveEvery(h http.Header) time.Duration {
	n, err := strconv.Atoi(h.Get("Keepalive-Ping-Interval"))
	if err != nil || n <= 0 {
		n = 50
	}
	return time.Duration(min(max(n, 1), 300)) * time.Second
}

// ---- process.Process ----

type processService struct{ s *Server }

func selector(sel *process.ProcessSelector) (int, string, error) {
	switch {
	case sel == nil:
		return 0, "", invalidArg("process selector (pid or tag) is required")
	case sel.GetTag() != "":
		return 0, sel.GetTag(), nil
	case sel.GetPid() > 0:
		return int(sel.GetPid()), "", nil
	}
	return 0, "", invalidArg("process selector needs a pid or a tag")
}

func (p *processService) Start(ctx context.Context, req *connect.Request[process.StartRequest], stream *connect.ServerStream[process.StartResponse]) error {
	c := callOf(ctx)
	m := req.Msg
	cfg := m.GetProcess()
	if cfg == nil || cfg.GetCmd() == "" {
		return invalidArg("process.cmd is required")
	}
	spec := protocol.ProcessSpec{Argv: append([]string{cfg.GetCmd()}, cfg.GetArgs()...), Env: cfg.GetEnvs(), Cwd: cfg.GetCwd(),
		User: c.user, Tag: m.GetTag(), Stdin: m.Stdin == nil || m.GetStdin(),
		OutputLimit: p.s.o.OutputLimit, LineLimit: p.s.o.LineLimit}
	if pty := m.GetPty(); pty != nil {
		size := pty.GetSize()
		if size == nil || size.GetCols() == 0 || size.GetRows() == 0 || size.GetCols() > 1000 || size.GetRows() > 1000 {
			return invalidArg("pty.size must be 1–1000 columns and rows")
		}
		spec.PTY = &protocol.Size{Cols: uint16(size.GetCols()), Rows: uint16(size.GetRows())}
		spec.Stdin = true // a terminal always takes input
	}
	// The call's deadline (Connect-Timeout-Ms) is the command's timeout: the agent kills
	// it then. A client that merely goes away leaves it running, as envd does.
	if dl, ok := ctx.Deadline(); ok {
		spec.TimeoutMS = max(time.Until(dl).Milliseconds(), 1)
	}
	st, pid, err := p.s.o.Sandboxes.StartProcess(ctx, c.id, spec)
	if err != nil {
		return connectErr(err)
	}
	return relayProcess(ctx, st, pid, req.Header(), func(ev *process.ProcessEvent) error {
		return stream.Send(&process.StartResponse{Event: ev})
	})
}

func (p *processService) Connect(ctx context.Context, req *connect.Request[process.ConnectRequest], stream *connect.ServerStream[process.ConnectResponse]) error {
	pid, tag, err := selector(req.Msg.GetProcess())
	if err != nil {
		return err
	}
	st, got, err := p.s.o.Sandboxes.Attach(ctx, callOf(ctx).id, pid, tag)
	if err != nil {
		return connectErr(err)
	}
	return relayProcess(ctx, st, got, req.Header(), func(ev *process.ProcessEvent) error {
		return stream.Send(&process.ConnectResponse{Event: ev})
	})
}

// relayProcess sends start{pid}, the process's output as data events, keepalives while
// it is quiet, and end with its exit; the end-stream frame follows when it returns.
func relayProcess(ctx context.Context, st *protocol.Stream, pid int, h http.Header, send func(*process.ProcessEvent) error) error {
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	if err := send(&process.ProcessEvent{Event: &process.ProcessEvent_Start{Start: &process.ProcessEvent_StartEvent{Pid: uint32(pid)}}}); err != nil {
		return err
	}
	type item struct {
		ev  *protocol.Event
		err error
	}
	events := make(chan item, 64)
	go func() {
		defer close(events)
		for {
			ev, err := st.Event()
			select {
			case events <- item{ev, err}:
			case <-ctx.Done():
				return
			}
			if err != nil || ev.Exit != nil {
				return
			}
		}
	}()
	keepalive := time.NewTicker(keepaliveEvery(h))
	defer keepalive.Stop()
	relayed := 0
	for {
		select {
		case <-ctx.Done():
			return connectErr(ctx.Err())
		case <-keepalive.C:
			if err := send(&process.ProcessEvent{Event: &process.ProcessEvent_Keepalive{Keepalive: &process.ProcessEvent_KeepAlive{}}}); err != nil {
				return err
			}
		case it, ok := <-events:
			if !ok {
				return connectErr(ctx.Err())
			}
			switch ev, err := it.ev, it.err; {
			case err != nil:
				if ctx.Err() != nil {
					return connectErr(ctx.Err())
				}
				return connect.NewError(connect.CodeUnavailable, fmt.Errorf("the process's stream ended before its exit (the sandbox ended?): %w", err))
			case ev.Output != nil:
				data := []byte(ev.Output.Data)
				if !ev.Output.Partial {
					data = append(data, '\n')
				}
				if relayed += len(data); relayed > maxRelayBytes {
					return connect.NewError(connect.CodeResourceExhausted, errors.New("the process's output exceeded what one stream relays"))
				}
				var out process.ProcessEvent_DataEvent
				switch ev.Output.Stream {
				case protocol.Stdout:
					out.Output = &process.ProcessEvent_DataEvent_Stdout{Stdout: data}
				case protocol.Stderr:
					out.Output = &process.ProcessEvent_DataEvent_Stderr{Stderr: data}
				default:
					out.Output = &process.ProcessEvent_DataEvent_Pty{Pty: data}
				}
				if err := send(&process.ProcessEvent{Event: &process.ProcessEvent_Data{Data: &out}}); err != nil {
					return err
				}
			case ev.Exit != nil:
				return send(&process.ProcessEvent{Event: &process.ProcessEvent_End{End: endEvent(ev.Exit)}})
			}
		}
	}
}

// maxRelayBytes bounds what one process stream relays (the agent caps output itself).
const maxRelayBytes = 256 << 20

// endEvent is envd's end event for an exit: a signal death is exit code -1, not exited,
// status "signal: killed" (as Go's os/exec words it, which envd passes on).
func endEvent(x *protocol.Exit) *process.ProcessEvent_EndEvent {
	end := &process.ProcessEvent_EndEvent{ExitCode: int32(x.Code), Exited: true, Status: fmt.Sprintf("exit status %d", x.Code)}
	if x.Signal != "" {
		end.ExitCode, end.Exited, end.Status = -1, false, "signal: "+x.Signal
	}
	msg := x.Error
	if msg == "" && !end.Exited {
		msg = end.Status
	}
	if x.Truncated || x.OutputCut {
		msg = strings.TrimPrefix(msg+"; output truncated at the server's cap", "; ")
	}
	if msg != "" {
		end.Error = &msg
	}
	return end
}

func (p *processService) List(ctx context.Context, _ *connect.Request[process.ListRequest]) (*connect.Response[process.ListResponse], error) {
	resp, err := p.s.o.Sandboxes.Do(ctx, callOf(ctx).id, &protocol.Request{Op: protocol.OpProcessList})
	if err != nil {
		return nil, connectErr(err)
	}
	out := &process.ListResponse{}
	for _, pi := range resp.Processes {
		cfg := &process.ProcessConfig{Envs: map[string]string{}}
		if sp := pi.Spec; sp != nil {
			if len(sp.Argv) > 0 {
				cfg.Cmd, cfg.Args = sp.Argv[0], sp.Argv[1:]
			} else {
				cfg.Cmd, cfg.Args = "/bin/bash", []string{"-l", "-c", sp.Shell}
			}
			if sp.Cwd != "" {
				cfg.Cwd = &sp.Cwd
			}
		}
		info := &process.ProcessInfo{Config: cfg, Pid: uint32(pi.PID)}
		if pi.Tag != "" {
			info.Tag = &pi.Tag
		}
		out.Processes = append(out.Processes, info)
	}
	return connect.NewResponse(out), nil
}

func (p *processService) input(ctx context.Context, sel *process.ProcessSelector, in *process.ProcessInput, closeStdin bool) error {
	pid, tag, err := selector(sel)
	if err != nil {
		return err
	}
	var data []byte
	if in != nil {
		if b := in.GetStdin(); b != nil {
			data = b
		} else {
			data = in.GetPty()
		}
	}
	id := callOf(ctx).id
	for first := true; first || len(data) > 0; first = false {
		n := min(len(data), sandbox.MaxStdinChunk)
		req := &protocol.Request{Op: protocol.OpProcessStdin, PID: pid, Tag: tag, Data: data[:n], CloseStdin: closeStdin && n == len(data)}
		if _, err := p.s.o.Sandboxes.Do(ctx, id, req); err != nil {
			return connectErr(err)
		}
		data = data[n:]
	}
	return nil
}

func (p *processService) SendInput(ctx context.Context, req *connect.Request[process.SendInputRequest]) (*connect.Response[process.SendInputResponse], error) {
	if err := p.input(ctx, req.Msg.GetProcess(), req.Msg.GetInput(), false); err != nil {
		return nil, err
	}
	return connect.NewResponse(&process.SendInputResponse{}), nil
}

func (p *processService) CloseStdin(ctx context.Context, req *connect.Request[process.CloseStdinRequest]) (*connect.Response[process.CloseStdinResponse], error) {
	if err := p.input(ctx, req.Msg.GetProcess(), nil, true); err != nil {
		return nil, err
	}
	return connect.NewResponse(&process.CloseStdinResponse{}), nil
}

func (p *processService) StreamInput(ctx context.Context, stream *connect.ClientStream[process.StreamInputRequest]) (*connect.Response[process.StreamInputResponse], error) {
	var sel *process.ProcessSelector
	for stream.Receive() {
		m := stream.Msg()
		switch {
		case m.GetStart() != nil:
			sel = m.GetStart().GetProcess()
		case m.GetData() != nil:
			if sel == nil {
				return nil, invalidArg("stream input: data before the start event")
			}
			if err := p.input(ctx, sel, m.GetData().GetInput(), false); err != nil {
				return nil, err
			}
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&process.StreamInputResponse{}), nil
}

func (p *processService) SendSignal(ctx context.Context, req *connect.Request[process.SendSignalRequest]) (*connect.Response[process.SendSignalResponse], error) {
	pid, tag, err := selector(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	var sig string
	switch req.Msg.GetSignal() {
	case process.Signal_SIGNAL_SIGKILL:
		sig = "KILL"
	case process.Signal_SIGNAL_SIGTERM:
		sig = "TERM"
	default:
		return nil, invalidArg("signal %s: want SIGNAL_SIGKILL or SIGNAL_SIGTERM", req.Msg.GetSignal())
	}
	if _, err := p.s.o.Sandboxes.Do(ctx, callOf(ctx).id, &protocol.Request{Op: protocol.OpProcessSignal, PID: pid, Tag: tag, Signal: sig}); err != nil {
		return nil, connectErr(err)
	}
	return connect.NewResponse(&process.SendSignalResponse{}), nil
}

func (p *processService) Update(ctx context.Context, req *connect.Request[process.UpdateRequest]) (*connect.Response[process.UpdateResponse], error) {
	pid, tag, err := selector(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	size := req.Msg.GetPty().GetSize()
	if size == nil {
		return connect.NewResponse(&process.UpdateResponse{}), nil // nothing to change
	}
	if size.GetCols() == 0 || size.GetRows() == 0 || size.GetCols() > 1000 || size.GetRows() > 1000 {
		return nil, invalidArg("pty.size must be 1–1000 columns and rows")
	}
	r := &protocol.Request{Op: protocol.OpProcessResize, PID: pid, Tag: tag, Size: &protocol.Size{Cols: uint16(size.GetCols()), Rows: uint16(size.GetRows())}}
	if _, err := p.s.o.Sandboxes.Do(ctx, callOf(ctx).id, r); err != nil {
		return nil, connectErr(err)
	}
	return connect.NewResponse(&process.UpdateResponse{}), nil
}

// ---- filesystem.Filesystem ----

type filesystemService struct{ s *Server }

func entry(fi *protocol.FileInfo) *filesystem.EntryInfo {
	if fi == nil {
		return nil
	}
	e := &filesystem.EntryInfo{Name: fi.Name, Path: fi.Path, Size: fi.Size, Mode: fi.Mode, Permissions: permString(fi),
		Owner: fi.Owner, Group: fi.Owner, ModifiedTime: timestamppb.New(time.UnixMilli(fi.ModTime))}
	switch fi.Type {
	case "file":
		e.Type = filesystem.FileType_FILE_TYPE_FILE
	case "dir":
		e.Type = filesystem.FileType_FILE_TYPE_DIRECTORY
	case "symlink":
		e.Type = filesystem.FileType_FILE_TYPE_SYMLINK
		t := fi.Target
		e.SymlinkTarget = &t
	}
	return e
}

// permString is ls's view of the mode: "drwxr-xr-x".
func permString(fi *protocol.FileInfo) string {
	b := []byte("----------")
	switch fi.Type {
	case "dir":
		b[0] = 'd'
	case "symlink":
		b[0] = 'l'
	}
	const rwx = "rwxrwxrwx"
	for i := range 9 {
		if fi.Mode&(1<<(8-i)) != 0 {
			b[i+1] = rwx[i]
		}
	}
	return string(b)
}

func (f *filesystemService) do(ctx context.Context, req *protocol.Request) (*protocol.Response, error) {
	c := callOf(ctx)
	req.User = c.user
	resp, err := f.s.o.Sandboxes.Do(ctx, c.id, req)
	if err != nil {
		return nil, connectErr(err)
	}
	return resp, nil
}

func needPath(p string) error {
	if p == "" {
		return invalidArg("path is required")
	}
	return nil
}

func (f *filesystemService) Stat(ctx context.Context, req *connect.Request[filesystem.StatRequest]) (*connect.Response[filesystem.StatResponse], error) {
	if err := needPath(req.Msg.GetPath()); err != nil {
		return nil, err
	}
	resp, err := f.do(ctx, &protocol.Request{Op: protocol.OpFSStat, Path: req.Msg.GetPath()})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&filesystem.StatResponse{Entry: entry(resp.Info)}), nil
}

// MakeDir makes a directory and its parents; one that exists already is already_exists
// (the SDK's makeDir then answers false).
func (f *filesystemService) MakeDir(ctx context.Context, req *connect.Request[filesystem.MakeDirRequest]) (*connect.Response[filesystem.MakeDirResponse], error) {
	p := req.Msg.GetPath()
	if err := needPath(p); err != nil {
		return nil, err
	}
	if resp, err := f.do(ctx, &protocol.Request{Op: protocol.OpFSStat, Path: p}); err == nil {
		if resp.Info != nil && resp.Info.Type == "dir" {
			return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("directory %s already exists", resp.Info.Path))
		}
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("%s exists and is not a directory", p))
	}
	resp, err := f.do(ctx, &protocol.Request{Op: protocol.OpFSMkdir, Path: p})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&filesystem.MakeDirResponse{Entry: entry(resp.Info)}), nil
}

func (f *filesystemService) Move(ctx context.Context, req *connect.Request[filesystem.MoveRequest]) (*connect.Response[filesystem.MoveResponse], error) {
	if req.Msg.GetSource() == "" || req.Msg.GetDestination() == "" {
		return nil, invalidArg("source and destination are required")
	}
	resp, err := f.do(ctx, &protocol.Request{Op: protocol.OpFSMove, Path: req.Msg.GetSource(), To: req.Msg.GetDestination()})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&filesystem.MoveResponse{Entry: entry(resp.Info)}), nil
}

func (f *filesystemService) ListDir(ctx context.Context, req *connect.Request[filesystem.ListDirRequest]) (*connect.Response[filesystem.ListDirResponse], error) {
	if err := needPath(req.Msg.GetPath()); err != nil {
		return nil, err
	}
	depth := int(req.Msg.GetDepth())
	if depth == 0 {
		depth = 1
	}
	if depth > 64 {
		return nil, invalidArg("depth at most 64")
	}
	resp, err := f.do(ctx, &protocol.Request{Op: protocol.OpFSList, Path: req.Msg.GetPath(), Depth: depth})
	if err != nil {
		return nil, err
	}
	out := &filesystem.ListDirResponse{}
	for i := range resp.Entries {
		out.Entries = append(out.Entries, entry(&resp.Entries[i]))
	}
	return connect.NewResponse(out), nil
}

func (f *filesystemService) Remove(ctx context.Context, req *connect.Request[filesystem.RemoveRequest]) (*connect.Response[filesystem.RemoveResponse], error) {
	if err := needPath(req.Msg.GetPath()); err != nil {
		return nil, err
	}
	if _, err := f.do(ctx, &protocol.Request{Op: protocol.OpFSRemove, Path: req.Msg.GetPath()}); err != nil {
		return nil, err
	}
	return connect.NewResponse(&filesystem.RemoveResponse{}), nil
}

func eventType(op string) filesystem.EventType {
	switch op {
	case protocol.FSCreate:
		return filesystem.EventType_EVENT_TYPE_CREATE
	case protocol.FSWrite:
		return filesystem.EventType_EVENT_TYPE_WRITE
	case protocol.FSRemove:
		return filesystem.EventType_EVENT_TYPE_REMOVE
	case protocol.FSRename:
		return filesystem.EventType_EVENT_TYPE_RENAME
	case protocol.FSChmod:
		return filesystem.EventType_EVENT_TYPE_CHMOD
	}
	return filesystem.EventType_EVENT_TYPE_UNSPECIFIED
}

// relName is an event's path relative to the watched directory, as envd names it.
func relName(root, p string) string {
	if rel, ok := strings.CutPrefix(p, strings.TrimSuffix(root, "/")+"/"); ok {
		return rel
	}
	return path.Base(p)
}

func (f *filesystemService) WatchDir(ctx context.Context, req *connect.Request[filesystem.WatchDirRequest], stream *connect.ServerStream[filesystem.WatchDirResponse]) error {
	m := req.Msg
	if err := needPath(m.GetPath()); err != nil {
		return err
	}
	if m.GetIncludeEntry() || m.GetAllowNetworkMounts() {
		return connect.NewError(connect.CodeUnimplemented, errors.New("includeEntry and allowNetworkMounts are not supported by this Vulcan server"))
	}
	c := callOf(ctx)
	wt, info, err := f.s.o.Sandboxes.Watch(ctx, c.id, m.GetPath(), c.user, m.GetRecursive())
	if err != nil {
		return connectErr(err)
	}
	defer wt.Close()
	stop := context.AfterFunc(ctx, func() { wt.Close() })
	defer stop()
	if err := stream.Send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Start{Start: &filesystem.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	type item struct {
		ev  *protocol.FSEvent
		err error
	}
	events := make(chan item, 64)
	go func() {
		defer close(events)
		for {
			ev, err := wt.Next()
			select {
			case events <- item{ev, err}:
			case <-ctx.Done():
				return
			}
			if err != nil || ev.Op == protocol.FSError {
				return
			}
		}
	}()
	keepalive := time.NewTicker(keepaliveEvery(req.Header()))
	defer keepalive.Stop()
	for {
		select {
		case <-ctx.Done():
			return connectErr(ctx.Err())
		case <-keepalive.C:
			if err := stream.Send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Keepalive{Keepalive: &filesystem.WatchDirResponse_KeepAlive{}}}); err != nil {
				return err
			}
		case it, ok := <-events:
			switch {
			case !ok:
				return connectErr(ctx.Err())
			case it.err != nil:
				if errors.Is(it.err, io.EOF) || ctx.Err() == nil {
					return connect.NewError(connect.CodeUnavailable, errors.New("the watch ended with the sandbox"))
				}
				return connectErr(ctx.Err())
			case it.ev.Op == protocol.FSError:
				return connect.NewError(connect.CodeAborted, errors.New(it.ev.Error))
			}
			ev := &filesystem.FilesystemEvent{Name: relName(info.Path, it.ev.Path), Type: eventType(it.ev.Op)}
			if err := stream.Send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: ev}}); err != nil {
				return err
			}
		}
	}
}

func (f *filesystemService) CreateWatcher(ctx context.Context, req *connect.Request[filesystem.CreateWatcherRequest]) (*connect.Response[filesystem.CreateWatcherResponse], error) {
	m := req.Msg
	if err := needPath(m.GetPath()); err != nil {
		return nil, err
	}
	if m.GetIncludeEntry() || m.GetAllowNetworkMounts() {
		return nil, connect.NewError(connect.CodeUnimplemented, errors.New("includeEntry and allowNetworkMounts are not supported by this Vulcan server"))
	}
	c := callOf(ctx)
	id, err := f.s.w.create(f.s.o.Sandboxes, c, m.GetPath(), m.GetRecursive())
	if err != nil {
		return nil, connectErr(err)
	}
	return connect.NewResponse(&filesystem.CreateWatcherResponse{WatcherId: id}), nil
}

func (f *filesystemService) GetWatcherEvents(ctx context.Context, req *connect.Request[filesystem.GetWatcherEventsRequest]) (*connect.Response[filesystem.GetWatcherEventsResponse], error) {
	evs, err := f.s.w.take(callOf(ctx).id, req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&filesystem.GetWatcherEventsResponse{Events: evs}), nil
}

func (f *filesystemService) RemoveWatcher(ctx context.Context, req *connect.Request[filesystem.RemoveWatcherRequest]) (*connect.Response[filesystem.RemoveWatcherResponse], error) {
	if err := f.s.w.remove(callOf(ctx).id, req.Msg.GetWatcherId()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&filesystem.RemoveWatcherResponse{}), nil
}
