package microvm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
)

// acquire gives job a VM ready for its first command, its identity set: a warm one from
// the pool, else one restored from the template's snapshot, else a cold boot (the
// snapshot is then built in the background for the next start). A VM with a network
// always boots: pooled and snapshotted VMs have no NIC. The returned vm (even with an
// error) must be torn down.
func (b *Backend) acquire(ctx context.Context, driver vmm.Driver, job backend.Job, kernel *images.Kernel, rootfs *images.RootFS) (*vm, error) {
	start := time.Now()
	sh := shapeOf(job.Spec.Runtime, job.Spec.Resources)
	networked := job.Spec.Network != "" && job.Spec.Network != model.NetworkNone
	var v *vm
	if !networked {
		if v = b.pool.take(sh); v != nil {
			b.mu.Lock()
			if b.vms[job.WorkloadID] != nil {
				b.mu.Unlock()
				_ = v.teardown(context.WithoutCancel(ctx))
				return nil, fmt.Errorf("workload %s already has a VM", job.WorkloadID)
			}
			delete(b.vms, v.key)
			v.key = job.WorkloadID
			b.vms[v.key] = v
			b.mu.Unlock()
			v.source = "pool"
		}
	}
	if v == nil {
		var err error
		// A template build's VM (its template an internal image name, ".image-KEY") is
		// booted once per stage: a snapshot of it would never be used.
		internal := strings.HasPrefix(string(job.Spec.Runtime), ".")
		if v, err = b.bootFor(ctx, driver, job, kernel, rootfs, !networked && !internal); err != nil {
			return v, err
		}
	}
	if err := b.identify(ctx, v, job.WorkloadID, job.Spec.Env); err != nil {
		return v, err
	}
	v.startTime = time.Since(start)
	b.metrics.starts.WithLabelValues(v.source).Observe(v.startTime.Seconds())
	return v, nil
}

// bootFor starts a VM for job: restored from the shape's snapshot when allowed and one
// exists, else booted (and, when allowed, the snapshot built in the background).
func (b *Backend) bootFor(ctx context.Context, driver vmm.Driver, job backend.Job, kernel *images.Kernel, rootfs *images.RootFS, restorable bool) (*vm, error) {
	if restorable && b.snaps != nil {
		if canSnapshot(driver) {
			sh := shapeOf(job.Spec.Runtime, job.Spec.Resources)
			key := b.snapshotKey(driver, kernel, rootfs, sh)
			if snap := b.snaps.get(sh, key); snap != nil {
				plan := bootPlan{restore: snap.state(), scratch: snap.scratch(), wake: snap.Nonce}
				if fileExists(snap.mem()) { // RAM as a mapped file (else it is in the state)
					plan.memFile = &vmm.MemFile{Path: snap.mem()}
				}
				v, err := b.boot(ctx, driver, job, kernel, rootfs, plan)
				if err == nil {
					return v, nil
				}
				if v != nil {
					_ = v.teardown(context.WithoutCancel(ctx))
				}
				if ctx.Err() != nil {
					return nil, err
				}
				// A snapshot that does not restore is not used again; the VM boots.
				b.log.Warn("snapshot restore failed; booting cold and rebuilding it", "shape", sh, "err", err)
				b.snaps.discard(sh, key)
			}
			b.snaps.ensure(driver, kernel, rootfs, sh, key)
		}
	}
	return b.boot(ctx, driver, job, kernel, rootfs, bootPlan{})
}

// prepare starts a pool VM of shape sh under id.
func (b *Backend) prepare(ctx context.Context, id string, sh shape) (*vm, string, error) {
	driver, err := b.drivers.get(ctx)
	if err != nil {
		return nil, "", err
	}
	set := images.Load(b.cfg.ImagesDir)
	rootfs := b.rootfsFor(set, sh.template)
	if set.Kernel == nil || rootfs == nil {
		return nil, "", fmt.Errorf("no %s image", sh.template)
	}
	job := backend.Job{WorkloadID: id, Spec: model.Spec{Runtime: sh.template, Isolation: model.IsolationMicroVM,
		Resources: model.Resources{CPUs: sh.cpus, MemMB: sh.memMB}}}
	v, err := b.bootFor(ctx, driver, job, set.Kernel, rootfs, true)
	if err != nil {
		if v != nil {
			_ = v.teardown(context.WithoutCancel(ctx))
		}
		return nil, "", err
	}
	return v, v.source, nil
}

// identify makes v its holder's: fresh entropy, the wall clock, a hostname of its own,
// and (for a sandbox) its env as every process's default.
// An agent that does not own its machine (the simulator's) says so, which is fine.
func (b *Backend) identify(ctx context.Context, v *vm, holder string, env map[string]string) error {
	seed := make([]byte, 64)
	_, _ = rand.Read(seed)
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	_, err := v.session.Do(ctx, &protocol.Request{Op: protocol.OpIdentity, Identity: &protocol.Identity{
		Hostname: hostnameFor(holder), UnixNano: time.Now().UnixNano(), Seed: seed, Env: env,
	}})
	var oe *protocol.OpError
	if errors.As(err, &oe) && oe.Code == protocol.ErrCodeUnsupported {
		b.log.Debug("agent does not apply identities", "vm", v.id, "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("vm %s: identity: %w", v.id, err)
	}
	return nil
}

// hostnameFor is the guest's hostname: its holder's id, lower-case (ULIDs are valid
// host names).
func hostnameFor(id string) string {
	h := strings.ToLower(id)
	var sb strings.Builder
	for _, r := range h {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '-' {
			sb.WriteRune(r)
		}
	}
	h = strings.Trim(sb.String(), "-")
	if len(h) > protocol.MaxHostnameLen {
		h = h[:protocol.MaxHostnameLen]
	}
	if h == "" {
		return "vulcan"
	}
	return h
}
