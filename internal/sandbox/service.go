// Package sandbox runs sandboxes: long-lived microVMs that many processes and file
// operations run in. The Service owns their lifecycles (admission by capacity, boot,
// timeout, kill, the VM dying under them), persists every state change in the store, and
// hands callers the agent session of a running sandbox for processes and files.
//
// A running sandbox never outlives its server: a server that stops kills its running
// sandboxes, and one that crashed finds them "lost" at its next start (the backend's
// startup reclaim removes what their VMs left). A paused one has no VM: its saved state
// is in PausedDir and it outlives restarts (pause.go).
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
	"github.com/vulcanhq/vulcan/internal/store"
)

// Errors callers map to responses; their texts are safe to show.
var (
	ErrInvalid      = errors.New("invalid request")
	ErrNotFound     = store.ErrSandboxNotFound
	ErrBusy         = errors.New("no capacity for another sandbox; retry later")
	ErrEnded        = errors.New("sandbox has ended")
	ErrNotRunning   = errors.New("sandbox is not running")
	ErrShuttingDown = errors.New("server is shutting down")
	ErrUnsupported  = backend.ErrUnsupported
	ErrPaused       = errors.New("sandbox is paused; resume it first")
	// ErrAlreadyPaused answers a pause of a paused sandbox.
	ErrAlreadyPaused = errors.New("sandbox is already paused")
)

// LostReason is the error of sandboxes a previous server process left behind.
const LostReason = "the server stopped unexpectedly while the sandbox was alive; its VM is gone"

// Launcher boots sandbox VMs (the microVM backend, adapted in cmd/vulcan).
type Launcher interface {
	Launch(ctx context.Context, id string, spec model.SandboxSpec) (Machine, error)
}

// Resumer is a Launcher that can restore a sandbox paused into dir (Pauser.Pause).
type Resumer interface {
	Resume(ctx context.Context, id string, spec model.SandboxSpec, dir string) (Machine, error)
}

// Pauser is a Machine that can save itself into dir and stop, freeing its memory.
type Pauser interface {
	Pause(ctx context.Context, dir string) error
}

// Machine is a running sandbox VM.
type Machine interface {
	Session() *protocol.Session
	Metadata() map[string]string
	// Done is closed when the VM is gone (the VMM exited or the agent connection ended).
	Done() <-chan struct{}
	// Stop tears the VM down and releases what it held; idempotent.
	Stop(ctx context.Context) error
}

// Config sizes the service.
type Config struct {
	MaxSandboxes int // default 32
	// MemBudgetMB and CPUBudget bound the sum of live sandboxes' memory and vCPUs; defaults
	// 75% of the host's memory and 4 vCPUs per host CPU.
	MemBudgetMB int
	CPUBudget   int
	Limits      model.Limits // zero: model.DefaultLimits
	BootTimeout time.Duration
	// TeardownTimeout bounds stopping one sandbox's VM; default 30s.
	TeardownTimeout time.Duration
	// PausedDir keeps paused sandboxes' saved VMs, one dir per sandbox; empty: pausing
	// is refused.
	PausedDir string
}

func (c *Config) defaults() {
	if c.MaxSandboxes <= 0 {
		c.MaxSandboxes = 32
	}
	if c.MemBudgetMB <= 0 {
		c.MemBudgetMB = hostMemMB() * 3 / 4
		if c.MemBudgetMB <= 0 {
			c.MemBudgetMB = 4096
		}
	}
	if c.CPUBudget <= 0 {
		c.CPUBudget = 4 * runtime.NumCPU()
	}
	if c.Limits == (model.Limits{}) {
		c.Limits = model.DefaultLimits
	}
	if c.BootTimeout <= 0 {
		c.BootTimeout = 2 * time.Minute
	}
	if c.TeardownTimeout <= 0 {
		c.TeardownTimeout = 30 * time.Second
	}
}

// Options are New's dependencies.
type Options struct {
	Config
	Store    *store.Store
	Launcher Launcher // nil: every Create fails with the reason in Unavailable
	// Unavailable says why sandboxes cannot run when Launcher is nil.
	Unavailable error
	Metrics     prometheus.Registerer
	Logger      *slog.Logger
	// Templates knows the user templates (nil: only the built-ins exist).
	Templates TemplateCatalog
}

