package microvm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
)

// Snapshots: for each template and machine shape, one VM is booted to agent-ready with
// its runtime warmed (its files in the guest's page cache, see warmups), then saved —
// its RAM kept as a memory file, its devices as a state file, its scratch disk as it was.
// New VMs start by restoring it: the memory file is mapped copy-on-write (every clone
// shares its pages until it writes), the state loaded, a copy of the scratch disk
// attached. Each clone is then made unique by sys.identity (entropy, clock, hostname)
// and gets its own dir, sockets, CID and disk.
//
// A snapshot is keyed by everything its contents depend on (snapshotKey): a key that no
// longer matches is never restored; the next build replaces it.

// snapshotFormat changes when what a snapshot holds or how it is taken changes.
const snapshotFormat = "1"

// warmups are run in a template's VM before it is saved, as the user, so a restored VM
// starts its runtime from memory: the interpreter's files are in the page cache.
var warmups = map[model.Runtime]string{
	model.RuntimePython: `python3 -c 'import json, os, re, subprocess, sys, random, collections, datetime'`,
	model.RuntimeNode:   `node -e 'require("fs"); require("child_process")'`,
	model.RuntimeGo:     `go version && go env GOROOT >/dev/null`,
	"base":              `python3 -c 'import json, os, sys' && node -e 0 && git --version >/dev/null`,
}

// shape is what a pooled or snapshotted VM must match: template and machine size.
type shape struct {
	template model.Runtime
	cpus     int
	memMB    int
}

func (s shape) String() string {
	return fmt.Sprintf("%s-%dc-%dm", s.template, s.cpus, s.memMB)
}

func shapeOf(template model.Runtime, r model.Resources) shape {
	return shape{template: template, cpus: r.CPUs, memMB: r.MemMB}
}

// snapshot is a complete snapshot on disk.
type snapshot struct {
	Key       string        `json:"key"`
	Nonce     string        `json:"nonce"`  // wakes the parked agent
	Mapped    bool          `json:"mapped"` // RAM is the mem file, mapped copy-on-write; else in the state
	Template  model.Runtime `json:"template"`
	CPUs      int           `json:"cpus"`
	MemMB     int           `json:"mem_mb"`
	VMM       string        `json:"vmm"`
	BuildMS   int64         `json:"build_ms"`
	SaveMS    int64         `json:"save_ms"`
	StateSize int64         `json:"state_bytes"`
	CreatedAt time.Time     `json:"created_at"`

	dir string
}

