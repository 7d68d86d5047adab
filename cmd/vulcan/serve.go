package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/cluster"
	"github.com/vulcanhq/vulcan/internal/config"
	"github.com/vulcanhq/vulcan/internal/dashboard"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/instance"
	"github.com/vulcanhq/vulcan/internal/microvm"
	"github.com/vulcanhq/vulcan/internal/sandbox"
	"github.com/vulcanhq/vulcan/internal/server"
	"github.com/vulcanhq/vulcan/internal/store"
	"github.com/vulcanhq/vulcan/internal/template"
	"github.com/vulcanhq/vulcan/internal/version"
)

func serveCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the API (and dashboard) until SIGINT or SIGTERM",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), cfg, cmd.ErrOrStderr())
		},
	}
	config.RegisterFlags(cmd.Flags(), "listen", "data-dir", "images-dir", "max-concurrent", "queue-size", "output-limit",
		"vmm", "firecracker-bin", "qemu-bin", "qemu-accel", "network-subnet", "network-dns", "scratch-mb", "pool", "snapshots", "cni-bin-dir", "log-level", "log-format",
		"allowed-hosts", "allowed-origins", "body-timeout", "shutdown-timeout",
		"nats", "nats-creds", "nats-ca", "nats-cert", "nats-key", "node-id", "advertise")
	return cmd
}

// agentBinary is the guest agent a template's apt stage puts into its image:
// VULCAN_AGENT_BIN, else vulcan-guest beside this binary (make build puts both in bin/).
func agentBinary() string {
	if p := os.Getenv("VULCAN_AGENT_BIN"); p != "" {
		return p
	}
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	p := filepath.Join(filepath.Dir(exe), "vulcan-guest")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// cacheDir is the host's build cache (the Makefile's VULCAN_CACHE_DIR): template builds
// share it with `make images`.
func cacheDir() string {
	if d := os.Getenv("VULCAN_CACHE_DIR"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/cache/vulcan"
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "vulcan")
	}
	return ""
}

