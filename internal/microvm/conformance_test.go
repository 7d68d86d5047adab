package microvm

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
	"github.com/vulcanhq/vulcan/internal/model"
)

// The conformance suite: every VMM driver must pass it. It runs against the QEMU driver
// (a real VM under TCG here), the Firecracker driver against the simulator, and real
// Firecracker where KVM and the binary exist. Each case boots its own VM; after each,
// nothing of the VM may remain.

type harness struct {
	b     *Backend
	reg   *prometheus.Registry
	state string
	vmm   string
	// emulated: the "VM" is a simulator running the agent on the host (fcsim), so what
	// only guest hardware shows (vCPU count, MemTotal) cannot be asserted.
	emulated bool
}

func newHarness(t *testing.T, imagesDir string, resolve func() (vmm.Driver, error)) *harness {
	t.Helper()
	state := shortDir(t)
	reg := prometheus.NewRegistry()
	// As served: each VM gets a scratch disk for its writes.
	b, err := New(Config{ImagesDir: imagesDir, StateDir: state, Metrics: reg, BootTimeout: 90 * time.Second, ScratchMB: 1024}, resolve)
	if err != nil {
		t.Fatal(err)
	}
	d, err := b.drivers.get(context.Background())
	if err != nil {
		t.Fatalf("driver: %v", err)
	}
	return &harness{b: b, reg: reg, state: state, vmm: d.Name()}
}

func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "vmt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

type line struct {
	stream  model.Stream
	text    string
	partial bool
	at      time.Time
}

type recorder struct {
	mu    sync.Mutex
	lines []line
	first chan struct{}
	once  sync.Once
}

func newRecorder() *recorder { return &recorder{first: make(chan struct{})} }

func (r *recorder) Line(s model.Stream, text string) { r.add(s, text, false) }

func (r *recorder) Partial(s model.Stream, text string) { r.add(s, text, true) }

func (r *recorder) add(s model.Stream, text string, partial bool) {
	r.mu.Lock()
	r.lines = append(r.lines, line{s, text, partial, time.Now()})
	r.mu.Unlock()
	r.once.Do(func() { close(r.first) })
}

// bytes is what the sink received of stream s, put back together: each text followed by
// a newline unless it was partial.
func (r *recorder) bytes(s model.Stream) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b []byte
	for _, l := range r.lines {
		if l.stream == s {
			b = append(b, l.text...)
			if !l.partial {
				b = append(b, '\n')
			}
		}
	}
	return b
}

func (r *recorder) text(s model.Stream) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var parts []string
	for _, l := range r.lines {
		if l.stream == s {
			parts = append(parts, l.text)
		}
	}
	return strings.Join(parts, "\n")
}

var wlSeq int

func (h *harness) job(rt model.Runtime, code string, mut ...func(*model.Spec)) backend.Job {
	wlSeq++
	spec := model.Spec{Runtime: rt, Isolation: model.IsolationMicroVM, Code: code,
		Resources: model.Resources{CPUs: 1, MemMB: 256, TimeoutS: 120}}
	for _, m := range mut {
		m(&spec)
	}
	return backend.Job{WorkloadID: fmt.Sprintf("wl%04d%d", wlSeq, time.Now().UnixNano()%1e6), Spec: spec, OutputLimit: 1 << 20}
}

func (h *harness) run(t *testing.T, ctx context.Context, job backend.Job) (backend.Result, *recorder, error) {
	t.Helper()
	rec := newRecorder()
	res, err := h.b.Execute(ctx, job, rec)
	h.assertNothingLeft(t, job, res)
	return res, rec, err
}

// assertNothingLeft: no VMM process, no state dir, no CID, no tracked VM, gauge at 0 —
// besides the warm pool's own VMs, when it has any (waited for to settle first).
func (h *harness) assertNothingLeft(t *testing.T, job backend.Job, res backend.Result) {
	t.Helper()
	pooled := h.settlePool(t)
	var left []string
	entries, _ := os.ReadDir(h.state)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "pool-") {
			left = append(left, e.Name())
		}
	}
	if len(left) != 0 || len(entries)-len(left) != pooled {
		t.Errorf("state dir after the run: %v (pool holds %d)", entries, pooled)
	}
	if n := h.b.cids.used(); n != pooled {
		t.Errorf("%d CIDs still allocated (pool holds %d)", n, pooled)
	}
	h.b.mu.Lock()
	n := len(h.b.vms)
	h.b.mu.Unlock()
	if n != pooled {
		t.Errorf("%d VMs still tracked (pool holds %d)", n, pooled)
	}
	if g := testutil.ToFloat64(h.b.metrics.active.WithLabelValues(h.vmm)); g != float64(pooled) {
		t.Errorf("active VMs gauge = %v, want %d (the pool's)", g, pooled)
	}
	if pid, _ := strconv.Atoi(res.Metadata["vmm_pid"]); pid > 0 {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("VMM process %d still exists (kill 0: %v)", pid, err)
		}
	}
}