func (s *snapshot) state() string { return filepath.Join(s.dir, "state") }
func (s *snapshot) mem() string   { return filepath.Join(s.dir, "mem") }
func (s *snapshot) scratch() string {
	p := filepath.Join(s.dir, "scratch.ext4")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// snapshots finds, builds and replaces the backend's snapshots.
type snapshots struct {
	b   *Backend
	dir string

	mu       sync.Mutex
	building map[string]chan struct{} // keys being built; closed when done
	failed   map[string]time.Time     // keys whose last build failed, when
}

// snapshotRetry is how long a failed build is not retried.
const snapshotRetry = 5 * time.Minute

func newSnapshots(b *Backend, dir string) *snapshots {
	if dir == "" {
		return nil
	}
	_ = os.MkdirAll(dir, 0o755)
	// A build a crash interrupted left its temporary dir.
	if tmp, _ := filepath.Glob(filepath.Join(dir, ".build-*")); len(tmp) > 0 {
		for _, t := range tmp {
			_ = os.RemoveAll(t)
		}
	}
	return &snapshots{b: b, dir: dir, building: map[string]chan struct{}{}, failed: map[string]time.Time{}}
}

// snapshotKey hashes what a snapshot's contents depend on.
func (b *Backend) snapshotKey(driver vmm.Driver, kernel *images.Kernel, rootfs *images.RootFS, sh shape) string {
	version := ""
	if v, ok := driver.(interface{ Version() string }); ok {
		version = v.Version()
	}
	h := sha256.New()
	fmt.Fprintf(h, "format=%s\nvmm=%s %s %s\nkernel=%s\nrootfs=%s\nagent=%s\nshape=%s\nscratch=%d\nargs=%s\nwarmup=%s\n",
		snapshotFormat, driver.Name(), driver.Accel(), version, kernel.Manifest.SHA256, rootfs.Manifest.SHA256,
		rootfs.Manifest.AgentSHA256, sh, b.cfg.ScratchMB, strings.Join(bootArgs(nil), " "), warmups[sh.template])
	return hex.EncodeToString(h.Sum(nil))[:24]
}

// path is the snapshot dir of a shape and key.
func (s *snapshots) path(sh shape, key string) string {
	return filepath.Join(s.dir, sh.String()+"-"+key)
}

// get returns the shape's snapshot for key when it is complete on disk.
func (s *snapshots) get(sh shape, key string) *snapshot {
	dir := s.path(sh, key)
	b, err := os.ReadFile(filepath.Join(dir, "snapshot.json"))
	if err != nil || len(b) > maxManifestBytes {
		return nil
	}
	var snap snapshot
	if json.Unmarshal(b, &snap) != nil || snap.Key != key {
		return nil
	}
	snap.dir = dir
	return &snap
}

const maxManifestBytes = 64 << 10

// ensure starts building the shape's snapshot in the background unless it exists, is
// being built, or failed recently.
func (s *snapshots) ensure(driver vmm.Driver, kernel *images.Kernel, rootfs *images.RootFS, sh shape, key string) {
	s.mu.Lock()
	if s.building[key] != nil || time.Since(s.failed[key]) < snapshotRetry || s.get(sh, key) != nil {
		s.mu.Unlock()
		return
	}
	done := make(chan struct{})
	s.building[key] = done
	s.mu.Unlock()
	s.b.bg.Go(func() {
		ctx, cancel := context.WithTimeout(s.b.bgCtx, 5*time.Minute)
		defer cancel()
		_, err := s.build(ctx, driver, kernel, rootfs, sh, key)
		s.finish(key, done, err)
		if err != nil && s.b.bgCtx.Err() == nil {
			s.b.log.Warn("snapshot build failed; VMs of this shape boot cold", "shape", sh, "err", err)
		}
	})
}

func (s *snapshots) finish(key string, done chan struct{}, err error) {
	s.mu.Lock()
	delete(s.building, key)
	if err != nil {
		s.failed[key] = time.Now()
	}
	s.mu.Unlock()
	close(done)
}

// busy reports whether a build is under way.
func (s *snapshots) busy() bool {
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.building) > 0
}

