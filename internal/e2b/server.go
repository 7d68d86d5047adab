// Package e2b speaks E2B's wire on Vulcan's own listener, so that the official E2B SDKs
// work against a Vulcan server with only E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY
// set. It is a thin translation over the sandbox service:
//
//   - the control plane (REST, JSON, header X-API-KEY): /sandboxes, /v2/sandboxes and
//     their sub-resources (controlplane.go);
//   - the per-sandbox daemon "envd", reached on the same port: a request carrying the
//     headers E2b-Sandbox-Id and E2b-Sandbox-Port is that sandbox's. Its Connect RPCs
//     (process.Process, filesystem.Filesystem; JSON over HTTP/1.1, generated from our
//     own .proto files in envd/proto) and its REST routes (/files, /health) run over the
//     sandbox's agent session (envd.go, files.go).
//
// What is not supported answers with E2B's error shape and says so; the envd version we
// report (EnvdVersion) turns on in the SDKs exactly the features implemented here.
package e2b

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"github.com/vulcanhq/vulcan/internal/portproxy"
	"log/slog"
	"net/http"
	"strings"

	"github.com/oklog/ulid/v2"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/sandbox"
	"github.com/vulcanhq/vulcan/internal/store"
)

// EnvdVersion is the envd version we claim. The SDKs switch features on by it: 0.4.0
// envd picks the default user; 0.5.2 closing stdin; 0.5.7 octet-stream (and gzip)
// uploads. 0.6.2 would promise file metadata in extended attributes, which we do not
// keep, so we stay below it (the SDK then refuses metadata, includeEntry and network
// mounts itself, with a clear error).
const EnvdVersion = "0.5.7"

// Ports a sandbox request may name in E2b-Sandbox-Port.
const (
	EnvdPort            = "49983"
	CodeInterpreterPort = "49999"
	// CodeInterpreterTemplate is @e2b/code-interpreter's default template id.
	CodeInterpreterTemplate = "code-interpreter-v1"
)

// Options are New's dependencies.
type Options struct {
	Sandboxes *sandbox.Service
	// Token, when set, is the API key: X-API-KEY must equal it. Unset (a loopback
	// server without a token), any key is accepted, as Vulcan's own API accepts any
	// request then.
	Token  string
	Logger *slog.Logger
	// OutputLimit and LineLimit cap a process's output as for Vulcan's own processes
	// (0: the agent's defaults, no line cap).
	OutputLimit, LineLimit int64
	// List, when set, lists sandboxes instead of Sandboxes.List (a cluster's nodes list
	// the whole cluster).
	List func(ctx context.Context, f store.SandboxFilter) ([]*model.Sandbox, bool, error)
	// Created, when set, runs after a sandbox is made and before the answer leaves (a
	// cluster node waits there until the directory has it).
	Created func(ctx context.Context, id string)
}

func (s *Server) listSandboxes(ctx context.Context, f store.SandboxFilter) ([]*model.Sandbox, bool, error) {
	if s.o.List != nil {
		return s.o.List(ctx, f)
	}
	return s.o.Sandboxes.List(ctx, f)
}

// Server serves E2B's control plane and envd.
type Server struct {
	o      Options
	log    *slog.Logger
	secret []byte // keys the per-sandbox envd access tokens
	cp     http.Handler
	envd   http.Handler
	w      *watchers
	ports  *portproxy.Proxy
}

// New builds the server.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Server{o: o, log: o.Logger, secret: make([]byte, 32), w: newWatchers()}
	rand.Read(s.secret)
	s.ports = portproxy.New(o.Sandboxes.DialPort)
	s.ports.OnError = func(w http.ResponseWriter, status int, msg string) { writeError(w, status, "%s", msg) }
	s.cp = s.controlPlane()
	s.envd = s.envdHandler()
	return s
}

// IsEnvd tells whether r is for a sandbox's daemon (it names the sandbox in a header).
func IsEnvd(r *http.Request) bool { return r.Header.Get("E2b-Sandbox-Id") != "" }

// IsControlPlane tells whether r is an E2B control-plane call. /v2/sandboxes is E2B's
// alone; /sandboxes is shared with the dashboard's pages, so there it is E2B's when the
// SDK's X-API-KEY is present or the method is not a page load.
func IsControlPlane(r *http.Request) bool {
	p := r.URL.Path
	if p == "/v2/sandboxes" || strings.HasPrefix(p, "/v2/sandboxes/") {
		return true
	}
	if p != "/sandboxes" && !strings.HasPrefix(p, "/sandboxes/") {
		return false
	}
	return r.Header.Get("X-API-Key") != "" || (r.Method != http.MethodGet && r.Method != http.MethodHead)
}

// ControlPlane serves the REST API.
func (s *Server) ControlPlane() http.Handler { return s.cp }

// Envd serves sandbox daemon calls (requests for which IsEnvd is true).
func (s *Server) Envd() http.Handler { return s.envd }

// The SDKs want sandbox IDs in lower case; ours are ULIDs, whose alphabet is case
// insensitive: we hand out the lower-case form and accept either.
func externalID(id string) string { return strings.ToLower(id) }

func internalID(id string) (string, bool) {
	u, err := ulid.ParseStrict(strings.ToUpper(id))
	if err != nil {
		return "", false
	}
	return u.String(), true
}

// accessToken is a sandbox's envd token: an HMAC of its id, so it needs no storage and
// a restarted server (new secret) hands out new ones on connect.
func (s *Server) accessToken(id string) string {
	m := hmac.New(sha256.New, s.secret)
	m.Write([]byte("envd-access:" + id))
	return hex.EncodeToString(m.Sum(nil))
}

// trafficToken is a sandbox's token for its ports (E2B's traffic access token): the SDKs
// send it with every request to a port other than envd's.
func (s *Server) trafficToken(id string) string {
	m := hmac.New(sha256.New, s.secret)
	m.Write([]byte("traffic-access:" + id))
	return hex.EncodeToString(m.Sum(nil))
}

func (s *Server) tokenOK(id, got string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(s.accessToken(id))) == 1
}

func (s *Server) apiKeyOK(r *http.Request) bool {
	key := r.Header.Get("X-API-Key")
	if s.o.Token == "" {
		return key != ""
	}
	return subtle.ConstantTimeCompare([]byte(key), []byte(s.o.Token)) == 1
}
