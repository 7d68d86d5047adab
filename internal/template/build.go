package template

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/layer"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
)

var imageKey = regexp.MustCompile(`^[0-9a-f]{16,64}$`)

// Sandboxes is what a build needs of the sandbox service: a VM from a template, its
// agent session, its end.
type Sandboxes interface {
	CreateInternal(ctx context.Context, spec model.SandboxSpec) (*model.Sandbox, error)
	Session(ctx context.Context, id string) (*protocol.Session, map[string]string, error)
	Kill(ctx context.Context, id string) (*model.Sandbox, error)
}

// Config sizes builds.
type Config struct {
	// ImagesDir holds the built-in templates' images (FROM base, python, node, go).
	ImagesDir string
	// AgentPath is the guest agent put into images the apt stage makes; CacheDir keeps
	// that stage's Debian trees (scripts/build-rootfs.sh's cache) and the stages' trees
	// the images are composed from ("": beside the registry, and the script's default).
	AgentPath string
	CacheDir  string
	// Timeout bounds one build (default 30 min); MaxImageBytes the finished tree (default
	// 4 GiB); BuildCPUs and BuildMemMB size the build VM (defaults 2 and 1024).
	Timeout       time.Duration
	MaxImageBytes int64
	BuildCPUs     int
	BuildMemMB    int
	// MaxCacheBytes bounds the step cache (default 8 GiB): the oldest steps go first.
	MaxCacheBytes int64
	// KeepBuilds is how many finished builds are remembered (default 50).
	KeepBuilds int
}

func (c *Config) defaults() {
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Minute
	}
	if c.MaxImageBytes <= 0 {
		c.MaxImageBytes = 4 << 30
	}
	if c.BuildCPUs <= 0 {
		c.BuildCPUs = 2
	}
	if c.BuildMemMB <= 0 {
		c.BuildMemMB = 1024
	}
	if c.MaxCacheBytes <= 0 {
		c.MaxCacheBytes = 8 << 30
	}
	if c.KeepBuilds <= 0 {
		c.KeepBuilds = 50
	}
}

// Builder runs template builds, one at a time (each boots a VM), and remembers the
// recent ones with their logs.
type Builder struct {
	cfg  Config
	reg  *Registry
	sbx  Sandboxes
	log  *slog.Logger
	sem  chan struct{}
	mu   sync.Mutex
	all  map[string]*Build
	list []*Build // by creation
	// InUse reports images (by SHA-256) that running or paused VMs still use, so GC
	// keeps them. Set before builds start.
	InUse func(sha string) bool
	wg    sync.WaitGroup
	stop  context.CancelFunc
	ctx   context.Context

	builds *prometheus.CounterVec
	steps  *prometheus.CounterVec
	secs   prometheus.Histogram
}

// RegisterMetrics exports the builder's counters: builds by outcome, steps by how they
// were had (ran, cached), and build seconds.
func (b *Builder) RegisterMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	return errors.Join(reg.Register(b.builds), reg.Register(b.steps), reg.Register(b.secs))
}

// NewBuilder makes a builder over reg.
func NewBuilder(cfg Config, reg *Registry, sbx Sandboxes, log *slog.Logger) *Builder {
	cfg.defaults()
	if log == nil {
		log = slog.Default()
	}
	ctx, stop := context.WithCancel(context.Background())
	b := &Builder{cfg: cfg, reg: reg, sbx: sbx, log: log, sem: make(chan struct{}, 1), all: map[string]*Build{}, ctx: ctx, stop: stop,
		builds: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vulcan_template_builds_total",
			Help: "Template builds, by outcome (ready, failed)."}, []string{"outcome"}),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vulcan_template_build_steps_total",
			Help: "Template build steps, by how they were had (ran, cached)."}, []string{"how"}),
		secs: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "vulcan_template_build_seconds",
			Help: "Template build time, queued to ready or failed.", Buckets: prometheus.ExponentialBuckets(0.1, 2.5, 10)}),
	}
	for _, o := range []string{BuildReady, BuildFailed} {
		b.builds.WithLabelValues(o)
	}
	for _, h := range []string{"ran", "cached"} {
		b.steps.WithLabelValues(h)
	}
	return b
}

// Remove unregisters a template and reclaims its image unless a VM still uses it (it
// goes at a later GC, after that VM).
func (b *Builder) Remove(name string) error {
	if err := b.reg.Remove(name); err != nil {
		return err
	}
	b.reg.GC(b.InUse)
	return nil
}

// Registry is the builder's template registry.
func (b *Builder) Registry() *Registry { return b.reg }

// Close cancels builds in progress and waits for them to clean up.
func (b *Builder) Close() {
	b.stop()
	b.wg.Wait()
}

// Request is a build to run.
type Request struct {
	Name       string
	Dockerfile []byte
	// ContextDir holds the build context (the builder removes it when done); "" is an
	// empty context.
	ContextDir string
	Network    model.NetworkPolicy // the build VM's network; default egress
	BuildArgs  map[string]string
	// StartCmd and ReadyCmd override the Dockerfile's CMD and `# vulcan:ready`.
	StartCmd []string
	ReadyCmd string
	NoCache  bool
}

// Build states.
const (
	BuildQueued  = "queued"
	BuildRunning = "running"
	BuildReady   = "ready"
	BuildFailed  = "failed"
)

// Step states.
const (
	StepPending = "pending"
	StepRunning = "running"
	StepCached  = "cached"
	StepDone    = "done"
	StepFailed  = "failed"
)

