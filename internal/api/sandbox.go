package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
	"github.com/vulcanhq/vulcan/internal/sandbox"
	"github.com/vulcanhq/vulcan/internal/store"
)

// Sandbox is a sandbox as the API shows it (env values are never shown).
type Sandbox struct {
	ID           string              `json:"id"`
	State        model.SandboxState  `json:"state"`
	Template     model.Runtime       `json:"template"`
	Resources    SandboxResources    `json:"resources"`
	Network      model.NetworkPolicy `json:"network"`
	NetworkRules *model.NetworkRules `json:"network_rules,omitempty"`
	Metadata     map[string]string   `json:"metadata"`
	TimeoutS     int                 `json:"timeout_s"`
	AutoPause    bool                `json:"auto_pause,omitempty"`
	AutoResume   bool                `json:"auto_resume,omitempty"`
	Error        string              `json:"error,omitempty"`
	CreatedAt    time.Time           `json:"created_at"`
	StartedAt    *time.Time          `json:"started_at"`
	EndedAt      *time.Time          `json:"ended_at"`
	ExpiresAt    time.Time           `json:"expires_at"`
	VM           map[string]string   `json:"vm"`
}

// SandboxResources are a sandbox's vCPUs and memory (its lifetime is timeout_s).
type SandboxResources struct {
	CPUs  int `json:"cpus"`
	MemMB int `json:"mem_mb"`
}

// NewSandbox converts a model sandbox to its wire form.
func NewSandbox(sb *model.Sandbox) Sandbox {
	meta := sb.Spec.Metadata
	if meta == nil {
		meta = map[string]string{}
	}
	vm := sb.VM
	if vm == nil {
		vm = map[string]string{}
	}
	res := SandboxResources{CPUs: sb.Spec.Resources.CPUs, MemMB: sb.Spec.Resources.MemMB}
	return Sandbox{ID: sb.ID, State: sb.State, Template: sb.Spec.Template, Resources: res, Network: sb.Spec.Network,
		NetworkRules: sb.Spec.NetworkRules, Metadata: meta, TimeoutS: sb.Spec.TimeoutS, AutoPause: sb.Spec.AutoPause,
		AutoResume: sb.Spec.AutoResume, Error: sb.Error,
		CreatedAt: sb.CreatedAt, StartedAt: sb.StartedAt, EndedAt: sb.EndedAt, ExpiresAt: sb.ExpiresAt, VM: vm}
}

// SandboxList is the body of GET /v1/sandboxes.
type SandboxList struct {
	Sandboxes []Sandbox `json:"sandboxes"`
	// NextCursor, when set, is the cursor of the next page.
	NextCursor string `json:"next_cursor,omitempty"`
}