// TemplateCatalog resolves template names that are not built-ins. internal allows the
// names only builds use (an image by key).
type TemplateCatalog interface {
	Template(name model.Runtime, internal bool) (*TemplateDefaults, bool)
}

// TemplateDefaults is what a user template gives its sandboxes: env under theirs, and a
// start command run in the background once the VM is up, with a readiness check that
// must pass (exit 0) before the sandbox is handed out.
type TemplateDefaults struct {
	Env      map[string]string
	Workdir  string
	User     string
	StartCmd []string
	ReadyCmd string
}

// Service runs sandboxes. Create it with New, stop it with Shutdown.
type Service struct {
	cfg         Config
	st          *store.Store
	templates   TemplateCatalog
	launch      Launcher
	unavailable error
	log         *slog.Logger
	m           *metrics
	base        context.Context // lifetime of boots; cancelled by Shutdown
	cancelBase  context.CancelFunc

	mu      sync.Mutex
	live    map[string]*box
	usedMem int
	usedCPU int
	closing bool

	// pmu orders the moves out of paused (resume, kill) with each other.
	pmu sync.Mutex
	// envs keeps a paused sandbox's env while this process lives (the store never
	// holds env values; the guest keeps them across restarts as its default env).
	envs map[string]map[string]string
}

// box is a live sandbox: starting, running or stopping.
type box struct {
	mu      sync.Mutex
	sb      *model.Sandbox
	env     map[string]string
	m       Machine // nil while starting
	timer   *time.Timer
	ending  bool // end has begun
	pausing bool // Pause has begun
	// pauseDone is closed when that Pause returns, whatever came of it.
	pauseDone chan struct{}
	killed    bool          // Kill asked while starting
	ended     chan struct{} // closed once the terminal state is persisted
}

// New marks sandboxes a previous process left alive as lost and returns the service.
func New(ctx context.Context, o Options) (*Service, error) {
	if o.Store == nil {
		return nil, errors.New("sandbox: Store is required")
	}
	o.Config.defaults()
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Service{cfg: o.Config, st: o.Store, templates: o.Templates, launch: o.Launcher, unavailable: o.Unavailable, log: o.Logger, live: map[string]*box{},
		envs: map[string]map[string]string{}}
	if s.launch == nil && s.unavailable == nil {
		s.unavailable = errors.New("no VM backend is configured")
	}
	m, err := newMetrics(o.Metrics, s)
	if err != nil {
		return nil, fmt.Errorf("sandbox: metrics: %w", err)
	}
	s.m = m
	s.repairPaused(ctx)
	n, err := s.st.ReconcileSandboxes(ctx, LostReason, time.Now().UTC())
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	if n > 0 {
		s.log.Warn("marked sandboxes left alive by a previous run as lost", "count", n)
	}
	s.base, s.cancelBase = context.WithCancel(context.Background())
	return s, nil
}

// Config returns the effective configuration.
func (s *Service) Config() Config { return s.cfg }

// Create validates spec, admits it within capacity, boots its VM and returns the running
// sandbox. Nothing is stored when admission fails; a failed boot is stored as failed.
// The boot is not bound to ctx (a client that gives up does not leave a half-made VM:
// the sandbox is made or failed either way, and listed).
func (s *Service) Create(ctx context.Context, spec model.SandboxSpec) (*model.Sandbox, error) {
	return s.create(ctx, spec, false)
}

// CreateInternal is Create for the server's own uses (a template build's VM), which may
// name templates no client can.
func (s *Service) CreateInternal(ctx context.Context, spec model.SandboxSpec) (*model.Sandbox, error) {
	return s.create(ctx, spec, true)
}

