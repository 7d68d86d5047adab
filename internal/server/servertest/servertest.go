// Package servertest serves a whole Vulcan server (server.New: store, engine, sandbox
// service, API with E2B and MCP) on loopback for tests, torn down with the test.
package servertest

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/cluster"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/sandbox"
	"github.com/vulcanhq/vulcan/internal/server"
	"github.com/vulcanhq/vulcan/internal/store"
	"github.com/vulcanhq/vulcan/internal/template"
)

// Stack is the served server.
type Stack struct {
	*httptest.Server
	Store     *store.Store
	Engine    *engine.Engine
	Sandboxes *sandbox.Service // nil without a launcher
	// TemplateDir is the template registry's dir (with Options.Templates).
	TemplateDir string
	Cluster     *cluster.Node // with Options.Cluster
	srv         *server.Server
	once        sync.Once
}

// Options shape a stack; the zero value is workloads only, on no backend.
type Options struct {
	Engine engine.Config
	// Fake is the workload backend; nil: none (microvm reported missing).
	Fake *backendtest.Fake
	// Launcher starts sandboxes (sandboxtest.NewAgentLauncher for the real agent in this
	// process); nil: no sandbox service.
	Launcher sandbox.Launcher
	// API adjusts the API's own options (token, heartbeat, dashboard).
	API func(*api.Options)
	// Templates keeps user templates in a registry under the test's temp dir, with
	// TemplateImages as the built-ins' images dir (builds need a Launcher too).
	Templates      bool
	TemplateImages string
	// Sandbox sizes the sandbox service (budgets, limits).
	Sandbox sandbox.Config
	// ImagesDir is the images dir the node announces templates from (none when empty).
	ImagesDir string
	// Store, when set, is the stack's store (a node restarted on its data); nil: a new one.
	Store *store.Store
	// Cluster, when set, joins the cluster it describes (its Advertise is set here).
	Cluster *cluster.Config
}

// NewStack serves fake (or, when nil, no backend) through the real server, without
// sandboxes. apiOpts, when set, adjusts the API's options.
func NewStack(t testing.TB, cfg engine.Config, fake *backendtest.Fake, apiOpts func(*api.Options)) *Stack {
	return New(t, Options{Engine: cfg, Fake: fake, API: apiOpts})
}

// New serves a server shaped by o.
func New(t testing.TB, o Options) *Stack {
	t.Helper()
	st := o.Store
	if st == nil {
		var err error
		if st, err = store.Open(context.Background(), filepath.Join(t.TempDir(), "db")); err != nil {
			t.Fatal(err)
		}
	}
	reg := backend.NewRegistry()
	if o.Fake != nil {
		reg.Register(o.Fake)
	} else {
		reg.Missing("microvm", "microvm: no kernel image; run `make images`")
	}
	templateDir := ""
	so := server.Options{Store: st, Registry: reg, Engine: o.Engine, Sandbox: o.Sandbox, Launcher: o.Launcher, NoSandboxes: o.Launcher == nil,
		ImagesDir: o.ImagesDir, Logger: slog.New(slog.DiscardHandler)}
	hs := httptest.NewUnstartedServer(nil)
	if o.Cluster != nil {
		cc := *o.Cluster
		cc.Advertise = "http://" + hs.Listener.Addr().String()
		so.Cluster = &cc
	}
	if o.Templates {
		tr, err := template.OpenRegistry(filepath.Join(t.TempDir(), "templates"))
		if err != nil {
			t.Fatal(err)
		}
		so.Templates = tr
		templateDir = tr.Dir()
		so.TemplateBuild = template.Config{ImagesDir: o.TemplateImages, CacheDir: t.TempDir()}
		so.API.ImagesDir = o.TemplateImages
	}
	if o.API != nil {
		o.API(&so.API)
	}
	srv, err := server.New(context.Background(), so)
	if err != nil {
		hs.Close()
		st.Close()
		t.Fatal(err)
	}
	hs.Config.Handler = srv.Handler()
	hs.Start()
	stack := &Stack{Server: hs, Store: st, Engine: srv.Engine, Sandboxes: srv.Sandboxes, TemplateDir: templateDir, Cluster: srv.Cluster, srv: srv}
	t.Cleanup(stack.Shutdown)
	return stack
}

// Shutdown stops the stack at once, as the test's end does: HTTP closed, the server
// shut down with whatever still runs cancelled, the store closed. Idempotent.
func (s *Stack) Shutdown() {
	s.once.Do(func() {
		s.CloseClientConnections()
		s.Close()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		s.srv.Shutdown(ctx)
		s.Store.Close()
	})
}
