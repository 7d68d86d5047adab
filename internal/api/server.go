// Package api is Vulcan's HTTP API: a chi router over the engine. See openapi.json for the
// routes and wire format; README.md has examples.
package api

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/cluster"
	"github.com/vulcanhq/vulcan/internal/e2b"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/portproxy"
	"github.com/vulcanhq/vulcan/internal/sandbox"
	"github.com/vulcanhq/vulcan/internal/store"
	"github.com/vulcanhq/vulcan/internal/template"
	"github.com/vulcanhq/vulcan/internal/version"
)

// MaxBodyBytes caps request bodies; an archive must fit in it after base64.
const MaxBodyBytes = 16 << 20

// Options are New's dependencies.
type Options struct {
	Engine   *engine.Engine
	Registry *backend.Registry
	// Sandboxes serves /v1/sandboxes; nil: those routes answer 503.
	Sandboxes *sandbox.Service
	// Templates builds and keeps user templates (nil: /v1/templates lists the built-ins
	// and refuses builds); ImagesDir holds the built-ins.
	Templates *template.Builder
	ImagesDir string
	// Token, when set, is required as "Authorization: Bearer <token>" on every route but
	// /healthz and /readyz.
	Token    string
	Logger   *slog.Logger          // nil: slog.Default()
	Metrics  prometheus.Registerer // HTTP metrics are registered here; nil: not collected
	Gatherer prometheus.Gatherer   // served at /metrics; nil: prometheus.DefaultGatherer
	// Dashboard, when set, serves every path the API does not claim, starting at "/".
	Dashboard http.Handler
	// Heartbeat is the interval of SSE comment lines that keep proxies from timing a quiet
	// stream out; default 15s.
	Heartbeat time.Duration
	// AllowedHosts are Host header values accepted besides the loopback names and the
	// address a connection arrived on: "name" (any port) or "name:port". Anything else is
	// refused, which stops DNS rebinding.
	AllowedHosts []string
	// AllowedOrigins are Origin header values ("https://ui.example") accepted besides the
	// server's own; a request from any other origin is refused.
	AllowedOrigins []string
	// BodyTimeout bounds how long a request body may take to arrive; default 60s.
	BodyTimeout time.Duration
	// MCP, when set, is served at /mcp (behind the token, like the API).
	MCP http.Handler
	// Cluster, when set, makes this server a node of a cluster: calls about other nodes'
	// workloads and sandboxes are forwarded to them, sandboxes are placed, workloads go
	// through the cluster's queue and lists show the whole cluster (cluster.go).
	Cluster *cluster.Node
}

// Server is the API's http.Handler.
type Server struct {
	o      Options
	log    *slog.Logger
	router chi.Router

	hosts   map[string]bool // AllowedHosts, lower case
	origins map[string]bool // AllowedOrigins, lower case

	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec

	e2b   *e2b.Server      // nil without sandboxes
	ports *portproxy.Proxy // nil without sandboxes

	fwd       *forwarder // with Cluster
	forwarded *prometheus.CounterVec
}