func (s *Service) create(ctx context.Context, spec model.SandboxSpec, internal bool) (*model.Sandbox, error) {
	tpl := builtinDefaults[spec.Template]
	if spec.Template != "" && !spec.Template.ValidTemplate() && s.templates != nil {
		tpl, _ = s.templates.Template(spec.Template, internal)
	}
	spec, err := validate(spec, s.cfg.Limits, tpl != nil && !spec.Template.ValidTemplate())
	if err != nil {
		return nil, err
	}
	if tpl != nil && len(tpl.Env) > 0 {
		env := map[string]string{}
		for k, v := range tpl.Env {
			env[k] = v
		}
		for k, v := range spec.Env {
			env[k] = v
		}
		spec.Env = env
	}
	if s.launch == nil {
		return nil, fmt.Errorf("%w: %v", errUnavailable, s.unavailable)
	}
	now := time.Now().UTC()
	b := &box{ended: make(chan struct{}), env: spec.Env, sb: &model.Sandbox{
		ID: ulid.Make().String(), State: model.SandboxStarting, Spec: spec, CreatedAt: now,
		ExpiresAt: now.Add(time.Duration(spec.TimeoutS) * time.Second), VM: map[string]string{},
	}}
	if err := s.admit(b); err != nil {
		s.m.rejected.WithLabelValues(rejectReason(err)).Inc()
		return nil, err
	}
	if err := s.st.CreateSandbox(ctx, b.sb); err != nil {
		s.release(b)
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	s.m.created.Inc()

	bootCtx, cancel := context.WithTimeout(s.base, s.cfg.BootTimeout)
	start := time.Now()
	m, err := s.launch.Launch(bootCtx, b.sb.ID, spec)
	if err == nil && tpl != nil && len(tpl.StartCmd) > 0 {
		if err = startCommand(bootCtx, m.Session(), tpl); err != nil {
			m.Stop(context.WithoutCancel(ctx))
			err = fmt.Errorf("the template's start command: %w", err)
		}
	}
	cancel()
	if err != nil {
		s.end(b, model.SandboxFailed, "boot failed: "+err.Error())
		return nil, fmt.Errorf("sandbox %s: %w", b.sb.ID, err)
	}
	s.m.boot.Observe(time.Since(start).Seconds())
	return s.run(ctx, b, m)
}

// run makes a started (or resumed) box running: its timer set, its VM watched. A Kill
// that came while it started is carried out now.
func (s *Service) run(ctx context.Context, b *box, m Machine) (*model.Sandbox, error) {
	b.mu.Lock()
	b.m = m
	killed := b.killed
	started := time.Now().UTC()
	b.sb.State, b.sb.StartedAt, b.sb.VM = model.SandboxRunning, &started, m.Metadata()
	// The timeout counts from creation: a slow boot does not extend it.
	b.timer = time.AfterFunc(time.Until(b.sb.ExpiresAt), func() { s.expire(b) })
	sb := b.copyLocked()
	b.mu.Unlock()
	if killed {
		s.end(b, model.SandboxKilled, "killed by request")
		return s.Get(ctx, b.sb.ID)
	}
	if err := s.st.UpdateSandbox(context.WithoutCancel(ctx), sb); err != nil {
		s.log.Error("persisting running sandbox", "sandbox", sb.ID, "err", err)
	}
	go s.watch(b, m)
	return sb, nil
}

// watch ends the sandbox as failed if its VM goes away on its own.
func (s *Service) watch(b *box, m Machine) {
	select {
	case <-m.Done():
		b.mu.Lock()
		pausing := b.pausing
		b.mu.Unlock()
		if !pausing { // a pause stops the VM on purpose
			s.end(b, model.SandboxFailed, "the sandbox's VM stopped unexpectedly")
		}
	case <-b.ended:
	}
}

// admit reserves capacity for b and makes it live.
func (s *Service) admit(b *box) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := b.sb.Spec.Resources
	switch {
	case s.closing:
		return ErrShuttingDown
	case len(s.live) >= s.cfg.MaxSandboxes:
		return fmt.Errorf("%w: %d of %d sandboxes are live", ErrBusy, len(s.live), s.cfg.MaxSandboxes)
	case s.usedMem+r.MemMB > s.cfg.MemBudgetMB:
		return fmt.Errorf("%w: %d MiB of the %d MiB memory budget are taken, %d more asked", ErrBusy, s.usedMem, s.cfg.MemBudgetMB, r.MemMB)
	case s.usedCPU+r.CPUs > s.cfg.CPUBudget:
		return fmt.Errorf("%w: %d of the %d vCPU budget are taken, %d more asked", ErrBusy, s.usedCPU, s.cfg.CPUBudget, r.CPUs)
	}
	s.usedMem += r.MemMB
	s.usedCPU += r.CPUs
	s.live[b.sb.ID] = b
	return nil
}

