package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/vulcanhq/vulcan/internal/guest/archive"
	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/sandbox"
	"github.com/vulcanhq/vulcan/internal/template"
)

// Build context caps: the tar.gz as sent and what it expands to.
const (
	MaxContextBytes         = 256 << 20
	maxContextExpandedBytes = 1 << 30
	maxContextFiles         = 100_000
)

var errNoTemplates = errors.New("template builds unavailable")

func (s *Server) templateRoutes(r chi.Router) {
	r.Get("/templates", s.templateList)
	r.Post("/templates", s.templateBuild)
	r.Get("/templates/{name}", s.templateGet)
	r.Delete("/templates/{name}", s.templateRemove)
	r.Get("/builds", s.buildList)
	r.Get("/builds/{id}", s.buildGet)
	r.Get("/builds/{id}/events", s.buildEvents)
}

func (s *Server) builder(w http.ResponseWriter, r *http.Request) *template.Builder {
	if s.o.Templates == nil {
		s.writeError(w, r, fmt.Errorf("%w: this server builds no templates (it runs no sandboxes)", errNoSandboxes))
		return nil
	}
	return s.o.Templates
}

// TemplateEntry is one template in GET /v1/templates: a built-in (Builtin true) or a
// user template.
type TemplateEntry struct {
	Name           string `json:"name"`
	Builtin        bool   `json:"builtin"`
	RuntimeVersion string `json:"runtime_version,omitempty"`
	SizeBytes      int64  `json:"size_bytes,omitempty"`
	*template.Template
}

func (s *Server) templateList(w http.ResponseWriter, r *http.Request) {
	var out []TemplateEntry
	set := images.Load(s.o.ImagesDir)
	for _, t := range set.Templates() {
		fs := set.RootFS[t]
		out = append(out, TemplateEntry{Name: string(t), Builtin: true, RuntimeVersion: fs.Manifest.RuntimeVersion, SizeBytes: fs.Manifest.SizeBytes})
	}
	if s.o.Templates != nil {
		for _, t := range s.o.Templates.Registry().List() {
			out = append(out, TemplateEntry{Name: t.Name, SizeBytes: t.SizeBytes, Template: t})
		}
	}
	if out == nil {
		out = []TemplateEntry{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"templates": out})
}

func (s *Server) templateGet(w http.ResponseWriter, r *http.Request) {
	b := s.builder(w, r)
	if b == nil {
		return
	}
	t, err := b.Registry().Get(chi.URLParam(r, "name"))
	if err != nil {
		s.writeError(w, r, templateErr(err))
		return
	}
	writeJSON(w, http.StatusOK, TemplateEntry{Name: t.Name, SizeBytes: t.SizeBytes, Template: t})
}