// build boots the shape's template VM, warms it, saves it and publishes it atomically
// (a rename of a complete dir), then removes the shape's stale snapshots.
func (s *snapshots) build(ctx context.Context, driver vmm.Driver, kernel *images.Kernel, rootfs *images.RootFS, sh shape, key string) (_ *snapshot, err error) {
	if !canSnapshot(driver) {
		return nil, fmt.Errorf("%s cannot take snapshots here", driver.Name())
	}
	start := time.Now()
	outcome := "failed"
	defer func() { s.b.metrics.snapshotBuilds.WithLabelValues(string(sh.template), outcome).Inc() }()
	tmp := filepath.Join(s.dir, ".build-"+strings.ToLower(ulid.Make().String()))
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	// Where the VMM can map the memory file copy-on-write, RAM is a shared file the
	// save leaves out of the state; otherwise RAM goes in the state.
	var plan bootPlan
	mem := filepath.Join(tmp, "mem")
	if m, ok := driver.(interface{ MapsSnapshotMemory() bool }); ok && m.MapsSnapshotMemory() {
		if err := createSparse(mem, int64(sh.memMB)<<20); err != nil {
			return nil, err
		}
		plan.memFile = &vmm.MemFile{Path: mem, Shared: true}
	}
	job := backend.Job{WorkloadID: "snap-" + strings.ToLower(ulid.Make().String()), Spec: model.Spec{
		Runtime: sh.template, Isolation: model.IsolationMicroVM,
		Resources: model.Resources{CPUs: sh.cpus, MemMB: sh.memMB},
	}}
	v, err := s.b.boot(ctx, driver, job, kernel, rootfs, plan)
	if v != nil {
		defer v.teardown(context.WithoutCancel(ctx))
	}
	if err != nil {
		return nil, err
	}
	if w := warmups[sh.template]; w != "" {
		if err := runShell(ctx, v.session, w); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	saver, ok := v.machine.(vmm.Snapshotter)
	if !ok {
		return nil, fmt.Errorf("%s machines cannot be saved", driver.Name())
	}
	// The agent leaves its session and waits for a wake line: each restored copy greets
	// its own host.
	nonce, err := v.park(ctx)
	if err != nil {
		return nil, err
	}
	saveStart := time.Now()
	if err := saver.Save(ctx, filepath.Join(tmp, "state")); err != nil {
		return nil, fmt.Errorf("save: %w", err)
	}
	saveMS := time.Since(saveStart).Milliseconds()
	if err := v.machine.Stop(ctx); err != nil {
		return nil, fmt.Errorf("stop: %w", err)
	}
	// The disk as the saved guest left it (flushed by the save), and its RAM file, now
	// read-only for every clone: root's, readable by the VMMs' cells.
	if p := filepath.Join(v.dir, "scratch.ext4"); fileExists(p) {
		if err := os.Rename(p, filepath.Join(tmp, "scratch.ext4")); err != nil {
			return nil, err
		}
		_ = os.Chown(filepath.Join(tmp, "scratch.ext4"), 0, 0)
	}
	// (A VMM that keeps guest memory beside the state — Firecracker's state.mem — has it
	// mapped copy-on-write at restore by the VMM itself.)
	for _, f := range []string{mem, filepath.Join(tmp, "state"), filepath.Join(tmp, "state.mem")} {
		if !fileExists(f) {
			continue
		}
		if err := os.Chown(f, 0, 0); err != nil && !errors.Is(err, os.ErrPermission) {
			return nil, err
		}
		if err := os.Chmod(f, 0o444); err != nil {
			return nil, err
		}
	}
	st, err := os.Stat(filepath.Join(tmp, "state"))
	if err != nil {
		return nil, err
	}
	snap := &snapshot{Key: key, Nonce: nonce, Mapped: plan.memFile != nil || fileExists(filepath.Join(tmp, "state.mem")), Template: sh.template, CPUs: sh.cpus, MemMB: sh.memMB, VMM: driver.Name(),
		BuildMS: time.Since(start).Milliseconds(), SaveMS: saveMS, StateSize: st.Size(), CreatedAt: time.Now().UTC()}
	meta, _ := json.MarshalIndent(snap, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, "snapshot.json"), meta, 0o644); err != nil {
		return nil, err
	}
	final := s.path(sh, key)
	_ = os.RemoveAll(final)
	if err := os.Rename(tmp, final); err != nil {
		return nil, err
	}
	snap.dir = final
	s.removeStale(sh, key)
	outcome = "built"
	s.b.log.Info("snapshot built", "shape", sh, "key", key, "build", time.Since(start), "save_ms", saveMS, "state_bytes", st.Size())
	return snap, nil
}

// removeStale deletes the shape's snapshots of other keys (older kernels, images, agents
// or VMMs). VMs restored from them keep running: their mappings hold the files.
func (s *snapshots) removeStale(sh shape, key string) {
	dirs, _ := filepath.Glob(filepath.Join(s.dir, sh.String()+"-*"))
	for _, d := range dirs {
		if filepath.Base(d) != sh.String()+"-"+key {
			_ = os.RemoveAll(d)
		}
	}
}