// BuildInfo is a build as the API shows it.
type BuildInfo struct {
	ID        string       `json:"id"`
	Template  string       `json:"template"`
	State     string       `json:"state"`
	Error     string       `json:"error,omitempty"`
	Steps     []StepStatus `json:"steps"`
	CreatedAt time.Time    `json:"created_at"`
	EndedAt   *time.Time   `json:"ended_at,omitempty"`
	Seconds   float64      `json:"seconds"`
	// Cached counts steps taken from the cache; Ran those executed.
	Cached int `json:"cached"`
	Ran    int `json:"ran"`
}

// StepStatus is one step's progress. Index 0 is the stage the steps run on (the parent,
// or the parent plus its `vulcan:apt` packages).
type StepStatus struct {
	Index   int     `json:"index"`
	Line    int     `json:"line"`
	Text    string  `json:"text"`
	State   string  `json:"state"`
	Seconds float64 `json:"seconds"`
}

// Event is one entry of a build's log.
type Event struct {
	Seq  int       `json:"seq"`
	Time time.Time `json:"time"`
	// Type is "step" (Step changed state: StepStatus), "log" (Stream stdout, stderr or
	// build: Data) or "end" (the build ended: Build).
	Type   string      `json:"type"`
	Step   *StepStatus `json:"step,omitempty"`
	Stream string      `json:"stream,omitempty"`
	Data   string      `json:"data,omitempty"`
	Build  *BuildInfo  `json:"build,omitempty"`
}

// Build is a build in progress or done.
type Build struct {
	mu      sync.Mutex
	info    BuildInfo
	events  []Event
	bytes   int
	dropped int
	changed chan struct{}
}

// maxLogBytes bounds the log a build keeps; past it lines are counted, not kept (the end
// of a failed step's output is kept apart, in its error).
const maxLogBytes = 8 << 20

// Info returns the build's state.
func (bd *Build) Info() BuildInfo {
	bd.mu.Lock()
	defer bd.mu.Unlock()
	i := bd.info
	i.Steps = append([]StepStatus(nil), i.Steps...)
	return i
}

// Events returns the events after seq, a channel closed at the next change, and whether
// the build has ended (no more events will come).
func (bd *Build) Events(after int) ([]Event, <-chan struct{}, bool) {
	bd.mu.Lock()
	defer bd.mu.Unlock()
	var out []Event
	for _, e := range bd.events {
		if e.Seq > after {
			out = append(out, e)
		}
	}
	done := bd.info.State == BuildReady || bd.info.State == BuildFailed
	return out, bd.changed, done
}

func (bd *Build) emit(e Event) {
	bd.mu.Lock()
	defer bd.mu.Unlock()
	if e.Type == "log" {
		if bd.bytes+len(e.Data) > maxLogBytes {
			bd.dropped++
			return
		}
		bd.bytes += len(e.Data)
	}
	e.Seq = len(bd.events) + 1
	e.Time = time.Now().UTC()
	bd.events = append(bd.events, e)
	close(bd.changed)
	bd.changed = make(chan struct{})
}

func (bd *Build) logf(format string, args ...any) {
	bd.emit(Event{Type: "log", Stream: "build", Data: fmt.Sprintf(format, args...) + "\n"})
}

func (bd *Build) setStep(i int, state string, secs float64) {
	bd.mu.Lock()
	s := &bd.info.Steps[i]
	s.State, s.Seconds = state, secs
	switch {
	case i == 0: // the stage: not a step of the file
	case state == StepCached:
		bd.info.Cached++
	case state == StepDone:
		bd.info.Ran++
	}
	cp := *s
	bd.mu.Unlock()
	bd.emit(Event{Type: "step", Step: &cp})
}

// Get returns a build by id.
func (b *Builder) Get(id string) *Build {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.all[id]
}

// Builds lists the remembered builds, newest first.
func (b *Builder) Builds() []BuildInfo {
	b.mu.Lock()
	list := append([]*Build(nil), b.list...)
	b.mu.Unlock()
	out := make([]BuildInfo, 0, len(list))
	for i := len(list) - 1; i >= 0; i-- {
		out = append(out, list[i].Info())
	}
	return out
}

// plan is a parsed, resolved build.
type plan struct {
	req     Request
	df      *Dockerfile
	parent  *images.RootFS // what the steps run on before the apt stage
	runtime string
	inherit *Template // the parent when it is a user template
}

// Start checks a build (Dockerfile errors, unknown parent: a *LineError) and runs it in
// the background.
func (b *Builder) Start(req Request) (*Build, error) {
	p, err := b.plan(req)
	if err != nil {
		if req.ContextDir != "" {
			os.RemoveAll(req.ContextDir)
		}
		return nil, err
	}
	bd := &Build{changed: make(chan struct{})}
	bd.info = BuildInfo{ID: ulid.Make().String(), Template: req.Name, State: BuildQueued, CreatedAt: time.Now().UTC()}
	bd.info.Steps = append(bd.info.Steps, StepStatus{Index: 0, Line: p.df.FromLine, Text: "FROM " + p.df.From + aptText(p.df.Apt), State: StepPending})
	for i, s := range p.df.Steps {
		bd.info.Steps = append(bd.info.Steps, StepStatus{Index: i + 1, Line: s.Line, Text: s.Text, State: StepPending})
	}
	b.mu.Lock()
	b.all[bd.info.ID] = bd
	b.list = append(b.list, bd)
	for len(b.list) > b.cfg.KeepBuilds {
		old := b.list[0]
		if st := old.Info().State; st == BuildQueued || st == BuildRunning {
			break
		}
		delete(b.all, old.info.ID)
		b.list = b.list[1:]
	}
	b.mu.Unlock()
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.run(bd, p)
	}()
	return bd, nil
}