// serve runs the server until ctx ends, then shuts down in dependency order: stop taking
// requests' new work (engine), drain HTTP, release backends, close the store.
func serve(ctx context.Context, cfg *config.Config, logOut interface{ Write([]byte) (int, error) }) (err error) {
	if err := cfg.ValidateServe(); err != nil {
		return err
	}
	log := newLogger(cfg, logOut)
	slog.SetDefault(log)

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	unlock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := store.Open(ctx, cfg.DatabasePath())
	if err != nil {
		return err
	}
	defer st.Close()

	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg := backend.NewRegistry()
	templates, err := template.OpenRegistry(filepath.Join(cfg.DataDir, "templates"))
	if err != nil {
		return fmt.Errorf("templates: %w", err)
	}
	vms, cleanup, err := registerBackends(ctx, cfg, reg, templates, metrics, log)
	if err != nil {
		return fmt.Errorf("backends: %w", err)
	}
	defer cleanup()

	so := server.Options{Store: st, Registry: reg, Logger: log, Metrics: metrics,
		Engine:  engine.Config{MaxConcurrent: cfg.MaxConcurrent, QueueSize: queueSize(cfg.QueueSize), OutputLimit: cfg.OutputLimit, OutputLineLimit: cfg.OutputLineLimit},
		Sandbox: sandbox.Config{MaxSandboxes: cfg.MaxSandboxes, PausedDir: filepath.Join(cfg.DataDir, "paused")},
		API: api.Options{Token: cfg.APIToken, AllowedHosts: append([]string{cfg.ListenAddr}, cfg.AllowedHosts...),
			AllowedOrigins: cfg.AllowedOrigins, BodyTimeout: cfg.BodyTimeout, Dashboard: dashboard.New()}}
	so.Templates = templates
	so.TemplateBuild = template.Config{ImagesDir: cfg.ImagesDir, AgentPath: agentBinary(), CacheDir: cacheDir()}
	so.API.ImagesDir = cfg.ImagesDir
	if vms != nil {
		so.Launcher = microvm.Launcher{B: vms}
		so.VMs = vms
		pausedDir := so.Sandbox.PausedDir
		so.ImageInUse = func(sha string) bool { return vms.ImageInUse(sha, pausedDir) }
	} else {
		so.SandboxUnavailable = errors.New("the microVM backend could not start; see `vulcan backends`")
	}
	// Listen before joining a cluster: the address the other nodes are told must answer.
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return err
	}
	defer ln.Close()
	if cfg.NATSURL != "" {
		cc, err := clusterConfig(cfg, ln.Addr())
		if err != nil {
			return err
		}
		so.Cluster, so.ImagesDir = cc, cfg.ImagesDir
		if vms != nil {
			so.Warm = func() []string { return warmTemplates(vms) }
			so.CanSandbox = func() bool { return vms.Available(context.Background()) == nil }
		}
	}
	vs, err := server.New(ctx, so)
	if err != nil {
		return err
	}
	handler := vs.Handler()
	// No ReadTimeout or WriteTimeout: the API bounds each request body itself
	// (VULCAN_BODY_TIMEOUT), and a whole-response deadline would cut sync runs and SSE
	// streams. MaxHeaderBytes stays above api.MaxHeaderBytes, which answers in JSON; past
	// this one net/http answers 431 in plain text before any handler runs.
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 1 << 20}
	for _, s := range reg.Statuses(ctx) {
		log.Info("backend", "name", s.Name, "available", s.Available, "reason", s.Reason)
	}
	log.Info("vulcan serving", "addr", "http://"+ln.Addr().String(), "version", version.Version, "data_dir", cfg.DataDir,
		"images_dir", cfg.ImagesDir, "auth", cfg.APIToken != "")

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		vs.Shutdown(context.Background())
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down", "grace", cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	// The engine first: sync requests waiting on workloads get their answers, SSE
	// streams get their done events, and new submissions get 503 meanwhile. Sandboxes do
	// not outlive their server: they are killed.
	if err := vs.Shutdown(sctx); err != nil {
		log.Warn("running workloads were cancelled at the shutdown deadline", "err", err)
	}
	hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer hcancel()
	if err := srv.Shutdown(hctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	log.Info("stopped")
	return nil
}

// queueSize maps the config's "0 means no queue" onto the engine's "negative means none".
func queueSize(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// newLogger is the server's slog logger, in VULCAN_LOG_FORMAT (text or json).
func newLogger(cfg *config.Config, out io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(out, opts))
	}
	return slog.New(slog.NewTextHandler(out, opts))
}

// clusterConfig is how this server joins the cluster named by --nats: as --node-id
// (default: its instance id, stable across restarts), reachable at --advertise (default:
// the listen address, when that names a host).
func clusterConfig(cfg *config.Config, addr net.Addr) (*cluster.Config, error) {
	id := cfg.NodeID
	if id == "" {
		inst, _, err := instance.Load(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		id = inst
	}
	adv := cfg.Advertise
	if adv == "" {
		host, port, _ := net.SplitHostPort(addr.String())
		if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
			return nil, fmt.Errorf("--advertise is required in a cluster when the listen address (%s) names no host the other nodes can reach", addr)
		}
		adv = "http://" + net.JoinHostPort(host, port)
	}
	return &cluster.Config{URL: cfg.NATSURL, Creds: cfg.NATSCreds, CA: cfg.NATSCA, Cert: cfg.NATSCert, Key: cfg.NATSKey,
		NodeID: id, Advertise: adv}, nil
}

// warmTemplates are the templates this node starts fast: an idle pooled VM or a snapshot.
func warmTemplates(vms *microvm.Backend) []string {
	var out []string
	for _, p := range vms.PoolStats() {
		if p.Idle > 0 && !slices.Contains(out, string(p.Template)) {
			out = append(out, string(p.Template))
		}
	}
	for _, s := range vms.Snapshots() {
		if !slices.Contains(out, string(s.Template)) {
			out = append(out, string(s.Template))
		}
	}
	return out
}
