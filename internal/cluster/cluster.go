// Package cluster joins Vulcan servers into one cluster over NATS JetStream. Without it
// (no --nats) a server is a single node and nothing here runs.
//
// # What lives where
//
//   - Nodes announce themselves in the KV bucket "vulcan-nodes" (id → NodeInfo: its API
//     URL, capacity, templates, warm pools), rewritten every Heartbeat under a bucket TTL,
//     so a dead node's entry lapses on its own. A node is alive while its last
//     announcement is younger than NodeTTL and names the incarnation (process start) the
//     records carry.
//   - Every workload and sandbox has a record in the KV bucket "vulcan-records"
//     ("w.ID", "s.ID": the row without its output, plus the node that owns it). The
//     owner writes it after each write to its own SQLite store (the store's Observer,
//     through an outbox that retries while NATS is away); its logs and output stay in
//     that SQLite. Every node keeps the whole bucket in memory through a watcher: it
//     answers listings and tells where an id lives. A record outlives its node: when a
//     node dies, the live nodes mark its unfinished records (failed "node lost", sandbox
//     "lost") with a compare-and-set, and a restarted node pushes what its store has that
//     the directory lacks.
//   - One-shot workloads go through the work-queue stream "VULCAN_WORK": a node admits a
//     workload (record "pending", no owner) and publishes it; nodes with free slots pull
//     from one shared durable consumer. A node claims a workload by setting itself as the
//     record's owner with a compare-and-set on the record's revision, so exactly one
//     node ever starts it; the message is acked when the result is stored, and kept in
//     progress until then. A message fetched by a node that died before claiming it is
//     redelivered after AckWait to another node; a claimed workload is never run again
//     (untrusted code is not assumed idempotent): its record ends failed "node lost".
//
// The HTTP side (forwarding a call to the owner, placement, cluster-wide lists) is in
// package api, over Node's methods.
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"

	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/store"
	"github.com/vulcanhq/vulcan/internal/version"
)

// The JetStream names a cluster uses.
const (
	NodesBucket   = "vulcan-nodes"
	RecordsBucket = "vulcan-records"
	SpecsBucket   = "vulcan-specs" // object store: queued specs too large for a message
	WorkStream    = "VULCAN_WORK"
	workSubject   = "vulcan.work"
	workConsumer  = "runners"
)

// ForwardedHeader marks a request one node passes to another: the receiver serves it
// itself and never forwards it again. Its value is the sending node's id.
const ForwardedHeader = "X-Vulcan-Forwarded-By"

// LostReason starts the error of a record whose node died under it.
const LostReason = "node lost"

// Config is how a node joins.
type Config struct {
	// URL is the NATS server list ("nats://host:4222,nats://other:4222").
	URL string
	// Creds is a NATS credentials file (JWT and nkey); CA, Cert and Key set TLS (a CA to
	// trust, and a client certificate when the server asks for one).
	Creds, CA, Cert, Key string
	// NodeID names this node (stable across restarts: the server's instance id).
	NodeID string
	// Advertise is the base URL other nodes reach this node's API at.
	Advertise string
	// Heartbeat is how often a node announces itself (default 1s); NodeTTL is how long
	// an announcement keeps a node alive (default 5s).
	Heartbeat, NodeTTL time.Duration
	// AckWait is how long a fetched work message may go unacknowledged before it is
	// redelivered (default 10s; a running workload's message is kept in progress).
	AckWait time.Duration
	// QueueLimit bounds the workloads waiting in the cluster's queue (default 10000);
	// past it submissions get ErrBusy.
	QueueLimit int
	Logger     *slog.Logger
}

