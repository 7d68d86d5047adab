package e2b

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
	"github.com/vulcanhq/vulcan/internal/sandbox"
	"github.com/vulcanhq/vulcan/internal/store"
)

// The control plane: E2B's REST API for sandboxes, over the sandbox service. Success
// codes are E2B's (the Python client checks them): create 201, connect 200, kill, timeout
// 204; errors are {"code": <status>, "message": ...} — the JS client reads the body's
// code to tell "not found" from other failures.

func (s *Server) controlPlane() http.Handler {
	r := chi.NewRouter()
	r.Use(s.requireKey)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such E2B route: %s %s", r.Method, clipPath(r.URL.Path))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusMethodNotAllowed, "method %s not allowed on %s", r.Method, clipPath(r.URL.Path))
	})
	for _, prefix := range []string{"", "/v2"} {
		r.Post(prefix+"/sandboxes", s.create)
		r.Get(prefix+"/sandboxes", s.list)
		r.Post(prefix+"/sandboxes/{id}/connect", s.connect)
	}
	r.Get("/sandboxes/{id}", s.info)
	r.Delete("/sandboxes/{id}", s.kill)
	r.Post("/sandboxes/{id}/timeout", s.setTimeout)
	r.Get("/sandboxes/{id}/metrics", s.metrics)
	r.Post("/sandboxes/{id}/pause", s.pause)
	r.Post("/sandboxes/{id}/resume", s.resume)
	r.Post("/sandboxes/{id}/refreshes", s.refresh)
	r.Post("/sandboxes/{id}/fork", s.unsupported("forking a sandbox is not supported by this Vulcan server"))
	r.Post("/sandboxes/{id}/snapshots", s.unsupported("sandbox snapshots are not supported by this Vulcan server yet"))
	r.Put("/sandboxes/{id}/network", s.unsupported("changing a running sandbox's network is not supported; set it at create"))
	return r
}

func (s *Server) requireKey(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.apiKeyOK(r) {
			writeError(w, http.StatusUnauthorized, "missing or wrong API key (X-API-KEY must be this server's Vulcan token)")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) unsupported(msg string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if _, ok := s.sandboxFor(w, r); ok {
			writeError(w, http.StatusNotImplemented, "%s", msg)
		}
	}
}

// Error is E2B's error body.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func writeError(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, Error{Code: status, Message: fmt.Sprintf(format, args...)})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"code":500,"message":"encoding the answer failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

func clipPath(p string) string {
	if len(p) > 200 {
		return p[:200] + "…"
	}
	return p
}

// status maps a sandbox service error to E2B's status and a message users may see.
func (s *Server) status(err error) (int, string) {
	var oe *protocol.OpError
	var fe *model.FieldError
	switch {
	case errors.As(err, &oe):
		return opHTTPStatus(oe.Code), oe.Message
	case errors.Is(err, sandbox.ErrNotFound), errors.Is(err, sandbox.ErrEnded), errors.Is(err, sandbox.ErrNotRunning):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, sandbox.ErrInvalid):
		if errors.As(err, &fe) {
			return http.StatusBadRequest, fe.Error()
		}
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, sandbox.ErrBusy):
		return http.StatusTooManyRequests, err.Error()
	case errors.Is(err, sandbox.ErrShuttingDown):
		return http.StatusServiceUnavailable, err.Error()
	case errors.Is(err, sandbox.ErrPaused), errors.Is(err, sandbox.ErrAlreadyPaused):
		return http.StatusConflict, err.Error()
	case errors.Is(err, sandbox.ErrUnsupported):
		return http.StatusNotImplemented, err.Error()
	case errors.Is(err, sandbox.ErrTooLarge):
		return http.StatusRequestEntityTooLarge, err.Error()
	case errors.Is(err, backend.ErrUnavailable):
		return http.StatusServiceUnavailable, err.Error()
	}
	s.log.Error("e2b request failed", "err", err)
	return http.StatusInternalServerError, "internal error (see the server's log)"
}

func (s *Server) fail(w http.ResponseWriter, err error) {
	code, msg := s.status(err)
	if code == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	writeError(w, code, "%s", msg)
}

// opHTTPStatus maps an agent error code as envd's REST routes answer it.
func opHTTPStatus(code string) int {
	switch code {
	case protocol.ErrCodeNotFound, protocol.ErrCodeNoProcess:
		return http.StatusNotFound
	case protocol.ErrCodePermission:
		return http.StatusForbidden
	case protocol.ErrCodeExists:
		return http.StatusConflict
	case protocol.ErrCodeInvalid, protocol.ErrCodeNotDir, protocol.ErrCodeIsDir:
		return http.StatusBadRequest
	case protocol.ErrCodeTooLarge:
		return http.StatusInsufficientStorage
	case protocol.ErrCodeUnsupported:
		return http.StatusNotImplemented
	}
	return http.StatusInternalServerError
}

