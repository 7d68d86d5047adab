package engine

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime/debug"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/store"
)

// Errors callers map to responses. Their texts (and what wraps them) are safe to show users.
var (
	// ErrInvalid wraps every validation failure of a submitted spec.
	ErrInvalid = errors.New("invalid request")
	// ErrNotFound is returned for an unknown workload id.
	ErrNotFound = store.ErrNotFound
	// ErrBusy is returned when every run slot and queue slot is taken; nothing was stored.
	ErrBusy = errors.New("too many workloads running or queued; retry later")
	// ErrTerminal is returned when killing a workload that has already ended.
	ErrTerminal = errors.New("workload has already finished")
	// ErrShuttingDown is returned for submissions after Shutdown began.
	ErrShuttingDown = errors.New("server is shutting down")
)

// RestartReason is the error given to workloads a previous process left unfinished.
const RestartReason = "server restarted while the workload was pending or running; it was not completed"

var (
	errTimeout  = errors.New("timeout")
	errKilled   = errors.New("killed")
	errShutdown = errors.New("shutdown")
)

// Config sizes the engine.
type Config struct {
	MaxConcurrent int // workloads executing at once; default 2
	QueueSize     int // admitted workloads waiting for a slot; default 64, 0 allowed via -1
	OutputLimit   int // bytes of stdout+stderr kept per workload (newlines counted); default 1 MiB
	// OutputLineLimit caps the lines of stdout+stderr kept per workload (an empty line
	// costs one byte, so the byte cap alone admits a million of them); default 100,000.
	OutputLineLimit int
	Limits          model.Limits // resource defaults and bounds; zero means model.DefaultLimits
	// LogFlushInterval is how often live log lines are written to the store; default 200ms.
	LogFlushInterval time.Duration
	// TeardownTimeout bounds each backend Cleanup and the wait for backends to stop after
	// Shutdown cancels them; default 15s.
	TeardownTimeout time.Duration
}

func (c *Config) defaults() {
	if c.MaxConcurrent <= 0 {
		c.MaxConcurrent = 2
	}
	switch {
	case c.QueueSize < 0:
		c.QueueSize = 0
	case c.QueueSize == 0:
		c.QueueSize = 64
	}
	if c.OutputLimit <= 0 {
		c.OutputLimit = 1 << 20
	}
	if c.OutputLineLimit <= 0 {
		c.OutputLineLimit = 100_000
	}
	if c.Limits == (model.Limits{}) {
		c.Limits = model.DefaultLimits
	}
	if c.LogFlushInterval <= 0 {
		c.LogFlushInterval = 200 * time.Millisecond
	}
	if c.TeardownTimeout <= 0 {
		c.TeardownTimeout = 15 * time.Second
	}
}

// Options are New's dependencies.
type Options struct {
	Config
	Store    *store.Store
	Registry *backend.Registry
	Metrics  prometheus.Registerer // nil: metrics are kept but not registered
	Logger   *slog.Logger          // nil: slog.Default()
}

// Engine runs workloads. Create it with New and stop it with Shutdown.
type Engine struct {
	cfg Config
	st  *store.Store
	reg *backend.Registry
	log *slog.Logger
	m   *metrics

	// base is the lifetime of every execution; only Shutdown cancels it.
	base       context.Context
	cancelBase context.CancelCauseFunc

	workers sync.WaitGroup
	stopped chan struct{} // closed when Shutdown begins
	flushed chan struct{} // closed when the log flusher has exited

	mu sync.Mutex
	// queue holds admitted tasks waiting for a worker, oldest first. It is a list rather
	// than a channel so that a task killed while queued leaves it at once: admission
	// counts live tasks, and a dead task left in a bounded channel would take a slot that
	// admission believes is free.
	queue    list.List
	ready    *sync.Cond       // signalled (with mu) when queue grows or closing is set
	live     map[string]*task // admitted and not yet persisted as terminal
	inflight int              // len(live), kept for admission
	running  int
	closing  bool
}

