// Package portproxy serves HTTP to a port inside a sandbox: requests (streamed bodies both
// ways, WebSocket and other upgrades) go over the sandbox's agent session to the guest's
// own 127.0.0.1:PORT, never over a network. The E2B routes (E2b-Sandbox-Port) and
// Vulcan's /v1/sandboxes/{id}/ports/{port}/ use it.
package portproxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"time"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// Dialer connects to a port of a running sandbox (sandbox.Service.DialPort).
type Dialer func(ctx context.Context, id string, port int) (net.Conn, error)

// Proxy is a reverse proxy to sandbox ports. Connections are pooled per sandbox and port.
type Proxy struct {
	rp *httputil.ReverseProxy
	tr *http.Transport
	// OnError, when set, writes the answer to a failed proxying (the E2B routes answer in
	// E2B's shape); by default a JSON error.
	OnError func(w http.ResponseWriter, status int, msg string)
}

// hostSuffix marks the outgoing URL host the dialer reads the sandbox from: the pool's key
// is scheme+host+port, so one sandbox's connection never serves another's request.
const hostSuffix = ".sandbox.vulcan.invalid"

type target struct {
	id   string
	port int
	path string
}

type targetKey struct{}

// New makes a proxy over dial.
func New(dial Dialer) *Proxy {
	p := &Proxy{}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, portStr, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			id, ok := strings.CutSuffix(host, hostSuffix)
			port, perr := strconv.Atoi(portStr)
			if !ok || perr != nil {
				return nil, fmt.Errorf("portproxy: bad target %q", addr)
			}
			return dial(ctx, strings.ToUpper(id), port)
		},
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       30 * time.Second,
		ResponseHeaderTimeout: 0, // a service may take its time (a cell that runs for minutes)
		ForceAttemptHTTP2:     false,
	}
	p.tr = tr
	p.rp = &httputil.ReverseProxy{
		Transport:     tr,
		FlushInterval: -1, // stream: NDJSON, SSE and chunked answers reach the client as they come
		Rewrite: func(pr *httputil.ProxyRequest) {
			t := pr.In.Context().Value(targetKey{}).(target)
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = strings.ToLower(t.id) + hostSuffix + ":" + strconv.Itoa(t.port)
			pr.Out.URL.Path, pr.Out.URL.RawPath = t.path, ""
			// The service sees itself addressed as on its own machine.
			pr.Out.Host = "localhost:" + strconv.Itoa(t.port)
			pr.SetXForwarded()
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			status, msg := http.StatusBadGateway, "the sandbox's port did not answer: "+err.Error()
			var oe *protocol.OpError
			if errors.As(err, &oe) {
				msg = oe.Message
			}
			if r.Context().Err() != nil {
				return // the client left: nobody to answer
			}
			p.fail(w, status, msg)
		},
	}
	return p
}

func (p *Proxy) fail(w http.ResponseWriter, status int, msg string) {
	if p.OnError != nil {
		p.OnError(w, status, msg)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": "port_unreachable", "message": msg}})
}

// Serve proxies r to port of sandbox id, at path (the request's path inside the service,
// starting with /; its query is kept).
func (p *Proxy) Serve(w http.ResponseWriter, r *http.Request, id string, port int, path string) {
	if port < 1 || port > 65535 {
		p.fail(w, http.StatusBadRequest, fmt.Sprintf("port %d: want 1 to 65535", port))
		return
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	ctx := context.WithValue(r.Context(), targetKey{}, target{id: id, port: port, path: path})
	p.rp.ServeHTTP(w, r.WithContext(ctx))
}

// Client is an HTTP client whose requests to URL(id, port, path) reach that sandbox's
// port, as the proxy's do.
func (p *Proxy) Client() *http.Client { return &http.Client{Transport: p.tr} }

// URL names path on a sandbox's port for Client.
func URL(id string, port int, path string) string {
	return "http://" + strings.ToLower(id) + hostSuffix + ":" + strconv.Itoa(port) + path
}
