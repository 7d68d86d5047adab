package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vulcanhq/vulcan/internal/model"
)

// Resume anywhere: when a sandbox is paused, its node stores the saved VM (its paused
// dir: the VMM's state, the scratch disk, the manifest) in the object store
// "vulcan-paused" as a GNU tar with its holes kept (-S: a 2 GiB scratch disk that holds
// 50 MB travels as 50 MB). While that node lives, it resumes the sandbox itself (the
// call is forwarded there). When it is gone, any node with the template takes the
// sandbox over: it claims the record with a compare-and-set (so two nodes never resume
// one snapshot), fetches the saved VM and resumes it (sandbox.Service.Adopt). The stored
// copy is deleted once the sandbox is no longer paused.

// PausedBucket is the object store of paused sandboxes' saved VMs.
const PausedBucket = "vulcan-paused"

// maxPausedBytes bounds a saved VM fetched from the store (memory plus scratch disk).
const maxPausedBytes = 64 << 30

// pausedFiles are what a saved VM's dir may hold (microvm's Pause writes these).
var pausedFiles = map[string]bool{"state": true, "scratch.ext4": true, "paused.json": true}

// ErrNotAdoptable says a sandbox cannot be taken over here: not paused, its node alive,
// or no saved VM of it in the cluster.
var ErrNotAdoptable = errors.New("cannot take the sandbox over")

// pausedChanged follows a sandbox's writes on its owner: paused → store its saved VM;
// running again or ended → drop the stored copy. A resume under way (starting) keeps it:
// if this node dies mid-resume, another takes the sandbox over from it.
func (n *Node) pausedChanged(sb *model.Sandbox) {
	if n.deps.PausedDir == nil || n.paused == nil || sb.State == model.SandboxStarting {
		return
	}
	n.mu.Lock()
	_, stored := n.storedPaused[sb.ID]
	switch {
	case sb.State == model.SandboxPaused:
		n.storedPaused[sb.ID] = struct{}{}
	case stored:
		delete(n.storedPaused, sb.ID)
	}
	n.mu.Unlock()
	switch {
	case sb.State == model.SandboxPaused && stored:
		// Stored already: this node took it over from the store, or wrote it again
		// unchanged.
	case sb.State == model.SandboxPaused:
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if err := n.storePaused(sb.ID, n.deps.PausedDir(sb.ID)); err != nil {
				n.log.Warn("cluster: storing a paused sandbox's saved VM (it resumes on this node only)", "sandbox", sb.ID, "err", err)
				return
			}
			n.m.pausedStored.Inc()
		}()
	case stored:
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = n.paused.Delete(ctx, sb.ID)
		}()
	}
}

