package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/vulcanhq/vulcan/internal/cluster"
	"github.com/vulcanhq/vulcan/internal/e2b"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/store"
)

// In a cluster any node answers any call. clusterFront runs before routing: a call about
// a workload or sandbox another node owns is proxied to that node (REST, SSE, E2B's
// control plane and envd, the PTY's WebSocket, port traffic), a new sandbox is placed
// on the node with the most room, and a call about a record whose node is gone is
// answered from the cluster's directory. A request another node forwarded is served
// here as it is (ForwardedHeader), so nothing is forwarded twice.

// NodeHeader names the node that served a cluster call.
const NodeHeader = "X-Vulcan-Node"

// adoptHeader, on a resume forwarded to another node, asks it to take over the paused
// sandbox of a node that is gone (it has the template; the sender does not).
const adoptHeader = "X-Vulcan-Adopt"

var (
	errNodeLost   = errors.New("node lost")
	errNoCapacity = errors.New("no capacity")
)

// forwarder proxies to other nodes over one pooled transport.
type forwarder struct {
	self      string
	transport *http.Transport
	client    *http.Client
	mu        sync.Mutex
	proxies   map[string]*httputil.ReverseProxy
}

func newForwarder(self string) *forwarder {
	t := &http.Transport{
		Proxy:               nil, // node to node, never through an environment proxy
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   false,
	}
	return &forwarder{self: self, transport: t, client: &http.Client{Transport: t}, proxies: map[string]*httputil.ReverseProxy{}}
}

func (f *forwarder) proxy(s *Server, target string) (*httputil.ReverseProxy, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p, ok := f.proxies[target]; ok {
		return p, nil
	}
	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("node URL %q: %v", target, err)
	}
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.SetXForwarded()
			pr.Out.Header.Set(cluster.ForwardedHeader, f.self)
		},
		Transport:     f.transport,
		FlushInterval: -1, // SSE and streamed exec output pass at once
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				return
			}
			w.Header().Set(NodeHeader, f.self)
			s.writeError(w, r, fmt.Errorf("%w: the owning node at %s did not answer: %v", errNodeLost, u.Host, err))
		},
	}
	f.proxies[target] = p
	return p, nil
}

func (s *Server) forward(w http.ResponseWriter, r *http.Request, target string) {
	p, err := s.fwd.proxy(s, target)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.forwarded.WithLabelValues("owner").Inc()
	// The owner names itself as the node that served (the proxy adds its headers to
	// ours: two values, this node's first, were the answer).
	w.Header().Del(NodeHeader)
	p.ServeHTTP(w, r)
}

// clusterTarget names the record a request is about: kind "w" or "s" and its id.
func clusterTarget(r *http.Request) (kind, id, rest string, ok bool) {
	if e2b.IsEnvd(r) {
		id = strings.ToUpper(r.Header.Get("E2b-Sandbox-Id"))
		return "s", id, "", validULID(id)
	}
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, "/v1/sandboxes/"):
		kind, p = "s", strings.TrimPrefix(p, "/v1/sandboxes/")
	case strings.HasPrefix(p, "/v1/workloads/"):
		kind, p = "w", strings.TrimPrefix(p, "/v1/workloads/")
	case e2b.IsControlPlane(r) && strings.HasPrefix(p, "/sandboxes/"):
		kind, p = "s", strings.TrimPrefix(p, "/sandboxes/")
	case e2b.IsControlPlane(r) && strings.HasPrefix(p, "/v2/sandboxes/"):
		kind, p = "s", strings.TrimPrefix(p, "/v2/sandboxes/")
	default:
		return "", "", "", false
	}
	id, rest, _ = strings.Cut(p, "/")
	id = strings.ToUpper(id)
	return kind, id, rest, validULID(id)
}

func validULID(id string) bool {
	_, err := ulid.ParseStrict(id)
	return err == nil
}

// isSandboxCreate reports whether r creates a sandbox (Vulcan's route or E2B's).
func isSandboxCreate(r *http.Request) bool {
	if r.Method != http.MethodPost {
		return false
	}
	p := strings.TrimSuffix(r.URL.Path, "/")
	return p == "/v1/sandboxes" || (e2b.IsControlPlane(r) && (p == "/sandboxes" || p == "/v2/sandboxes"))
}