// settlePool waits until no pool VM is starting and every shelf is at its target, and
// returns how many VMs the pool holds (0 without a pool).
func (h *harness) settlePool(t *testing.T) int {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		stats, idle, settled := h.b.PoolStats(), 0, true
		for _, s := range stats {
			idle += s.Idle
			if s.Filling > 0 || s.Idle != s.Target {
				settled = false
			}
		}
		if settled && !h.b.snaps.busy() {
			return idle
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pool did not settle: %+v (snapshot build under way: %v)", stats, h.b.snaps.busy())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func runConformance(t *testing.T, h *harness, runtimes []model.Runtime) {
	has := map[model.Runtime]bool{}
	for _, rt := range runtimes {
		has[rt] = true
	}
	ctx := context.Background()
	hello := map[model.Runtime]string{
		model.RuntimePython: "print(6*7)",
		model.RuntimeNode:   "console.log(6*7)",
		model.RuntimeGo:     "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(6 * 7) }\n",
	}
	for _, rt := range model.Runtimes {
		t.Run("hello_"+string(rt), func(t *testing.T) {
			if !has[rt] {
				t.Skipf("no %s image", rt)
			}
			res, rec, err := h.run(t, ctx, h.job(rt, hello[rt]))
			if err != nil {
				t.Fatalf("execute: %v", err)
			}
			if res.ExitCode != 0 || rec.text(model.Stdout) != "42" {
				t.Fatalf("exit %d stdout %q stderr %q error %q", res.ExitCode, rec.text(model.Stdout), rec.text(model.Stderr), res.Error)
			}
			for _, k := range []string{"vm_id", "vmm", "accel", "boot_ms", "cid", "kernel_version", "image_runtime"} {
				if res.Metadata[k] == "" {
					t.Errorf("metadata %s missing: %v", k, res.Metadata)
				}
			}
			if res.Metadata["vmm"] != h.vmm {
				t.Errorf("metadata vmm = %q, want %q", res.Metadata["vmm"], h.vmm)
			}
		})
	}
	if !has[model.RuntimePython] {
		t.Skip("the remaining cases use the python image")
	}

	t.Run("exit_code_stdin_env", func(t *testing.T) {
		job := h.job(model.RuntimePython, "import os, sys\ndata = sys.stdin.read()\nprint(data.upper(), os.environ['GREETING'])\nsys.exit(3)\n",
			func(s *model.Spec) {
				s.Input = []byte(`"hello from stdin"`)
				s.Env = map[string]string{"GREETING": "hi-env"}
			})
		res, rec, err := h.run(t, ctx, job)
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 3 {
			t.Errorf("exit code %d, want 3", res.ExitCode)
		}
		if got := rec.text(model.Stdout); got != "HELLO FROM STDIN hi-env" {
			t.Errorf("stdout %q", got)
		}
	})

	t.Run("streams_live_and_in_order", func(t *testing.T) {
		// stdout and stderr are two pipes: lines written within microseconds of each other
		// on different streams have no defined order, so these are half a second apart.
		code := "import sys, time\nprint('one', flush=True)\ntime.sleep(0.5)\nprint('two', file=sys.stderr, flush=True)\ntime.sleep(1.5)\nprint('three', flush=True)\n"
		res, rec, err := h.run(t, ctx, h.job(model.RuntimePython, code))
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("err %v exit %d", err, res.ExitCode)
		}
		rec.mu.Lock()
		defer rec.mu.Unlock()
		var got []string
		for _, l := range rec.lines {
			got = append(got, string(l.stream)+":"+l.text)
		}
		if strings.Join(got, ",") != "stdout:one,stderr:two,stdout:three" {
			t.Fatalf("lines %v", got)
		}
		// Live: 'one' reached the host while the program was still sleeping.
		if gap := rec.lines[2].at.Sub(rec.lines[0].at); gap < time.Second {
			t.Errorf("first line arrived only %v before the last: not streamed live", gap)
		}
	})

	t.Run("timeout_kills_vm", func(t *testing.T) {
		tctx, cancel := context.WithTimeout(ctx, 3*time.Second+h.bootAllowance())
		defer cancel()
		_, _, err := h.run(t, tctx, h.job(model.RuntimePython, "import time\nprint('sleeping', flush=True)\ntime.sleep(30)\n"))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want deadline exceeded", err)
		}
	})

	t.Run("kill_mid_run", func(t *testing.T) {
		job := h.job(model.RuntimePython, "import time\nprint('started', flush=True)\ntime.sleep(60)\n")
		rec := newRecorder()
		kctx, cancel := context.WithCancel(ctx)
		defer cancel()
		done := make(chan error, 1)
		go func() {
			_, err := h.b.Execute(kctx, job, rec)
			done <- err
		}()
		select {
		case <-rec.first:
		case err := <-done:
			t.Fatalf("ended before its first line: %v", err)
		case <-time.After(120 * time.Second):
			t.Fatal("no output within 120s")
		}
		// The engine's kill: cancel the run and call Cleanup.
		cancel()
		if err := h.b.Cleanup(context.Background(), job.WorkloadID); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want canceled", err)
		}
		h.assertNothingLeft(t, job, backend.Result{})
		if err := h.b.Cleanup(context.Background(), job.WorkloadID); err != nil {
			t.Errorf("second cleanup: %v", err)
		}
	})

	t.Run("memory_limit", func(t *testing.T) {
		// 160 MiB guest; the program asks for 400 MiB. It must fail inside the VM.
		job := h.job(model.RuntimePython, "b = bytearray(400 * 1024 * 1024)\nprint('allocated', len(b))\n",
			func(s *model.Spec) { s.Resources.MemMB = 160 })
		res, rec, err := h.run(t, ctx, job)
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode == 0 || strings.Contains(rec.text(model.Stdout), "allocated") {
			t.Fatalf("allocation past the VM's memory succeeded: exit %d stdout %q", res.ExitCode, rec.text(model.Stdout))
		}
	})

	t.Run("writes_go_to_the_scratch_disk", func(t *testing.T) {
		if h.emulated {
			t.Skip("emulated VMM: the guest writes to the host's disk")
		}
		// 300 MiB written by a guest with 256 MiB of memory: only a disk can hold it.
		code := "import os\nwith open('big', 'wb') as f:\n    for _ in range(300):\n        f.write(b'x' * (1 << 20))\nprint(os.path.getsize('big') >> 20)\n"
		res, rec, err := h.run(t, ctx, h.job(model.RuntimePython, code))
		if err != nil || res.ExitCode != 0 || rec.text(model.Stdout) != "300" {
			t.Fatalf("err %v exit %d stdout %q stderr %q", err, res.ExitCode, rec.text(model.Stdout), rec.text(model.Stderr))
		}
	})

	t.Run("vcpus_visible", func(t *testing.T) {
		if h.emulated {
			t.Skip("emulated VMM: the guest sees the host's CPUs and /proc/meminfo")
		}
		job := h.job(model.RuntimePython, "import os\nprint(os.cpu_count())\nprint(open('/proc/meminfo').readline().split()[1])\n",
			func(s *model.Spec) { s.Resources.CPUs = 2; s.Resources.MemMB = 300 })
		res, rec, err := h.run(t, ctx, job)
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("err %v exit %d stderr %q", err, res.ExitCode, rec.text(model.Stderr))
		}
		out := strings.Split(rec.text(model.Stdout), "\n")
		if out[0] != "2" {
			t.Errorf("cpu_count = %q, want 2", out[0])
		}
		// MemTotal is the VM's memory less what the kernel reserved.
		if kb, _ := strconv.Atoi(out[1]); kb < 200*1024 || kb > 300*1024 {
			t.Errorf("MemTotal %s kB, want about 300 MiB", out[1])
		}
	})

	t.Run("archive", func(t *testing.T) {
		arc := tarGz(t, map[string]string{
			"app/main.py": "from lib import greet\nprint(greet('archive'))\n",
			"app/lib.py":  "def greet(n):\n    return 'hello ' + n\n",
			"README":      "not code",
		})
		job := h.job(model.RuntimePython, "", func(s *model.Spec) { s.Archive = arc; s.Entrypoint = "app/main.py" })
		res, rec, err := h.run(t, ctx, job)
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("err %v exit %d stderr %q error %q", err, res.ExitCode, rec.text(model.Stderr), res.Error)
		}
		if got := rec.text(model.Stdout); got != "hello archive" {
			t.Errorf("stdout %q", got)
		}
	})

	runOutputIntegrity(t, h)
	runSandboxConformance(t, h)

	t.Run("metrics", func(t *testing.T) {
		if n := testutil.CollectAndCount(h.b.metrics.boot); n == 0 {
			t.Error("no boot time observations")
		}
		if v := testutil.ToFloat64(h.b.metrics.workloads.WithLabelValues(h.vmm, "python", "completed")); v < 1 {
			t.Errorf("workloads_total{python,completed} = %v", v)
		}
		if v := testutil.ToFloat64(h.b.metrics.workloads.WithLabelValues(h.vmm, "python", "timeout")); v != 1 {
			t.Errorf("workloads_total{python,timeout} = %v, want 1", v)
		}
	})
}

// bootAllowance is added to short timeouts so that a case tests the timeout, not the boot.
func (h *harness) bootAllowance() time.Duration {
	if d, _ := h.b.drivers.peek(); d != nil && d.Accel() == "tcg" {
		return 5 * time.Second
	}
	return time.Second
}

func tarGz(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
