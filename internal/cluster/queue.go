package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"

	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
)

// workMsg is a queued workload. A spec too large for a message is in the specs object
// store under the workload's id (SpecObject).
type workMsg struct {
	ID         string      `json:"id"`
	CreatedAt  time.Time   `json:"created_at"`
	Spec       *model.Spec `json:"spec,omitempty"`
	SpecObject bool        `json:"spec_object,omitempty"`
}

// Submit admits a workload to the cluster: validated here, published to the work queue,
// then recorded as pending with no owner. It returns the pending workload. A full queue
// is engine.ErrBusy; nothing is left behind when it fails. The message goes first: a
// submitter that dies between the two steps leaves a message without a record, which
// the runners drop (take), never a record that no message will ever run.
func (n *Node) Submit(ctx context.Context, spec model.Spec) (*model.Workload, error) {
	if n.deps.Engine == nil {
		return nil, errors.New("cluster: this node has no engine")
	}
	if !n.Connected() {
		return nil, ErrUnreachable
	}
	spec, err := n.deps.Engine.Validate(spec)
	if err != nil {
		return nil, err
	}
	w := &model.Workload{ID: ulid.Make().String(), Status: model.StatusPending, Spec: spec, CreatedAt: time.Now().UTC(), Metadata: map[string]string{}}
	key := workloadKey(w.ID)
	rec, err := json.Marshal(workloadRecord(w))
	if err != nil {
		return nil, err
	}
	msg := workMsg{ID: w.ID, CreatedAt: w.CreatedAt, Spec: &spec}
	body, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > n.nc.MaxPayload()-4096 {
		// Too large for a message (an archive): the spec waits in the object store.
		if _, err := n.specs.PutBytes(ctx, w.ID, body); err != nil {
			return nil, fmt.Errorf("cluster: queue the spec: %w", err)
		}
		msg.Spec, msg.SpecObject = nil, true
		if body, err = json.Marshal(msg); err != nil {
			return nil, err
		}
	}
	ack, err := n.js.Publish(ctx, workSubject, body, jetstream.WithMsgID(w.ID))
	if err != nil {
		n.dropSpec(msg)
		return nil, fmt.Errorf("%w (the cluster's queue is full or unreachable: %v)", engine.ErrBusy, err)
	}
	rev, err := n.recKV.Create(ctx, key, rec)
	if err != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = n.stream.DeleteMsg(dctx, ack.Sequence)
		cancel()
		n.dropSpec(msg)
		return nil, fmt.Errorf("cluster: record the workload: %w", err)
	}
	n.mu.Lock()
	if _, ok := n.records[key]; !ok {
		n.records[key] = cached{rec: workloadRecord(w), rev: rev}
	}
	n.mu.Unlock()
	n.m.queued.Inc()
	return w, nil
}

// orphanAge is how old a work message without a record must be to be dropped: younger,
// its submitter may still be writing the record.
const orphanAge = 30 * time.Second