// New reconciles what a previous process left behind (unfinished workloads are marked
// failed with RestartReason) and starts the engine's workers.
func New(ctx context.Context, o Options) (*Engine, error) {
	if o.Store == nil || o.Registry == nil {
		return nil, errors.New("engine: Store and Registry are required")
	}
	o.Config.defaults()
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	e := &Engine{
		cfg: o.Config, st: o.Store, reg: o.Registry, log: o.Logger,
		stopped: make(chan struct{}),
		flushed: make(chan struct{}),
		live:    map[string]*task{},
	}
	m, err := newMetrics(o.Metrics, e)
	if err != nil {
		return nil, fmt.Errorf("engine: metrics: %w", err)
	}
	e.m = m
	e.ready = sync.NewCond(&e.mu)
	n, err := e.st.Reconcile(ctx, RestartReason, time.Now())
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	if n > 0 {
		e.log.Warn("marked workloads left unfinished by a previous run as failed", "count", n)
	}
	// Deliberately not derived from ctx: a caller's context (a signal context in serve)
	// ends before Shutdown has drained the running workloads.
	e.base, e.cancelBase = context.WithCancelCause(context.Background())
	for range e.cfg.MaxConcurrent {
		e.workers.Add(1)
		go e.worker()
	}
	go e.flusher()
	return e, nil
}

// Config returns the engine's effective configuration.
func (e *Engine) Config() Config { return e.cfg }

// load reports how many workloads run now and how many wait.
func (e *Engine) load() (running, queued int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.running, e.inflight - e.running
}

// Submit validates spec, picks its backend, stores it as pending and queues it. It returns
// the pending workload. Nothing is stored when it fails.
func (e *Engine) Submit(ctx context.Context, spec model.Spec) (*model.Workload, error) {
	return e.SubmitAs(ctx, ulid.Make().String(), time.Now().UTC(), spec)
}

// SubmitAs is Submit for a workload whose id and creation time were given elsewhere: a
// cluster node runs what another node admitted to the cluster's queue.
func (e *Engine) SubmitAs(ctx context.Context, id string, created time.Time, spec model.Spec) (*model.Workload, error) {
	spec, err := e.Validate(spec)
	if err != nil {
		e.m.rejected.WithLabelValues("invalid").Inc()
		return nil, err
	}
	b, err := e.reg.Resolve(ctx, spec.Isolation, spec.Runtime, spec.Network)
	if err != nil {
		e.m.rejected.WithLabelValues("unavailable").Inc()
		return nil, err
	}
	// The registry has resolved "auto"; store what will actually isolate the workload.
	spec.Isolation = model.Isolation(b.Name())
	t := newTask(&model.Workload{
		ID: id, Status: model.StatusPending, Spec: spec, Backend: b.Name(),
		CreatedAt: created, Metadata: map[string]string{},
	}, b, e.cfg.OutputLimit, e.cfg.OutputLineLimit)

	e.mu.Lock()
	switch {
	case e.closing:
		e.mu.Unlock()
		e.m.rejected.WithLabelValues("shutting_down").Inc()
		return nil, ErrShuttingDown
	case e.inflight >= e.cfg.MaxConcurrent+e.cfg.QueueSize:
		e.mu.Unlock()
		e.m.rejected.WithLabelValues("busy").Inc()
		return nil, ErrBusy
	}
	e.inflight++
	// Live before stored, so a follower that learns the id never finds it in neither place.
	e.live[t.id] = t
	e.mu.Unlock()

	if err := e.st.Create(ctx, t.w); err != nil {
		e.mu.Lock()
		delete(e.live, t.id)
		e.inflight--
		e.mu.Unlock()
		return nil, fmt.Errorf("engine: %w", err)
	}
	// The caller gets the workload as admitted (pending): once queued, a worker may run it
	// to completion before this returns.
	admitted := t.snapshot()
	e.mu.Lock()
	if e.closing {
		// Shutdown began while we were storing: it may already have drained the queue.
		e.mu.Unlock()
		e.finish(t, outcome{status: model.StatusFailed, err: "server shut down before the workload started"})
		return nil, ErrShuttingDown
	}
	e.enqueueLocked(t)
	e.mu.Unlock()
	e.m.submitted.WithLabelValues(string(spec.Runtime)).Inc()
	return admitted, nil
}

// Free is how many more workloads may start at once now (slots not running nor queued).
func (e *Engine) Free() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closing {
		return 0
	}
	return max(0, e.cfg.MaxConcurrent-e.inflight)
}

// Run submits spec and waits for it to end. If ctx ends first Run returns ctx's error
// and the workload carries on (see the package doc).
func (e *Engine) Run(ctx context.Context, spec model.Spec) (*model.Workload, error) {
	w, err := e.Submit(ctx, spec)
	if err != nil {
		return nil, err
	}
	return e.Wait(ctx, w.ID)
}