func (s *Server) clusterFront(next http.Handler) http.Handler {
	c := s.o.Cluster
	if c == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(NodeHeader, c.ID())
		kind, id, rest, ok := clusterTarget(r)
		if ok {
			c.WaitClaimed(r.Context(), kind, id) // the directory may name this node a moment early
			if changesState(r, kind, rest) {
				// Served here (the owner): answer once the directory has the change, so
				// the client's next list through any node shows it.
				w = &landingWriter{ResponseWriter: w, land: func() { c.Landed(r.Context(), kind, id) }}
			}
		}
		if r.Header.Get(cluster.ForwardedHeader) != "" {
			if ok && kind == "s" && r.Header.Get(adoptHeader) != "" && isResume(r, rest) {
				// Sent here to take over a paused sandbox whose node is gone.
				if loc := c.Locate(r.Context(), kind, id); !loc.Alive {
					s.adoptPaused(w, r, id, loc, next)
					return
				}
			}
			next.ServeHTTP(w, r)
			return
		}
		if isSandboxCreate(r) {
			s.placeSandbox(w, r, next)
			return
		}
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		loc := c.Locate(r.Context(), kind, id)
		switch {
		case !loc.Known || loc.Self && loc.Alive:
			next.ServeHTTP(w, r)
		case loc.Alive:
			s.forward(w, r, loc.URL)
		case loc.Node == "":
			s.queuedWorkload(w, r, id, rest, next)
		case kind == "s" && isResume(r, rest):
			s.adoptPaused(w, r, id, loc, next)
		case kind == "s" && r.Method == http.MethodDelete && rest == "":
			s.killLost(w, r, id, loc)
		default:
			s.lostRecord(w, r, kind, id, rest, loc)
		}
	})
}

// landed holds a sandbox create's answer until the cluster's directory has the sandbox,
// so a client that goes straight to another node finds it.
func (s *Server) landed(ctx context.Context, id string) {
	if s.o.Cluster != nil {
		s.o.Cluster.Landed(ctx, "s", id)
	}
}

// queuedWorkload answers about a workload no node has claimed yet: its record, an empty
// log page, a kill; a log stream waits for a node to take it and follows it there.
func (s *Server) queuedWorkload(w http.ResponseWriter, r *http.Request, id, rest string, next http.Handler) {
	c := s.o.Cluster
	switch {
	case r.Method == http.MethodGet && rest == "":
		if wl, _, ok := c.Record("w", id); ok {
			writeJSON(w, http.StatusOK, NewWorkload(wl))
			return
		}
	case r.Method == http.MethodDelete && rest == "":
		wl, done, err := c.KillQueued(r.Context(), id)
		switch {
		case err != nil && !errors.Is(err, engine.ErrTerminal):
			s.writeError(w, r, err)
		case errors.Is(err, engine.ErrTerminal):
			s.writeError(w, r, fmt.Errorf("%w: workload %s already %s", engine.ErrTerminal, id, wl.Status))
		case done:
			writeJSON(w, http.StatusOK, NewWorkload(wl))
		default: // claimed meanwhile: its owner kills it
			s.routeClaimed(w, r, id, next)
		}
		return
	case r.Method == http.MethodGet && rest == "logs/history":
		wl, _, _ := c.Record("w", id)
		if wl == nil || !wl.Status.Terminal() {
			after, _ := seqParam(r.URL.Query().Get("after"))
			writeJSON(w, http.StatusOK, LogHistory{Lines: []model.LogLine{}, NextAfter: after})
			return
		}
	case r.Method == http.MethodGet && rest == "logs":
		if _, err := c.WaitOwner(r.Context(), id); err != nil {
			return // the client left
		}
		s.routeClaimed(w, r, id, next)
		return
	}
	if wl, _, ok := c.Record("w", id); ok && wl.Status.Terminal() {
		// Ended in the queue (killed): the record is all there is.
		if rest == "logs" {
			bw, flush := startSSE(w)
			writeEvent(bw, "done", "", NewWorkload(wl))
			flush()
			return
		}
		if rest == "logs/history" {
			writeJSON(w, http.StatusOK, LogHistory{Lines: []model.LogLine{}})
			return
		}
	}
	next.ServeHTTP(w, r)
}

// routeClaimed sends a request about a just-claimed workload where it now lives.
func (s *Server) routeClaimed(w http.ResponseWriter, r *http.Request, id string, next http.Handler) {
	loc := s.o.Cluster.Locate(r.Context(), "w", id)
	switch {
	case loc.Self || loc.Node == "":
		next.ServeHTTP(w, r)
	case loc.Alive:
		s.forward(w, r, loc.URL)
	default:
		s.lostRecord(w, r, "w", id, "", loc)
	}
}

