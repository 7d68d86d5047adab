package api

import (
	"crypto/subtle"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"github.com/vulcanhq/vulcan/internal/e2b"
)

// MaxHeaderBytes bounds a request's line and headers; past it the answer is a JSON 431.
// net/http has its own, larger bound (http.Server.MaxHeaderBytes, 1 MiB by default) and
// answers past that itself, before any handler runs, with a plain-text 431 that no
// handler can change: keep the server's bound above this one so that only requests far
// past any real client's size meet it.
const MaxHeaderBytes = 64 << 10

// methods are the HTTP methods metrics label by name; any other is "other", so a client
// inventing methods cannot mint series.
var methods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodOptions: true,
}

func metricMethod(m string) string {
	if methods[m] {
		return m
	}
	return "other"
}

// instrument counts and times every request and logs one line for it. Every label is
// bounded: the method is one of a fixed set, the route is the router's pattern (never
// the raw path; "unmatched" before routing), the status one the server wrote.
func (s *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		dur := time.Since(start)
		route := chi.RouteContext(r.Context()).RoutePattern()
		if route == "" {
			route = "unmatched"
		}
		status := ww.Status()
		if status == 0 {
			status = http.StatusOK
		}
		method := metricMethod(r.Method)
		s.requests.WithLabelValues(method, route, strconv.Itoa(status)).Inc()
		if !strings.HasSuffix(route, "/logs") {
			s.latency.WithLabelValues(method, route).Observe(dur.Seconds())
		}
		s.log.Info("http request", "method", clip(r.Method, 16), "route", route, "path", clip(r.URL.Path, 256),
			"status", status, "duration", dur, "bytes", ww.BytesWritten(), "remote", r.RemoteAddr)
	})
}

// clip shortens client-chosen text for a log line.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.writeError(w, r, fmt.Errorf("panic: %v", p))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func (s *Server) auth(next http.Handler) http.Handler {
	if s.o.Token == "" {
		return next
	}
	want := []byte("Bearer " + s.o.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 && !wsTokenOK(r, s.o.Token) {
			s.writeError(w, r, errUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// wsTokenOK accepts the token a browser's WebSocket sends as a subprotocol
// ("vulcan.token.<token>"): a browser cannot set headers on a WebSocket, and a query
// parameter would land in logs.
func wsTokenOK(r *http.Request, token string) bool {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		return false
	}
	want := []byte(wsTokenPrefix + token)
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if subtle.ConstantTimeCompare([]byte(strings.TrimSpace(p)), want) == 1 {
				return true
			}
		}
	}
	return false
}

const wsTokenPrefix = "vulcan.token."

// guard is the front door, before routing and authentication. A page in a browser can
// reach a loopback server without a token: it may send a cross-site "simple" request
// (a form's or fetch's text/plain POST, which needs no preflight), or rebind its own
// name to 127.0.0.1 so its requests are same-origin. So: a body must be JSON (a browser
// sends that cross-site only after a CORS preflight, which this server never grants), a
// browser's Origin must be this server's, and the Host must be a name this server goes
// by. It also bounds the headers and the time a body may take to arrive.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case headerBytes(r) > MaxHeaderBytes:
			s.writeError(w, r, errHeadersTooLarge)
			return
		case !s.hostAllowed(r):
			s.writeError(w, r, fmt.Errorf("%w: Host %q is not a name this server answers to; add it to VULCAN_ALLOWED_HOSTS if it should be",
				errHost, clip(r.Host, 256)))
			return
		case !s.originAllowed(r):
			s.writeError(w, r, fmt.Errorf("%w: requests from %q are refused; add it to VULCAN_ALLOWED_ORIGINS if it should be allowed",
				errOrigin, clip(r.Header.Get("Origin"), 256)))
			return
		}
		if r.ContentLength != 0 && e2b.IsEnvd(r) {
			// A sandbox daemon call: Connect's content types, multipart and raw uploads.
			// A browser sends a custom header (E2b-Sandbox-Id, X-Access-Token) cross-site
			// only after a preflight this server never grants, and envd checks the
			// sandbox's access token first.
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.o.BodyTimeout))
		} else if r.ContentLength != 0 && isPortPath(r.URL.Path) {
			// A sandbox's own service: its bodies are whatever it takes (the Origin check
			// above still keeps other sites' pages out).
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.o.BodyTimeout))
		} else if r.ContentLength != 0 { // a body, of known length or chunked
			// application/octet-stream (file uploads) needs a CORS preflight too, like JSON.
			if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" && !(mt == "application/octet-stream" && rawBody(r)) {
				s.writeError(w, r, fmt.Errorf("%w: request bodies must be JSON, sent with Content-Type: application/json (got %q)",
					errMediaType, clip(r.Header.Get("Content-Type"), 100)))
				return
			}
			// A client that trickles its body must not hold the connection and a handler
			// forever. net/http clears the deadline itself once the body has been read to
			// its end, so what follows (a sync run's wait, an SSE stream) is not bounded by
			// it; no write deadline is set, for the same reason.
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.o.BodyTimeout))
		}
		next.ServeHTTP(w, r)
	})
}