func aptText(pkgs []string) string {
	if len(pkgs) == 0 {
		return ""
	}
	return " + apt " + strings.Join(pkgs, " ")
}

func (b *Builder) plan(req Request) (*plan, error) {
	if !ValidName(req.Name) {
		if isBuiltin(req.Name) {
			return nil, fmt.Errorf("%w: %s", ErrBuiltin, req.Name)
		}
		return nil, fmt.Errorf("template name %q: want 1 to 63 lowercase letters, digits, - and _", req.Name)
	}
	df, err := ParseDockerfile(req.Dockerfile, req.BuildArgs)
	if err != nil {
		return nil, err
	}
	p := &plan{req: req, df: df}
	for _, s := range df.Steps {
		if s.Kind == StepCopy && req.ContextDir == "" {
			return nil, lineErr(s.Line, "COPY needs a build context: send one (a tar.gz body, or `vulcan template build --context DIR`)")
		}
	}
	if isBuiltin(df.From) {
		set := images.Load(b.cfg.ImagesDir)
		p.parent = set.RootFS[model.Runtime(df.From)]
		if p.parent == nil {
			return nil, lineErr(df.FromLine, "FROM %s: this host has no %s image (run `make images`)", df.From, df.From)
		}
		p.runtime = df.From
	} else {
		t, err := b.reg.Get(df.From)
		if err != nil {
			return nil, lineErr(df.FromLine, "FROM %s: no such template", df.From)
		}
		p.parent = b.reg.imageByKey(t.Image)
		if p.parent == nil {
			return nil, lineErr(df.FromLine, "FROM %s: its image is missing", df.From)
		}
		p.runtime, p.inherit = t.Runtime, t
		if len(df.Apt) > 0 {
			return nil, lineErr(df.AptLine, "vulcan:apt needs FROM a built-in template (base, python, node, go): put the packages in %s's Dockerfile", df.From)
		}
	}
	if len(df.Apt) > 0 && b.cfg.AgentPath == "" {
		return nil, lineErr(df.AptLine, "vulcan:apt: this server has no guest agent binary to put in a new image (set VULCAN_AGENT_BIN)")
	}
	if req.Network == "" {
		p.req.Network = model.NetworkEgress
	}
	return p, nil
}

// hashHex is the hex SHA-256 of parts joined by newlines, cut to 32 characters.
func hashHex(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		io.WriteString(h, p)
		h.Write([]byte{'\n'})
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// state is what the steps so far leave later ones: ARGs, ENV, WORKDIR, USER.
type state struct {
	Args    map[string]string `json:"args"`
	Env     map[string]string `json:"env"`
	Workdir string            `json:"workdir"`
	User    string            `json:"user"`
}

func (s state) env() map[string]string {
	out := map[string]string{}
	for k, v := range s.Args {
		out[k] = v
	}
	for k, v := range s.Env {
		out[k] = v
	}
	return out
}

func (b *Builder) run(bd *Build, p *plan) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.Timeout)
	defer cancel()
	defer func() {
		if p.req.ContextDir != "" {
			os.RemoveAll(p.req.ContextDir)
		}
	}()
	select {
	case b.sem <- struct{}{}:
	case <-ctx.Done():
		b.finish(bd, nil, fmt.Errorf("waiting for the build before it: %w", ctx.Err()), start)
		return
	}
	defer func() { <-b.sem }()
	bd.mu.Lock()
	bd.info.State = BuildRunning
	bd.mu.Unlock()
	t, err := b.build(ctx, bd, p)
	if err != nil && ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("the build took longer than %s: %w", b.cfg.Timeout, err)
	}
	b.finish(bd, t, err, start)
}

func (b *Builder) finish(bd *Build, t *Template, err error, start time.Time) {
	now := time.Now().UTC()
	bd.mu.Lock()
	bd.info.EndedAt = &now
	bd.info.Seconds = time.Since(start).Seconds()
	if err != nil {
		bd.info.State, bd.info.Error = BuildFailed, err.Error()
		for i := range bd.info.Steps {
			if bd.info.Steps[i].State == StepRunning {
				bd.info.Steps[i].State = StepFailed
			}
		}
	} else {
		bd.info.State = BuildReady
	}
	info := bd.info
	info.Steps = append([]StepStatus(nil), info.Steps...)
	bd.mu.Unlock()
	if err != nil {
		b.log.Warn("template build failed", "template", info.Template, "build", info.ID, "err", err)
	} else {
		b.log.Info("template built", "template", info.Template, "build", info.ID, "seconds", info.Seconds, "cached", info.Cached, "ran", info.Ran)
	}
	b.builds.WithLabelValues(info.State).Inc()
	b.steps.WithLabelValues("ran").Add(float64(info.Ran))
	b.steps.WithLabelValues("cached").Add(float64(info.Cached))
	b.secs.Observe(info.Seconds)
	bd.emit(Event{Type: "end", Build: &info})
	b.reg.GC(b.InUse)
}