// isResume reports whether r resumes a sandbox: Vulcan's resume, E2B's resume and
// connect (which resumes a paused one).
func isResume(r *http.Request, rest string) bool {
	return r.Method == http.MethodPost && (rest == "resume" || rest == "connect" && e2b.IsControlPlane(r))
}

// adoptPaused resumes here a paused sandbox whose node is gone: this node claims it and
// fetches its saved VM from the cluster (cluster.Node.ClaimPaused), stores it as its own
// (sandbox.Service.Adopt), then serves the resume. A sandbox that cannot be taken over
// (not paused, never stored) gets the lost-node answer.
func (s *Server) adoptPaused(w http.ResponseWriter, r *http.Request, id string, loc cluster.Location, next http.Handler) {
	if r.Header.Get(adoptHeader) == "" {
		// Where its template is: a node without it would claim a sandbox it cannot run.
		if to := s.o.Cluster.ResumeTarget(id); !to.Self {
			r.Header.Set(adoptHeader, s.o.Cluster.ID())
			s.forward(w, r, to.URL)
			return
		}
	}
	if s.o.Sandboxes == nil || s.o.Sandboxes.PausedDir(id) == "" {
		s.lostRecord(w, r, "s", id, "resume", loc)
		return
	}
	err := s.o.Cluster.ClaimPaused(r.Context(), id, s.o.Sandboxes.PausedDir(id), s.o.Sandboxes.Adopt)
	switch {
	case errors.Is(err, cluster.ErrNotAdoptable):
		s.writeError(w, r, fmt.Errorf("%w: sandbox %s lived on node %s, which is gone, and cannot resume here: %v", errNodeLost, id, loc.Node, err))
		return
	case err != nil:
		s.writeError(w, r, err)
		return
	}
	next.ServeHTTP(w, r)
}

// recorded is the wire form of a workload read from the directory: when its output stayed
// on its node (too large for the record), it says so (truncated, output_on).
func (s *Server) recorded(ctx context.Context, wl *model.Workload) Workload {
	if full, err := s.o.Cluster.Result(ctx, wl.ID); err == nil {
		wl = full
	}
	out := NewWorkload(wl)
	if by := s.o.Cluster.OutputHeldBy(wl.ID); by != "" {
		out.Truncated, out.OutputOn = true, by
	}
	return out
}