// maxControlBody caps a control-plane request body.
const maxControlBody = 1 << 20

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxControlBody))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "request body over %d KiB", maxControlBody>>10)
		return false
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return true
	}
	if err := json.Unmarshal(body, v); err != nil {
		writeError(w, http.StatusBadRequest, "request body: %v", err)
		return false
	}
	return true
}

// NewSandbox is E2B's create request (NewSandbox, NewSandboxV2). Fields Vulcan cannot
// honour are refused, never ignored.
type NewSandbox struct {
	TemplateID          string            `json:"templateID"`
	Timeout             *int              `json:"timeout"`
	Metadata            map[string]string `json:"metadata"`
	EnvVars             map[string]string `json:"envVars"`
	AllowInternetAccess *bool             `json:"allow_internet_access"`
	Secure              *bool             `json:"secure"`
	AutoPause           *bool             `json:"autoPause"`
	AutoPauseMemory     *bool             `json:"autoPauseMemory"`
	AutoResume          *struct {
		Enabled bool `json:"enabled"`
	} `json:"autoResume"`
	Network *struct {
		AllowOut           []string        `json:"allowOut"`
		DenyOut            []string        `json:"denyOut"`
		Rules              json.RawMessage `json:"rules"`
		EgressProxy        json.RawMessage `json:"egressProxy"`
		AllowPublicTraffic *bool           `json:"allowPublicTraffic"`
		MaskRequestHost    string          `json:"maskRequestHost"`
		HTTPSPorts         []int           `json:"httpsPorts"`
	} `json:"network"`
	MCP          json.RawMessage   `json:"mcp"`
	IAM          json.RawMessage   `json:"iam"`
	VolumeMounts []json.RawMessage `json:"volumeMounts"`
}

// spec turns the request into Vulcan's, or says what cannot be done.
func (n *NewSandbox) spec() (model.SandboxSpec, string) {
	switch {
	case n.AutoPauseMemory != nil && !*n.AutoPauseMemory:
		return model.SandboxSpec{}, "this Vulcan server pauses with memory only (keepMemory: false is not supported)"
	case len(n.MCP) > 0 && string(n.MCP) != "null":
		return model.SandboxSpec{}, "the MCP gateway is not supported; Vulcan serves MCP itself (see its README)"
	case len(n.IAM) > 0 && string(n.IAM) != "null":
		return model.SandboxSpec{}, "IAM tokens are not supported by this Vulcan server"
	case len(n.VolumeMounts) > 0:
		return model.SandboxSpec{}, "volume mounts are not supported by this Vulcan server"
	}
	spec := model.SandboxSpec{Template: model.Runtime(n.TemplateID), Env: n.EnvVars, Metadata: n.Metadata,
		AutoPause: n.AutoPause != nil && *n.AutoPause, AutoResume: n.AutoResume != nil && n.AutoResume.Enabled}
	if n.Timeout != nil {
		if *n.Timeout < 1 {
			return spec, "timeout must be at least 1 second"
		}
		spec.TimeoutS = *n.Timeout
	}
	if n.AllowInternetAccess != nil {
		spec.Network = model.NetworkNone
		if *n.AllowInternetAccess {
			spec.Network = model.NetworkEgress
		}
	}
	if nw := n.Network; nw != nil {
		switch {
		case len(nw.Rules) > 0 && string(nw.Rules) != "null", len(nw.EgressProxy) > 0 && string(nw.EgressProxy) != "null",
			nw.MaskRequestHost != "", len(nw.HTTPSPorts) > 0, nw.AllowPublicTraffic != nil:
			return spec, "of network, this Vulcan server supports allowOut and denyOut (addresses, CIDRs and host names)"
		}
		if len(nw.AllowOut) > 0 || len(nw.DenyOut) > 0 {
			if spec.Network == "" {
				spec.Network = model.NetworkEgress
			}
			spec.NetworkRules = &model.NetworkRules{Allow: nw.AllowOut, Deny: nw.DenyOut}
		}
	}
	return spec, ""
}

// Sandbox is E2B's answer to create and connect.
type Sandbox struct {
	SandboxID          string  `json:"sandboxID"`
	TemplateID         string  `json:"templateID"`
	Alias              string  `json:"alias,omitempty"`
	ClientID           string  `json:"clientID"`
	EnvdVersion        string  `json:"envdVersion"`
	EnvdAccessToken    string  `json:"envdAccessToken"`
	TrafficAccessToken *string `json:"trafficAccessToken"`
	Domain             *string `json:"domain"`
}

