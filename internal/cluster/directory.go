package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/store"
)

var _ store.Observer = (*Node)(nil)

// WorkloadWritten implements store.Observer: the owner's record follows its store.
func (n *Node) WorkloadWritten(w *model.Workload) {
	r := workloadRecord(w)
	r.Node, r.Incarnation = n.cfg.NodeID, n.inc
	n.queue(workloadKey(w.ID), r)
	if w.Status.Terminal() {
		n.stored(w.ID)
	}
}

// SandboxWritten implements store.Observer.
func (n *Node) SandboxWritten(sb *model.Sandbox) {
	r := sandboxRecord(sb)
	r.Node, r.Incarnation = n.cfg.NodeID, n.inc
	n.queue(sandboxKey(sb.ID), r)
	n.pausedChanged(sb)
}

// queue puts a record in the outbox (the latest write of a key wins) and wakes the
// flusher. The watcher's copy is updated at once, so this node answers from what it
// wrote even before NATS has it.
func (n *Node) queue(key string, r *Record) {
	n.mu.Lock()
	n.outbox[key] = r
	if c, ok := n.records[key]; ok {
		n.records[key] = cached{rec: r, rev: c.rev, local: true}
	} else {
		n.records[key] = cached{rec: r, local: true}
	}
	n.notifyLocked()
	n.mu.Unlock()
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// flusher writes the outbox to the records bucket, retrying what fails (NATS away)
// until it lands or a newer write of the key replaces it.
func (n *Node) flusher() {
	defer n.wg.Done()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.kick:
		case <-t.C:
		}
		n.flushOutbox(5 * time.Second)
	}
}

func (n *Node) flushOutbox(timeout time.Duration) {
	n.mu.Lock()
	batch := n.outbox
	n.outbox = map[string]*Record{}
	n.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	failed := 0
	for key, r := range batch {
		b, err := json.Marshal(r)
		var rev uint64
		if err == nil {
			rev, err = n.recKV.Put(ctx, key, b)
		}
		if err == nil {
			n.mu.Lock()
			if c, ok := n.records[key]; ok && c.rec == r { // no newer write meanwhile
				c.rev, c.local = max(c.rev, rev), false
				c.rec, c.output = r.lean()
				n.records[key] = c
				n.notifyLocked()
			}
			n.mu.Unlock()
			continue
		}
		failed++
		n.mu.Lock()
		if _, newer := n.outbox[key]; !newer {
			n.outbox[key] = r
		}
		n.mu.Unlock()
	}
	if failed > 0 {
		n.m.outboxRetries.Add(float64(failed))
		n.log.Debug("cluster: directory writes to retry", "n", failed)
	}
}

// sync pushes what this node's store has that the directory lacks or holds as still
// unfinished here: results stored while NATS was away, and the store's own reconcile (the
// workloads and sandboxes a crash ended) after a restart. Records the directory has as
// ended stay as they are: they were ended there (for instance "node lost") while this
// node was down.
func (n *Node) sync(ctx context.Context) {
	pushed := 0
	for offset := 0; ; offset += 1000 {
		ws, _, err := n.deps.Store.List(ctx, store.Filter{Limit: 1000, Offset: offset})
		if err != nil {
			n.log.Warn("cluster: sync", "err", err)
			break
		}
		for _, w := range ws {
			if n.needsPush(workloadKey(w.ID)) {
				n.WorkloadWritten(w)
				pushed++
			}
		}
		if len(ws) < 1000 {
			break
		}
	}
	var after string
	for {
		sbs, more, err := n.deps.Store.ListSandboxes(ctx, store.SandboxFilter{After: after, Limit: 1000})
		if err != nil {
			n.log.Warn("cluster: sync", "err", err)
			break
		}
		for _, sb := range sbs {
			key := sandboxKey(sb.ID)
			switch {
			case n.needsPush(key):
				n.SandboxWritten(sb)
				pushed++
				continue
			case sb.State.Terminal():
				continue
			}
			// Unfinished here, not this node's to push: the cluster ended it (killed while
			// paused) or another node took it over (a resume this node had begun, say).
			if ended := n.endedHere(ctx, key); !ended && n.ownedElsewhere(key) {
				n.dropSavedVM(sb.ID) // nobody's now
			}
		}
		if !more || len(sbs) == 0 {
			break
		}
		after = sbs[len(sbs)-1].ID
	}
	if pushed > 0 {
		n.log.Info("cluster: pushed this node's records the directory lacked", "n", pushed)
	}
}

// endedHere applies to this node's store the end the directory has for a sandbox of
// this node's that its store still has unfinished (killed while paused and this node
// was down), dropping its saved VM, and reports whether it did.
func (n *Node) endedHere(ctx context.Context, key string) bool {
	n.mu.Lock()
	c, ok := n.records[key]
	n.mu.Unlock()
	if !ok || c.rec.Sandbox == nil || !c.rec.Terminal() || c.rec.Node != n.cfg.NodeID {
		return false
	}
	_, ended := c.rec.model()
	if err := n.deps.Store.UpdateSandbox(ctx, ended); err != nil {
		n.log.Warn("cluster: ending a sandbox the cluster ended", "sandbox", ended.ID, "err", err)
		return false
	}
	n.dropSavedVM(ended.ID)
	n.log.Info("cluster: ended a sandbox the cluster ended while this node was away", "sandbox", ended.ID, "state", ended.State)
	return true
}