// killLost kills a sandbox whose node is gone: a paused one ends killed in the directory
// (cluster.Node.KillPaused); anything else gets the lost-node answer.
func (s *Server) killLost(w http.ResponseWriter, r *http.Request, id string, loc cluster.Location) {
	sb, err := s.o.Cluster.KillPaused(r.Context(), id)
	if err != nil {
		s.lostRecord(w, r, "s", id, "", loc)
		return
	}
	w.Header().Set("X-Vulcan-Owner", loc.Node)
	if e2b.IsControlPlane(r) {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	writeJSON(w, http.StatusOK, NewSandbox(sb))
}

// lostRecord answers about a record whose node is gone: reads get the directory's copy
// (the workload's result without its output; the sandbox as lost), anything else a 503
// that names the node.
func (s *Server) lostRecord(w http.ResponseWriter, r *http.Request, kind, id, rest string, loc cluster.Location) {
	w.Header().Set("X-Vulcan-Owner", loc.Node)
	wl, sb, _ := s.o.Cluster.Record(kind, id)
	if r.Method == http.MethodGet && rest == "" && !e2b.IsEnvd(r) && !e2b.IsControlPlane(r) {
		switch {
		case wl != nil:
			writeJSON(w, http.StatusOK, s.recorded(r.Context(), wl))
			return
		case sb != nil:
			writeJSON(w, http.StatusOK, NewSandbox(sb))
			return
		}
	}
	what := "workload"
	if kind == "s" {
		what = "sandbox"
	}
	if e2b.IsEnvd(r) || e2b.IsControlPlane(r) {
		// E2B's clients take a 502 from envd and a 404 from the control plane for "gone".
		code := http.StatusNotFound
		if e2b.IsEnvd(r) {
			code = http.StatusBadGateway
		}
		writeJSON(w, code, map[string]any{"code": code, "message": fmt.Sprintf("sandbox %s was lost with its node %s", strings.ToLower(id), loc.Node)})
		return
	}
	s.writeError(w, r, fmt.Errorf("%w: %s %s lives on node %s, which is gone; its record stays readable at GET", errNodeLost, what, id, loc.Node))
}

// maxPlacementBody bounds a create body read for placement (specs are small).
const maxPlacementBody = 1 << 20

// placeSandbox sends a create to the best node for it: the most free capacity among
// the nodes that have its template (cluster.Node.Place). A node that turns out full
// (429, 503) passes it to the next; none left is 429 with Retry-After, nothing made.
func (s *Server) placeSandbox(w http.ResponseWriter, r *http.Request, next http.Handler) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPlacementBody))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req struct {
		Template   string `json:"template"`
		TemplateID string `json:"templateID"`
		Resources  struct {
			MemMB int `json:"mem_mb"`
			CPUs  int `json:"cpus"`
		} `json:"resources"`
	}
	_ = json.Unmarshal(body, &req) // a bad body is the owner's to refuse
	need := cluster.Need{Template: req.Template, MemMB: req.Resources.MemMB, CPUs: req.Resources.CPUs}
	switch {
	case e2b.IsControlPlane(r):
		need.Template = e2b.TemplateName(req.TemplateID) // E2B's default is base
	case need.Template == "":
		need.Template = string(model.RuntimePython) // Vulcan's default
	}
	nodes := s.o.Cluster.Place(need)
	if len(nodes) == 0 && need.Template != "" && !s.o.Cluster.AnyHas(need.Template) {
		// No node knows the template: any node answers that clearly.
		need.Template = ""
		nodes = s.o.Cluster.Place(need)
	}
	if len(nodes) == 0 && !s.o.Cluster.AnyCanSandbox() {
		// No node boots VMs at all: this one says why (503 with the backend's reason).
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r)
		return
	}
	if len(nodes) == 0 {
		w.Header().Set("Retry-After", "5")
		s.writeError(w, r, fmt.Errorf("%w: no node in the cluster has room for a %s sandbox now", errNoCapacity, orAny(need.Template)))
		return
	}
	for i, node := range nodes {
		last := i == len(nodes)-1
		if node.Self {
			rec := &statusRecorder{ResponseWriter: w, holdOn: !last}
			r2 := r.Clone(r.Context())
			r2.Body = io.NopCloser(bytes.NewReader(body))
			r2.ContentLength = int64(len(body))
			next.ServeHTTP(rec, r2)
			if !rec.held {
				return
			}
			continue
		}
		if s.placeOn(w, r, node.URL, body, last) {
			return
		}
	}
	w.Header().Set("Retry-After", "5")
	s.writeError(w, r, fmt.Errorf("%w: every node with room refused the %s sandbox (full)", errNoCapacity, orAny(need.Template)))
}

func orAny(t string) string {
	if t == "" {
		return "new"
	}
	return t
}

// placeOn sends a create to a node and relays its answer, unless the node is full
// (429 or 503, or unreachable) and another may take it (last false): then it returns
// false, with nothing written.
func (s *Server) placeOn(w http.ResponseWriter, r *http.Request, target string, body []byte, last bool) bool {
	u, err := url.Parse(target)
	if err != nil {
		return false
	}
	u.Path, u.RawQuery = r.URL.Path, r.URL.RawQuery
	out, err := http.NewRequestWithContext(r.Context(), r.Method, u.String(), bytes.NewReader(body))
	if err != nil {
		return false
	}
	out.Header = r.Header.Clone()
	out.Header.Del("Host")
	out.Header.Set(cluster.ForwardedHeader, s.o.Cluster.ID())
	resp, err := s.fwd.client.Do(out)
	if err != nil {
		if last {
			s.writeError(w, r, fmt.Errorf("%w: node at %s did not answer: %v", errNodeLost, u.Host, err))
			return true
		}
		return false
	}
	defer resp.Body.Close()
	if !last && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		return false
	}
	s.forwarded.WithLabelValues("placement").Inc()
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
	return true
}

// changesState reports whether r ends or changes a workload's or sandbox's state: a kill,
// and a sandbox's pause, resume or timeout (Vulcan's routes and E2B's).
func changesState(r *http.Request, kind, rest string) bool {
	switch {
	case r.Method == http.MethodDelete:
		return rest == ""
	case r.Method == http.MethodPost && kind == "s":
		switch rest {
		case "pause", "resume", "timeout", "connect", "refreshes":
			return true
		}
	}
	return false
}

// landingWriter runs land once, before the answer's status goes out.
type landingWriter struct {
	http.ResponseWriter
	land   func()
	landed bool
}

func (l *landingWriter) WriteHeader(code int) {
	if !l.landed {
		l.landed = true
		l.land()
	}
	l.ResponseWriter.WriteHeader(code)
}