func (b *Builder) build(ctx context.Context, bd *Build, p *plan) (*Template, error) {
	df := p.df
	// Stage 0: the image the steps run on.
	t0 := time.Now()
	stage, stageRef, err := b.stage(ctx, bd, p)
	if err != nil {
		return nil, fmt.Errorf("FROM (line %d): %w", df.FromLine, err)
	}
	st := state{Args: map[string]string{}, Env: map[string]string{}, Workdir: "/", User: "root"}
	if t := p.inherit; t != nil {
		for k, v := range t.Env {
			st.Env[k] = v
		}
		if t.Workdir != "" {
			st.Workdir = t.Workdir
		}
		if t.User != "" {
			st.User = t.User
		}
	}
	// Each step's key: the previous key, the step, the state it runs with and, for COPY,
	// what it copies. A step that writes no files keeps the diff of the step before.
	keys := make([]string, len(df.Steps)+1)
	keys[0] = hashHex("stage", stage.Manifest.SHA256)
	states := make([]state, len(df.Steps)+1)
	states[0] = cloneState(st)
	diffOf := make([]int, len(df.Steps)+1) // the step whose diff holds step i's files
	copies := make([][]copySource, len(df.Steps)+1)
	for i, s := range df.Steps {
		n := i + 1
		extra := ""
		if s.Kind == StepCopy {
			srcs, h, err := resolveCopy(p.req.ContextDir, s, st.Workdir)
			if err != nil {
				return nil, lineErr(s.Line, "%v", err)
			}
			copies[n], extra = srcs, h
		}
		sj, _ := json.Marshal(s)
		stj, _ := json.Marshal(st)
		// The line number is not part of the key: moving a step does not rebuild it.
		keys[n] = hashHex(keys[n-1], strings.Replace(string(sj), fmt.Sprintf(`"line":%d,`, s.Line), "", 1), string(stj), extra)
		diffOf[n] = diffOf[n-1]
		if s.ChangesFiles() {
			diffOf[n] = n
		}
		st = apply(st, s)
		states[n] = cloneState(st)
	}
	finalKey := hashHex(keys[len(df.Steps)], "image")
	if len(df.Steps) == 0 || diffOf[len(df.Steps)] == 0 {
		finalKey = "" // no step writes files: the stage is the image
	}
	bd.setStep(0, StepDone, time.Since(t0).Seconds())
	defer b.reg.pin(finalKey, keyOfImage(stage), hashHex("builtin", stage.Manifest.SHA256))()

	// Which steps the cache has: the longest prefix whose last file-writing step's diff
	// is stored (or the finished image itself).
	cached := 0
	var image *images.RootFS
	if finalKey == "" {
		image, cached = stage, len(df.Steps)
	} else if !p.req.NoCache {
		if image = b.reg.imageByKey(finalKey); image != nil {
			cached = len(df.Steps)
		} else {
			// The longest prefix ending in a stored diff, with the steps after it that
			// write no files (they only change the state).
			for n := len(df.Steps); n > 0; n-- {
				if d := diffOf[n]; d > 0 && fileExists(b.cachePath(keys[d])) {
					cached = n
					break
				}
			}
		}
	}
	for n := 1; n <= cached; n++ {
		bd.setStep(n, StepCached, 0)
	}
	if image == nil {
		tree := b.stageTree(stage)
		if cached == len(df.Steps) && tree != "" {
			bd.logf("every step is cached: making the image from the stage's tree and the cached changes")
		} else if err := b.runSteps(ctx, bd, p, stage, stageRef, keys, states, diffOf, copies, cached); err != nil {
			return nil, err
		}
		if image, err = b.compose(ctx, bd, p, stage, b.cachePath(keys[diffOf[len(df.Steps)]]), finalKey); err != nil {
			return nil, err
		}
	}
	t := &Template{Name: p.req.Name, From: df.From, Runtime: p.runtime, Image: keyOfImage(image), ImageSHA256: image.Manifest.SHA256,
		SizeBytes: image.Manifest.SizeBytes, Env: st.Env, Workdir: st.Workdir, User: st.User, Apt: df.Apt,
		BuildID: bd.info.ID, Steps: len(df.Steps), Dockerfile: string(p.req.Dockerfile), CreatedAt: time.Now().UTC()}
	if t.Workdir == "/" {
		t.Workdir = ""
	}
	// The build's steps run as root unless USER says; the sandboxes' processes keep
	// Vulcan's default (user) unless the Dockerfile (or its parent) named one.
	named := p.inherit != nil && p.inherit.User != ""
	for _, s := range df.Steps {
		named = named || s.Kind == StepUser
	}
	if !named {
		t.User = ""
	}
	if p.inherit != nil {
		t.StartCmd, t.ReadyCmd = p.inherit.StartCmd, p.inherit.ReadyCmd
	}
	if len(df.StartCmd) > 0 {
		t.StartCmd, t.ReadyCmd = df.StartCmd, df.ReadyCmd
	}
	if len(p.req.StartCmd) > 0 {
		t.StartCmd = p.req.StartCmd
	}
	if p.req.ReadyCmd != "" {
		t.ReadyCmd = p.req.ReadyCmd
	}
	if t.Image == "" {
		// A built-in image with no step writing files: the template still gets its own
		// image file (a hard link or copy), so removing it never touches the built-in.
		key := hashHex("builtin", image.Manifest.SHA256)
		if b.reg.imageByKey(key) == nil {
			if err := b.putImage(key, image.Path, image.Manifest, false); err != nil {
				return nil, err
			}
		}
		t.Image = key
	}
	if err := b.reg.Put(t); err != nil {
		return nil, err
	}
	return t, nil
}

