// Package server is the one place a Vulcan server is assembled: over a store and the
// backends its caller chose, the engine (workloads), the sandbox service, the HTTP API
// (with E2B's wire) and the MCP endpoint, wired to one another. `vulcan serve`, the
// benchmarks and the tests' stacks (servertest) all build their server here, so each
// runs what the others run.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/cluster"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/mcpserver"
	"github.com/vulcanhq/vulcan/internal/sandbox"
	"github.com/vulcanhq/vulcan/internal/store"
	"github.com/vulcanhq/vulcan/internal/template"
)

// Options are New's inputs. Store and Registry are the caller's (it opens and closes
// them); everything else is made here.
type Options struct {
	Store    *store.Store
	Registry *backend.Registry
	Engine   engine.Config
	Sandbox  sandbox.Config
	// Launcher starts sandbox VMs. Nil: creating a sandbox answers 503 with
	// SandboxUnavailable (or a generic reason).
	Launcher           sandbox.Launcher
	SandboxUnavailable error
	// NoSandboxes leaves the sandbox service out altogether (its routes answer 503).
	NoSandboxes bool
	// VMs, when set, is the microVM backend's warm pool side: it gets the sandboxes'
	// capacity budget (pooled VMs count in it and yield to live sandboxes) and is closed
	// after the sandboxes at shutdown.
	VMs PoolOwner
	// Templates, when set, keeps user templates: sandboxes may name them and the API
	// builds them (TemplateBuild sizes builds). ImageInUse tells the registry's GC which
	// images VMs still run on or were paused on.
	Templates     *template.Registry
	TemplateBuild template.Config
	ImageInUse    func(sha string) bool
	// API carries the API's own settings (token, dashboard, allowed hosts and origins,
	// body timeout, heartbeat); its Engine, Registry, Sandboxes and MCP are set here, and
	// its Logger and Metrics/Gatherer when it has none (Logger and Metrics below).
	API     api.Options
	Logger  *slog.Logger         // nil: slog.Default()
	Metrics *prometheus.Registry // nil: a new one
	// Cluster, when set, joins a cluster over NATS (package cluster); nil: a single node.
	// Its Advertise must be the URL this server will be reachable at. ImagesDir names the
	// built-in images it announces; Warm, when set, lists the templates with a warm VM
	// or snapshot here.
	Cluster   *cluster.Config
	ImagesDir string
	Warm      func() []string
	// CanSandbox, when set, tells whether the launcher can boot VMs now (announced).
	CanSandbox func() bool
}

// PoolOwner is what owns warm VMs (microvm.Backend).
type PoolOwner interface {
	SetPoolRoom(func(memMB, cpus int) bool)
	Close(ctx context.Context) error
}

// Server is an assembled server.
type Server struct {
	Engine    *engine.Engine
	Sandboxes *sandbox.Service  // nil with NoSandboxes
	Builder   *template.Builder // nil without Templates or sandboxes
	Metrics   *prometheus.Registry
	handler   http.Handler
	Cluster   *cluster.Node // nil for a single node
	mcp       *mcpserver.Mounted
	vms       PoolOwner
}