// New builds the router.
func New(o Options) (*Server, error) {
	if o.Engine == nil || o.Registry == nil {
		return nil, errors.New("api: Engine and Registry are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Gatherer == nil {
		o.Gatherer = prometheus.DefaultGatherer
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = 15 * time.Second
	}
	if o.BodyTimeout <= 0 {
		o.BodyTimeout = 60 * time.Second
	}
	s := &Server{o: o, log: o.Logger, hosts: lowerSet(o.AllowedHosts), origins: lowerSet(o.AllowedOrigins),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vulcan_http_requests_total", Help: "HTTP requests, by method, route pattern and status code.",
		}, []string{"method", "route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vulcan_http_request_duration_seconds", Help: "HTTP request latency, by method and route pattern (SSE streams excluded).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 12),
		}, []string{"method", "route"}),
	}
	s.forwarded = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vulcan_cluster_forwarded_requests_total", Help: "Requests this node passed to another node: to a record's owner, or a new sandbox to its placement.",
	}, []string{"to"})
	if o.Cluster != nil {
		s.fwd = newForwarder(o.Cluster.ID())
		if o.Metrics != nil {
			if err := o.Metrics.Register(s.forwarded); err != nil {
				return nil, fmt.Errorf("api: metrics: %w", err)
			}
		}
	}
	if o.Metrics != nil {
		if err := errors.Join(o.Metrics.Register(s.requests), o.Metrics.Register(s.latency)); err != nil {
			return nil, fmt.Errorf("api: metrics: %w", err)
		}
	}

	if o.Sandboxes != nil {
		s.ports = portproxy.New(o.Sandboxes.DialPort)
		cfg := o.Engine.Config()
		eo := e2b.Options{Sandboxes: o.Sandboxes, Token: o.Token, Logger: o.Logger,
			OutputLimit: int64(cfg.OutputLimit), LineLimit: int64(cfg.OutputLineLimit)}
		if o.Cluster != nil {
			eo.List, eo.Created = s.listSandboxes, s.landed
		}
		s.e2b = e2b.New(eo)
	}

	r := chi.NewRouter()
	r.Use(s.instrument, s.recoverer, s.guard, s.clusterFront, s.e2bDispatch)
	r.NotFound(s.noRoute)
	r.MethodNotAllowed(s.methodNotAllowed)
	r.Get("/healthz", s.healthz)
	r.Get("/readyz", s.readyz)
	r.Group(func(r chi.Router) {
		r.Use(s.auth)
		r.Method(http.MethodGet, "/metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{}))
		if o.MCP != nil {
			r.Handle("/mcp", o.MCP)
		}
		r.Route("/v1", func(r chi.Router) {
			r.NotFound(s.noRoute)
			r.MethodNotAllowed(s.methodNotAllowed)
			r.Get("/openapi.json", s.openapi)
			r.Get("/backends", s.backends)
			r.Get("/stats", s.stats)
			r.Get("/cluster", s.clusterStatus)
			r.Post("/workloads", s.submitSync)
			r.Post("/workloads/async", s.submitAsync)
			r.Get("/workloads", s.list)
			r.Get("/workloads/{id}", s.get)
			r.Delete("/workloads/{id}", s.kill)
			r.Get("/workloads/{id}/logs", s.logsStream)
			r.Get("/workloads/{id}/logs/history", s.logsHistory)
			s.sandboxRoutes(r)
			s.templateRoutes(r)
			r.Post("/sandboxes/{id}/code", s.code)
			for _, m := range portMethods {
				r.Method(m, "/sandboxes/{id}/ports/{port}", http.HandlerFunc(s.portProxy))
				r.Method(m, "/sandboxes/{id}/ports/{port}/*", http.HandlerFunc(s.portProxy))
			}
		})
	})
	if o.Dashboard != nil {
		// GET and HEAD only, so that other methods get the API's JSON 405; the dashboard's
		// own error answers (a missing asset) are rewritten as JSON too.
		d := jsonErrors(s, o.Dashboard)
		r.Method(http.MethodGet, "/*", d)
		r.Method(http.MethodHead, "/*", d)
	}
	s.router = r
	return s, nil
}

// e2bDispatch hands E2B's calls to the E2B server before routing: a sandbox daemon call
// (named by its E2b-Sandbox-Id header) and the control plane (/v2/sandboxes, and
// /sandboxes when the SDK's X-API-KEY is present, since the dashboard's pages live at
// /sandboxes too). See package e2b.
func (s *Server) e2bDispatch(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case s.e2b == nil || (!e2b.IsEnvd(r) && !e2b.IsControlPlane(r)):
			next.ServeHTTP(w, r)
		case e2b.IsEnvd(r):
			chi.RouteContext(r.Context()).RoutePatterns = []string{"e2b-envd"}
			s.e2b.Envd().ServeHTTP(w, r)
		default:
			s.e2b.ControlPlane().ServeHTTP(w, r)
		}
	})
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

// Router exposes the routes, for tests that walk them.
func (s *Server) Router() chi.Routes { return s.router }

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "version": version.Version})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if err := s.o.Engine.Ready(r.Context()); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (s *Server) backends(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Backends{Backends: s.o.Registry.Statuses(r.Context())})
}