// ProcessRequest is the body of POST /v1/sandboxes/{id}/processes.
type ProcessRequest struct {
	// Cmd is a shell line (bash -l -c); Argv runs a program directly. One of them.
	Cmd       string            `json:"cmd,omitempty"`
	Argv      []string          `json:"argv,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	Cwd       string            `json:"cwd,omitempty"`
	User      string            `json:"user,omitempty"`
	Tag       string            `json:"tag,omitempty"`
	Stdin     *string           `json:"stdin,omitempty"` // sent, then stdin is closed; see KeepStdin
	KeepStdin bool              `json:"keep_stdin,omitempty"`
	TimeoutS  int               `json:"timeout_s,omitempty"`
	PTY       *protocol.Size    `json:"pty,omitempty"`
}

// ProcessEvent is one line of a process's NDJSON stream: "start" (pid), "output"
// (stream, data, partial), "exit" (exit_code, signal, error, truncated, duration_ms).
type ProcessEvent struct {
	Type    string `json:"type"`
	PID     int    `json:"pid,omitempty"`
	Seq     uint64 `json:"seq,omitempty"`
	Stream  string `json:"stream,omitempty"`
	Data    string `json:"data,omitempty"`
	Partial bool   `json:"partial,omitempty"`
	// exit
	ExitCode   *int   `json:"exit_code,omitempty"`
	Signal     string `json:"signal,omitempty"`
	Error      string `json:"error,omitempty"`
	Truncated  bool   `json:"truncated,omitempty"`
	DurationMS int64  `json:"duration_ms,omitempty"`
	// DurationUS is the process's run time as the agent measured it (spawn to exit).
	DurationUS int64 `json:"duration_us,omitempty"`
}

func (s *Server) sandboxRoutes(r chi.Router) {
	r.Post("/sandboxes", s.sandboxCreate)
	r.Get("/sandboxes", s.sandboxList)
	r.Get("/sandboxes/{id}", s.sandboxGet)
	r.Delete("/sandboxes/{id}", s.sandboxKill)
	r.Post("/sandboxes/{id}/timeout", s.sandboxTimeout)
	r.Post("/sandboxes/{id}/pause", s.sandboxPause)
	r.Post("/sandboxes/{id}/resume", s.sandboxResume)
	r.Get("/sandboxes/{id}/metrics", s.sandboxMetrics)
	r.Post("/sandboxes/{id}/processes", s.processStart)
	r.Get("/sandboxes/{id}/processes", s.processList)
	r.Get("/sandboxes/{id}/processes/{pid}/events", s.processAttach)
	r.Post("/sandboxes/{id}/processes/{pid}/stdin", s.processStdin)
	r.Post("/sandboxes/{id}/processes/{pid}/signal", s.processSignal)
	r.Post("/sandboxes/{id}/processes/{pid}/resize", s.processResize)
	r.Get("/sandboxes/{id}/pty", s.ptyConnect)
	r.Get("/sandboxes/{id}/files", s.fileRead)
	r.Put("/sandboxes/{id}/files", s.fileWrite)
	r.Get("/sandboxes/{id}/fs", s.fsList)
	r.Get("/sandboxes/{id}/fs/stat", s.fsStat)
	r.Post("/sandboxes/{id}/fs/mkdir", s.fsMkdir)
	r.Post("/sandboxes/{id}/fs/move", s.fsMove)
	r.Delete("/sandboxes/{id}/fs", s.fsRemove)
	r.Get("/sandboxes/{id}/fs/watch", s.fsWatch)
}

// sandboxes returns the service, or answers 503 when this server has none.
func (s *Server) sandboxes(w http.ResponseWriter, r *http.Request) *sandbox.Service {
	if s.o.Sandboxes == nil {
		s.writeError(w, r, fmt.Errorf("%w: this server runs no sandboxes", errNoSandboxes))
		return nil
	}
	return s.o.Sandboxes
}

var errNoSandboxes = errors.New("sandboxes unavailable")

// decodeJSON reads a small JSON body into v, refusing unknown fields.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return err
		}
		return fmt.Errorf("%w: %s", sandbox.ErrInvalid, jsonProblem(err))
	}
	if dec.More() {
		return fmt.Errorf("%w: the body must hold one JSON value", sandbox.ErrInvalid)
	}
	return nil
}

// jsonProblem says what is wrong with a body in JSON's terms, not Go's.
func jsonProblem(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("the body is not valid JSON (at byte %d)", syn.Offset)
	case errors.As(err, &typ):
		if typ.Field != "" {
			return fmt.Sprintf("field %s must not be a JSON %s", typ.Field, typ.Value)
		}
		return fmt.Sprintf("the body must be a JSON object, not a %s", typ.Value)
	case errors.Is(err, io.EOF):
		return "the body is empty"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ")
	}
	return "the body is not valid JSON"
}

func (s *Server) sandboxCreate(w http.ResponseWriter, r *http.Request) {
	svc := s.sandboxes(w, r)
	if svc == nil {
		return
	}
	var spec model.SandboxSpec
	if err := decodeJSON(w, r, &spec); err != nil {
		s.writeError(w, r, err)
		return
	}
	sb, err := svc.Create(r.Context(), spec)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.landed(r.Context(), sb.ID)
	w.Header().Set("Location", "/v1/sandboxes/"+sb.ID)
	writeJSON(w, http.StatusCreated, NewSandbox(sb))
}

func (s *Server) sandboxList(w http.ResponseWriter, r *http.Request) {
	svc := s.sandboxes(w, r)
	if svc == nil {
		return
	}
	q := r.URL.Query()
	f := store.SandboxFilter{After: q.Get("cursor"), Metadata: map[string]string{}}
	for _, v := range q["state"] {
		for _, st := range strings.Split(v, ",") {
			st := model.SandboxState(strings.TrimSpace(st))
			if !st.Valid() {
				s.writeError(w, r, fmt.Errorf("%w: %w", sandbox.ErrInvalid, &model.FieldError{Field: "state",
					Reason: fmt.Sprintf("unknown state %.32q", st)}))
				return
			}
			f.States = append(f.States, st)
		}
	}
	for _, v := range q["metadata"] {
		// metadata=key=value, repeated; or E2B's url-encoded "k1=v1&k2=v2" in one value.
		for _, pair := range strings.Split(v, "&") {
			k, val, ok := strings.Cut(pair, "=")
			if !ok || k == "" {
				s.writeError(w, r, fmt.Errorf("%w: %w", sandbox.ErrInvalid, &model.FieldError{Field: "metadata",
					Reason: "metadata filters are key=value"}))
				return
			}
			f.Metadata[k] = val
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			s.writeError(w, r, fmt.Errorf("%w: %w", sandbox.ErrInvalid, &model.FieldError{Field: "limit",
				Reason: "limit must be an integer from 1 to 1000"}))
			return
		}
		f.Limit = n
	}
	list, more, err := s.listSandboxes(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := SandboxList{Sandboxes: make([]Sandbox, 0, len(list))}
	for _, sb := range list {
		out.Sandboxes = append(out.Sandboxes, NewSandbox(sb))
	}
	if more && len(list) > 0 {
		out.NextCursor = list[len(list)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) sandboxGet(w http.ResponseWriter, r *http.Request) {
	svc := s.sandboxes(w, r)
	if svc == nil {
		return
	}
	sb, err := svc.Get(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, NewSandbox(sb))
}

func (s *Server) sandboxKill(w http.ResponseWriter, r *http.Request) {
	svc := s.sandboxes(w, r)
	if svc == nil {
		return
	}
	sb, err := svc.Kill(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, NewSandbox(sb))
}

func (s *Server) sandboxTimeout(w http.ResponseWriter, r *http.Request) {
	var body struct {
		TimeoutS int `json:"timeout_s"`
	}
	s.sandboxAction(w, r, &body, func(ctx context.Context, svc *sandbox.Service, id string) (*model.Sandbox, error) {
		return svc.SetTimeout(ctx, id, body.TimeoutS)
	})
}

func (s *Server) sandboxPause(w http.ResponseWriter, r *http.Request) {
	var body struct{}
	s.sandboxAction(w, r, &body, func(ctx context.Context, svc *sandbox.Service, id string) (*model.Sandbox, error) {
		return svc.Pause(ctx, id)
	})
}

func (s *Server) sandboxResume(w http.ResponseWriter, r *http.Request) {
	var body struct {
		TimeoutS int `json:"timeout_s"`
	}
	s.sandboxAction(w, r, &body, func(ctx context.Context, svc *sandbox.Service, id string) (*model.Sandbox, error) {
		return svc.Resume(ctx, id, body.TimeoutS)
	})
}

// sandboxAction decodes body, runs do on the route's sandbox and answers it.
func (s *Server) sandboxAction(w http.ResponseWriter, r *http.Request, body any,
	do func(ctx context.Context, svc *sandbox.Service, id string) (*model.Sandbox, error)) {
	svc := s.sandboxes(w, r)
	if svc == nil {
		return
	}
	if err := decodeJSON(w, r, body); err != nil {
		s.writeError(w, r, err)
		return
	}
	sb, err := do(r.Context(), svc, chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, NewSandbox(sb))
}

func (s *Server) sandboxMetrics(w http.ResponseWriter, r *http.Request) {
	s.unary(w, r, &protocol.Request{Op: protocol.OpMetrics}, func(resp *protocol.Response) any { return resp.Metrics })
}

// unary runs one operation in the sandbox named by the route and answers pick(response).
func (s *Server) unary(w http.ResponseWriter, r *http.Request, req *protocol.Request, pick func(*protocol.Response) any) {
	svc := s.sandboxes(w, r)
	if svc == nil {
		return
	}
	resp, err := svc.Do(r.Context(), chi.URLParam(r, "id"), req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, pick(resp))
}

func (s *Server) processStart(w http.ResponseWriter, r *http.Request) {
	svc := s.sandboxes(w, r)
	if svc == nil {
		return
	}
	var pr ProcessRequest
	if err := decodeJSON(w, r, &pr); err != nil {
		s.writeError(w, r, err)
		return
	}
	if pr.TimeoutS < 0 || pr.TimeoutS > model.MaxSandboxTimeoutS {
		s.writeError(w, r, fmt.Errorf("%w: %w", sandbox.ErrInvalid, &model.FieldError{Field: "timeout_s",
			Reason: fmt.Sprintf("timeout_s must be between 0 and %d", model.MaxSandboxTimeoutS)}))
		return
	}
	spec := protocol.ProcessSpec{Argv: pr.Argv, Shell: pr.Cmd, Env: pr.Env, Cwd: pr.Cwd, User: pr.User, Tag: pr.Tag,
		Stdin: pr.Stdin != nil || pr.KeepStdin, PTY: pr.PTY, TimeoutMS: int64(pr.TimeoutS) * 1000,
		OutputLimit: int64(s.o.Engine.Config().OutputLimit), LineLimit: int64(s.o.Engine.Config().OutputLineLimit)}
	id := chi.URLParam(r, "id")
	st, pid, err := svc.StartProcess(r.Context(), id, spec)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if pr.Stdin != nil {
		// Sent in pieces the session frame allows, then closed unless asked to keep it.
		data := []byte(*pr.Stdin)
		for len(data) > 0 || !pr.KeepStdin {
			n := min(len(data), sandbox.MaxStdinChunk)
			req := &protocol.Request{Op: protocol.OpProcessStdin, PID: pid, Data: data[:n], CloseStdin: n == len(data) && !pr.KeepStdin}
			if _, err := svc.Do(r.Context(), id, req); err != nil {
				st.Close()
				s.writeError(w, r, err)
				return
			}
			data = data[n:]
			if len(data) == 0 {
				break
			}
		}
	}
	s.streamProcess(w, r, st, pid)
}

func (s *Server) processAttach(w http.ResponseWriter, r *http.Request) {
	svc := s.sandboxes(w, r)
	if svc == nil {
		return
	}
	pid, tag, err := pidParam(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	st, got, err := svc.Attach(r.Context(), chi.URLParam(r, "id"), pid, tag)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.streamProcess(w, r, st, got)
}

// pidParam reads {pid}: a number, or "tag:NAME".
func pidParam(r *http.Request) (int, string, error) {
	v := chi.URLParam(r, "pid")
	if tag, ok := strings.CutPrefix(v, "tag:"); ok && tag != "" {
		return 0, tag, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, "", fmt.Errorf("%w: %w", sandbox.ErrInvalid, &model.FieldError{Field: "pid",
			Reason: fmt.Sprintf("a process is named by its pid or tag:NAME, got %.32q", v)})
	}
	return n, "", nil
}

// maxEventBytes bounds what one process stream relays (the guest caps output itself; a
// hostile guest that does not is cut off here).
const maxEventBytes = 256 << 20

// streamProcess relays a process's events as NDJSON until its exit (or the client or the
// guest goes away). Leaving early does not stop the process.
func (s *Server) streamProcess(w http.ResponseWriter, r *http.Request, st *protocol.Stream, pid int) {
	defer st.Close()
	go func() { <-r.Context().Done(); st.Close() }()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.Encode(ProcessEvent{Type: "start", PID: pid})
	bw.Flush()
	rc.Flush()
	// A reader goroutine lets the loop flush when nothing more is waiting: batches under
	// load, live when quiet.
	type item struct {
		ev  *protocol.Event
		err error
	}
	events := make(chan item, 64)
	go func() {
		defer close(events)
		for {
			ev, err := st.Event()
			events <- item{ev, err}
			if err != nil || ev.Exit != nil {
				return
			}
		}
	}()
	flush := func() {
		bw.Flush()
		rc.Flush()
	}
	relayed := 0
	for it := range events {
		switch ev, err := it.ev, it.err; {
		case err != nil:
			// No exit came: the sandbox ended (killed, timed out, its VM died) or the
			// guest broke the stream. Say so, so the end of the stream is never taken for
			// a clean one.
			if r.Context().Err() == nil {
				msg := "the process's stream ended before its exit (the sandbox ended?)"
				if !errors.Is(err, io.EOF) {
					msg = "lost the process's stream: " + err.Error()
				}
				enc.Encode(ProcessEvent{Type: "error", Error: msg})
			}
			flush()
			return
		case ev.Output != nil:
			relayed += len(ev.Output.Data)
			if relayed > maxEventBytes {
				enc.Encode(ProcessEvent{Type: "error", Error: "the process's output exceeded what one stream relays"})
				flush()
				return
			}
			enc.Encode(ProcessEvent{Type: "output", Seq: ev.Output.Seq, Stream: ev.Output.Stream, Data: ev.Output.Data, Partial: ev.Output.Partial})
		case ev.Exit != nil:
			code := ev.Exit.Code
			enc.Encode(ProcessEvent{Type: "exit", PID: pid, ExitCode: &code, Signal: ev.Exit.Signal, Error: ev.Exit.Error,
				Truncated: ev.Exit.Truncated || ev.Exit.OutputCut, DurationMS: ev.Exit.DurationMS, DurationUS: ev.Exit.DurationUS})
			flush()
			return
		}
		if len(events) == 0 || bw.Buffered() > 32<<10 {
			flush()
		}
	}
}

func (s *Server) processList(w http.ResponseWriter, r *http.Request) {
	s.unary(w, r, &protocol.Request{Op: protocol.OpProcessList}, func(resp *protocol.Response) any {
		list := resp.Processes
		if list == nil {
			list = []protocol.ProcessInfo{}
		}
		return map[string]any{"processes": list}
	})
}

func (s *Server) processStdin(w http.ResponseWriter, r *http.Request) {
	pid, tag, err := pidParam(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var body struct {
		Data  string `json:"data"`
		Close bool   `json:"close"`
	}
	if err := decodeJSON(w, r, &body); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.unary(w, r, &protocol.Request{Op: protocol.OpProcessStdin, PID: pid, Tag: tag, Data: []byte(body.Data), CloseStdin: body.Close},
		func(*protocol.Response) any { return map[string]bool{"ok": true} })
}

func (s *Server) processSignal(w http.ResponseWriter, r *http.Request) {
	pid, tag, err := pidParam(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var body struct {
		Signal string `json:"signal"`
	}
	if err := decodeJSON(w, r, &body); err != nil {
		s.writeError(w, r, err)
		return
	}
	sig := strings.TrimPrefix(strings.ToUpper(body.Signal), "SIG")
	switch sig {
	case "":
		sig = "TERM"
	case "TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2":
	default:
		s.writeError(w, r, fmt.Errorf("%w: %w", sandbox.ErrInvalid, &model.FieldError{Field: "signal",
			Reason: fmt.Sprintf("signal must be one of TERM, KILL, INT, HUP, QUIT, USR1, USR2, got %.16q", body.Signal)}))
		return
	}
	s.unary(w, r, &protocol.Request{Op: protocol.OpProcessSignal, PID: pid, Tag: tag, Signal: sig},
		func(*protocol.Response) any { return map[string]bool{"ok": true} })
}

func (s *Server) processResize(w http.ResponseWriter, r *http.Request) {
	pid, tag, err := pidParam(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var size protocol.Size
	if err := decodeJSON(w, r, &size); err != nil {
		s.writeError(w, r, err)
		return
	}
	if size.Cols == 0 || size.Rows == 0 || size.Cols > 1000 || size.Rows > 1000 {
		s.writeError(w, r, fmt.Errorf("%w: %w", sandbox.ErrInvalid, &model.FieldError{Field: "cols",
			Reason: "a terminal is 1–1000 columns by 1–1000 rows"}))
		return
	}
	s.unary(w, r, &protocol.Request{Op: protocol.OpProcessResize, PID: pid, Tag: tag, Size: &size},
		func(*protocol.Response) any { return map[string]bool{"ok": true} })
}

// fileUser is ?user=, default "user".
func fileUser(r *http.Request) (string, error) {
	u := r.URL.Query().Get("user")
	switch u {
	case "", "user", "root":
		return u, nil
	}
	return "", fmt.Errorf("%w: %w", sandbox.ErrInvalid, &model.FieldError{Field: "user", Reason: `user must be "user" or "root"`})
}

func pathParam(r *http.Request, name string) (string, error) {
	p := r.URL.Query().Get(name)
	if p == "" || len(p) > 4096 || strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("%w: %w", sandbox.ErrInvalid, &model.FieldError{Field: name,
			Reason: name + " is required: an absolute path, or one relative to the user's home (at most 4096 bytes)"})
	}
	return p, nil
}

func (s *Server) fileRead(w http.ResponseWriter, r *http.Request) {
	svc := s.sandboxes(w, r)
	if svc == nil {
		return
	}
	path, err := pathParam(r, "path")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	user, err := fileUser(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	body, info, err := svc.ReadFile(r.Context(), chi.URLParam(r, "id"), path, user)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer body.Close()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(info.Size, 10))
	h.Set("X-Vulcan-File-Mode", fmt.Sprintf("%04o", info.Mode))
	h.Set("Last-Modified", time.UnixMilli(info.ModTime).UTC().Format(http.TimeFormat))
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, body); err != nil {
		// The status is sent: a short body (Content-Length unmet) tells the client.
		s.log.Warn("file read cut short", "sandbox", chi.URLParam(r, "id"), "path", path, "err", err)
	}
}

func (s *Server) fileWrite(w http.ResponseWriter, r *http.Request) {
	svc := s.sandboxes(w, r)
	if svc == nil {
		return
	}
	path, err := pathParam(r, "path")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	user, err := fileUser(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var mode uint64
	if v := r.URL.Query().Get("mode"); v != "" {
		if mode, err = strconv.ParseUint(v, 8, 32); err != nil || mode > 0o7777 {
			s.writeError(w, r, fmt.Errorf("%w: %w", sandbox.ErrInvalid, &model.FieldError{Field: "mode", Reason: "mode is octal permission bits, e.g. 644"}))
			return
		}
	}
	// An upload may take long: the body deadline is an idle timeout here, pushed back as
	// bytes arrive.
	body := &idleReader{r: r.Body, rc: http.NewResponseController(w), idle: s.o.BodyTimeout}
	info, err := svc.WriteFile(r.Context(), chi.URLParam(r, "id"), path, user, uint32(mode), body, sandbox.MaxFileBytes)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

// idleReader pushes the request's read deadline back after every read that got bytes.
type idleReader struct {
	r    io.Reader
	rc   *http.ResponseController
	idle time.Duration
	last time.Time
}

func (i *idleReader) Read(p []byte) (int, error) {
	n, err := i.r.Read(p)
	if n > 0 && time.Since(i.last) > time.Second {
		i.last = time.Now()
		_ = i.rc.SetReadDeadline(i.last.Add(i.idle))
	}
	return n, err
}

func (s *Server) fsList(w http.ResponseWriter, r *http.Request) {
	path, err := pathParam(r, "path")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	user, err := fileUser(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	depth := 1
	if v := r.URL.Query().Get("depth"); v != "" {
		if depth, err = strconv.Atoi(v); err != nil || depth < 1 || depth > 32 {
			s.writeError(w, r, fmt.Errorf("%w: %w", sandbox.ErrInvalid, &model.FieldError{Field: "depth", Reason: "depth must be 1 to 32"}))
			return
		}
	}
	s.unary(w, r, &protocol.Request{Op: protocol.OpFSList, Path: path, User: user, Depth: depth}, func(resp *protocol.Response) any {
		e := resp.Entries
		if e == nil {
			e = []protocol.FileInfo{}
		}
		return map[string]any{"entries": e}
	})
}

func (s *Server) fsStat(w http.ResponseWriter, r *http.Request) {
	path, err := pathParam(r, "path")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	user, err := fileUser(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.unary(w, r, &protocol.Request{Op: protocol.OpFSStat, Path: path, User: user}, func(resp *protocol.Response) any { return resp.Info })
}

func (s *Server) fsMkdir(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Path string `json:"path"`
		User string `json:"user"`
	}
	if err := decodeJSON(w, r, &body); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.unary(w, r, &protocol.Request{Op: protocol.OpFSMkdir, Path: body.Path, User: body.User}, func(resp *protocol.Response) any { return resp.Info })
}

func (s *Server) fsMove(w http.ResponseWriter, r *http.Request) {
	var body struct {
		From string `json:"from"`
		To   string `json:"to"`
		User string `json:"user"`
	}
	if err := decodeJSON(w, r, &body); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.unary(w, r, &protocol.Request{Op: protocol.OpFSMove, Path: body.From, To: body.To, User: body.User}, func(resp *protocol.Response) any { return resp.Info })
}

func (s *Server) fsRemove(w http.ResponseWriter, r *http.Request) {
	path, err := pathParam(r, "path")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	user, err := fileUser(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.unary(w, r, &protocol.Request{Op: protocol.OpFSRemove, Path: path, User: user}, func(*protocol.Response) any { return map[string]bool{"ok": true} })
}

// FSEvent is one change seen by a directory watch.
type FSEvent struct {
	Op   string `json:"op"` // create | write | remove | rename | chmod
	Path string `json:"path"`
}

// fsWatch streams a directory's changes as Server-Sent Events ("fs" events, heartbeats
// as comments) until the client goes away. A watch the guest ends (the directory was
// removed, the kernel's queue overflowed) ends with an "error" event saying why.
func (s *Server) fsWatch(w http.ResponseWriter, r *http.Request) {
	svc := s.sandboxes(w, r)
	if svc == nil {
		return
	}
	path, err := pathParam(r, "path")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	user, err := fileUser(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	recursive := false
	if v := r.URL.Query().Get("recursive"); v != "" {
		if recursive, err = strconv.ParseBool(v); err != nil {
			s.writeError(w, r, fmt.Errorf("%w: %w", sandbox.ErrInvalid, &model.FieldError{Field: "recursive", Reason: "recursive must be true or false"}))
			return
		}
	}
	wt, _, err := svc.Watch(r.Context(), chi.URLParam(r, "id"), path, user, recursive)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer wt.Close()
	go func() { <-r.Context().Done(); wt.Close() }()
	bw, flush := startSSE(w)
	bw.WriteString(": watching\n\n")
	if flush() != nil {
		return
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
			events <- item{ev, err}
			if err != nil || ev.Op == protocol.FSError {
				return
			}
		}
	}()
	heartbeat := time.NewTicker(s.o.Heartbeat)
	defer heartbeat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-heartbeat.C:
			bw.WriteString(": heartbeat\n\n")
		case it, ok := <-events:
			switch {
			case !ok:
				return
			case it.err != nil:
				if r.Context().Err() == nil {
					writeEvent(bw, "error", "", ErrorDetail{Code: "watch_ended", Message: "the watch ended with the sandbox (or its agent broke the stream)"})
					flush()
				}
				return
			case it.ev.Op == protocol.FSError:
				writeEvent(bw, "error", "", ErrorDetail{Code: "watch_ended", Message: it.ev.Error})
				flush()
				return
			default:
				writeEvent(bw, "fs", "", FSEvent{Op: it.ev.Op, Path: it.ev.Path})
			}
			if len(events) > 0 && bw.Buffered() < 32<<10 {
				continue
			}
		}
		if flush() != nil {
			return
		}
	}
}