func (c *Config) defaults() {
	if c.Heartbeat <= 0 {
		c.Heartbeat = time.Second
	}
	if c.NodeTTL <= 0 {
		c.NodeTTL = 5 * c.Heartbeat
	}
	if c.AckWait <= 0 {
		c.AckWait = 10 * time.Second
	}
	if c.QueueLimit <= 0 {
		c.QueueLimit = 10000
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Capacity is what a node can take now.
type Capacity struct {
	MemFreeMB    int      `json:"mem_free_mb"`
	MemBudgetMB  int      `json:"mem_budget_mb"`
	CPUFree      int      `json:"cpu_free"`
	CPUBudget    int      `json:"cpu_budget"`
	Sandboxes    int      `json:"sandboxes"`
	MaxSandboxes int      `json:"max_sandboxes"`
	Slots        int      `json:"slots"`      // workloads at once
	SlotsFree    int      `json:"slots_free"` // of which free
	CanSandbox   bool     `json:"can_sandbox"`
	Templates    []string `json:"templates"`      // images present
	Warm         []string `json:"warm,omitempty"` // templates with a warm pool or a snapshot here
}

// NodeInfo is a node's announcement.
type NodeInfo struct {
	ID          string    `json:"id"`
	Incarnation string    `json:"incarnation"`
	URL         string    `json:"url"`
	Version     string    `json:"version"`
	StartedAt   time.Time `json:"started_at"`
	Capacity
	// Alive and Self are the reader's view, not announced.
	Alive bool `json:"alive"`
	Self  bool `json:"self,omitempty"`
}

// Record is a workload's or sandbox's entry in the directory.
type Record struct {
	Node        string             `json:"node,omitempty"` // owner; "" while queued
	Incarnation string             `json:"incarnation,omitempty"`
	Workload    *model.Workload    `json:"workload,omitempty"`
	Spec        *model.Spec        `json:"spec,omitempty"`
	Sandbox     *model.Sandbox     `json:"sandbox,omitempty"`
	SandboxSpec *model.SandboxSpec `json:"sandbox_spec,omitempty"`
	// OutputOnNode says the ended workload's output was too large for the record: only
	// its node's store has it.
	OutputOnNode bool `json:"output_on_node,omitempty"`
}

// Terminal reports whether the record's workload or sandbox has ended.
func (r *Record) Terminal() bool {
	switch {
	case r.Workload != nil:
		return r.Workload.Status.Terminal()
	case r.Sandbox != nil:
		return r.Sandbox.State.Terminal()
	}
	return true
}

// model returns the record's workload (with its spec) or sandbox (with its spec).
func (r *Record) model() (*model.Workload, *model.Sandbox) {
	var w *model.Workload
	var sb *model.Sandbox
	if r.Workload != nil {
		c := *r.Workload
		if r.Spec != nil {
			c.Spec = *r.Spec
		}
		w = &c
	}
	if r.Sandbox != nil {
		c := *r.Sandbox
		if r.SandboxSpec != nil {
			c.Spec = *r.SandboxSpec
		}
		sb = &c
	}
	return w, sb
}

// recordCodeCap bounds the code a workload record keeps (the message carries it whole).
const recordCodeCap = 16 << 10

// recordOutputCap bounds the output an ended workload's record keeps (output, stdout and
// stderr together), so that its result outlives its node; past it only the node has it.
const recordOutputCap = 32 << 10

func workloadRecord(w *model.Workload) *Record {
	c := *w
	held := false
	if n := len(c.Output) + len(c.Stdout) + len(c.Stderr); !c.Status.Terminal() || n > recordOutputCap {
		held = n > 0
		c.Output, c.Stdout, c.Stderr = "", "", ""
	}
	spec := c.Spec
	spec.Archive = nil
	if len(spec.Code) > recordCodeCap {
		spec.Code = ""
	}
	c.Spec = model.Spec{}
	return &Record{Workload: &c, Spec: &spec, OutputOnNode: held}
}

func sandboxRecord(sb *model.Sandbox) *Record {
	c := *sb
	spec := c.Spec
	c.Spec = model.SandboxSpec{}
	return &Record{Sandbox: &c, SandboxSpec: &spec}
}

func workloadKey(id string) string { return "w." + id }
func sandboxKey(id string) string  { return "s." + id }

// Deps are the node's server parts.
type Deps struct {
	Store    *store.Store
	Engine   *engine.Engine
	Capacity func() Capacity
	// PausedDir, when set, is where the sandbox service keeps a paused sandbox's saved
	// VM: those are stored in the cluster so another node can resume them (paused.go).
	PausedDir func(id string) string
}

// Node is this server's membership.
type Node struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
	inc  string
	born time.Time

	nc      *nats.Conn
	js      jetstream.JetStream
	nodesKV jetstream.KeyValue
	recKV   jetstream.KeyValue
	specs   jetstream.ObjectStore
	paused  jetstream.ObjectStore // with Deps.PausedDir
	stream  jetstream.Stream
	work    jetstream.Consumer

	ctx        context.Context
	cancel     context.CancelFunc
	takeCtx    context.Context // the queue consumer's: StopTaking ends it first
	stopTaking context.CancelFunc
	wg         sync.WaitGroup

	mu        sync.Mutex
	connected time.Time // when the connection last came up
	nodes     map[string]*seenNode
	polled    time.Time // the last time the announcements were read whole
	recSeen   uint64    // the newest revision of the records bucket the watcher delivered
	records   map[string]cached
	changed   chan struct{} // closed and replaced on every directory change
	outbox    map[string]*Record
	kick      chan struct{}
	rewatch   chan struct{}
	held      map[string]jetstream.Msg // claimed work messages, by workload id, until stored
	// claiming holds a channel per record (by key) this node has claimed in the
	// directory but not yet put in its store (a queued workload, a paused sandbox it
	// adopts); it closes once the store has it.
	claiming map[string]chan struct{}
	slot     chan struct{}
	// storedPaused are the sandboxes whose saved VM this node stored (or fetched).
	storedPaused map[string]struct{}

	m *metrics
}

type seenNode struct {
	info NodeInfo
	at   time.Time // when this node last saw its announcement change
	rev  uint64
}

type cached struct {
	rec *Record
	rev uint64
	// local: rec is this node's write, not yet in the bucket (rev is an older one's).
	local bool
	// output: the bucket's record carries the workload's output, which rec (kept in
	// memory for every record in the cluster) goes without; Result reads it.
	output bool
}

// lean returns r without a workload's output (r itself when it has none), and whether it
// had some.
func (r *Record) lean() (*Record, bool) {
	w := r.Workload
	if w == nil || w.Output == "" && w.Stdout == "" && w.Stderr == "" {
		return r, false
	}
	c, wc := *r, *w
	wc.Output, wc.Stdout, wc.Stderr = "", "", ""
	c.Workload = &wc
	return &c, true
}

// Join connects to NATS, makes the cluster's buckets and stream when missing, loads the
// directory and starts announcing, watching, reaping and (with an engine) taking
// workloads. On error nothing is left running.
func Join(ctx context.Context, cfg Config, deps Deps) (_ *Node, err error) {
	cfg.defaults()
	if cfg.URL == "" || cfg.NodeID == "" || cfg.Advertise == "" {
		return nil, errors.New("cluster: URL, NodeID and Advertise are required")
	}
	if strings.ContainsAny(cfg.NodeID, ".*> ") {
		return nil, fmt.Errorf("cluster: node id %q may not contain '.', '*', '>' or spaces", cfg.NodeID)
	}
	n := &Node{cfg: cfg, deps: deps, log: cfg.Logger.With("node", cfg.NodeID), inc: ulid.Make().String(), born: time.Now().UTC(),
		nodes: map[string]*seenNode{}, records: map[string]cached{}, changed: make(chan struct{}),
		outbox: map[string]*Record{}, kick: make(chan struct{}, 1), rewatch: make(chan struct{}, 1), held: map[string]jetstream.Msg{}, claiming: map[string]chan struct{}{}, slot: make(chan struct{}, 1), storedPaused: map[string]struct{}{},
		m: newMetrics()}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.takeCtx, n.stopTaking = context.WithCancel(n.ctx)
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	opts, err := cfg.natsOptions(n.log, n.markConnected)
	if err != nil {
		return nil, err
	}
	n.connected = time.Now()
	if n.nc, err = nats.Connect(cfg.URL, opts...); err != nil {
		return nil, fmt.Errorf("cluster: connect %s: %w", cfg.URL, err)
	}
	if n.js, err = jetstream.New(n.nc); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := n.setup(sctx); err != nil {
		return nil, err
	}
	// The directory first: a node that serves before it knows where ids live would
	// answer "not found" for other nodes' sandboxes.
	ready := make(chan struct{})
	n.wg.Add(1)
	go n.watchRecords(ready)
	select {
	case <-ready:
	case <-sctx.Done():
		return nil, fmt.Errorf("cluster: loading the directory: %w", sctx.Err())
	}
	if err := n.claimID(sctx); err != nil {
		return nil, err
	}
	if err := n.announce(sctx); err != nil {
		return nil, fmt.Errorf("cluster: announce: %w", err)
	}
	if err := n.pollNodes(sctx); err != nil {
		return nil, fmt.Errorf("cluster: read the nodes: %w", err)
	}
	if deps.Store != nil {
		n.sync(sctx)
		deps.Store.Observe(n)
	}
	n.wg.Add(2)
	go n.heartbeat()
	go n.flusher()
	if deps.Engine != nil {
		n.wg.Add(1)
		go n.consume()
	}
	n.log.Info("joined the cluster", "nats", n.nc.ConnectedUrlRedacted(), "incarnation", n.inc, "advertise", cfg.Advertise)
	return n, nil
}

func (c *Config) natsOptions(log *slog.Logger, reconnected func()) ([]nats.Option, error) {
	opts := []nats.Option{
		nats.Name("vulcan " + c.NodeID),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("NATS disconnected", "err", err) }),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("NATS reconnected", "url", nc.ConnectedUrlRedacted())
			reconnected()
		}),
	}
	if c.Creds != "" {
		opts = append(opts, nats.UserCredentials(c.Creds))
	}
	if c.CA != "" || c.Cert != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.CA != "" {
			pem, err := os.ReadFile(c.CA)
			if err != nil {
				return nil, fmt.Errorf("cluster: NATS CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("cluster: NATS CA %s holds no PEM certificate", c.CA)
			}
			tc.RootCAs = pool
		}
		if c.Cert != "" {
			cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
			if err != nil {
				return nil, fmt.Errorf("cluster: NATS client certificate: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, nats.Secure(tc))
	}
	return opts, nil
}

func (n *Node) setup(ctx context.Context) error {
	var err error
	if n.nodesKV, err = n.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: NodesBucket, Description: "Vulcan nodes' announcements", TTL: n.cfg.NodeTTL, History: 1, Storage: jetstream.FileStorage,
	}); err != nil {
		return fmt.Errorf("cluster: bucket %s: %w", NodesBucket, err)
	}
	if n.recKV, err = n.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: RecordsBucket, Description: "Vulcan's workloads and sandboxes, and their nodes", History: 1, Storage: jetstream.FileStorage,
	}); err != nil {
		return fmt.Errorf("cluster: bucket %s: %w", RecordsBucket, err)
	}
	if n.specs, err = n.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: SpecsBucket, Description: "queued workload specs too large for a message", Storage: jetstream.FileStorage,
	}); err != nil {
		return fmt.Errorf("cluster: object store %s: %w", SpecsBucket, err)
	}
	if n.deps.PausedDir != nil {
		if n.paused, err = n.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket: PausedBucket, Description: "paused sandboxes' saved VMs, to resume on any node", Storage: jetstream.FileStorage,
		}); err != nil {
			return fmt.Errorf("cluster: object store %s: %w", PausedBucket, err)
		}
	}
	n.stream, err = n.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: WorkStream, Description: "Vulcan's one-shot workloads waiting for a node", Subjects: []string{workSubject},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, Discard: jetstream.DiscardNew,
		MaxMsgs: int64(n.cfg.QueueLimit), Duplicates: 2 * time.Minute,
	})
	if err != nil {
		return fmt.Errorf("cluster: stream %s: %w", WorkStream, err)
	}
	if n.work, err = n.stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: workConsumer, Description: "every node's runners", AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: n.cfg.AckWait, MaxAckPending: -1, MaxRequestBatch: 256,
	}); err != nil {
		return fmt.Errorf("cluster: consumer: %w", err)
	}
	return nil
}