// createSparse makes a file of size bytes that costs nothing until written.
func createSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// copySparse copies a disk image, keeping its holes (and sharing its blocks where the
// filesystem can reflink).
func copySparse(ctx context.Context, src, dst string) error {
	out, err := exec.CommandContext(ctx, "cp", "--sparse=always", "--reflink=auto", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("copy %s: %v: %s", filepath.Base(src), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// SnapshotInfo describes a snapshot on disk, for status pages and benchmarks.
type SnapshotInfo = backend.SnapshotInfo

func (s *snapshot) info(current bool) SnapshotInfo {
	return SnapshotInfo{Template: s.Template, CPUs: s.CPUs, MemMB: s.MemMB, Key: s.Key, BuildMS: s.BuildMS, SaveMS: s.SaveMS,
		StateSize: s.StateSize, Mapped: s.Mapped, Current: current}
}

// Snapshots lists the snapshots on disk.
func (b *Backend) Snapshots() []SnapshotInfo {
	if b.snaps == nil {
		return nil
	}
	driver, _ := b.drivers.peek()
	set := images.Load(b.cfg.ImagesDir)
	dirs, _ := filepath.Glob(filepath.Join(b.snaps.dir, "*", "snapshot.json"))
	var out []SnapshotInfo
	for _, m := range dirs {
		raw, err := os.ReadFile(m)
		if err != nil || len(raw) > maxManifestBytes {
			continue
		}
		var s snapshot
		if json.Unmarshal(raw, &s) != nil {
			continue
		}
		info := s.info(false)
		if rootfs := b.rootfsFor(set, s.Template); driver != nil && set.Kernel != nil && rootfs != nil {
			info.Current = b.snapshotKey(driver, set.Kernel, rootfs, shape{s.Template, s.CPUs, s.MemMB}) == s.Key
		}
		out = append(out, info)
	}
	return out
}

// BuildSnapshot builds (or rebuilds) the snapshot of a template and shape now, waiting
// for it: for `vulcan bench` and tests. Normal starts build them in the background.
func (b *Backend) BuildSnapshot(ctx context.Context, template model.Runtime, r model.Resources) (SnapshotInfo, error) {
	if b.snaps == nil {
		return SnapshotInfo{}, errors.New("snapshots are off (no snapshot dir)")
	}
	driver, err := b.drivers.get(ctx)
	if err != nil {
		return SnapshotInfo{}, err
	}
	set := images.Load(b.cfg.ImagesDir)
	rootfs := b.rootfsFor(set, template)
	if set.Kernel == nil || rootfs == nil {
		return SnapshotInfo{}, fmt.Errorf("no %s image", template)
	}
	sh := shapeOf(template, r)
	key := b.snapshotKey(driver, set.Kernel, rootfs, sh)
	for {
		b.snaps.mu.Lock()
		if s := b.snaps.get(sh, key); s != nil {
			b.snaps.mu.Unlock()
			return s.info(true), nil
		}
		if wait := b.snaps.building[key]; wait != nil { // one build per key at a time
			b.snaps.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return SnapshotInfo{}, ctx.Err()
			}
		}
		done := make(chan struct{})
		b.snaps.building[key] = done
		b.snaps.mu.Unlock()
		s, err := b.snaps.build(ctx, driver, set.Kernel, rootfs, sh, key)
		b.snaps.finish(key, done, err)
		if err != nil {
			return SnapshotInfo{}, err
		}
		return s.info(true), nil
	}
}

// canSnapshot reports whether driver's machines can be saved and restored.
func canSnapshot(driver vmm.Driver) bool {
	d, ok := driver.(interface{ Snapshots() bool })
	return ok && d.Snapshots()
}

// runShell runs a command line in the guest as the user and waits for it to succeed.
func runShell(ctx context.Context, s *protocol.Session, cmd string) error {
	st, _, err := s.Open(ctx, &protocol.Request{Op: protocol.OpProcessStart, Process: &protocol.ProcessSpec{Shell: cmd, TimeoutMS: 120_000}})
	if err != nil {
		return err
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Now()) })
	defer stop()
	var tail []byte
	for {
		ev, err := st.Event()
		if err != nil {
			return errors.Join(err, ctx.Err())
		}
		if o := ev.Output; o != nil && len(tail) < 2048 {
			tail = append(tail, o.Data...)
		}
		if x := ev.Exit; x != nil {
			if x.Code != 0 || x.Error != "" || x.Signal != "" {
				return fmt.Errorf("%q exited %d %s%s: %s", cmd, x.Code, x.Signal, x.Error, tail)
			}
			return nil
		}
	}
}

// discard removes a snapshot that failed to restore and lets it be rebuilt at once.
func (s *snapshots) discard(sh shape, key string) {
	_ = os.RemoveAll(s.path(sh, key))
	s.mu.Lock()
	delete(s.failed, key)
	s.mu.Unlock()
}