// Wait blocks until the workload has ended (and is persisted) and returns it.
func (e *Engine) Wait(ctx context.Context, id string) (*model.Workload, error) {
	if t := e.lookup(id); t != nil {
		select {
		case <-t.finished:
			return t.snapshot(), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return e.st.Get(ctx, id)
}

// Get returns a workload; a live one comes with the output collected so far.
func (e *Engine) Get(ctx context.Context, id string) (*model.Workload, error) {
	if t := e.lookup(id); t != nil {
		return t.snapshot(), nil
	}
	return e.st.Get(ctx, id)
}

// List returns stored workloads matching f, newest first, and the total matching.
func (e *Engine) List(ctx context.Context, f store.Filter) ([]*model.Workload, int, error) {
	return e.st.List(ctx, f)
}

// Stats are the store's aggregates plus the engine's current load.
type Stats struct {
	store.Stats
	Running       int `json:"running"`
	Queued        int `json:"queued"`
	MaxConcurrent int `json:"max_concurrent"`
	QueueSize     int `json:"queue_size"`
}

// Stats reports aggregates and current load.
func (e *Engine) Stats(ctx context.Context) (Stats, error) {
	st, err := e.st.Stats(ctx)
	if err != nil {
		return Stats{}, err
	}
	r, q := e.load()
	return Stats{Stats: st, Running: r, Queued: q, MaxConcurrent: e.cfg.MaxConcurrent, QueueSize: e.cfg.QueueSize}, nil
}

// Ready returns nil when the engine accepts work and its store answers.
func (e *Engine) Ready(ctx context.Context) error {
	e.mu.Lock()
	closing := e.closing
	e.mu.Unlock()
	if closing {
		return ErrShuttingDown
	}
	return e.st.Ping(ctx)
}

// Logs returns up to limit log lines with seq > after (limit <= 0: all).
func (e *Engine) Logs(ctx context.Context, id string, after int64, limit int) ([]model.LogLine, error) {
	if t := e.lookup(id); t != nil {
		lines, _, _ := t.linesAfter(after, limit)
		return lines, nil
	}
	if _, err := e.st.Get(ctx, id); err != nil {
		return nil, err
	}
	return e.st.Logs(ctx, id, after, limit)
}

// Kill stops a pending or running workload and returns it once it is persisted as
// killed. It fails with ErrTerminal when the workload had already ended.
func (e *Engine) Kill(ctx context.Context, id string) (*model.Workload, error) {
	t := e.lookup(id)
	if t == nil {
		w, err := e.st.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		if w.Status.Terminal() {
			return nil, fmt.Errorf("%w (status %s)", ErrTerminal, w.Status)
		}
		// Not live yet not finished: the engine lost track of it (a failed final write).
		// Record the kill so it does not stay running forever.
		now := time.Now().UTC()
		w.Status, w.Error, w.FinishedAt = model.StatusKilled, "killed by request", &now
		if err := e.st.Update(ctx, w, nil); err != nil {
			return nil, err
		}
		return w, nil
	}
	t.mu.Lock()
	switch {
	case t.final != nil || t.finishing:
		st := t.w.Status
		t.mu.Unlock()
		return nil, fmt.Errorf("%w (status %s)", ErrTerminal, st)
	case t.w.Status == model.StatusPending:
		// Set under t.mu, which execute holds while it moves the task to running: either
		// execute saw killed and will not start it, or it is running and we cancel it.
		t.killed = true
		t.mu.Unlock()
		if testHookKillPending != nil {
			testHookKillPending()
		}
		e.dequeue(t)
		e.finish(t, outcome{status: model.StatusKilled, err: "killed by request before it started"})
	default:
		t.killed = true
		t.appendLocked(model.System, "killed by request", false)
		cancel := t.cancel
		t.mu.Unlock()
		// The worker sees the cause, calls the backend's Cleanup and persists "killed".
		cancel(errKilled)
	}
	return e.Wait(ctx, id)
}

// testHookKillPending, when set by a test, runs between Kill marking a queued task killed
// and finishing it: the window in which a worker may pick the task up.
var testHookKillPending func()

func (e *Engine) lookup(id string) *task {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.live[id]
}

// enqueueLocked appends t to the queue and wakes a worker. The caller holds e.mu.
func (e *Engine) enqueueLocked(t *task) {
	t.elem = e.queue.PushBack(t)
	e.ready.Signal()
}

// dequeue removes t from the queue if it is still waiting there.
func (e *Engine) dequeue(t *task) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if t.elem != nil {
		e.queue.Remove(t.elem)
		t.elem = nil
	}
}

// next blocks until a task is queued and returns it, or returns nil once Shutdown began.
func (e *Engine) next() *task {
	e.mu.Lock()
	defer e.mu.Unlock()
	for e.queue.Len() == 0 && !e.closing {
		e.ready.Wait()
	}
	if e.closing {
		return nil // Shutdown fails what is still queued
	}
	t := e.queue.Remove(e.queue.Front()).(*task)
	t.elem = nil
	return t
}

func (e *Engine) worker() {
	defer e.workers.Done()
	for {
		t := e.next()
		if t == nil {
			return
		}
		e.execute(t)
	}
}

// outcome is how a workload ended, as the engine decided it.
type outcome struct {
	status model.Status
	err    string
	exit   *int
	res    backend.Result
}

func (e *Engine) execute(t *task) {
	t.mu.Lock()
	if t.w.Status != model.StatusPending || t.finishing || t.killed {
		t.mu.Unlock() // killed while queued; Kill finishes it
		return
	}
	timeout := time.Duration(t.w.Spec.Resources.TimeoutS) * time.Second
	killCtx, cancel := context.WithCancelCause(e.base)
	ctx, cancelTimeout := context.WithTimeoutCause(killCtx, timeout, errTimeout)
	defer cancelTimeout()
	defer cancel(nil)
	now := time.Now().UTC()
	t.cancel = cancel
	t.w.Status, t.w.StartedAt = model.StatusRunning, &now
	w := t.copyLocked()
	t.mu.Unlock()

	e.mu.Lock()
	e.running++
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.running--
		e.mu.Unlock()
	}()
	e.m.queueWait.Observe(now.Sub(w.CreatedAt).Seconds())

	if err := e.st.Update(context.WithoutCancel(ctx), w, nil); err != nil {
		e.log.Error("persisting running status", "workload", t.id, "err", err)
		e.finish(t, outcome{status: model.StatusFailed, err: "internal error: could not record the start"})
		return
	}
	job := backend.Job{WorkloadID: t.id, Spec: t.w.Spec, OutputLimit: e.cfg.OutputLimit, LineLimit: e.cfg.OutputLineLimit}
	res, err := e.safeExecute(ctx, t.backend, job, taskSink{t})

	var o outcome
	o.res = res
	cause := context.Cause(ctx)
	t.mu.Lock()
	killed := t.killed
	t.mu.Unlock()
	switch {
	case killed:
		o.status, o.err = model.StatusKilled, "killed by request"
	case errors.Is(cause, errTimeout):
		o.status, o.err = model.StatusFailed, fmt.Sprintf("timed out after %ds", t.w.Spec.Resources.TimeoutS)
	case errors.Is(cause, errShutdown):
		o.status, o.err = model.StatusFailed, "server shut down while the workload was running"
	case err != nil:
		e.log.Error("backend failed", "workload", t.id, "backend", t.backend.Name(), "err", err)
		o.status, o.err = model.StatusFailed, "backend error: "+err.Error()
	default:
		code := res.ExitCode
		o.exit = &code
		switch {
		case res.Error != "":
			o.status, o.err = model.StatusFailed, res.Error
		case res.Signal != "":
			o.status, o.err = model.StatusFailed, "killed by signal "+res.Signal
		case code != 0:
			o.status, o.err = model.StatusFailed, fmt.Sprintf("exited with code %d", code)
		default:
			o.status = model.StatusCompleted
		}
	}
	// Kill already logged its line when it happened (so live viewers see it at once).
	if o.status != model.StatusCompleted && o.exit == nil && !killed {
		t.append(model.System, o.err, false)
	}
	if ctx.Err() != nil || err != nil {
		// The backend promised to release everything when ctx ends, but a leaked VM costs
		// far more than an idempotent second sweep.
		tctx, done := context.WithTimeout(context.WithoutCancel(ctx), e.cfg.TeardownTimeout)
		if cerr := t.backend.Cleanup(tctx, t.id); cerr != nil {
			e.log.Error("backend cleanup failed", "workload", t.id, "err", cerr)
		}
		done()
	}
	e.finish(t, o)
}