func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	st, err := s.o.Engine.Stats(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// decodeSpec reads a submission; every failure wraps engine.ErrInvalid (or is the
// MaxBytesError) so it maps to a 4xx with a message that names the problem in JSON's
// terms, never Go's, and a *model.FieldError when one field is at fault.
func decodeSpec(w http.ResponseWriter, r *http.Request) (model.Spec, error) {
	// Entrypoint shadows the spec's own so that an explicit "" (which the spec cannot tell
	// from an absent field, the runtime's default) is refused rather than defaulted.
	var req struct {
		model.Spec
		Entrypoint *string `json:"entrypoint,omitempty"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	err := dec.Decode(&req)
	if err == nil && dec.Decode(&struct{}{}) != io.EOF {
		err = errors.New("unexpected data after the JSON object")
	}
	spec := req.Spec
	if err == nil {
		if req.Entrypoint != nil {
			if *req.Entrypoint == "" {
				return spec, invalidField("entrypoint", "entrypoint is empty; name the file to run, or leave the field out for the runtime's default")
			}
			spec.Entrypoint = *req.Entrypoint
		}
		return spec, nil
	}
	var tooBig *http.MaxBytesError
	var b64 base64.CorruptInputError
	var typ *json.UnmarshalTypeError
	var syntax *json.SyntaxError
	switch {
	case errors.As(err, &tooBig):
		return spec, err
	case errors.Is(err, os.ErrDeadlineExceeded):
		return spec, errBodyTimeout
	case errors.As(err, &b64):
		return spec, invalidField("code_archive", "code_archive is not valid base64 (bad byte at offset %d)", int64(b64))
	case errors.As(err, &typ):
		// The decoder names an embedded struct's fields through its Go name.
		field := strings.TrimPrefix(typ.Field, "Spec.")
		if field == "" {
			return spec, invalidField("", "the body must be a JSON object, not %s", jsonKind(typ.Value))
		}
		if field == "env" && typ.Type.Kind() == reflect.String {
			// The decoder does not say which variable; the value is what is wrong.
			return spec, invalidField(field, "env values must be strings, not %s", jsonKind(typ.Value))
		}
		return spec, invalidField(field, "%s must be %s, not %s", field, jsonType(typ.Type), jsonKind(typ.Value))
	case errors.As(err, &syntax):
		return spec, invalidField("", "body is not valid JSON: %s (at byte %d)", syntax.Error(), syntax.Offset)
	case errors.Is(err, io.EOF):
		return spec, invalidField("", "request body is empty; send a JSON workload")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return spec, invalidField("", "body is not a valid workload JSON object: it ends in the middle of a value")
	}
	// What is left are the decoder's own messages ("json: unknown field \"x\""), which
	// name JSON, not Go.
	return spec, invalidField("", "body is not a valid workload JSON object: %s", strings.TrimPrefix(err.Error(), "json: "))
}

// invalidField is a 400 about one field of the request ("" when it concerns none).
func invalidField(field, format string, args ...any) error {
	reason := fmt.Sprintf(format, args...)
	if field == "" {
		return fmt.Errorf("%w: %s", engine.ErrInvalid, reason)
	}
	return fmt.Errorf("%w: %w", engine.ErrInvalid, &model.FieldError{Field: field, Reason: reason})
}

// jsonType says which JSON a Go type decodes from, for messages about the wire format.
func jsonType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return "a base64 string"
		}
		return "an array"
	case reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "another JSON type"
}

// jsonKind is the decoder's description of the value it found ("string", "number 1.5"),
// with an article.
func jsonKind(v string) string {
	if strings.HasPrefix(v, "array") || strings.HasPrefix(v, "object") {
		return "an " + v
	}
	return "a " + v
}

func (s *Server) submitSync(w http.ResponseWriter, r *http.Request) {
	spec, err := decodeSpec(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.o.Cluster != nil {
		s.clusterSubmit(w, r, spec, true)
		return
	}
	wl, err := s.o.Engine.Submit(r.Context(), spec)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// The request's context only bounds the wait: if the client leaves, the workload runs
	// on (engine package doc) and its result stays at GET /v1/workloads/{id}.
	done, err := s.o.Engine.Wait(r.Context(), wl.ID)
	if err != nil {
		if r.Context().Err() != nil {
			return
		}
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, NewWorkload(done))
}

func (s *Server) submitAsync(w http.ResponseWriter, r *http.Request) {
	spec, err := decodeSpec(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.o.Cluster != nil {
		s.clusterSubmit(w, r, spec, false)
		return
	}
	wl, err := s.o.Engine.Submit(r.Context(), spec)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/workloads/"+wl.ID)
	writeJSON(w, http.StatusAccepted, NewWorkload(wl))
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	wl, err := s.o.Engine.Get(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, NewWorkload(wl))
}

func (s *Server) kill(w http.ResponseWriter, r *http.Request) {
	wl, err := s.o.Engine.Kill(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, NewWorkload(wl))
}

// MaxListLimit bounds one page of GET /v1/workloads.
const MaxListLimit = 500

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	f, err := listFilter(r.URL.Query())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ws, total, err := s.listWorkloads(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := WorkloadList{Workloads: make([]Workload, 0, len(ws)), Total: total, Limit: f.Limit, Offset: f.Offset}
	for _, wl := range ws {
		out.Workloads = append(out.Workloads, NewWorkload(wl))
	}
	writeJSON(w, http.StatusOK, out)
}

// listFilter reads GET /v1/workloads's query. A parameter it does not know, one given
// twice or with an empty or unknown value is a 400 naming it: a filter silently dropped
// would answer a different question than the one asked.
func listFilter(q url.Values) (store.Filter, error) {
	f := store.Filter{Limit: 50}
	names := slices.Sorted(maps.Keys(q))
	for _, k := range names {
		vs := q[k]
		if len(vs) != 1 {
			return f, invalidField(k, "query parameter %s is given %d times; give it once", k, len(vs))
		}
		v := vs[0]
		if v == "" {
			return f, invalidField(k, "query parameter %s is empty; leave it out to not filter", k)
		}
		switch k {
		case "limit":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > MaxListLimit {
				return f, invalidField(k, "limit must be between 1 and %d, got %q", MaxListLimit, v)
			}
			f.Limit = n
		case "offset":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return f, invalidField(k, "offset must be a non-negative integer, got %q", v)
			}
			f.Offset = n
		case "status":
			if f.Status = model.Status(v); !f.Status.Valid() {
				return f, invalidField(k, "unknown status %q (want pending, running, completed, failed or killed)", v)
			}
		case "runtime":
			if f.Runtime = model.Runtime(v); !f.Runtime.Valid() {
				return f, invalidField(k, "unknown runtime %q (want go, node or python)", v)
			}
		case "isolation":
			if f.Isolation = model.Isolation(v); !f.Isolation.Valid() {
				return f, invalidField(k, "unknown isolation %q (want auto or microvm)", v)
			}
		default:
			return f, invalidField(k, "unknown query parameter %q (want limit, offset, status, runtime or isolation)", k)
		}
	}
	return f, nil
}

// History pages: a log can hold up to the engine's line cap, which is too much for one
// response; a client pages with after=next_after while more is true.
const (
	historyDefaultLimit = 1000
	historyMaxLimit     = 10000
)

func (s *Server) logsHistory(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	after, err := seqParam(q.Get("after"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	limit := historyDefaultLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > historyMaxLimit {
			s.writeError(w, r, fmt.Errorf("%w: limit must be an integer from 1 to %d, got %q", engine.ErrInvalid, historyMaxLimit, v))
			return
		}
		limit = n
	}
	// One more than asked tells whether another page follows.
	lines, err := s.o.Engine.Logs(r.Context(), chi.URLParam(r, "id"), after, limit+1)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	page := LogHistory{Lines: lines, NextAfter: after}
	if len(lines) > limit {
		page.Lines, page.More = lines[:limit], true
	}
	if page.Lines == nil {
		page.Lines = []model.LogLine{}
	}
	if n := len(page.Lines); n > 0 {
		page.NextAfter = page.Lines[n-1].Seq
	}
	writeJSON(w, http.StatusOK, page)
}

func seqParam(v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%w: a log position must be a non-negative integer, got %q", engine.ErrInvalid, v)
	}
	return n, nil
}