func (n *Node) dropSpec(m workMsg) {
	if !m.SpecObject {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = n.specs.Delete(ctx, m.ID)
}

// KillQueued kills a workload still waiting in the queue (no node has claimed it): its
// record ends killed, and whichever node fetches its message drops it. A workload that
// was claimed meanwhile is engine.ErrTerminal-free: the caller forwards to its owner.
func (n *Node) KillQueued(ctx context.Context, id string) (*model.Workload, bool, error) {
	key := workloadKey(id)
	for range 5 {
		r, rev, err := n.get(ctx, key)
		if err != nil {
			return nil, false, err
		}
		if r.Node != "" || r.Workload == nil {
			return nil, false, nil // claimed: its owner kills it
		}
		if r.Workload.Status.Terminal() {
			w, _ := r.model()
			return w, true, engine.ErrTerminal
		}
		w := *r.Workload
		now := time.Now().UTC()
		w.Status, w.Error, w.FinishedAt = model.StatusKilled, "killed while queued", &now
		r.Workload = &w
		switch err := n.update(key, r, rev); {
		case err == nil:
			out, _ := r.model()
			return out, true, nil
		case !errors.Is(err, errConflict):
			return nil, false, err
		}
	}
	return nil, false, errConflict
}

// consume takes workloads from the queue while the engine has free slots.
func (n *Node) consume() {
	defer n.wg.Done()
	keep := time.NewTicker(n.cfg.AckWait / 3)
	defer keep.Stop()
	for n.takeCtx.Err() == nil {
		select {
		case <-keep.C:
			n.keepInProgress()
		default:
		}
		free := n.deps.Engine.Free()
		if free <= 0 || !n.Connected() {
			select {
			case <-n.slot:
			case <-keep.C:
				n.keepInProgress()
			case <-time.After(250 * time.Millisecond):
			case <-n.takeCtx.Done():
				return
			}
			continue
		}
		batch, err := n.work.Fetch(free, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			if n.takeCtx.Err() == nil {
				n.log.Debug("cluster: fetch", "err", err)
				sleep(n.ctx, 250*time.Millisecond)
			}
			continue
		}
		for msg := range batch.Messages() {
			n.take(msg)
		}
	}
}

func (n *Node) keepInProgress() {
	n.mu.Lock()
	msgs := make([]jetstream.Msg, 0, len(n.held))
	for _, m := range n.held {
		msgs = append(msgs, m)
	}
	n.mu.Unlock()
	for _, m := range msgs {
		_ = m.InProgress()
	}
}

// take claims one fetched workload and starts it here, or drops a message whose
// workload is claimed or ended already (a redelivery, or killed while queued).
func (n *Node) take(msg jetstream.Msg) {
	var wm workMsg
	if err := json.Unmarshal(msg.Data(), &wm); err != nil || wm.ID == "" {
		n.log.Warn("cluster: unreadable work message dropped", "err", err)
		_ = msg.Term()
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
	defer cancel()
	key := workloadKey(wm.ID)
	r, rev, err := n.get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		if meta, merr := msg.Metadata(); merr == nil && time.Since(meta.Timestamp) < orphanAge {
			_ = msg.NakWithDelay(50 * time.Millisecond) // its record is being written
			return
		}
		_ = msg.Term() // its submitter died before recording it, or the record failed
		n.dropSpec(wm)
		return
	case err != nil:
		_ = msg.NakWithDelay(time.Second)
		return
	case r.Node != "" || r.Workload == nil || r.Workload.Status != model.StatusPending:
		// Claimed before (by a node that may since have died: the reaper ends it) or
		// killed while queued: never run twice.
		_ = msg.Ack()
		n.dropSpec(wm)
		return
	}
	spec := wm.Spec
	if wm.SpecObject {
		b, err := n.specs.GetBytes(ctx, wm.ID)
		if err != nil {
			_ = msg.NakWithDelay(time.Second)
			return
		}
		var whole workMsg
		if err := json.Unmarshal(b, &whole); err != nil || whole.Spec == nil {
			if err == nil {
				err = errors.New("no spec in it")
			}
			n.failQueued(key, r, rev, "the queued spec is unreadable: "+err.Error())
			_ = msg.Term()
			return
		}
		spec = whole.Spec
	}
	if spec == nil {
		n.failQueued(key, r, rev, "the queued message has no spec")
		_ = msg.Term()
		return
	}
	claimed := *r
	claimed.Node, claimed.Incarnation = n.cfg.NodeID, n.inc
	defer n.claim(key)()
	if err := n.update(key, &claimed, rev); err != nil {
		if errors.Is(err, errConflict) {
			_ = msg.Ack() // another node claimed it, or it was killed
		} else {
			_ = msg.NakWithDelay(time.Second)
		}
		return
	}
	n.mu.Lock()
	n.held[wm.ID] = msg
	n.mu.Unlock()
	n.m.claimed.Inc()
	if _, err := n.deps.Engine.SubmitAs(n.ctx, wm.ID, wm.CreatedAt, *spec); err != nil {
		n.mu.Lock()
		delete(n.held, wm.ID)
		n.mu.Unlock()
		// Claimed but not started: nothing ran, but the record says this node owns it, so
		// it ends here, failed with the reason (an unavailable backend, a shutdown).
		now := time.Now().UTC()
		w := *claimed.Workload
		w.Spec = *spec
		w.Status, w.Error, w.FinishedAt = model.StatusFailed, "not started: "+err.Error(), &now
		if n.deps.Store == nil || n.deps.Store.Create(ctx, &w) != nil {
			// The store's observer did not write the record: write it here.
			rec := workloadRecord(&w)
			rec.Node, rec.Incarnation = n.cfg.NodeID, n.inc
			n.queue(key, rec)
		}
		_ = msg.Ack()
	}
	n.dropSpec(wm)
}

func (n *Node) failQueued(key string, r *Record, rev uint64, why string) {
	w := *r.Workload
	now := time.Now().UTC()
	w.Status, w.Error, w.FinishedAt = model.StatusFailed, why, &now
	c := *r
	c.Workload = &w
	_ = n.update(key, &c, rev)
}

// stored acks a claimed workload's message once its result is in this node's store.
func (n *Node) stored(id string) {
	n.mu.Lock()
	msg, ok := n.held[id]
	delete(n.held, id)
	n.mu.Unlock()
	if ok {
		_ = msg.Ack()
		n.m.done.Inc()
		select {
		case n.slot <- struct{}{}:
		default:
		}
	}
}

// QueueDepth is how many workloads wait in the cluster's queue, not yet fetched.
func (n *Node) QueueDepth(ctx context.Context) (int, error) {
	info, err := n.work.Info(ctx)
	if err != nil {
		return 0, err
	}
	return int(info.NumPending), nil
}