// safeExecute turns a backend panic into an error so one bad run cannot take the server down.
func (e *Engine) safeExecute(ctx context.Context, b backend.Backend, job backend.Job, sink backend.Sink) (res backend.Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			e.log.Error("backend panicked", "workload", job.WorkloadID, "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("backend panicked: %v", p)
		}
	}()
	return b.Execute(ctx, job, sink)
}

// finish persists a workload's end, exactly once, then releases its slot and wakes waiters.
func (e *Engine) finish(t *task, o outcome) {
	t.mu.Lock()
	if t.finishing {
		t.mu.Unlock()
		return
	}
	if o.res.Truncated && !t.truncated {
		// The guest dropped output the host never saw: say so, as the host does for its own caps.
		why := o.res.TruncatedReason
		if why == "" {
			why = "output truncated by the guest at its output limit"
		}
		t.truncateLocked(why)
	}
	t.finishing = true // later sink lines are dropped; the log is now complete
	now := time.Now().UTC()
	t.w.Status, t.w.Error, t.w.ExitCode, t.w.FinishedAt = o.status, o.err, o.exit, &now
	t.w.Truncated = t.truncated || o.res.Truncated
	if len(o.res.Metadata) > 0 {
		maps.Copy(t.w.Metadata, o.res.Metadata)
	}
	w := t.copyLocked()
	t.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.TeardownTimeout)
	t.flushMu.Lock()
	t.mu.Lock()
	rest := t.lines[t.persisted:]
	t.mu.Unlock()
	err := e.st.Update(ctx, w, rest)
	if err == nil {
		t.persisted += len(rest)
	}
	t.flushMu.Unlock()
	cancel()
	if err != nil {
		e.log.Error("persisting final status", "workload", t.id, "status", w.Status, "err", err)
	}

	t.mu.Lock()
	t.final = w
	t.broadcastLocked()
	t.mu.Unlock()
	close(t.finished)

	e.mu.Lock()
	delete(e.live, t.id)
	e.inflight--
	e.mu.Unlock()
	e.m.finished.WithLabelValues(string(w.Status)).Inc()
	if w.StartedAt != nil {
		e.m.duration.WithLabelValues(string(w.Status)).Observe(w.FinishedAt.Sub(*w.StartedAt).Seconds())
	}
}

