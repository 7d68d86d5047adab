package microvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
	"github.com/vulcanhq/vulcan/internal/model"
)

// Pausing a sandbox: its agent parks, its VM is saved into a dir the caller owns (RAM and
// devices in "state", its disk as "scratch.ext4", and "paused.json" last: a dir without
// it is an interrupted pause), and the VM is stopped. Resuming restores that VM under a
// new VMM, with its processes, files and timers as they were, and sets its clock.

const pausedManifest = "paused.json"

type pausedVM struct {
	Template  model.Runtime `json:"template"`
	CPUs      int           `json:"cpus"`
	MemMB     int           `json:"mem_mb"`
	Kernel    string        `json:"kernel_sha256"`
	RootFS    string        `json:"rootfs_sha256"`
	VMM       string        `json:"vmm"`
	Version   string        `json:"vmm_version"`
	Nonce     string        `json:"nonce"`
	SavedAt   time.Time     `json:"saved_at"`
	SaveMS    int64         `json:"save_ms"`
	StateSize int64         `json:"state_bytes"`
}

// Pause saves the sandbox's VM into dir and stops it; Stop after it only releases what
// is left. The VM had no network (a NIC's host side cannot be saved with it).
func (s *SandboxVM) Pause(ctx context.Context, dir string) error {
	v := s.v
	if v.network != nil {
		return fmt.Errorf("%w: a sandbox with a network cannot be paused yet (its NIC's host side is not saved)", backend.ErrUnsupported)
	}
	saver, ok := v.machine.(vmm.Snapshotter)
	if !ok {
		return fmt.Errorf("%w: %s machines cannot be saved", backend.ErrUnsupported, v.driver.Name())
	}
	start := time.Now()
	nonce, err := v.park(ctx)
	if err != nil {
		return err
	}
	state := filepath.Join(dir, "state")
	if err := saver.Save(ctx, state); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	if err := v.machine.Stop(ctx); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	if p := filepath.Join(v.dir, "scratch.ext4"); fileExists(p) {
		dst := filepath.Join(dir, "scratch.ext4")
		if err := os.Rename(p, dst); err != nil {
			if err := copySparse(ctx, p, dst); err != nil {
				return err
			}
		}
		_ = os.Chown(dst, 0, 0)
	}
	st, err := os.Stat(state)
	if err != nil {
		return err
	}
	m := pausedVM{Template: model.Runtime(v.rootfs.Manifest.Runtime), CPUs: v.cpus, MemMB: v.memMB,
		Kernel: v.kernel.Manifest.SHA256, RootFS: v.rootfs.Manifest.SHA256, VMM: v.driver.Name(), Version: driverVersion(v.driver),
		Nonce: nonce, SavedAt: time.Now().UTC(), SaveMS: time.Since(start).Milliseconds(), StateSize: st.Size()}
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := writeSynced(filepath.Join(dir, pausedManifest), b); err != nil {
		return err
	}
	_ = v.teardown(ctx)
	return nil
}

// ResumeSandbox restores a sandbox paused into dir under spec.ID. The kernel, the
// template's image and the VMM must be those it was paused with. dir is left as it was
// (the caller removes it once the sandbox runs).
func (b *Backend) ResumeSandbox(ctx context.Context, spec VMSpec, dir string) (*SandboxVM, error) {
	raw, err := os.ReadFile(filepath.Join(dir, pausedManifest))
	if err != nil {
		return nil, fmt.Errorf("no saved VM in %s: %w", dir, err)
	}
	if len(raw) > maxManifestBytes {
		return nil, errors.New("paused manifest too large")
	}
	var m pausedVM
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("paused manifest: %w", err)
	}
	driver, err := b.drivers.get(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", backend.ErrUnavailable, err)
	}
	set := images.Load(b.cfg.ImagesDir)
	// The image it paused on, by content: a built-in's, or a user template's (Template is
	// then the runtime it descends from), which may have been rebuilt since: the old image
	// stays while a paused VM needs it.
	rootfs := b.rootfsFor(set, m.Template)
	if (rootfs == nil || rootfs.Manifest.SHA256 != m.RootFS) && b.cfg.Templates != nil {
		if old := b.cfg.Templates.ImageBySHA(m.RootFS); old != nil {
			rootfs = old
		}
	}
	switch {
	case set.Kernel == nil || rootfs == nil:
		return nil, fmt.Errorf("%w: no kernel or %s image to resume on", backend.ErrUnavailable, m.Template)
	case set.Kernel.Manifest.SHA256 != m.Kernel || rootfs.Manifest.SHA256 != m.RootFS:
		return nil, fmt.Errorf("the kernel or the %s image changed since the pause: the saved VM cannot run on them", m.Template)
	case driver.Name() != m.VMM || driverVersion(driver) != m.Version:
		return nil, fmt.Errorf("the VMM changed since the pause (%s %s, now %s %s)", m.VMM, m.Version, driver.Name(), driverVersion(driver))
	}
	job := backend.Job{WorkloadID: spec.ID, Spec: model.Spec{Runtime: m.Template, Isolation: model.IsolationMicroVM,
		Resources: model.Resources{CPUs: m.CPUs, MemMB: m.MemMB}, Env: spec.Env}}
	plan := bootPlan{restore: filepath.Join(dir, "state"), wake: m.Nonce}
	if p := filepath.Join(dir, "scratch.ext4"); fileExists(p) {
		plan.scratch = p
	}
	start := time.Now()
	v, err := b.boot(ctx, driver, job, set.Kernel, rootfs, plan)
	if err == nil {
		v.source = "resume"
		// The guest wakes at its pause's time: set its clock (and reseed it).
		err = b.identify(ctx, v, spec.ID, spec.Env)
	}
	if err != nil {
		if v != nil {
			_ = v.teardown(context.WithoutCancel(ctx))
		}
		return nil, err
	}
	v.startTime = time.Since(start)
	return &SandboxVM{v: v, session: v.session}, nil
}

func driverVersion(d vmm.Driver) string {
	if v, ok := d.(interface{ Version() string }); ok {
		return v.Version()
	}
	return ""
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ImageInUse reports whether a VM of this backend runs on the image with this SHA-256, or
// a VM paused under pausedDir (the sandboxes' paused dir) needs it to resume: such an
// image must stay when its template is removed.
func (b *Backend) ImageInUse(sha, pausedDir string) bool {
	b.mu.Lock()
	for _, v := range b.vms {
		if v.rootfs != nil && v.rootfs.Manifest.SHA256 == sha {
			b.mu.Unlock()
			return true
		}
	}
	b.mu.Unlock()
	if pausedDir == "" {
		return false
	}
	files, _ := filepath.Glob(filepath.Join(pausedDir, "*", pausedManifest))
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil || len(raw) > maxManifestBytes {
			continue
		}
		var m pausedVM
		if json.Unmarshal(raw, &m) == nil && m.RootFS == sha {
			return true
		}
	}
	return false
}
