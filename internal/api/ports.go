package api

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/sandbox"
)

// portMethods are the methods a sandbox's port is served for.
var portMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions}

// isPortPath: is the path form of a sandbox's port: /v1/sandboxes/{id}/ports/{port}/...
func isPortPath(p string) bool {
	rest, ok := strings.CutPrefix(p, "/v1/sandboxes/")
	if !ok {
		return false
	}
	_, after, ok := strings.Cut(rest, "/")
	return ok && strings.HasPrefix(after, "ports/")
}

// portProxy serves /v1/sandboxes/{id}/ports/{port}/{path}: HTTP (streamed, WebSocket
// upgrades included) to 127.0.0.1:{port} inside the sandbox, over its agent channel. A
// port nothing listens on is a 502.
func (s *Server) portProxy(w http.ResponseWriter, r *http.Request) {
	svc := s.sandboxes(w, r)
	if svc == nil {
		return
	}
	id := chi.URLParam(r, "id")
	port, err := strconv.Atoi(chi.URLParam(r, "port"))
	if err != nil || port < 1 || port > 65535 {
		s.writeError(w, r, fmt.Errorf("%w: %w", sandbox.ErrInvalid, &model.FieldError{Field: "port", Reason: "a port is 1 to 65535"}))
		return
	}
	sb, err := svc.Get(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if sb.State != model.SandboxRunning {
		s.writeError(w, r, fmt.Errorf("%w: sandbox %s is %s", sandbox.ErrNotRunning, id, sb.State))
		return
	}
	prefix := "/v1/sandboxes/" + id + "/ports/" + chi.URLParam(r, "port")
	rest := strings.TrimPrefix(r.URL.Path, prefix)
	if rest == "" {
		// A relative link in the service's pages resolves against a directory.
		http.Redirect(w, r, prefix+"/"+queryOf(r), http.StatusPermanentRedirect)
		return
	}
	if r.Body != nil {
		r.Body = struct {
			*idleReader
			closer
		}{&idleReader{r: r.Body, rc: http.NewResponseController(w), idle: s.o.BodyTimeout}, closer{r.Body}}
	}
	r.Header.Del("Authorization") // the server's token is not the service's business
	s.ports.Serve(w, r, sb.ID, port, rest)
}

type closer struct{ c interface{ Close() error } }

func (c closer) Close() error { return c.c.Close() }

func queryOf(r *http.Request) string {
	if r.URL.RawQuery == "" {
		return ""
	}
	return "?" + r.URL.RawQuery
}