func (l *landingWriter) Write(b []byte) (int, error) {
	if !l.landed {
		l.WriteHeader(http.StatusOK)
	}
	return l.ResponseWriter.Write(b)
}

func (l *landingWriter) Unwrap() http.ResponseWriter { return l.ResponseWriter }

// statusRecorder holds back a 429 or 503 answer (holdOn) so the create can go to the
// next node instead: headers are kept apart until the status is known, so a held
// answer's (Retry-After) never reach the client.
type statusRecorder struct {
	http.ResponseWriter
	holdOn bool
	header http.Header
	held   bool
	wrote  bool
}

func (s *statusRecorder) Header() http.Header {
	if s.header == nil {
		s.header = http.Header{}
	}
	return s.header
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.wrote {
		return
	}
	s.wrote = true
	if s.holdOn && (code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable) {
		s.held = true
		return
	}
	for k, vs := range s.header {
		s.ResponseWriter.Header()[k] = vs
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if !s.wrote {
		s.WriteHeader(http.StatusOK)
	}
	if s.held {
		return len(b), nil
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// clusterSubmit admits a workload to the cluster's queue; sync waits for its end and
// answers with the workload as its node has it (output included).
func (s *Server) clusterSubmit(w http.ResponseWriter, r *http.Request, spec model.Spec, sync bool) {
	c := s.o.Cluster
	wl, err := c.Submit(r.Context(), spec)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if !sync {
		w.Header().Set("Location", "/v1/workloads/"+wl.ID)
		writeJSON(w, http.StatusAccepted, NewWorkload(wl))
		return
	}
	loc, err := c.WaitDone(r.Context(), wl.ID)
	if err != nil {
		return // the client left; the workload runs on (package engine's doc)
	}
	switch {
	case loc.Self:
		done, err := s.o.Engine.Get(r.Context(), wl.ID)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, NewWorkload(done))
	case loc.Alive:
		get, err := http.NewRequestWithContext(r.Context(), http.MethodGet, "/v1/workloads/"+wl.ID, nil)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		get.Header = r.Header.Clone()
		get.Header.Del("Content-Type")
		get.Host = r.Host
		s.forward(w, get, loc.URL)
	default:
		done, _, _ := c.Record("w", wl.ID)
		if done == nil {
			s.writeError(w, r, fmt.Errorf("%w: workload %s vanished from the directory", errNodeLost, wl.ID))
			return
		}
		writeJSON(w, http.StatusOK, s.recorded(r.Context(), done))
	}
}

// listWorkloads and listSandboxes list the whole cluster when there is one.
func (s *Server) listWorkloads(ctx context.Context, f store.Filter) ([]*model.Workload, int, error) {
	if s.o.Cluster != nil {
		s.o.Cluster.CatchUp(ctx)
		ws, total := s.o.Cluster.Workloads(f)
		return ws, total, nil
	}
	return s.o.Engine.List(ctx, f)
}

func (s *Server) listSandboxes(ctx context.Context, f store.SandboxFilter) ([]*model.Sandbox, bool, error) {
	if s.o.Cluster != nil {
		s.o.Cluster.CatchUp(ctx)
		list, more := s.o.Cluster.Sandboxes(f)
		return list, more, nil
	}
	return s.o.Sandboxes.List(ctx, f)
}

// ClusterStatus is GET /v1/cluster.
type ClusterStatus struct {
	Self       string             `json:"self"`
	Connected  bool               `json:"connected"`
	Nodes      []cluster.NodeInfo `json:"nodes"`
	QueueDepth int                `json:"queue_depth"`
	Workloads  map[string]int     `json:"workloads"` // by status, cluster-wide
	Sandboxes  map[string]int     `json:"sandboxes"` // by state, cluster-wide
}

func (s *Server) clusterStatus(w http.ResponseWriter, r *http.Request) {
	c := s.o.Cluster
	if c == nil {
		s.writeError(w, r, fmt.Errorf("%w: this server is a single node (start it with --nats to join a cluster)", errNotClustered))
		return
	}
	st := ClusterStatus{Self: c.ID(), Connected: c.Connected(), Nodes: c.Nodes()}
	if st.Nodes == nil {
		st.Nodes = []cluster.NodeInfo{}
	}
	if d, err := c.QueueDepth(r.Context()); err == nil {
		st.QueueDepth = d
	}
	st.Workloads, st.Sandboxes = c.Counts()
	writeJSON(w, http.StatusOK, st)
}

var errNotClustered = errors.New("not in a cluster")