// StopTaking stops taking workloads from the cluster's queue (a shutdown begins); what
// was taken runs on. Close follows.
func (n *Node) StopTaking() {
	if n.stopTaking != nil {
		n.stopTaking()
	}
}

// Close leaves the cluster: this node's announcement is deleted (others see it gone at
// once), its loops stop, and the connection drains. Idempotent.
func (n *Node) Close() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	if n.deps.Store != nil {
		n.deps.Store.Observe(nil)
	}
	n.wg.Wait()
	if n.nc != nil && n.nc.IsConnected() {
		n.flushOutbox(2 * time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if n.nodesKV != nil {
			_ = n.nodesKV.Delete(ctx, n.cfg.NodeID)
		}
		cancel()
	}
	n.mu.Lock()
	for id, msg := range n.held {
		// Claimed but its result never stored (the shutdown deadline cancelled it before
		// its end was written): it is never run again, so no other node may take it. The
		// others reap its record once this node is gone.
		_ = msg.Term()
		delete(n.held, id)
	}
	n.mu.Unlock()
	if n.nc != nil {
		_ = n.nc.Drain()
	}
}

func (n *Node) markConnected() {
	n.mu.Lock()
	n.connected = time.Now()
	n.mu.Unlock()
	select {
	case n.rewatch <- struct{}{}:
	default:
	}
}