// dropSavedVM removes this node's saved VM of sandbox id, one no sandbox here will use.
func (n *Node) dropSavedVM(id string) {
	if n.deps.PausedDir == nil {
		return
	}
	if dir := n.deps.PausedDir(id); dir != "" {
		if err := os.RemoveAll(dir); err != nil {
			n.log.Warn("cluster: removing a saved VM no sandbox here uses", "sandbox", id, "err", err)
		}
	}
}

// ownedElsewhere reports whether the directory names another node as key's owner.
func (n *Node) ownedElsewhere(key string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.records[key]
	return ok && c.rec.Node != "" && c.rec.Node != n.cfg.NodeID
}

func (n *Node) needsPush(key string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.records[key]
	// Another node's now (it took a paused sandbox over while this one was down): this
	// store's copy is stale.
	return !ok || !c.rec.Terminal() && c.rec.Node == n.cfg.NodeID
}

// reap ends the unfinished records of nodes that are gone: another node's whose
// announcement lapsed, and this node's from an earlier incarnation (its process died;
// what ran in it is gone). Each is a compare-and-set on the record's revision, so two
// nodes reaping at once end a record once, and an owner's own write wins over a reap.
// A paused sandbox is not reaped: its snapshot is on its node's disk and resumes when
// the node is back.
func (n *Node) reap() {
	type victim struct {
		key string
		c   cached
	}
	var victims []victim
	var healed []string
	n.mu.Lock()
	for key, c := range n.records {
		r := c.rec
		if r.Node == n.cfg.NodeID && r.Incarnation == n.inc && r.Terminal() && isLost(r) {
			healed = append(healed, key) // ours, alive: another node took us for dead
			continue
		}
		if r.Node == "" || r.Terminal() || c.rev == 0 || (r.Sandbox != nil && r.Sandbox.State == model.SandboxPaused) {
			continue
		}
		if r.Node == n.cfg.NodeID {
			if r.Incarnation != n.inc {
				victims = append(victims, victim{key, c})
			}
			continue
		}

		if info, alive := n.aliveLocked(r.Node); !alive || info.Incarnation != r.Incarnation {
			victims = append(victims, victim{key, c})
		}
	}
	n.mu.Unlock()
	n.heal(healed)
	for _, v := range victims {
		r := *v.c.rec
		now := time.Now().UTC()
		why := fmt.Sprintf("%s: node %s stopped answering", LostReason, r.Node)
		switch {
		case r.Workload != nil:
			w := *r.Workload
			why += " while the workload was " + string(w.Status)
			w.Status, w.Error, w.FinishedAt = model.StatusFailed, why, &now
			r.Workload = &w
		case r.Sandbox != nil && n.resumeInterrupted(r.Sandbox):
			// Its node died resuming it: the saved VM is still in the cluster, so it is
			// paused again and can resume on any node.
			sb := *r.Sandbox
			sb.State, sb.Error = model.SandboxPaused, why+" while resuming it"
			r.Sandbox = &sb
		case r.Sandbox != nil:
			sb := *r.Sandbox
			sb.State, sb.Error, sb.EndedAt = model.SandboxLost, why, &now
			r.Sandbox = &sb
		}
		if err := n.update(v.key, &r, v.c.rev); err == nil {
			kind := "workload"
			if r.Sandbox != nil {
				kind = "sandbox"
			}
			n.m.reaped.WithLabelValues(kind).Inc()
			n.log.Info("cluster: marked lost", "key", v.key, "owner", v.c.rec.Node)
		}
	}
}

// resumeInterrupted reports whether sb was being resumed (starting, from a pause) and
// its saved VM is still in the cluster's object store.
func (n *Node) resumeInterrupted(sb *model.Sandbox) bool {
	if sb.State != model.SandboxStarting || sb.VM["paused_at"] == "" || n.paused == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	_, err := n.paused.GetInfo(ctx, sb.ID)
	return err == nil
}

// errConflict is a compare-and-set that lost: the record changed since it was read.
var errConflict = errors.New("cluster: the record changed meanwhile")

// update writes r at key if the record is still at rev.
func (n *Node) update(key string, r *Record, rev uint64) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	if _, err := n.recKV.Update(ctx, key, b, rev); err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return errConflict
		}
		return err
	}
	return nil
}

// get reads a record and its revision from the bucket itself.
func (n *Node) get(ctx context.Context, key string) (*Record, uint64, error) {
	e, err := n.recKV.Get(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	var r Record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, 0, fmt.Errorf("cluster: record %s: %w", key, err)
	}
	return &r, e.Revision(), nil
}

func isLost(r *Record) bool {
	switch {
	case r.Workload != nil:
		return strings.HasPrefix(r.Workload.Error, LostReason)
	case r.Sandbox != nil:
		return r.Sandbox.State == model.SandboxLost && strings.HasPrefix(r.Sandbox.Error, LostReason)
	}
	return false
}

// heal rewrites this node's records that another node marked lost while this node
// lives (it could not see this node for a while): the store has the truth.
func (n *Node) heal(keys []string) {
	if len(keys) == 0 || n.deps.Store == nil {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	for _, key := range keys {
		kind, id, _ := strings.Cut(key, ".")
		switch kind {
		case "w":
			if w, err := n.deps.Store.Get(ctx, id); err == nil && !strings.HasPrefix(w.Error, LostReason) {
				n.WorkloadWritten(w)
			}
		case "s":
			if sb, err := n.deps.Store.GetSandbox(ctx, id); err == nil && sb.State != model.SandboxLost {
				n.SandboxWritten(sb)
			}
		}
	}
}