// SandboxDetail is E2B's getInfo answer and, with fewer fields read, a list entry.
type SandboxDetail struct {
	SandboxID       string            `json:"sandboxID"`
	TemplateID      string            `json:"templateID"`
	Alias           string            `json:"alias,omitempty"`
	ClientID        string            `json:"clientID"`
	StartedAt       time.Time         `json:"startedAt"`
	EndAt           time.Time         `json:"endAt"`
	EnvdVersion     string            `json:"envdVersion"`
	EnvdAccessToken string            `json:"envdAccessToken,omitempty"`
	CPUCount        int               `json:"cpuCount"`
	MemoryMB        int               `json:"memoryMB"`
	DiskSizeMB      int               `json:"diskSizeMB"`
	Metadata        map[string]string `json:"metadata"`
	State           string            `json:"state"`
	AllowInternet   bool              `json:"allowInternetAccess"`
	Domain          *string           `json:"domain"`
}

const clientID = "vulcan"

func (s *Server) answer(sb *model.Sandbox) Sandbox {
	traffic := s.trafficToken(sb.ID)
	return Sandbox{SandboxID: externalID(sb.ID), TemplateID: string(sb.Spec.Template), Alias: string(sb.Spec.Template),
		ClientID: clientID, EnvdVersion: EnvdVersion, EnvdAccessToken: s.accessToken(sb.ID), TrafficAccessToken: &traffic}
}

func (s *Server) detail(sb *model.Sandbox, withToken bool) SandboxDetail {
	started := sb.CreatedAt
	if sb.StartedAt != nil {
		started = *sb.StartedAt
	}
	md := sb.Spec.Metadata
	if md == nil {
		md = map[string]string{}
	}
	d := SandboxDetail{SandboxID: externalID(sb.ID), TemplateID: string(sb.Spec.Template), Alias: string(sb.Spec.Template),
		ClientID: clientID, StartedAt: started.UTC(), EndAt: sb.ExpiresAt.UTC(), EnvdVersion: EnvdVersion,
		CPUCount: sb.Spec.Resources.CPUs, MemoryMB: sb.Spec.Resources.MemMB,
		Metadata: md, State: e2bState(sb.State), AllowInternet: sb.Spec.Network == model.NetworkEgress || sb.Spec.Network == model.NetworkHost}
	if withToken {
		d.EnvdAccessToken = s.accessToken(sb.ID)
	}
	return d
}

// TemplateName is the Vulcan template an E2B templateID names: "base" when empty, and
// @e2b/code-interpreter's default is ours by another name.
func TemplateName(id string) string {
	switch id {
	case "":
		return "base"
	case CodeInterpreterTemplate:
		return string(model.RuntimeCodeInterpreter)
	}
	return id
}

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	var req NewSandbox
	if !decode(w, r, &req) {
		return
	}
	req.TemplateID = TemplateName(req.TemplateID)
	if !s.o.Sandboxes.KnowsTemplate(model.Runtime(req.TemplateID)) {
		writeError(w, http.StatusNotFound, "template %q not found (this Vulcan server has: %s and the templates built here)", clipPath(req.TemplateID), strings.Join(templates(), ", "))
		return
	}
	spec, why := req.spec()
	if why != "" {
		writeError(w, http.StatusBadRequest, "%s", why)
		return
	}
	sb, err := s.o.Sandboxes.Create(r.Context(), spec)
	if err != nil {
		s.fail(w, err)
		return
	}
	if sb.State != model.SandboxRunning {
		writeError(w, http.StatusInternalServerError, "the sandbox did not start: %s", sb.Error)
		return
	}
	if s.o.Created != nil {
		s.o.Created(r.Context(), sb.ID)
	}
	writeJSON(w, http.StatusCreated, s.answer(sb))
}

func templates() []string {
	var out []string
	for _, rt := range model.Templates {
		out = append(out, string(rt))
	}
	return out
}

// sandboxFor loads the route's sandbox, answering 404 (E2B's view: only live sandboxes
// exist) when it is unknown or has ended.
func (s *Server) sandboxFor(w http.ResponseWriter, r *http.Request) (*model.Sandbox, bool) {
	raw := chi.URLParam(r, "id")
	id, ok := internalID(raw)
	if !ok {
		writeError(w, http.StatusNotFound, "sandbox %q not found", clipPath(raw))
		return nil, false
	}
	sb, err := s.o.Sandboxes.Get(r.Context(), id)
	if err != nil {
		s.fail(w, err)
		return nil, false
	}
	if sb.State.Terminal() {
		writeError(w, http.StatusNotFound, "sandbox %s not found (it is %s)", raw, sb.State)
		return nil, false
	}
	return sb, true
}