// settled reports whether the connection has been up long enough for every live node
// to have announced itself since: only then may a missing announcement mean death,
// not an outage of NATS.
func (n *Node) settled() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.Connected() && time.Since(n.connected) > 2*n.cfg.NodeTTL
}

// ID is this node's id.
func (n *Node) ID() string { return n.cfg.NodeID }

// Connected reports whether the node's NATS connection is up.
func (n *Node) Connected() bool { return n.nc != nil && n.nc.IsConnected() }

// notifyLocked wakes everyone waiting on a directory change.
func (n *Node) notifyLocked() {
	close(n.changed)
	n.changed = make(chan struct{})
}

// watchRecords keeps n.records equal to the records bucket; ready closes once the
// bucket's current content is loaded. A watcher that ends (the server went away for
// long) is started again.
func (n *Node) watchRecords(ready chan struct{}) {
	defer n.wg.Done()
	n.watch(n.recKV, ready, func(e jetstream.KeyValueEntry) {
		if e == nil {
			return
		}
		n.mu.Lock()
		defer n.mu.Unlock()
		n.recSeen = max(n.recSeen, e.Revision())
		if e.Operation() != jetstream.KeyValuePut {
			delete(n.records, e.Key())
			n.notifyLocked()
			return
		}
		var r Record
		if err := json.Unmarshal(e.Value(), &r); err != nil || (r.Workload == nil && r.Sandbox == nil) {
			n.log.Warn("cluster: unreadable directory record", "key", e.Key(), "err", err)
			n.notifyLocked()
			return
		}
		cur, ok := n.records[e.Key()]
		switch {
		case ok && cur.rev > e.Revision():
			return
		case ok && cur.local:
			// A newer write of this node's is on its way: keep it, note the revision.
			cur.rev = e.Revision()
			n.records[e.Key()] = cur
		default:
			rec, out := r.lean()
			n.records[e.Key()] = cached{rec: rec, rev: e.Revision(), output: out}
		}
		n.notifyLocked()
	})
}