// rawBody reports whether the route takes raw bytes (a sandbox file upload, a template
// build's tar.gz context).
func rawBody(r *http.Request) bool {
	return r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/v1/sandboxes/") && strings.HasSuffix(r.URL.Path, "/files") ||
		r.Method == http.MethodPost && r.URL.Path == "/v1/templates"
}

// headerBytes is about what the request line and headers took on the wire.
func headerBytes(r *http.Request) int {
	n := len(r.Method) + len(r.RequestURI) + len(r.Proto) + len(r.Host) + 12
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// hostAllowed accepts a Host that is a configured name, or a loopback name or the
// address the connection arrived on, with the port it arrived on.
func (s *Server) hostAllowed(r *http.Request) bool {
	host := strings.ToLower(r.Host)
	name, port, err := net.SplitHostPort(host)
	if err != nil {
		name, port = strings.Trim(host, "[]"), "80" // no port: plain HTTP's
	}
	if s.hosts[host] || s.hosts[name] {
		return true
	}
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	var at netip.AddrPort
	if local != nil {
		at, _ = netip.ParseAddrPort(local.String())
	}
	if at.IsValid() && strconv.Itoa(int(at.Port())) != port {
		return false
	}
	switch name {
	case "localhost", "127.0.0.1", "::1":
		return true
	}
	ip, err := netip.ParseAddr(name)
	return err == nil && at.IsValid() && ip.Unmap() == at.Addr().Unmap()
}

// originAllowed accepts no Origin (not a browser, or a same-origin navigation), this
// server's own (the Host, checked already, under http or https behind a proxy), and the
// configured ones.
func (s *Server) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || s.origins[strings.ToLower(origin)] {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Path == "" && u.User == nil &&
		strings.EqualFold(u.Host, r.Host)
}

func lowerSet(vs []string) map[string]bool {
	m := map[string]bool{}
	for _, v := range vs {
		if v = strings.ToLower(strings.TrimSpace(v)); v != "" {
			m[strings.TrimSuffix(v, "/")] = true
		}
	}
	return m
}

func (s *Server) noRoute(w http.ResponseWriter, r *http.Request) { s.writeError(w, r, errNoRoute) }

// methodNotAllowed answers 405 with the Allow header RFC 9110 asks for, found by asking
// the router which methods the path has.
func (s *Server) methodNotAllowed(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		if s.router != nil && s.router.Match(chi.NewRouteContext(), m, r.URL.Path) {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
	}
	s.writeError(w, r, errMethod)
}

// jsonErrors rewrites the error answers of a handler that is not the API's own (the
// dashboard's 404 for a missing asset) as the API's JSON errors, so every route fails
// the same way.
func jsonErrors(s *Server, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&errorRewriter{ResponseWriter: w, s: s, r: r}, r)
	})
}

type errorRewriter struct {
	http.ResponseWriter
	s       *Server
	r       *http.Request
	rewrote bool
}

func (e *errorRewriter) WriteHeader(code int) {
	if code < 400 || e.rewrote {
		e.ResponseWriter.WriteHeader(code)
		return
	}
	e.rewrote = true
	h := e.Header()
	for _, k := range []string{"Content-Length", "Content-Type", "Content-Encoding", "Etag", "Last-Modified"} {
		h.Del(k)
	}
	var err error
	switch code {
	case http.StatusNotFound:
		err = errNoRoute
	case http.StatusMethodNotAllowed:
		err = errMethod
	default:
		err = &statusError{code}
	}
	e.s.writeError(e.ResponseWriter, e.r, err)
}

func (e *errorRewriter) Write(p []byte) (int, error) {
	if e.rewrote {
		return len(p), nil // the handler's own error text, replaced
	}
	return e.ResponseWriter.Write(p)
}

func (e *errorRewriter) Unwrap() http.ResponseWriter { return e.ResponseWriter }

// statusError is another handler's error status, passed on as it was.
type statusError struct{ code int }

func (e *statusError) Error() string { return strings.ToLower(http.StatusText(e.code)) }