func (s *Service) release(b *box) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live[b.sb.ID] != b {
		return
	}
	delete(s.live, b.sb.ID)
	s.usedMem -= b.sb.Spec.Resources.MemMB
	s.usedCPU -= b.sb.Spec.Resources.CPUs
}

// end moves a live sandbox to a terminal state, exactly once: stopping (persisted), the
// VM stopped, then the final state (persisted), then its capacity released. Later calls
// wait for the first to finish.
func (s *Service) end(b *box, final model.SandboxState, reason string) {
	b.mu.Lock()
	// A pause under way is let finish: a paused box is not ended here (a server
	// shutting down leaves it paused); a refused pause leaves it running, to end now.
	for b.pausing {
		done := b.pauseDone
		b.mu.Unlock()
		<-done
		b.mu.Lock()
	}
	if b.ending || b.sb.State == model.SandboxPaused {
		b.mu.Unlock()
		<-b.ended
		return
	}
	b.ending = true
	if b.timer != nil {
		b.timer.Stop()
	}
	m := b.m
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.TeardownTimeout)
	defer cancel()
	if b.sb.State != model.SandboxStarting || m != nil {
		b.sb.State = model.SandboxStopping
		sb := b.copyLocked()
		b.mu.Unlock()
		if err := s.st.UpdateSandbox(ctx, sb); err != nil {
			s.log.Error("persisting stopping sandbox", "sandbox", sb.ID, "err", err)
		}
	} else {
		b.mu.Unlock()
	}
	if m != nil {
		if err := m.Stop(ctx); err != nil {
			s.log.Warn("stopping sandbox vm", "sandbox", b.sb.ID, "err", err)
		}
	}
	b.mu.Lock()
	now := time.Now().UTC()
	b.sb.State, b.sb.Error, b.sb.EndedAt = final, reason, &now
	sb := b.copyLocked()
	b.mu.Unlock()
	if err := s.st.UpdateSandbox(ctx, sb); err != nil {
		s.log.Error("persisting ended sandbox", "sandbox", sb.ID, "state", final, "err", err)
	}
	s.release(b)
	s.m.ended.WithLabelValues(string(final)).Inc()
	close(b.ended)
}

func (b *box) copyLocked() *model.Sandbox {
	sb := *b.sb
	sb.VM = maps.Clone(b.sb.VM)
	sb.Spec.Metadata = maps.Clone(b.sb.Spec.Metadata)
	sb.Spec.Env = nil
	return &sb
}

func (b *box) expires() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.ExpiresAt
}

func (s *Service) lookup(id string) *box {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live[id]
}

// Get returns a sandbox, live or ended.
func (s *Service) Get(ctx context.Context, id string) (*model.Sandbox, error) {
	if b := s.lookup(id); b != nil {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.copyLocked(), nil
	}
	return s.st.GetSandbox(ctx, id)
}

// List returns a page of sandboxes (newest first) and whether more follow.
func (s *Service) List(ctx context.Context, f store.SandboxFilter) ([]*model.Sandbox, bool, error) {
	list, more, err := s.st.ListSandboxes(ctx, f)
	if err != nil {
		return nil, false, err
	}
	// Live ones are fresher in memory (expiry moves with SetTimeout).
	for i, sb := range list {
		if b := s.lookup(sb.ID); b != nil {
			b.mu.Lock()
			list[i] = b.copyLocked()
			b.mu.Unlock()
		}
	}
	return list, more, nil
}