// flusher writes live log lines to the store in batches, so that history survives a crash
// and readers of the store see running workloads' output.
func (e *Engine) flusher() {
	defer close(e.flushed)
	tick := time.NewTicker(e.cfg.LogFlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-e.stopped:
			return
		case <-tick.C:
		}
		e.mu.Lock()
		tasks := make([]*task, 0, len(e.live))
		for _, t := range e.live {
			tasks = append(tasks, t)
		}
		e.mu.Unlock()
		for _, t := range tasks {
			e.flush(t)
		}
	}
}

func (e *Engine) flush(t *task) {
	t.flushMu.Lock()
	defer t.flushMu.Unlock()
	t.mu.Lock()
	if t.finishing {
		t.mu.Unlock()
		return // finish writes the rest with the final status
	}
	batch := t.lines[t.persisted:]
	t.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.TeardownTimeout)
	defer cancel()
	if err := e.st.AppendLogs(ctx, t.id, batch); err != nil {
		e.log.Error("persisting log lines", "workload", t.id, "err", err)
		return
	}
	t.persisted += len(batch)
}

// Shutdown stops admitting work, fails queued workloads, and waits for running ones until
// ctx ends; then it cancels them, waits up to TeardownTimeout for their backends to stop,
// and marks whatever is still unfinished as failed. It returns ctx's error if it had to
// cancel running workloads.
func (e *Engine) Shutdown(ctx context.Context) error {
	e.mu.Lock()
	if e.closing {
		e.mu.Unlock()
		return errors.New("engine: shutdown already called")
	}
	e.closing = true
	var queued []*task
	for el := e.queue.Front(); el != nil; el = el.Next() {
		t := el.Value.(*task)
		t.elem = nil
		queued = append(queued, t)
	}
	e.queue.Init()
	e.ready.Broadcast()
	e.mu.Unlock()
	close(e.stopped)

	for _, t := range queued {
		e.finish(t, outcome{status: model.StatusFailed, err: "server shut down before the workload started"})
	}
	workersDone := make(chan struct{})
	go func() { e.workers.Wait(); close(workersDone) }()

	var forced error
	select {
	case <-workersDone:
	default:
		select {
		case <-workersDone:
		case <-ctx.Done():
			forced = ctx.Err()
			e.log.Warn("shutdown deadline reached; cancelling running workloads")
			e.cancelBase(errShutdown)
			select {
			case <-workersDone:
			case <-time.After(e.cfg.TeardownTimeout):
				e.log.Error("backends did not stop in time; marking their workloads failed")
			}
		}
	}
	e.cancelBase(errShutdown)
	<-e.flushed

	e.mu.Lock()
	var left []*task
	for _, t := range e.live {
		left = append(left, t)
	}
	e.mu.Unlock()
	for _, t := range left {
		e.finish(t, outcome{status: model.StatusFailed, err: "server shut down while the workload was running"})
	}
	return forced
}