// storePaused streams dir as a sparse tar into the object store under id.
func (n *Node) storePaused(id, dir string) error {
	ctx, cancel := context.WithTimeout(n.ctx, 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "tar", "-cS", "-C", dir, ".")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	_, perr := n.paused.Put(ctx, jetstream.ObjectMeta{Name: id, Description: "saved VM of paused sandbox " + id}, out)
	werr := cmd.Wait()
	if perr != nil {
		return perr
	}
	if werr != nil {
		_ = n.paused.Delete(context.WithoutCancel(ctx), id) // half a VM is none
		return fmt.Errorf("tar: %v: %s", werr, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// ClaimPaused makes this node the owner of a paused sandbox whose node is gone, if its
// saved VM is in the cluster, fetches that into dir and hands the sandbox to adopt (which
// stores it here). Until adopt returns, requests the directory sends here for it wait
// (WaitClaimed). On any failure the claim is undone; a failure before adopt is
// ErrNotAdoptable, adopt's own error comes back as it is.
func (n *Node) ClaimPaused(ctx context.Context, id, dir string, adopt func(context.Context, *model.Sandbox) error) error {
	if n.paused == nil {
		return fmt.Errorf("%w: this node keeps no paused sandboxes", ErrNotAdoptable)
	}
	key := sandboxKey(id)
	r, rev, err := n.get(ctx, key)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotAdoptable, err)
	}
	if loc := n.Locate(ctx, "s", id); r.Sandbox == nil || r.Sandbox.State != model.SandboxPaused || loc.Alive && !loc.Self {
		return fmt.Errorf("%w: it is not a paused sandbox of a node that is gone", ErrNotAdoptable)
	}
	info, err := n.paused.GetInfo(ctx, id)
	if err != nil {
		return fmt.Errorf("%w: its saved VM did not reach the cluster before its node %s went away (%v)", ErrNotAdoptable, r.Node, err)
	}
	if info.Size > maxPausedBytes {
		return fmt.Errorf("%w: its saved VM is %d bytes, over %d", ErrNotAdoptable, info.Size, int64(maxPausedBytes))
	}
	defer n.claim(key)()
	claimed := *r
	claimed.Node, claimed.Incarnation = n.cfg.NodeID, n.inc
	if err := n.update(key, &claimed, rev); err != nil {
		return fmt.Errorf("%w: another node is taking it over (%v)", ErrNotAdoptable, err)
	}
	undo := func() {
		if cur, crev, err := n.get(context.WithoutCancel(ctx), key); err == nil && cur.Node == n.cfg.NodeID {
			_ = n.update(key, r, crev)
		}
	}
	if err := n.fetchPaused(ctx, id, dir); err != nil {
		undo()
		return fmt.Errorf("%w: fetching its saved VM: %v", ErrNotAdoptable, err)
	}
	_, sb := r.model()
	if err := adopt(ctx, sb); err != nil {
		undo()
		_ = os.RemoveAll(dir)
		return err
	}
	n.mu.Lock()
	n.storedPaused[id] = struct{}{} // dropped from the store once it runs
	n.mu.Unlock()
	return nil
}

// KillPaused kills a paused sandbox whose node is gone: its record ends killed (a
// compare-and-set, so a takeover racing it wins or loses whole) and its stored saved VM
// is deleted. When the node comes back it ends its own copy (sync). ErrNotAdoptable when
// the sandbox is not paused or its node is alive.
func (n *Node) KillPaused(ctx context.Context, id string) (*model.Sandbox, error) {
	key := sandboxKey(id)
	r, rev, err := n.get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotAdoptable, err)
	}
	if loc := n.Locate(ctx, "s", id); r.Sandbox == nil || r.Sandbox.State != model.SandboxPaused || loc.Alive {
		return nil, fmt.Errorf("%w: it is not a paused sandbox of a node that is gone", ErrNotAdoptable)
	}
	killed := *r
	sb := *r.Sandbox
	now := time.Now().UTC()
	sb.State, sb.Error, sb.EndedAt = model.SandboxKilled, fmt.Sprintf("killed by request while paused (its node %s was gone)", r.Node), &now
	killed.Sandbox = &sb
	if err := n.update(key, &killed, rev); err != nil {
		return nil, fmt.Errorf("%w: it changed meanwhile (%v)", ErrNotAdoptable, err)
	}
	if n.paused != nil {
		if err := n.paused.Delete(ctx, id); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			n.log.Warn("cluster: deleting a killed sandbox's stored saved VM", "sandbox", id, "err", err)
		}
	}
	_, out := killed.model()
	return out, nil
}

// fetchPaused unpacks the stored saved VM of id into dir (made fresh), keeping holes.
// Only the files a saved VM has are accepted, as regular files.
func (n *Node) fetchPaused(ctx context.Context, id, dir string) (err error) {
	obj, err := n.paused.Get(ctx, id)
	if err != nil {
		return err
	}
	defer obj.Close()
	tmp := dir + ".fetch"
	_ = os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.CommandContext(ctx, "tar", "-xS", "--no-same-owner", "--no-same-permissions", "-C", tmp)
	cmd.Stdin = io.LimitReader(obj, maxPausedBytes)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("unpack the saved VM: %v: %s", err, strings.TrimSpace(string(out)))
	}
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !pausedFiles[e.Name()] || !e.Type().IsRegular() {
			return fmt.Errorf("the stored saved VM holds %q, which a saved VM does not", e.Name())
		}
	}
	if _, err := os.Stat(filepath.Join(tmp, "paused.json")); err != nil {
		return fmt.Errorf("the stored saved VM has no manifest: %w", err)
	}
	_ = os.RemoveAll(dir)
	return os.Rename(tmp, dir)
}