// CatchUp waits (at most 2 s) until this node's copy of the directory holds every record
// write the bucket had when it was called, so a list here shows what another node wrote
// just before (a workload run there a moment ago). Without NATS it returns at once.
func (n *Node) CatchUp(ctx context.Context) {
	if !n.Connected() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := n.recKV.Status(ctx)
	if err != nil {
		return
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil {
		return
	}
	last := bs.StreamInfo().State.LastSeq
	for {
		n.mu.Lock()
		seen, ch := n.recSeen, n.changed
		n.mu.Unlock()
		if seen >= last {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}

// pollNodes reads every announcement. A node is seen when its announcement's revision
// moves (or, the first time, when the server stored it), so a node's liveness never
// depends on two machines' clocks agreeing. Polling, not watching: a watcher that
// silently stalls would make live nodes look dead.
func (n *Node) pollNodes(ctx context.Context) error {
	lister, err := n.nodesKV.ListKeys(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil
		}
		return err
	}
	present := map[string]bool{}
	for key := range lister.Keys() {
		e, err := n.nodesKV.Get(ctx, key)
		if err != nil {
			continue
		}
		var info NodeInfo
		if err := json.Unmarshal(e.Value(), &info); err != nil || info.ID != key {
			continue
		}
		present[key] = true
		n.mu.Lock()
		prev, ok := n.nodes[key]
		switch {
		case !ok:
			n.nodes[key] = &seenNode{info: info, at: e.Created(), rev: e.Revision()}
		case prev.rev != e.Revision():
			n.nodes[key] = &seenNode{info: info, at: time.Now(), rev: e.Revision()}
		}
		n.mu.Unlock()
	}
	n.mu.Lock()
	for key := range n.nodes {
		if !present[key] {
			delete(n.nodes, key) // left (deleted its announcement) or lapsed
		}
	}
	n.polled = time.Now()
	n.mu.Unlock()
	return nil
}

// freshLocked reports whether an announcement seen at at is still within its TTL. It is
// judged as of the last time this node could read the announcements: while NATS is out of
// its reach this node cannot tell a dead node from a live one, so it keeps the view it
// had (a call forwarded to a node that did die meanwhile fails saying so).
func (n *Node) freshLocked(at time.Time) bool {
	ref := time.Now()
	if stale := ref.Add(-n.cfg.NodeTTL); n.polled.Before(stale) && !n.polled.IsZero() {
		ref = n.polled
	}
	return ref.Sub(at) < n.cfg.NodeTTL
}

// watch runs a watcher over kv until the node closes, calling fn for each entry (nil
// once the current content has been delivered).
func (n *Node) watch(kv jetstream.KeyValue, ready chan struct{}, fn func(jetstream.KeyValueEntry)) {
	for n.ctx.Err() == nil {
		w, err := kv.WatchAll(n.ctx)
		if err != nil {
			if n.ctx.Err() == nil {
				n.log.Warn("cluster: watch", "bucket", kv.Bucket(), "err", err)
			}
			sleep(n.ctx, time.Second)
			continue
		}
	read:
		for {
			select {
			case e, ok := <-w.Updates():
				if !ok {
					break read
				}
				fn(e)
				if e == nil && ready != nil {
					close(ready)
					ready = nil
				}
			case <-n.rewatch:
				// Reconnected: a watcher's consumer may take long to notice the server
				// restarted, so start over (the fresh watcher delivers every record again).
				break read
			case <-n.ctx.Done():
				break read
			}
		}
		_ = w.Stop()
		sleep(n.ctx, 100*time.Millisecond)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// ErrNodeIDInUse is Join's answer when a live node already announces this node's id:
// two processes under one id would take each other's records for a dead incarnation's.
var ErrNodeIDInUse = errors.New("cluster: node id in use")

// ErrUnreachable says this node cannot reach the cluster's NATS server now: what needs
// the cluster (queuing a workload) waits until it is back.
var ErrUnreachable = errors.New("the cluster's NATS server is unreachable from this node; retry later")

// claimID makes sure no live node announces this id. A recent announcement (a crash a
// moment ago, or another process) is watched until it either changes, which means a
// live node holds the id, or ages past NodeTTL.
func (n *Node) claimID(ctx context.Context) error {
	e, err := n.nodesKV.Get(ctx, n.cfg.NodeID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cluster: read the node id's announcement: %w", err)
	}
	deadline := e.Created().Add(n.cfg.NodeTTL)
	for time.Now().Before(deadline) {
		sleep(ctx, n.cfg.Heartbeat/4)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		now, err := n.nodesKV.Get(ctx, n.cfg.NodeID)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil // it left
		}
		if err == nil && now.Revision() != e.Revision() {
			var info NodeInfo
			_ = json.Unmarshal(now.Value(), &info)
			return fmt.Errorf("%w: a live node announces %q (API %s); give this one another --node-id", ErrNodeIDInUse, n.cfg.NodeID, info.URL)
		}
	}
	return nil
}

// announce writes this node's announcement.
func (n *Node) announce(ctx context.Context) error {
	info := NodeInfo{ID: n.cfg.NodeID, Incarnation: n.inc, URL: n.cfg.Advertise, Version: version.Version, StartedAt: n.born}
	if n.deps.Capacity != nil {
		info.Capacity = n.deps.Capacity()
	}
	b, err := json.Marshal(info)
	if err != nil {
		return err
	}
	_, err = n.nodesKV.Put(ctx, n.cfg.NodeID, b)
	return err
}

func (n *Node) heartbeat() {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.Heartbeat*2)
		if err := n.announce(ctx); err != nil && n.ctx.Err() == nil {
			n.log.Debug("cluster: announce", "err", err)
			if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrNoStreamResponse) {
				// A nats-server that came back without its data: make the buckets again.
				if err := n.setup(ctx); err != nil {
					n.log.Warn("cluster: set up again", "err", err)
				}
			}
		}
		if err := n.pollNodes(ctx); err != nil && n.ctx.Err() == nil {
			n.log.Debug("cluster: read the nodes", "err", err)
		}
		cancel()
		if n.settled() {
			n.reap()
		}
		n.m.observe(n)
	}
}