// keyOfImage is the registry key of an image it stores ("" for a built-in's).
func keyOfImage(fs *images.RootFS) string {
	dir, file := filepath.Split(fs.Path)
	if filepath.Base(filepath.Clean(dir)) != "images" || !strings.HasSuffix(file, ".ext4") {
		return ""
	}
	key := strings.TrimSuffix(file, ".ext4")
	if !imageKey.MatchString(key) {
		return ""
	}
	return key
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func cloneState(s state) state {
	c := state{Args: map[string]string{}, Env: map[string]string{}, Workdir: s.Workdir, User: s.User}
	for k, v := range s.Args {
		c.Args[k] = v
	}
	for k, v := range s.Env {
		c.Env[k] = v
	}
	return c
}

func apply(st state, s Step) state {
	st = cloneState(st)
	switch s.Kind {
	case StepEnv:
		for _, kv := range s.Vars {
			st.Env[kv[0]] = kv[1]
		}
	case StepArg:
		for _, kv := range s.Vars {
			st.Args[kv[0]] = kv[1]
		}
	case StepWorkdir:
		st.Workdir = s.Dir
	case StepUser:
		st.User = s.User
	}
	return st
}

func (b *Builder) cachePath(key string) string {
	return filepath.Join(b.reg.dir, "cache", key+".tar")
}

// stage returns the image the steps run on and the template name that boots it.
func (b *Builder) stage(ctx context.Context, bd *Build, p *plan) (*images.RootFS, model.Runtime, error) {
	if len(p.df.Apt) == 0 {
		if p.inherit != nil {
			return p.parent, ImageRef(p.inherit.Image), nil
		}
		return p.parent, model.Runtime(p.df.From), nil
	}
	script := images.RootFSScript
	agentSHA, err := fileSHA(b.cfg.AgentPath)
	if err != nil {
		return nil, "", fmt.Errorf("the guest agent %s: %w", b.cfg.AgentPath, err)
	}
	key := hashHex("apt", p.runtime, strings.Join(p.df.Apt, ","), string(script), agentSHA)
	if fs := b.reg.imageByKey(key); fs != nil {
		bd.logf("apt stage %s: cached (%s)", strings.Join(p.df.Apt, " "), key)
		return fs, ImageRef(key), nil
	}
	bd.logf("apt stage: mmdebstrap %s with %s", p.runtime, strings.Join(p.df.Apt, " "))
	work, err := os.MkdirTemp(filepath.Join(b.reg.dir, "work"), "apt-")
	if err != nil {
		return nil, "", err
	}
	defer os.RemoveAll(work)
	sp := filepath.Join(work, "build-rootfs.sh")
	if err := os.WriteFile(sp, script, 0o755); err != nil {
		return nil, "", err
	}
	cmd := exec.CommandContext(ctx, "bash", sp, p.runtime, b.cfg.AgentPath, work)
	cmd.Env = append(os.Environ(), "VULCAN_ROOTFS_EXTRA="+strings.Join(p.df.Apt, ","), "VULCAN_ROOTFS_NAME="+key)
	if b.cfg.CacheDir != "" {
		cmd.Env = append(cmd.Env, "VULCAN_CACHE_DIR="+b.cfg.CacheDir)
	}
	w := &lineWriter{emit: func(s string) { bd.emit(Event{Type: "log", Stream: "build", Data: s}) }}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		w.Flush()
		return nil, "", fmt.Errorf("apt stage (mmdebstrap) failed: %v; last output: %s", err, w.Tail())
	}
	w.Flush()
	var m images.RootFSManifest
	if err := readJSON(filepath.Join(work, "rootfs-"+key+".json"), &m); err != nil {
		return nil, "", fmt.Errorf("apt stage: %w", err)
	}
	m.Kind = StageKind
	if err := b.storeImage(ctx, key, filepath.Join(work, "rootfs-"+key+".ext4"), m); err != nil {
		return nil, "", err
	}
	return b.reg.imageByKey(key), ImageRef(key), nil
}

// storeImage moves an image file a build made into the registry under key.
func (b *Builder) storeImage(ctx context.Context, key, src string, m images.RootFSManifest) error {
	return b.putImage(key, src, m, true)
}

