//go:build linux

package microvm

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/cell"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/server/servertest"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// TestConfinementQEMU boots a real QEMU VM and checks its VMM from the host: unprivileged
// (uid/gid, no capabilities, no_new_privs), seccomp-filtered, in its own mount namespace
// holding only what it needs, in its own cgroup with the VM's limits. Its guest then
// fills its memory and spins its vCPU while an API in this process is timed: the p50
// ratio storm/idle and the VMM's memory beyond guest RAM are logged (figures, not
// assertions: this host is shared).
func TestConfinementQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	testenv.RequiresRoot(t)
	testenv.RequiresBinary(t, "qemu-system-x86_64")
	dir := testenv.RequiresImages(t, "python")
	h := newHarness(t, dir, ResolveDriver(DriverOptions{VMM: "qemu", Kernel: filepath.Join(dir, "vmlinux"), ProbeCache: DefaultProbeCache()}))
	if h.b.cell.off != nil {
		t.Fatalf("VMMs unconfined as root: %v", h.b.cell.off)
	}
	api := servertest.NewStack(t, engine.Config{}, nil, nil)

	const memMB = 256
	code := `import time
avail = int([l for l in open('/proc/meminfo') if l.startswith('MemAvailable')][0].split()[1]) * 1024
hold = [b'\x01' * (8 << 20) for _ in range(max(0, avail - (24 << 20)) // (8 << 20))]
print('allocated', len(hold) * 8, flush=True)
end = time.time() + 12
while time.time() < end:
    pass
print('done', flush=True)
`
	job := h.job(model.RuntimePython, code, func(s *model.Spec) { s.Resources.CPUs = 1; s.Resources.MemMB = memMB })

	idle := sampleLatency(t, api.URL, 3*time.Second)

	rec := newRecorder()
	done := make(chan error, 1)
	var res struct {
		exit int
		err  error
	}
	go func() {
		r, err := h.b.Execute(context.Background(), job, rec)
		res.exit, res.err = r.ExitCode, err
		done <- err
	}()
	select {
	case <-rec.first:
	case err := <-done:
		t.Fatalf("ended before its first line: %v (%s)", err, rec.text(model.Stderr))
	case <-time.After(120 * time.Second):
		t.Fatal("no output in 120 s")
	}
	h.b.mu.Lock()
	v := h.b.vms[job.WorkloadID]
	h.b.mu.Unlock()
	if v == nil || v.machine == nil {
		t.Fatal("no VM tracked")
	}
	pid := v.machine.PID()

	st, err := cell.ReadStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("VMM %d: uid %v gid %v CapEff %x CapBnd %x NoNewPrivs %d Seccomp %d", pid, st.UID, st.GID, st.CapEff, st.CapBnd, st.NoNewPrivs, st.Seccomp)
	if err := st.Confined(); err != nil {
		t.Errorf("VMM not confined: %v", err)
	}
	if st.Seccomp != 2 {
		t.Errorf("Seccomp = %d, want 2 (filter mode: QEMU's -sandbox)", st.Seccomp)
	}
	mounts, err := cell.ReadMounts(pid)
	if err != nil {
		t.Fatal(err)
	}
	want := &cell.Spec{Dir: v.dir, ReadOnly: []string{v.kernel.Path, v.rootfs.Path}, Writable: []string{filepath.Join(v.dir, "scratch.ext4")}}
	if err := want.OnlyNeeded(mounts); err != nil {
		t.Errorf("VMM mount namespace: %v", err)
	}
	if self, _ := os.Readlink("/proc/self/ns/mnt"); self != "" {
		if vm, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/mnt"); vm == self {
			t.Errorf("VMM shares the host's mount namespace %s", self)
		}
	}
	t.Logf("VMM mounts: %s", strings.Join(mounts, " "))

	if err := h.b.cell.cgroups.Err(); err != nil {
		t.Logf("no cgroups on this host: %v", err)
	} else {
		g := h.b.group(job.WorkloadID)
		if g == nil {
			t.Fatal("no cgroup for the VM")
		}
		if in, err := cell.InGroup(pid, g); err != nil || !in {
			t.Errorf("VMM %d not in its cgroup %v (%v)", pid, g.Paths, err)
		}
		lim, err := cell.ReadLimits(g)
		if err != nil {
			t.Fatal(err)
		}
		exp := cellLimits(job.Spec.Resources)
		if lim.MemoryBytes != exp.MemoryBytes || lim.CPUs != exp.CPUs || lim.Pids != exp.Pids {
			t.Errorf("cgroup limits %+v, want %+v", lim, exp)
		}
		t.Logf("cgroup %s %v: %+v", h.b.cell.cgroups.Mode(), g.Paths, lim)
	}

	// The storm: wait for the guest to hold its memory, then time the API while it spins.
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(rec.text(model.Stdout), "allocated") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	storm := sampleLatency(t, api.URL, 4*time.Second)
	rss := vmRSSMB(pid)
	if err := <-done; err != nil || res.exit != 0 {
		t.Fatalf("storm workload: err %v exit %d stdout %q stderr %q", err, res.exit, rec.text(model.Stdout), rec.text(model.Stderr))
	}
	t.Logf("guest: %s", strings.ReplaceAll(rec.text(model.Stdout), "\n", "; "))
	t.Logf("VMM RSS during the storm %d MiB for a %d MiB guest: %d MiB beyond guest RAM (memory.max allows %d)", rss, memMB, rss-memMB, VMMOverheadMB)
	t.Logf("API p50 idle %v, during the storm %v: ratio %.2f", idle, storm, float64(storm)/float64(idle))
}

// sampleLatency is the p50 of GET /v1/workloads against the API for d.
func sampleLatency(t *testing.T, url string, d time.Duration) time.Duration {
	t.Helper()
	var lat []time.Duration
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		start := time.Now()
		resp, err := http.Get(url + "/v1/workloads?limit=10")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		lat = append(lat, time.Since(start))
		time.Sleep(20 * time.Millisecond)
	}
	slices.Sort(lat)
	return lat[len(lat)/2]
}

// vmRSSMB is a process's resident memory in MiB.
func vmRSSMB(pid int) int {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return kb / 1024
		}
	}
	return 0
}
