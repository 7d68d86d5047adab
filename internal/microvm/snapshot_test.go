package microvm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// fastHarness is a QEMU backend with snapshots in their own dir and the given pool.
func fastHarness(t *testing.T, pool map[model.Runtime]PoolSize) (*harness, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots VMs")
	}
	testenv.RequiresBinary(t, "qemu-system-x86_64")
	dir := testenv.RequiresImages(t, "python")
	state, snaps := shortDir(t), shortDir(t)
	reg := prometheus.NewRegistry()
	b, err := New(Config{ImagesDir: dir, StateDir: state, SnapshotDir: snaps, Pool: pool, Metrics: reg,
		BootTimeout: 90 * time.Second, ScratchMB: 1024},
		ResolveDriver(DriverOptions{VMM: "qemu", Kernel: filepath.Join(dir, "vmlinux"), ProbeCache: DefaultProbeCache()}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return &harness{b: b, reg: reg, state: state, vmm: "qemu"}, snaps
}

// TestSnapshotClonesAreUnique restores two VMs from one snapshot and shows they are two
// machines: their random bytes, boot ids, hostnames and disks differ, their clocks are
// the host's (not the snapshot's), and what one writes the other does not see. Then a
// VM of a shape without a snapshot boots cold, and a stale snapshot is never restored.
func TestSnapshotClonesAreUnique(t *testing.T) {
	h, snapDir := fastHarness(t, nil)
	ctx := context.Background()
	res := model.Resources{CPUs: 1, MemMB: 256}
	info, err := h.b.BuildSnapshot(ctx, model.RuntimePython, res)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot built in %d ms (save %d ms, state %d KiB)", info.BuildMS, info.SaveMS, info.StateSize>>10)
	// The clock test needs time to pass between the save and the restores.
	time.Sleep(1500 * time.Millisecond)

	type facts struct{ random, bootID, hostname, pyRandom, clock, file string }
	probe := func(sess *protocol.Session, marker string) facts {
		out, exit := runProc(t, sess, protocol.ProcessSpec{Shell: "od -An -tx1 -N16 /dev/urandom | tr -d ' \\n'; echo; " +
			"cat /proc/sys/kernel/random/boot_id; hostname; python3 -c 'import random; print(random.random())'; date +%s; " +
			"ls /home/user/marker-* 2>/dev/null | wc -l; echo " + marker + " > /home/user/marker-" + marker})
		if exit.Code != 0 {
			t.Fatalf("probe: %+v %q", exit, out)
		}
		l := strings.Split(strings.TrimSpace(out[protocol.Stdout]), "\n")
		if len(l) != 6 {
			t.Fatalf("probe output %q", out)
		}
		return facts{l[0], l[1], l[2], l[3], l[4], l[5]}
	}
	var got []facts
	cids, socks := map[string]bool{}, map[string]bool{}
	for i := range 2 {
		id := fmt.Sprintf("clone%d-%d", i, time.Now().UnixNano()%1e9)
		start := time.Now()
		sb, err := h.b.StartSandbox(ctx, VMSpec{ID: id, Template: model.RuntimePython, Resources: res})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("clone %d ready in %v: %v", i, time.Since(start), sb.Metadata())
		md := sb.Metadata()
		if md["start"] != "snapshot" {
			t.Errorf("clone %d started from %q, want snapshot", i, md["start"])
		}
		// Its own CID and VM dir (its sockets and disk are in it).
		if cids[md["cid"]] || socks[md["vm_id"]] {
			t.Errorf("clone %d shares its CID %s or VM dir %s with the other", i, md["cid"], md["vm_id"])
		}
		cids[md["cid"]], socks[md["vm_id"]] = true, true
		f := probe(sb.Session(), strconv.Itoa(i))
		if f.hostname != hostnameFor(id) {
			t.Errorf("clone %d hostname %q, want %q", i, f.hostname, hostnameFor(id))
		}
		if c, _ := strconv.ParseInt(f.clock, 10, 64); time.Since(time.Unix(c, 0)).Abs() > 3*time.Second {
			t.Errorf("clone %d clock %s, host %d: not set at restore", i, f.clock, time.Now().Unix())
		}
		if f.file != "0" {
			t.Errorf("clone %d sees %s marker files: the scratch disk is shared", i, f.file)
		}
		got = append(got, f)
		defer sb.Stop(ctx)
	}
	a, b := got[0], got[1]
	if a.random == b.random || a.bootID == b.bootID || a.pyRandom == b.pyRandom || a.hostname == b.hostname {
		t.Errorf("clones are alike:\n%+v\n%+v", a, b)
	}

	// Another shape has no snapshot: it boots cold, and its snapshot is built meanwhile.
	sb, err := h.b.StartSandbox(ctx, VMSpec{ID: fmt.Sprintf("cold-%d", time.Now().UnixNano()%1e9), Template: model.RuntimePython,
		Resources: model.Resources{CPUs: 1, MemMB: 320}})
	if err != nil {
		t.Fatal(err)
	}
	if md := sb.Metadata(); md["start"] != "boot" {
		t.Errorf("new shape started from %q, want boot", md["start"])
	}
	sb.Stop(ctx)

	// A snapshot whose key does not match (as after a new image) is not restored.
	dirs, _ := filepath.Glob(filepath.Join(snapDir, "python-1c-256m-*"))
	if len(dirs) != 1 {
		t.Fatalf("snapshot dirs %v", dirs)
	}
	stale := strings.TrimSuffix(dirs[0], info.Key) + "000000000000000000000000"
	if err := os.Rename(dirs[0], stale); err != nil {
		t.Fatal(err)
	}
	sb, err = h.b.StartSandbox(ctx, VMSpec{ID: fmt.Sprintf("stale-%d", time.Now().UnixNano()%1e9), Template: model.RuntimePython, Resources: res})
	if err != nil {
		t.Fatal(err)
	}
	if md := sb.Metadata(); md["start"] != "boot" {
		t.Errorf("with a stale snapshot the VM started from %q, want boot", md["start"])
	}
	sb.Stop(ctx)
}

// TestWarmPool: a pooled template's VMs are taken warm (a hit), a workload runs on one
// and the VM is gone after; the pool refills; a miss boots and raises the target; Close
// drains the pool and leaves nothing behind.
func TestWarmPool(t *testing.T) {
	h, _ := fastHarness(t, map[model.Runtime]PoolSize{model.RuntimePython: {Min: 1, Max: 2}})
	ctx := context.Background()
	waitIdle := func(n int) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for time.Now().Before(deadline) {
			for _, s := range h.b.PoolStats() {
				if s.Template == model.RuntimePython && s.Idle >= n {
					return
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("pool never reached %d idle: %+v", n, h.b.PoolStats())
	}
	waitIdle(1)
	var lines []string
	res, err := h.b.Execute(ctx, backend.Job{WorkloadID: fmt.Sprintf("wl-%d", time.Now().UnixNano()%1e9), Spec: model.Spec{
		Runtime: model.RuntimePython, Isolation: model.IsolationMicroVM, Code: "import socket; print(socket.gethostname())",
		Resources: model.Resources{CPUs: 1, MemMB: 256, TimeoutS: 60},
	}, OutputLimit: 1 << 20}, backendSink(&lines))
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("run: %+v %v %q", res, err, lines)
	}
	if res.Metadata["start"] != "pool" {
		t.Errorf("workload VM came from %q, want pool", res.Metadata["start"])
	}
	s := h.b.PoolStats()[0]
	if s.Hits != 1 {
		t.Errorf("stats %+v: want one hit", s)
	}
	// The used VM is gone: only the pool's own VMs remain in the state dir.
	waitIdle(1)
	dirs, _ := os.ReadDir(h.state)
	for _, d := range dirs {
		if !strings.HasPrefix(d.Name(), "pool-") && !strings.HasPrefix(d.Name(), "snap-") {
			t.Errorf("%s left in the state dir after the workload", d.Name())
		}
	}
	if err := h.b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if dirs, _ := os.ReadDir(h.state); len(dirs) != 0 {
		t.Errorf("after Close the state dir holds %d entries", len(dirs))
	}
}

func backendSink(lines *[]string) backend.Sink {
	return backend.SinkFunc(func(_ model.Stream, text string, _ bool) { *lines = append(*lines, text) })
}

// TestConformanceFastStart runs the sandbox conformance cases and a workload with the
// warm pool and snapshots on: every VM comes from the pool (restored from the template's
// snapshot), and what the cases assert holds for them as for cold-booted ones.
func TestConformanceFastStart(t *testing.T) {
	h, _ := fastHarness(t, map[model.Runtime]PoolSize{model.RuntimePython: {Min: 1, Max: 1}})
	ctx := context.Background()
	if _, err := h.b.BuildSnapshot(ctx, model.RuntimePython, model.Resources{CPUs: 1, MemMB: 256}); err != nil {
		t.Fatal(err)
	}
	h.settlePool(t)
	t.Run("workload", func(t *testing.T) {
		res, rec, err := h.run(t, ctx, h.job(model.RuntimePython, "print(6*7)"))
		if err != nil || res.ExitCode != 0 || rec.text(model.Stdout) != "42" {
			t.Fatalf("run: %v %+v %q", err, res, rec.text(model.Stdout))
		}
		if res.Metadata["start"] != "pool" {
			t.Errorf("the workload's VM came from %q, want pool", res.Metadata["start"])
		}
	})
	runSandboxConformance(t, h)
	if s := h.b.PoolStats(); len(s) != 1 || s[0].Hits < 3 {
		t.Errorf("pool stats %+v: want a hit per VM taken", s)
	}
}