// putImage stores an image under key: moved (a file the build made) or linked or copied
// (someone else's, which stays).
func (b *Builder) putImage(key, src string, m images.RootFSManifest, move bool) error {
	dst := b.reg.ImagePath(key)
	tmp := filepath.Join(b.reg.dir, "images", ".tmp-"+key)
	os.Remove(tmp)
	var err error
	if move {
		err = os.Rename(src, tmp)
	} else {
		err = os.Link(src, tmp)
	}
	if err != nil {
		if err := copyFile(src, tmp); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	m.Key = key
	if err := writeJSON(filepath.Join(b.reg.dir, "images"), filepath.Join(b.reg.dir, "images", key+".json"), m); err != nil {
		os.Remove(dst)
		return err
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func fileSHA(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// runSteps boots the build VM on the stage, keeps the stage's tree on the host the first
// time, puts the cached prefix back, and runs the rest, caching each file-writing step's
// diff (the last one is what compose applies).
func (b *Builder) runSteps(ctx context.Context, bd *Build, p *plan, stage *images.RootFS, stageRef model.Runtime, keys []string, states []state,
	diffOf []int, copies [][]copySource, cached int) error {
	df := p.df
	bd.logf("booting a build VM from %s (network %s)", df.From, p.req.Network)
	sb, err := b.sbx.CreateInternal(ctx, model.SandboxSpec{Template: stageRef, Network: p.req.Network,
		Resources: model.Resources{CPUs: b.cfg.BuildCPUs, MemMB: b.cfg.BuildMemMB},
		TimeoutS:  int(b.cfg.Timeout / time.Second), Metadata: map[string]string{"vulcan.build": bd.info.ID, "vulcan.template": p.req.Name}})
	if err != nil {
		return fmt.Errorf("the build VM: %w", err)
	}
	defer func() {
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		b.sbx.Kill(kctx, sb.ID)
	}()
	sess, _, err := b.sbx.Session(ctx, sb.ID)
	if err != nil {
		return err
	}
	if b.stageTree(stage) == "" {
		t := time.Now()
		if err := b.saveStageTree(ctx, sess, stage); err != nil {
			return fmt.Errorf("keeping the stage's file system: %w", err)
		}
		bd.logf("kept the stage's file system on the host (%.1fs; later builds on it skip this)", time.Since(t).Seconds())
	}
	if d := diffOf[cached]; d > 0 && cached < len(df.Steps) {
		f, err := os.Open(b.cachePath(keys[d]))
		if err != nil {
			return err
		}
		err = applyTar(ctx, sess, "/", protocol.LayerDiff, nil, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("restoring the cached steps: %w", err)
		}
	}
	for n := cached + 1; n <= len(df.Steps); n++ {
		s := df.Steps[n-1]
		st := states[n-1]
		t := time.Now()
		bd.setStep(n, StepRunning, 0)
		bd.logf("[%d/%d] %s", n, len(df.Steps), s.Text)
		var err error
		switch s.Kind {
		case StepRun:
			err = b.runCommand(ctx, bd, sess, s, st)
		case StepCopy:
			err = copyInto(ctx, sess, p.req.ContextDir, copies[n], s)
		case StepWorkdir:
			err = b.runCommand(ctx, bd, sess, Step{Argv: []string{"mkdir", "-p", s.Dir}}, state{Workdir: "/", User: "root"})
		}
		if err != nil {
			bd.setStep(n, StepFailed, time.Since(t).Seconds())
			return lineErr(s.Line, "%s: %v", s.Kind, err)
		}
		if s.ChangesFiles() {
			if err := b.saveDiff(ctx, sess, keys[n]); err != nil {
				bd.setStep(n, StepFailed, time.Since(t).Seconds())
				return fmt.Errorf("caching step %d: %w", n, err)
			}
		}
		bd.setStep(n, StepDone, time.Since(t).Seconds())
	}
	return nil
}

func (b *Builder) runCommand(ctx context.Context, bd *Build, sess *protocol.Session, s Step, st state) error {
	argv := s.Argv
	if len(argv) == 0 {
		argv = []string{"/bin/sh", "-c", s.Shell}
	}
	cwd := st.Workdir
	if cwd == "" {
		cwd = "/"
	}
	stream, _, err := sess.Open(ctx, &protocol.Request{Op: protocol.OpProcessStart, Process: &protocol.ProcessSpec{
		Argv: argv, Env: st.env(), Cwd: cwd, User: st.User}})
	if err != nil {
		return err
	}
	defer stream.Close()
	stop := context.AfterFunc(ctx, func() { stream.SetDeadline(time.Now()) })
	defer stop()
	tail := &tailBuf{max: 4096}
	for {
		ev, err := stream.Event()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("the build VM's agent: %w", err)
		}
		if o := ev.Output; o != nil {
			data := o.Data
			if !o.Partial {
				data += "\n" // a whole line comes without its newline
			}
			bd.emit(Event{Type: "log", Stream: o.Stream, Data: data})
			tail.Write([]byte(data))
		}
		if x := ev.Exit; x != nil {
			if x.Code != 0 || x.Error != "" {
				msg := fmt.Sprintf("exited with %d", x.Code)
				if x.Error != "" {
					msg = x.Error
				}
				if t := strings.TrimSpace(tail.String()); t != "" {
					msg += "; output ends: " + t
				}
				return errors.New(msg)
			}
			return nil
		}
	}
}

// saveDiff stores the build VM's changes so far as step key's cache entry.
func (b *Builder) saveDiff(ctx context.Context, sess *protocol.Session, key string) error {
	tmp, err := os.CreateTemp(filepath.Join(b.reg.dir, "cache"), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := archive(ctx, sess, protocol.LayerDiff, tmp, b.cfg.MaxImageBytes); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	// Read it back through tar to know it is whole (a guest that stopped midway sends a
	// tar without its end).
	if err := checkTar(tmp.Name()); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), b.cachePath(key)); err != nil {
		return err
	}
	b.trimCache()
	return nil
}

// checkTar reads a stored tar to its end: a cut stream fails here.
func checkTar(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		_, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("the build VM sent a broken layer: %w", err)
		}
	}
}

// trimCache removes the oldest step diffs past MaxCacheBytes.
func (b *Builder) trimCache() {
	files, _ := filepath.Glob(filepath.Join(b.reg.dir, "cache", "*.tar"))
	type f struct {
		p string
		t time.Time
		n int64
	}
	var all []f
	var total int64
	for _, p := range files {
		if fi, err := os.Stat(p); err == nil {
			all = append(all, f{p, fi.ModTime(), fi.Size()})
			total += fi.Size()
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].t.Before(all[j].t) })
	for _, x := range all {
		if total <= b.cfg.MaxCacheBytes {
			break
		}
		os.Remove(x.p)
		total -= x.n
	}
}

// archive streams fs.archive's tar into w, at most max bytes.
func archive(ctx context.Context, sess *protocol.Session, kind string, w io.Writer, max int64) error {
	st, _, err := sess.Open(ctx, &protocol.Request{Op: protocol.OpFSArchive, Layer: kind, User: "root"})
	if err != nil {
		return err
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Now()) })
	defer stop()
	n, err := io.Copy(w, io.LimitReader(st, max+1))
	if err != nil {
		return err
	}
	if n > max {
		return fmt.Errorf("the file system is larger than the %d MiB a template may be", max>>20)
	}
	return nil
}

// applyTar sends a tar to fs.apply.
func applyTar(ctx context.Context, sess *protocol.Session, dir, kind string, owner *protocol.FileOwner, r io.Reader) error {
	st, _, err := sess.Open(ctx, &protocol.Request{Op: protocol.OpFSApply, Path: dir, Layer: kind, Owner: owner, User: "root"})
	if err != nil {
		return err
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Now()) })
	defer stop()
	if _, err := io.Copy(st, r); err != nil {
		// The guest may have refused midway: its answer says why.
		if resp, rerr := st.Response(); rerr == nil && resp.Error != nil {
			return resp.Error
		}
		return err
	}
	if err := st.CloseWrite(); err != nil {
		return err
	}
	resp, err := st.Response()
	if err != nil {
		return err
	}
	if resp.Error != nil {
		return resp.Error
	}
	return nil
}