func (s *Server) info(w http.ResponseWriter, r *http.Request) {
	if sb, ok := s.sandboxFor(w, r); ok {
		writeJSON(w, http.StatusOK, s.detail(sb, true))
	}
}

// e2bState is a live or paused sandbox's state as E2B names it.
func e2bState(st model.SandboxState) string {
	if st == model.SandboxPaused {
		return "paused"
	}
	return "running"
}

func (s *Server) pause(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Memory *bool `json:"memory"`
	}
	if !decode(w, r, &body) {
		return
	}
	if body.Memory != nil && !*body.Memory {
		writeError(w, http.StatusBadRequest, "this Vulcan server pauses with memory only (keepMemory: false is not supported)")
		return
	}
	sb, ok := s.sandboxFor(w, r)
	if !ok {
		return
	}
	if _, err := s.o.Sandboxes.Pause(r.Context(), sb.ID); err != nil {
		if errors.Is(err, sandbox.ErrAlreadyPaused) {
			writeError(w, http.StatusConflict, "sandbox %s is already paused", externalID(sb.ID))
			return
		}
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// resume is E2B's deprecated resume: 201 with the sandbox, 409 when it is running.
func (s *Server) resume(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Timeout   *int  `json:"timeout"`
		AutoPause *bool `json:"autoPause"`
	}
	if !decode(w, r, &body) {
		return
	}
	sb, ok := s.sandboxFor(w, r)
	if !ok {
		return
	}
	if sb.State != model.SandboxPaused {
		writeError(w, http.StatusConflict, "sandbox %s is not paused", externalID(sb.ID))
		return
	}
	timeout := 0
	if body.Timeout != nil {
		timeout = *body.Timeout
	}
	if sb, err := s.o.Sandboxes.Resume(r.Context(), sb.ID, timeout); err != nil {
		s.fail(w, err)
	} else {
		writeJSON(w, http.StatusCreated, s.answer(sb))
	}
}