// Kill stops a live sandbox and returns it ended. ErrEnded if it had already ended.
func (s *Service) Kill(ctx context.Context, id string) (*model.Sandbox, error) {
	b := s.lookup(id)
	if b != nil {
		b.mu.Lock()
		pausing, done := b.pausing, b.pauseDone
		b.mu.Unlock()
		if pausing { // let the pause finish, then kill what it left: paused or running
			select {
			case <-done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			b = s.lookup(id)
		}
	}
	if b == nil {
		return s.killPaused(ctx, id)
	}
	b.mu.Lock()
	if b.m == nil && !b.ending {
		// Still booting: Create stops it as soon as its VM is up.
		b.killed = true
		b.mu.Unlock()
	} else {
		b.mu.Unlock()
		s.end(b, model.SandboxKilled, "killed by request")
	}
	select {
	case <-b.ended:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.st.GetSandbox(ctx, id)
}

// SetTimeout makes a live sandbox end seconds from now.
func (s *Service) SetTimeout(ctx context.Context, id string, seconds int) (*model.Sandbox, error) {
	if seconds < 1 || seconds > model.MaxSandboxTimeoutS {
		return nil, invalid("timeout_s", "timeout_s must be between 1 and %d, got %d", model.MaxSandboxTimeoutS, seconds)
	}
	b, err := s.running(ctx, id)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	if b.ending {
		b.mu.Unlock()
		return nil, fmt.Errorf("%w (it is stopping)", ErrEnded)
	}
	b.sb.ExpiresAt = time.Now().UTC().Add(time.Duration(seconds) * time.Second)
	b.timer.Reset(time.Until(b.sb.ExpiresAt))
	sb := b.copyLocked()
	b.mu.Unlock()
	if err := s.st.UpdateSandbox(ctx, sb); err != nil {
		return nil, err
	}
	return sb, nil
}

// running returns the live box of a running sandbox, or why there is none.
func (s *Service) running(ctx context.Context, id string) (*box, error) {
	b := s.lookup(id)
	if b == nil {
		sb, err := s.st.GetSandbox(ctx, id)
		if err != nil {
			return nil, err
		}
		if sb.State == model.SandboxPaused {
			if !sb.Spec.AutoResume {
				return nil, ErrPaused
			}
			if _, err := s.Resume(ctx, id, 0); err != nil {
				return nil, err
			}
			return s.running(ctx, id)
		}
		return nil, fmt.Errorf("%w (state %s)", ErrEnded, sb.State)
	}
	b.mu.Lock()
	state, pausing, done := b.sb.State, b.pausing, b.pauseDone
	usable := state == model.SandboxRunning && !b.ending && !pausing
	b.mu.Unlock()
	switch {
	case state.Terminal(): // ended, not yet out of the live set
		return nil, fmt.Errorf("%w (state %s)", ErrEnded, state)
	case (pausing || state == model.SandboxPaused) && done != nil:
		// A pause is under way, or has saved the VM and not yet left the live set: wait
		// for it, then answer for what it left (paused, resumed on demand, or running).
		select {
		case <-done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return s.running(ctx, id)
	case !usable:
		return nil, fmt.Errorf("%w (state %s)", ErrNotRunning, state)
	}
	return b, nil
}

// Session returns a running sandbox's agent session and its env (under which processes
// start).
func (s *Service) Session(ctx context.Context, id string) (*protocol.Session, map[string]string, error) {
	b, err := s.running(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.m.Session(), b.env, nil
}

// Shutdown refuses new sandboxes and kills the live ones.
func (s *Service) Shutdown(ctx context.Context) {
	s.mu.Lock()
	s.closing = true
	boxes := make([]*box, 0, len(s.live))
	for _, b := range s.live {
		boxes = append(boxes, b)
	}
	s.mu.Unlock()
	s.cancelBase() // boots in flight fail
	var wg sync.WaitGroup
	for _, b := range boxes {
		wg.Go(func() {
			b.mu.Lock()
			booting := b.m == nil
			b.mu.Unlock()
			if !booting {
				s.end(b, model.SandboxKilled, "the server shut down")
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// Load is the live sandboxes and the capacity they use.
type Load struct {
	Live        int `json:"live"`
	Max         int `json:"max"`
	MemMB       int `json:"mem_mb"`
	MemBudgetMB int `json:"mem_budget_mb"`
	CPUs        int `json:"cpus"`
	CPUBudget   int `json:"cpu_budget"`
}

// Load reports current use.
func (s *Service) Load() Load {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Load{Live: len(s.live), Max: s.cfg.MaxSandboxes, MemMB: s.usedMem, MemBudgetMB: s.cfg.MemBudgetMB,
		CPUs: s.usedCPU, CPUBudget: s.cfg.CPUBudget}
}

func (s *Service) liveByState() map[model.SandboxState]int {
	s.mu.Lock()
	boxes := make([]*box, 0, len(s.live))
	for _, b := range s.live {
		boxes = append(boxes, b)
	}
	s.mu.Unlock()
	out := map[model.SandboxState]int{}
	for _, b := range boxes {
		b.mu.Lock()
		out[b.sb.State]++
		b.mu.Unlock()
	}
	return out
}