// maxStageTrees bounds the stage trees kept on the host (each is a whole root file
// system): the least recently used go first.
const maxStageTrees = 4

// treesDir keeps stage trees: in the host's cache dir when there is one (content-addressed,
// so every server on the host shares them), else beside the registry.
func (b *Builder) treesDir() string {
	if b.cfg.CacheDir != "" {
		return filepath.Join(b.cfg.CacheDir, "template-trees")
	}
	return filepath.Join(b.reg.dir, "trees")
}

// stageTree is the host's copy of a stage image's tree, "" when it has none.
func (b *Builder) stageTree(stage *images.RootFS) string {
	dir := filepath.Join(b.treesDir(), stage.Manifest.SHA256)
	if !fileExists(filepath.Join(dir, ".complete")) {
		return ""
	}
	now := time.Now()
	os.Chtimes(dir, now, now) // recently used
	return filepath.Join(dir, "tree")
}

// saveStageTree reads the build VM's tree as it booted (no step has run) into the
// host's stage tree cache.
func (b *Builder) saveStageTree(ctx context.Context, sess *protocol.Session, stage *images.RootFS) error {
	trees := b.treesDir()
	if err := os.MkdirAll(trees, 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(trees, ".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	tree := filepath.Join(tmp, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		return err
	}
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := archive(ctx, sess, protocol.LayerTree, pw, b.cfg.MaxImageBytes+64<<20)
		pw.CloseWithError(err)
		errc <- err
	}()
	_, err = layer.Apply(ctx, pr, tree, layer.Options{KeepOwners: true, Limits: layer.Limits{MaxBytes: b.cfg.MaxImageBytes}})
	pr.CloseWithError(errors.New("stopped reading"))
	if aerr := <-errc; err == nil && aerr != nil {
		err = aerr
	}
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o600); err != nil {
		return err
	}
	dst := filepath.Join(trees, stage.Manifest.SHA256)
	if err := os.Rename(tmp, dst); err != nil {
		if b.stageTree(stage) != "" {
			return nil // another build (this server's or another's on the host) kept it first
		}
		return err
	}
	// The least recently used trees past the cap go.
	dirs, _ := filepath.Glob(filepath.Join(trees, "[0-9a-f]*"))
	sort.Slice(dirs, func(i, j int) bool { return modTime(dirs[i]).After(modTime(dirs[j])) })
	for _, d := range dirs[min(len(dirs), maxStageTrees):] {
		os.RemoveAll(d)
	}
	return nil
}

func modTime(p string) time.Time {
	fi, err := os.Stat(p)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

// compose makes the image: a copy of the stage's tree with the build's changes (a diff
// from the step cache) applied, as ext4.
func (b *Builder) compose(ctx context.Context, bd *Build, p *plan, stage *images.RootFS, diff, key string) (*images.RootFS, error) {
	t := time.Now()
	src := b.stageTree(stage)
	if src == "" {
		return nil, errors.New("the stage's tree went from the host's cache during the build")
	}
	work, err := os.MkdirTemp(filepath.Join(b.reg.dir, "work"), "tree-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	tree := filepath.Join(work, "tree")
	if out, err := exec.CommandContext(ctx, "cp", "-a", "--reflink=auto", src, tree).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copying the stage's tree: %v: %s", err, bytes.TrimSpace(out))
	}
	f, err := os.Open(diff)
	if err != nil {
		return nil, err
	}
	stats, err := layer.Apply(ctx, f, tree, layer.Options{Whiteouts: true, KeepOwners: true, Limits: layer.Limits{MaxBytes: b.cfg.MaxImageBytes}})
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("applying the build's changes: %w", err)
	}
	usedKB, err := duKB(tree)
	if err != nil {
		return nil, err
	}
	if usedKB<<10 > b.cfg.MaxImageBytes {
		return nil, fmt.Errorf("the image would hold %d MiB, more than the %d MiB a template may", usedKB>>10, b.cfg.MaxImageBytes>>20)
	}
	img := filepath.Join(work, "image.ext4")
	sizeMB := usedKB*115/100/1024 + 64
	out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-d", tree, "-L", "vulcan-tpl", "-O", "^has_journal", "-m", "0",
		"-E", "root_owner=0:0", img, strconv.FormatInt(sizeMB, 10)+"M").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("mkfs.ext4: %v: %s", err, bytes.TrimSpace(out))
	}
	sha, err := fileSHA(img)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(img)
	if err != nil {
		return nil, err
	}
	pm := stage.Manifest
	m := images.RootFSManifest{Kind: "rootfs", Runtime: p.runtime, RuntimeVersion: pm.RuntimeVersion, AgentVersion: pm.AgentVersion,
		AgentSHA256: pm.AgentSHA256, Suite: pm.Suite, SizeBytes: fi.Size(), UsedBytes: usedKB << 10, SHA256: sha,
		BuiltAt: time.Now().UTC().Format(time.RFC3339)}
	if err := b.storeImage(ctx, key, img, m); err != nil {
		return nil, err
	}
	bd.logf("image %s: %d MiB (%d changes applied to the stage's tree, %.1fs)", key, fi.Size()>>20, stats.Entries, time.Since(t).Seconds())
	return b.reg.imageByKey(key), nil
}

func duKB(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		total += (fi.Size() + 4095) / 4096 * 4
		return nil
	})
	return total, err
}