// Nodes is the cluster as this node sees it: every node whose announcement has not
// lapsed, sorted by id (Alive says which are still within NodeTTL).
func (n *Node) Nodes() []NodeInfo {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.nodesLocked()
}

func (n *Node) nodesLocked() []NodeInfo {
	out := make([]NodeInfo, 0, len(n.nodes))
	for _, s := range n.nodes {
		info := s.info
		info.Self = info.ID == n.cfg.NodeID
		info.Alive = info.Self || n.freshLocked(s.at)
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b NodeInfo) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// aliveLocked returns node id's announcement while it is alive (this node's own, always).
func (n *Node) aliveLocked(id string) (NodeInfo, bool) {
	if id == n.cfg.NodeID {
		return NodeInfo{ID: id, Incarnation: n.inc, URL: n.cfg.Advertise, Alive: true, Self: true}, true
	}
	s, ok := n.nodes[id]
	if !ok || !n.freshLocked(s.at) {
		return NodeInfo{}, false
	}
	return s.info, true
}

// Location is where an id lives.
type Location struct {
	Known bool   // the directory has it
	Node  string // its owner ("" while a workload is queued)
	URL   string // the owner's API, when alive
	Self  bool   // owned by this node
	Alive bool   // the owner is alive (always true for Self)
}

// Locate says where a workload ("w") or sandbox ("s") lives. A miss in the watcher's
// copy is checked against the bucket itself: a record written a moment ago elsewhere
// may not have reached this node yet.
func (n *Node) Locate(ctx context.Context, kind, id string) Location {
	key := kind + "." + id
	n.mu.Lock()
	c, ok := n.records[key]
	n.mu.Unlock()
	rec := c.rec
	if !ok {
		var err error
		if rec, _, err = n.get(ctx, key); err != nil {
			return Location{}
		}
	}
	loc := Location{Known: true, Node: rec.Node}
	if rec.Node != "" {
		n.mu.Lock()
		info, alive := n.aliveLocked(rec.Node)
		n.mu.Unlock()
		loc.Self, loc.URL = rec.Node == n.cfg.NodeID, info.URL
		// A node that restarted lost what it was running, not what its store kept: an
		// ended record is served by it whatever incarnation wrote it.
		loc.Alive = alive && (info.Incarnation == rec.Incarnation || rec.Incarnation == "" || rec.Terminal())
	}
	return loc
}

// recordsWith returns the directory's records whose keys start with prefix, newest first.
func (n *Node) recordsWith(prefix string) []*Record {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]*Record, 0, len(n.records))
	keys := make([]string, 0, len(n.records))
	for k := range n.records {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	slices.Reverse(keys) // ULIDs sort by creation
	for _, k := range keys {
		out = append(out, n.records[k].rec)
	}
	return out
}