// New assembles the server. On error nothing is left running.
func New(ctx context.Context, o Options) (_ *Server, err error) {
	if o.Store == nil || o.Registry == nil {
		return nil, errors.New("server: Store and Registry are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Metrics == nil {
		o.Metrics = prometheus.NewRegistry()
	}
	s := &Server{Metrics: o.Metrics}
	defer func() {
		if err != nil {
			s.Shutdown(cancelled())
		}
	}()
	s.Engine, err = engine.New(ctx, engine.Options{Config: o.Engine, Store: o.Store, Registry: o.Registry, Metrics: o.Metrics, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	if !o.NoSandboxes {
		so := sandbox.Options{Config: o.Sandbox, Store: o.Store, Launcher: o.Launcher, Unavailable: o.SandboxUnavailable,
			Metrics: o.Metrics, Logger: o.Logger}
		if o.Templates != nil {
			so.Templates = o.Templates
		}
		if so.Launcher == nil && so.Unavailable == nil {
			so.Unavailable = errors.New("no backend can start sandboxes")
		}
		if s.Sandboxes, err = sandbox.New(ctx, so); err != nil {
			return nil, fmt.Errorf("sandboxes: %w", err)
		}
	}
	if o.VMs != nil {
		s.vms = o.VMs
		if sb := s.Sandboxes; sb != nil {
			o.VMs.SetPoolRoom(func(memMB, cpus int) bool {
				l := sb.Load()
				return l.MemMB+memMB <= l.MemBudgetMB && l.CPUs+cpus <= l.CPUBudget
			})
		}
	}
	if o.Templates != nil && s.Sandboxes != nil {
		s.Builder = template.NewBuilder(o.TemplateBuild, o.Templates, s.Sandboxes, o.Logger)
		s.Builder.InUse = o.ImageInUse
		if err := s.Builder.RegisterMetrics(o.Metrics); err != nil {
			return nil, fmt.Errorf("templates: metrics: %w", err)
		}
		o.Templates.GC(o.ImageInUse) // what a crash or a removal left
	}
	if o.Cluster != nil {
		cc := *o.Cluster
		if cc.Logger == nil {
			cc.Logger = o.Logger
		}
		deps := cluster.Deps{Store: o.Store, Engine: s.Engine, Capacity: s.capacity(o)}
		if s.Sandboxes != nil && o.Sandbox.PausedDir != "" {
			deps.PausedDir = s.Sandboxes.PausedDir
		}
		s.Cluster, err = cluster.Join(ctx, cc, deps)
		if err != nil {
			return nil, err
		}
		if err := s.Cluster.Register(o.Metrics); err != nil {
			return nil, fmt.Errorf("cluster: metrics: %w", err)
		}
	}
	s.mcp = mcpserver.NewMounted(o.API.Token)
	ao := o.API
	ao.Cluster = s.Cluster
	ao.Engine, ao.Registry, ao.Sandboxes, ao.MCP, ao.Templates = s.Engine, o.Registry, s.Sandboxes, s.mcp, s.Builder
	if ao.Logger == nil {
		ao.Logger = o.Logger
	}
	if ao.Metrics == nil {
		ao.Metrics, ao.Gatherer = o.Metrics, o.Metrics
	}
	h, err := api.New(ao)
	if err != nil {
		return nil, err
	}
	s.mcp.SetAPI(h)
	s.handler = h
	return s, nil
}

// Handler is the HTTP API (dashboard, E2B and /mcp included).
func (s *Server) Handler() http.Handler { return s.handler }

// Shutdown stops in dependency order: the engine (running workloads end, new ones are
// refused), then the sandboxes (killed: they never outlive their server), then MCP's
// in-memory connections. It returns the engine's error (workloads cancelled at ctx's
// end). Idempotent; an already-cancelled ctx stops everything at once.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	if s.Cluster != nil {
		// No new work from the cluster's queue; the node leaves after its workloads and
		// sandboxes have ended, so their records say how.
		s.Cluster.StopTaking()
		defer s.Cluster.Close()
	}
	if s.Engine != nil {
		err = s.Engine.Shutdown(ctx)
	}
	if s.Builder != nil {
		s.Builder.Close() // its build VMs are sandboxes: stopped before them
	}
	if s.Sandboxes != nil {
		s.Sandboxes.Shutdown(ctx)
	}
	if s.vms != nil {
		if verr := s.vms.Close(ctx); verr != nil && err == nil {
			err = verr
		}
	}
	if s.mcp != nil {
		s.mcp.Close()
	}
	return err
}

func cancelled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// capacity is what this node announces: its sandboxes' budgets and use, its free
// workload slots, the templates it can boot (built-in images present, user templates
// built here) and the warm ones — those two read from disk, so every 5 s, not on every
// heartbeat.
func (s *Server) capacity(o Options) func() cluster.Capacity {
	var mu sync.Mutex
	var templates, warm []string
	var at time.Time
	slots := s.Engine.Config().MaxConcurrent
	return func() cluster.Capacity {
		c := cluster.Capacity{Slots: slots, SlotsFree: s.Engine.Free()}
		if sb := s.Sandboxes; sb != nil && o.Launcher != nil && (o.CanSandbox == nil || o.CanSandbox()) {
			l := sb.Load()
			c.CanSandbox = true
			c.Sandboxes, c.MaxSandboxes = l.Live, l.Max
			c.MemBudgetMB, c.MemFreeMB = l.MemBudgetMB, max(0, l.MemBudgetMB-l.MemMB)
			c.CPUBudget, c.CPUFree = l.CPUBudget, max(0, l.CPUBudget-l.CPUs)
		}
		mu.Lock()
		if time.Since(at) > 5*time.Second {
			at = time.Now()
			templates = templates[:0]
			if o.ImagesDir != "" {
				for _, t := range images.Load(o.ImagesDir).Templates() {
					templates = append(templates, string(t))
				}
			}
			if o.Templates != nil {
				for _, t := range o.Templates.List() {
					templates = append(templates, t.Name)
				}
			}
			if o.Warm != nil {
				warm = o.Warm()
			}
		}
		c.Templates, c.Warm = slices.Clone(templates), slices.Clone(warm)
		mu.Unlock()
		return c
	}
}