// copySource is one file COPY sends: where it is in the context and where it goes.
type copySource struct {
	src, dst string // context-relative; guest path relative to /
}

// resolveCopy lists what a COPY step sends, with Docker's rules: a directory's contents go
// into the destination; a file goes to dest, or into it when dest ends in / or several
// sources are named. Globs match in the context. It returns the files and their hash
// (names, modes, bytes).
func resolveCopy(ctxDir string, s Step, workdir string) ([]copySource, string, error) {
	if ctxDir == "" {
		return nil, "", fmt.Errorf("COPY needs a build context (none was sent)")
	}
	root, err := os.OpenRoot(ctxDir)
	if err != nil {
		return nil, "", err
	}
	defer root.Close()
	dest := s.Dest
	if !path.IsAbs(dest) {
		dest = path.Join(workdir, dest)
	}
	dirDest := strings.HasSuffix(s.Dest, "/") || len(s.Sources) > 1
	var matches []string
	for _, src := range s.Sources {
		if strings.ContainsAny(src, "*?[") {
			m, err := fs.Glob(root.FS(), src)
			if err != nil || len(m) == 0 {
				return nil, "", fmt.Errorf("COPY %s matches nothing in the context", src)
			}
			if len(m) > 1 {
				dirDest = true
			}
			matches = append(matches, m...)
			continue
		}
		matches = append(matches, src)
	}
	var out []copySource
	h := sha256.New()
	for _, m := range matches {
		fi, err := root.Lstat(m)
		if err != nil {
			return nil, "", fmt.Errorf("COPY %s: not in the build context", m)
		}
		if fi.IsDir() {
			err := fs.WalkDir(root.FS(), m, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				rel := strings.TrimPrefix(strings.TrimPrefix(p, m), "/")
				if m == "." {
					rel = p
					if p == "." {
						rel = ""
					}
				}
				out = append(out, copySource{src: p, dst: strings.TrimPrefix(path.Join(dest, rel), "/")})
				return nil
			})
			if err != nil {
				return nil, "", err
			}
			continue
		}
		dst := dest
		if dirDest {
			dst = path.Join(dest, path.Base(m))
		}
		out = append(out, copySource{src: m, dst: strings.TrimPrefix(dst, "/")})
	}
	for _, c := range out {
		fi, err := root.Lstat(c.src)
		if err != nil {
			return nil, "", err
		}
		fmt.Fprintf(h, "%s %s %v %d\n", c.src, c.dst, fi.Mode(), fi.Size())
		switch {
		case fi.Mode().IsRegular():
			f, err := root.Open(c.src)
			if err != nil {
				return nil, "", err
			}
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return nil, "", err
			}
		case fi.Mode()&fs.ModeSymlink != 0:
			l, _ := root.Readlink(c.src)
			fmt.Fprintf(h, "-> %s\n", l)
		}
	}
	fmt.Fprintf(h, "chown=%s chmod=%o\n", s.Chown, s.Chmod)
	return out, hex.EncodeToString(h.Sum(nil)), nil
}

// copyInto sends a COPY step's files to the build VM as one tar, owned by root (or
// --chown's user), with their modes (or --chmod's).
func copyInto(ctx context.Context, sess *protocol.Session, ctxDir string, srcs []copySource, s Step) error {
	root, err := os.OpenRoot(ctxDir)
	if err != nil {
		return err
	}
	defer root.Close()
	owner := &protocol.FileOwner{}
	if s.Chown == "user" {
		owner = &protocol.FileOwner{UID: 1000, GID: 1000}
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(func() error {
			tw := tar.NewWriter(pw)
			for _, c := range srcs {
				if c.dst == "" {
					continue // the destination is / itself
				}
				fi, err := root.Lstat(c.src)
				if err != nil {
					return err
				}
				link := ""
				if fi.Mode()&fs.ModeSymlink != 0 {
					if link, err = root.Readlink(c.src); err != nil {
						return err
					}
				}
				h, err := tar.FileInfoHeader(fi, link)
				if err != nil {
					continue // sockets and the like
				}
				h.Name, h.Uname, h.Gname, h.Format = c.dst, "", "", tar.FormatPAX
				if fi.IsDir() {
					h.Name += "/"
				}
				if s.Chmod != 0 && fi.Mode()&fs.ModeSymlink == 0 {
					h.Mode = int64(s.Chmod)
				}
				if err := tw.WriteHeader(h); err != nil {
					return err
				}
				if fi.Mode().IsRegular() {
					f, err := root.Open(c.src)
					if err != nil {
						return err
					}
					_, err = io.CopyN(tw, f, h.Size)
					f.Close()
					if err != nil {
						return err
					}
				}
			}
			return tw.Close()
		}())
	}()
	err = applyTar(ctx, sess, "/", "", owner, pr)
	pr.CloseWithError(errors.New("stopped"))
	return err
}

// lineWriter turns a command's output into log lines, keeping the last ones.
type lineWriter struct {
	emit func(string)
	buf  []byte
	tail tailBuf
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.tail.max = 4096
	w.tail.Write(p)
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.emit(string(w.buf[:i+1]))
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 64<<10 {
		w.Flush()
	}
	return len(p), nil
}

func (w *lineWriter) Flush() {
	if len(w.buf) > 0 {
		w.emit(string(w.buf))
		w.buf = nil
	}
}

func (w *lineWriter) Tail() string { return strings.TrimSpace(w.tail.String()) }

// tailBuf keeps the last max bytes written.
type tailBuf struct {
	max int
	b   []byte
}

func (t *tailBuf) Write(p []byte) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
}

func (t *tailBuf) String() string { return string(t.b) }