// Workloads lists the cluster's workloads matching f, newest first, and how many match.
// They come without output: ask the workload itself for that.
func (n *Node) Workloads(f store.Filter) ([]*model.Workload, int) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	var all []*model.Workload
	for _, r := range n.recordsWith("w.") {
		w, _ := r.model()
		// As documented: GET the workload for its output (this node's own records hold
		// it until their write lands).
		w.Output, w.Stdout, w.Stderr = "", "", ""
		if (f.Status != "" && w.Status != f.Status) || (f.Runtime != "" && w.Spec.Runtime != f.Runtime) ||
			(f.Isolation != "" && w.Spec.Isolation != f.Isolation) {
			continue
		}
		all = append(all, w)
	}
	total := len(all)
	if f.Offset >= total {
		return nil, total
	}
	all = all[f.Offset:]
	if len(all) > f.Limit {
		all = all[:f.Limit]
	}
	return all, total
}

// Sandboxes lists one page of the cluster's sandboxes matching f, newest first, and
// whether more follow (f.After is the previous page's last id).
func (n *Node) Sandboxes(f store.SandboxFilter) ([]*model.Sandbox, bool) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	var out []*model.Sandbox
	for _, r := range n.recordsWith("s.") {
		_, sb := r.model()
		if f.After != "" && sb.ID >= f.After {
			continue
		}
		if len(f.States) > 0 && !slices.Contains(f.States, sb.State) {
			continue
		}
		match := true
		for k, v := range f.Metadata {
			if sb.Spec.Metadata[k] != v {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		if len(out) == f.Limit {
			return out, true
		}
		out = append(out, sb)
	}
	return out, false
}

// Counts counts the directory's workloads by status and sandboxes by state.
func (n *Node) Counts() (workloads, sandboxes map[string]int) {
	workloads, sandboxes = map[string]int{}, map[string]int{}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range n.records {
		switch r := c.rec; {
		case r.Workload != nil:
			workloads[string(r.Workload.Status)]++
		case r.Sandbox != nil:
			sandboxes[string(r.Sandbox.State)]++
		}
	}
	return workloads, sandboxes
}

// Record returns the directory's record of a workload ("w") or sandbox ("s").
func (n *Node) Record(kind, id string) (*model.Workload, *model.Sandbox, bool) {
	n.mu.Lock()
	c, ok := n.records[kind+"."+id]
	n.mu.Unlock()
	if !ok {
		return nil, nil, false
	}
	w, sb := c.rec.model()
	return w, sb, true
}

// Result returns the directory's record of workload id with the output it keeps (read
// from the bucket: this node's copy holds no outputs).
func (n *Node) Result(ctx context.Context, id string) (*model.Workload, error) {
	key := workloadKey(id)
	n.mu.Lock()
	c, ok := n.records[key]
	n.mu.Unlock()
	if ok && !c.output {
		w, _ := c.rec.model()
		if w != nil {
			return w, nil
		}
	}
	r, _, err := n.get(ctx, key)
	if err != nil {
		return nil, err
	}
	w, _ := r.model()
	if w == nil {
		return nil, fmt.Errorf("cluster: record %s is not a workload", key)
	}
	return w, nil
}

// OutputHeldBy names the node whose store alone has workload id's output (too large for
// its record), "" when the record has it all.
func (n *Node) OutputHeldBy(id string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if c, ok := n.records[workloadKey(id)]; ok && c.rec.OutputOnNode {
		return c.rec.Node
	}
	return ""
}

// waitFor blocks until cond holds for the record of key (or ctx ends), and returns it.
func (n *Node) waitFor(ctx context.Context, key string, cond func(*Record) bool) (*Record, error) {
	for {
		n.mu.Lock()
		c, ok := n.records[key]
		ch := n.changed
		n.mu.Unlock()
		if ok && cond(c.rec) {
			return c.rec, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// WaitOwner blocks until a queued workload has an owner (or has ended unclaimed: killed
// in the queue), and returns where it is.
func (n *Node) WaitOwner(ctx context.Context, id string) (Location, error) {
	if _, err := n.waitFor(ctx, workloadKey(id), func(r *Record) bool { return r.Node != "" || r.Terminal() }); err != nil {
		return Location{}, err
	}
	return n.Locate(ctx, "w", id), nil
}

// WaitClaimed blocks while this node is between claiming a workload ("w") or sandbox
// ("s") in the directory and holding it in its store: a request the directory sent here
// in that moment would otherwise find no such thing.
func (n *Node) WaitClaimed(ctx context.Context, kind, id string) {
	n.mu.Lock()
	ch := n.claiming[kind+"."+id]
	n.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

// claim marks key as being claimed here until the returned func runs.
func (n *Node) claim(key string) (settled func()) {
	ch := make(chan struct{})
	n.mu.Lock()
	n.claiming[key] = ch
	n.mu.Unlock()
	return func() {
		n.mu.Lock()
		delete(n.claiming, key)
		n.mu.Unlock()
		close(ch)
	}
}

// Landed blocks while this node's latest write of a record is not yet in the bucket, for
// at most two seconds, and not at all while NATS is away or for a record this node never
// wrote: a create, a kill, a pause answers only once every node can see what it did.
func (n *Node) Landed(ctx context.Context, kind, id string) {
	if !n.Connected() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	key := kind + "." + id
	for {
		n.mu.Lock()
		c, ok := n.records[key]
		ch := n.changed
		n.mu.Unlock()
		if !ok || c.rev > 0 && !c.local {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			n.log.Debug("cluster: a record not in the directory yet", "key", key)
			return
		}
	}
}

// WaitDone blocks until a workload's record is final and returns where it is.
func (n *Node) WaitDone(ctx context.Context, id string) (Location, error) {
	if _, err := n.waitFor(ctx, workloadKey(id), (*Record).Terminal); err != nil {
		return Location{}, err
	}
	n.Landed(ctx, "w", id) // ended here: answer once the directory has the end too
	return n.Locate(ctx, "w", id), nil
}
