package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/cluster"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
	"github.com/vulcanhq/vulcan/internal/sandbox"
	"github.com/vulcanhq/vulcan/internal/template"
)

// The API's own failures, mapped like the engine's below.
var (
	errUnauthorized    = errors.New("missing or wrong bearer token")
	errNoRoute         = errors.New("no such route")
	errMethod          = errors.New("method not allowed on this route")
	errHeadersTooLarge = fmt.Errorf("request headers are larger than %d KiB", MaxHeaderBytes>>10)
	errHost            = errors.New("host not allowed")
	errOrigin          = errors.New("origin not allowed")
	errMediaType       = errors.New("unsupported media type")
	errBodyTimeout     = errors.New("the request body did not arrive in time")
	retryAfterSecond   = "1"
)

// classify is the one place errors become HTTP statuses. Only errors that wrap a known
// sentinel have their text shown; anything else is logged and reported as internal.
func classify(err error) (status int, code string, public bool) {
	var tooBig *http.MaxBytesError
	var opErr *protocol.OpError
	if errors.As(err, &opErr) {
		return opStatus(opErr.Code)
	}
	switch {
	case errors.Is(err, sandbox.ErrInvalid):
		return http.StatusBadRequest, "invalid_request", true
	case errors.Is(err, sandbox.ErrNotFound):
		return http.StatusNotFound, "not_found", true
	case errors.Is(err, sandbox.ErrBusy):
		return http.StatusTooManyRequests, "busy", true
	case errors.Is(err, sandbox.ErrEnded):
		return http.StatusConflict, "sandbox_ended", true
	case errors.Is(err, sandbox.ErrNotRunning):
		return http.StatusConflict, "sandbox_not_running", true
	case errors.Is(err, sandbox.ErrPaused), errors.Is(err, sandbox.ErrAlreadyPaused):
		return http.StatusConflict, "sandbox_paused", true
	case errors.Is(err, sandbox.ErrUnsupported):
		return http.StatusNotImplemented, "unsupported", true
	case errors.Is(err, sandbox.ErrShuttingDown):
		return http.StatusServiceUnavailable, "shutting_down", true
	case errors.Is(err, sandbox.ErrTooLarge):
		return http.StatusRequestEntityTooLarge, "too_large", true
	case errors.Is(err, template.ErrBuiltin):
		return http.StatusConflict, "builtin_template", true
	case errors.Is(err, errNoSandboxes):
		return http.StatusServiceUnavailable, "sandboxes_unavailable", true
	case errors.Is(err, errNodeLost):
		return http.StatusServiceUnavailable, "node_lost", true
	case errors.Is(err, cluster.ErrUnreachable):
		return http.StatusServiceUnavailable, "cluster_unreachable", true
	case errors.Is(err, errNoCapacity):
		return http.StatusTooManyRequests, "no_capacity", true
	case errors.Is(err, errNotClustered):
		return http.StatusNotFound, "not_clustered", true
	}
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge, "body_too_large", true
	case errors.Is(err, engine.ErrInvalid):
		return http.StatusBadRequest, "invalid_request", true
	case errors.Is(err, errUnauthorized):
		return http.StatusUnauthorized, "unauthorized", true
	case errors.Is(err, engine.ErrNotFound):
		return http.StatusNotFound, "not_found", true
	case errors.Is(err, errNoRoute):
		return http.StatusNotFound, "no_route", true
	case errors.Is(err, errMethod):
		return http.StatusMethodNotAllowed, "method_not_allowed", true
	case errors.Is(err, engine.ErrTerminal):
		return http.StatusConflict, "already_finished", true
	case errors.Is(err, engine.ErrBusy):
		return http.StatusTooManyRequests, "busy", true
	case errors.Is(err, backend.ErrUnavailable):
		return http.StatusServiceUnavailable, "backend_unavailable", true
	case errors.Is(err, engine.ErrShuttingDown):
		return http.StatusServiceUnavailable, "shutting_down", true
	case errors.Is(err, errHeadersTooLarge):
		return http.StatusRequestHeaderFieldsTooLarge, "headers_too_large", true
	case errors.Is(err, errHost):
		return http.StatusForbidden, "host_not_allowed", true
	case errors.Is(err, errOrigin):
		return http.StatusForbidden, "origin_not_allowed", true
	case errors.Is(err, errMediaType):
		return http.StatusUnsupportedMediaType, "unsupported_media_type", true
	case errors.Is(err, errBodyTimeout):
		return http.StatusRequestTimeout, "body_timeout", true
	}
	var se *statusError
	if errors.As(err, &se) {
		return se.code, "http_" + strconv.Itoa(se.code), true
	}
	return http.StatusInternalServerError, "internal", false
}

// opStatus maps the guest agent's error codes (its messages are meant for users).
func opStatus(code string) (int, string, bool) {
	switch code {
	case protocol.ErrCodeNotFound, protocol.ErrCodeNoProcess:
		return http.StatusNotFound, code, true
	case protocol.ErrCodePermission:
		return http.StatusForbidden, code, true
	case protocol.ErrCodeExists:
		return http.StatusConflict, code, true
	case protocol.ErrCodeInvalid, protocol.ErrCodeNotDir, protocol.ErrCodeIsDir:
		return http.StatusBadRequest, code, true
	case protocol.ErrCodeTooLarge:
		return http.StatusRequestEntityTooLarge, code, true
	case protocol.ErrCodeUnsupported:
		return http.StatusNotImplemented, code, true
	}
	return http.StatusBadGateway, "agent_error", true
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, code, public := classify(err)
	msg := err.Error()
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		msg = "request body is larger than 16 MiB"
	}
	if !public {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		msg = "internal error; see the server log"
	}
	switch status {
	case http.StatusRequestTimeout:
		// The rest of the body may still be on its way: this connection is done.
		w.Header().Set("Connection", "close")
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", retryAfterSecond)
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="vulcan"`)
	}
	detail := ErrorDetail{Code: code, Message: msg}
	var fe *model.FieldError
	if public && errors.As(err, &fe) {
		detail.Field = fe.Field
	}
	writeJSON(w, status, ErrorBody{Error: detail})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	if err := enc.Encode(v); err != nil {
		slog.Debug("writing response", "err", err)
	}
}