func (s *Server) templateRemove(w http.ResponseWriter, r *http.Request) {
	b := s.builder(w, r)
	if b == nil {
		return
	}
	if err := b.Remove(chi.URLParam(r, "name")); err != nil {
		s.writeError(w, r, templateErr(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func templateErr(err error) error {
	switch {
	case errors.Is(err, template.ErrNotFound):
		return fmt.Errorf("%w: %v", sandbox.ErrNotFound, err)
	}
	var le *template.LineError
	if errors.As(err, &le) {
		return fmt.Errorf("%w: %w", sandbox.ErrInvalid, &model.FieldError{Field: "dockerfile", Reason: le.Error()})
	}
	return err
}

// BuildRequest is POST /v1/templates's JSON body (a build with no context, or the
// parameters of one whose tar.gz context is the body: then they are query parameters).
type BuildRequest struct {
	Name       string              `json:"name"`
	Dockerfile string              `json:"dockerfile"`
	Network    model.NetworkPolicy `json:"network,omitempty"`
	BuildArgs  map[string]string   `json:"build_args,omitempty"`
	StartCmd   string              `json:"start_cmd,omitempty"`
	ReadyCmd   string              `json:"ready_cmd,omitempty"`
	NoCache    bool                `json:"no_cache,omitempty"`
}

// templateBuild starts a build: a JSON BuildRequest, or a tar.gz build context
// (Content-Type application/octet-stream) with name, dockerfile (its path in the context,
// default Dockerfile), network, build_arg (NAME=value, repeated), start_cmd, ready_cmd
// and no_cache as query parameters. 202 with the build; a bad Dockerfile is 400 with its
// line.
func (s *Server) templateBuild(w http.ResponseWriter, r *http.Request) {
	b := s.builder(w, r)
	if b == nil {
		return
	}
	var req BuildRequest
	ctxDir := ""
	cleanup := func() {
		if ctxDir != "" {
			os.RemoveAll(ctxDir)
		}
	}
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		if err := decodeJSON(w, r, &req); err != nil {
			s.writeError(w, r, err)
			return
		}
	} else {
		q := r.URL.Query()
		req = BuildRequest{Name: q.Get("name"), Network: model.NetworkPolicy(q.Get("network")), StartCmd: q.Get("start_cmd"),
			ReadyCmd: q.Get("ready_cmd"), NoCache: q.Get("no_cache") == "true" || q.Get("no_cache") == "1"}
		for _, a := range q["build_arg"] {
			k, v, ok := strings.Cut(a, "=")
			if !ok || k == "" {
				s.writeError(w, r, invalidField("build_arg", "build_arg is NAME=value, got %.64q", a))
				return
			}
			if req.BuildArgs == nil {
				req.BuildArgs = map[string]string{}
			}
			req.BuildArgs[k] = v
		}
		dir, err := os.MkdirTemp(filepath.Join(b.Registry().Dir(), "work"), "context-")
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		ctxDir = dir
		body := &idleReader{r: http.MaxBytesReader(w, r.Body, MaxContextBytes), rc: http.NewResponseController(w), idle: s.o.BodyTimeout}
		if err := archive.Extract(r.Context(), body, dir, archive.Limits{MaxFiles: maxContextFiles, MaxTotalBytes: maxContextExpandedBytes,
			MaxFileBytes: maxContextExpandedBytes}, archive.NoOwner); err != nil {
			cleanup()
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				s.writeError(w, r, fmt.Errorf("%w: a build context may be at most %d MiB (tar.gz)", sandbox.ErrTooLarge, MaxContextBytes>>20))
				return
			}
			s.writeError(w, r, invalidField("context", "the build context must be a tar.gz: %v", err))
			return
		}
		name := q.Get("dockerfile")
		if name == "" {
			name = "Dockerfile"
		}
		clean := path.Clean("/" + name)[1:]
		root, err := os.OpenRoot(dir)
		if err != nil {
			cleanup()
			s.writeError(w, r, err)
			return
		}
		f, err := root.Open(clean)
		root.Close()
		if err != nil {
			cleanup()
			s.writeError(w, r, invalidField("dockerfile", "the build context has no %s", clean))
			return
		}
		src, err := io.ReadAll(io.LimitReader(f, template.MaxDockerfileBytes+1))
		f.Close()
		if err != nil {
			cleanup()
			s.writeError(w, r, err)
			return
		}
		req.Dockerfile = string(src)
	}
	if req.Name == "" {
		cleanup()
		s.writeError(w, r, invalidField("name", "name is required"))
		return
	}
	if !template.ValidName(req.Name) {
		cleanup()
		s.writeError(w, r, invalidField("name", "template name %.64q: want 1 to 63 lowercase letters, digits, - and _, not base, go, node or python", req.Name))
		return
	}
	treq := template.Request{Name: req.Name, Dockerfile: []byte(req.Dockerfile), ContextDir: ctxDir, Network: req.Network,
		BuildArgs: req.BuildArgs, ReadyCmd: req.ReadyCmd, NoCache: req.NoCache}
	if req.Network != "" && !req.Network.Valid() {
		cleanup()
		s.writeError(w, r, invalidField("network", "unknown network policy %q (want none, host or egress)", req.Network))
		return
	}
	if req.StartCmd != "" {
		treq.StartCmd = []string{"/bin/sh", "-c", req.StartCmd}
	}
	bd, err := b.Start(treq) // owns ctxDir from here, failed or not
	if err != nil {
		s.writeError(w, r, templateErr(err))
		return
	}
	w.Header().Set("Location", "/v1/builds/"+bd.Info().ID)
	writeJSON(w, http.StatusAccepted, bd.Info())
}

func (s *Server) buildList(w http.ResponseWriter, r *http.Request) {
	b := s.builder(w, r)
	if b == nil {
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"builds": b.Builds()})
}

// buildFor finds the route's build, answering 503 or 404 when there is none.
func (s *Server) buildFor(w http.ResponseWriter, r *http.Request) *template.Build {
	b := s.builder(w, r)
	if b == nil {
		return nil
	}
	bd := b.Get(chi.URLParam(r, "id"))
	if bd == nil {
		s.writeError(w, r, fmt.Errorf("%w: no build %.64q", sandbox.ErrNotFound, chi.URLParam(r, "id")))
	}
	return bd
}

func (s *Server) buildGet(w http.ResponseWriter, r *http.Request) {
	if bd := s.buildFor(w, r); bd != nil {
		writeJSON(w, http.StatusOK, bd.Info())
	}
}

// buildEvents streams a build's log as SSE from the start (or after Last-Event-ID /
// ?after=): "step" events (a step's progress), log lines (no event name: stdout, stderr
// and the builder's own lines), and "end" with the build when it is over.
func (s *Server) buildEvents(w http.ResponseWriter, r *http.Request) {
	bd := s.buildFor(w, r)
	if bd == nil {
		return
	}
	pos := r.Header.Get("Last-Event-ID")
	if pos == "" {
		pos = r.URL.Query().Get("after")
	}
	after := 0
	if pos != "" {
		n, err := strconv.Atoi(pos)
		if err != nil || n < 0 {
			s.writeError(w, r, invalidField("after", "after is an event number"))
			return
		}
		after = n
	}
	bw, flush := startSSE(w)
	bw.WriteString("retry: 1000\n\n")
	if flush() != nil {
		return
	}
	for {
		evs, changed, done := bd.Events(after)
		for _, e := range evs {
			name := e.Type
			if name == "log" {
				name = ""
			}
			writeEvent(bw, name, strconv.Itoa(e.Seq), e)
			after = e.Seq
		}
		if flush() != nil || done && len(evs) == 0 {
			return
		}
		if done {
			continue // deliver what came with the end, then stop
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		case <-time.After(s.o.Heartbeat):
			bw.WriteString(": heartbeat\n\n")
		}
	}
}