func (s *Server) connect(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Timeout *int  `json:"timeout"`
		Memory  *bool `json:"memory"`
	}
	if !decode(w, r, &body) {
		return
	}
	sb, ok := s.sandboxFor(w, r)
	if !ok {
		return
	}
	// A paused sandbox is resumed (201, as E2B answers a resume).
	if sb.State == model.SandboxPaused {
		if body.Memory != nil && !*body.Memory {
			writeError(w, http.StatusBadRequest, "this Vulcan server resumes with memory only (onResume: reboot is not supported)")
			return
		}
		timeout := 0
		if body.Timeout != nil {
			timeout = *body.Timeout
		}
		resumed, err := s.o.Sandboxes.Resume(r.Context(), sb.ID, timeout)
		if err != nil {
			s.fail(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, s.answer(resumed))
		return
	}
	// Connecting keeps the sandbox alive at least timeout seconds from now; it never
	// shortens what it has.
	if body.Timeout != nil && time.Until(sb.ExpiresAt) < time.Duration(*body.Timeout)*time.Second {
		var err error
		if sb, err = s.o.Sandboxes.SetTimeout(r.Context(), sb.ID, *body.Timeout); err != nil {
			s.fail(w, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, s.answer(sb))
}

func (s *Server) kill(w http.ResponseWriter, r *http.Request) {
	sb, ok := s.sandboxFor(w, r)
	if !ok {
		return
	}
	if _, err := s.o.Sandboxes.Kill(r.Context(), sb.ID); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) setTimeout(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Timeout *int `json:"timeout"`
	}
	if !decode(w, r, &body) {
		return
	}
	if body.Timeout == nil {
		writeError(w, http.StatusBadRequest, "timeout (seconds) is required")
		return
	}
	sb, ok := s.sandboxFor(w, r)
	if !ok {
		return
	}
	if _, err := s.o.Sandboxes.SetTimeout(r.Context(), sb.ID, *body.Timeout); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// refresh is the old SDKs' keep-alive: {duration} seconds more.
func (s *Server) refresh(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Duration int `json:"duration"`
	}
	if !decode(w, r, &body) {
		return
	}
	sb, ok := s.sandboxFor(w, r)
	if !ok {
		return
	}
	if body.Duration > 0 && time.Until(sb.ExpiresAt) < time.Duration(body.Duration)*time.Second {
		if _, err := s.o.Sandboxes.SetTimeout(r.Context(), sb.ID, body.Duration); err != nil {
			s.fail(w, err)
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// Metric is one sample of E2B's sandbox metrics.
type Metric struct {
	Timestamp     time.Time `json:"timestamp"`
	TimestampUnix int64     `json:"timestampUnix"`
	CPUCount      int       `json:"cpuCount"`
	CPUUsedPct    float64   `json:"cpuUsedPct"`
	MemUsed       int64     `json:"memUsed"`
	MemTotal      int64     `json:"memTotal"`
	MemCache      int64     `json:"memCache"`
	DiskUsed      int64     `json:"diskUsed"`
	DiskTotal     int64     `json:"diskTotal"`
}

// metrics answers one sample taken now from the guest (Vulcan keeps no history of
// them; a start/end range that excludes now is an empty list).
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	sb, ok := s.sandboxFor(w, r)
	if !ok {
		return
	}
	now := time.Now()
	for _, p := range []struct {
		name   string
		before bool
	}{{"start", false}, {"end", true}} {
		v := r.URL.Query().Get(p.name)
		if v == "" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "%s must be a unix time in seconds", p.name)
			return
		}
		if t := time.Unix(n, 0); (p.before && t.Before(now.Truncate(time.Second))) || (!p.before && t.After(now)) {
			writeJSON(w, http.StatusOK, []Metric{})
			return
		}
	}
	resp, err := s.o.Sandboxes.Do(r.Context(), sb.ID, &protocol.Request{Op: protocol.OpMetrics})
	if err != nil {
		s.fail(w, err)
		return
	}
	m := resp.Metrics
	if m == nil {
		writeError(w, http.StatusBadGateway, "the sandbox's agent answered without metrics")
		return
	}
	ts := time.UnixMilli(m.TimestampMS).UTC()
	writeJSON(w, http.StatusOK, []Metric{{Timestamp: ts, TimestampUnix: ts.Unix(), CPUCount: m.CPUCount, CPUUsedPct: m.CPUUsedPct,
		MemUsed: m.MemUsed, MemTotal: m.MemTotal, DiskUsed: m.DiskUsed, DiskTotal: m.DiskTotal}})
}

// list answers E2B's listing of live sandboxes: v2 (filters, X-Next-Token paging) and
// the old unpaged form.
func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := store.SandboxFilter{States: []model.SandboxState{model.SandboxStarting, model.SandboxRunning, model.SandboxPaused}, Limit: 100}
	if v := q.Get("state"); v != "" {
		f.States = nil
		for _, st := range strings.Split(v, ",") {
			switch strings.TrimSpace(st) {
			case "running":
				f.States = append(f.States, model.SandboxStarting, model.SandboxRunning)
			case "paused":
				f.States = append(f.States, model.SandboxPaused)
			default:
				writeError(w, http.StatusBadRequest, "state %q: want running or paused", clipPath(st))
				return
			}
		}
		if len(f.States) == 0 {
			writeJSON(w, http.StatusOK, []SandboxDetail{})
			return
		}
	}
	md, err := metadataFilter(q.Get("metadata"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "metadata: %v", err)
		return
	}
	f.Metadata = md
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, http.StatusBadRequest, "limit must be an integer from 1 to 1000")
			return
		}
		f.Limit = n
	}
	if v := q.Get("nextToken"); v != "" {
		id, ok := internalID(v)
		if !ok {
			writeError(w, http.StatusBadRequest, "nextToken %q is not one this server gave", clipPath(v))
			return
		}
		f.After = id
	}
	list, more, err := s.listSandboxes(r.Context(), f)
	if err != nil {
		s.fail(w, err)
		return
	}
	out := make([]SandboxDetail, 0, len(list))
	for _, sb := range list {
		if t := q.Get("template"); t != "" && string(sb.Spec.Template) != t {
			continue
		}
		out = append(out, s.detail(sb, false))
	}
	if more && len(list) > 0 {
		w.Header().Set("X-Next-Token", externalID(list[len(list)-1].ID))
	}
	writeJSON(w, http.StatusOK, out)
}

// metadataFilter decodes E2B's metadata query: "k1=v1&k2=v2" with keys and values
// URL-encoded once more (the JS SDK encodes each pair before joining them).
func metadataFilter(v string) (map[string]string, error) {
	out := map[string]string{}
	if v == "" {
		return out, nil
	}
	pairs, err := url.ParseQuery(v)
	if err != nil {
		return nil, err
	}
	for k, vals := range pairs {
		key, err1 := url.QueryUnescape(k)
		val, err2 := url.QueryUnescape(vals[len(vals)-1])
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		if key == "" {
			return nil, errors.New("an empty key")
		}
		out[key] = val
	}
	return out, nil
}
