package api

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
)

// errUnauthorized and errNotFoundRoute are the API's own failures, mapped like the
// engine's below.
var (
	errUnauthorized  = errors.New("missing or wrong bearer token")
	errNoRoute       = errors.New("no such route")
	errMethod        = errors.New("method not allowed on this route")
	retryAfterSecond = "1"
)

// classify is the one place errors become HTTP statuses. Only errors that wrap a known
// sentinel have their text shown; anything else is logged and reported as internal.
func classify(err error) (status int, code string, public bool) {
	var tooBig *http.MaxBytesError
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
	}
	return http.StatusInternalServerError, "internal", false
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
	case http.StatusTooManyRequests:
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
