package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vulcanhq/vulcan/internal/api"
)

var (
	rowS1  = Row{"S1", "sandbox exec overhead", "`true` (argv) in a running sandbox: POST /v1/sandboxes/{id}/processes to its exit event (HTTP + service + agent session) vs its spawn-to-exit as the guest agent timed it (duration_us), same execs, p50 difference"}
	rowS2a = Row{"S2a", "sandbox file round trip 1 MiB", "PUT then GET of 1 MiB through /v1/sandboxes/{id}/files (bytes compared) vs the same copy inside the guest (dd, timed by the agent), medians"}
	rowS2b = Row{"S2b", "sandbox file round trip 64 MiB", "PUT then GET of 64 MiB through /v1/sandboxes/{id}/files (bytes compared) vs the same copy inside the guest (dd, timed by the agent), medians"}
	rowS3  = Row{"S3", "sandbox density", "idle python sandboxes booted through the API, the largest N whose exec p99 (`true`, round-robin) stays ≤ 100 ms; host RSS per idle sandbox from the VMMs' VmRSS"}
)

// Sandbox targets. S1's and S3's are the issue's; S2's ≤ 10× is ours.
const (
	SandboxExecMaxOverhead = 2 * time.Millisecond
	SandboxFileMaxRatio    = 10.0
	DensityMinSandboxes    = 100
	DensityMaxExecP99      = 100 * time.Millisecond
)

// execTrue runs `true` in sandbox id through the API: the client's wall time and the
// agent's spawn-to-exit.
func execTrue(ctx context.Context, s *sandboxStack, id string) (viaAPI, agent time.Duration, err error) {
	t0 := time.Now()
	ev, err := s.c.Exec(ctx, id, api.ProcessRequest{Argv: []string{"true"}}, nil)
	viaAPI = time.Since(t0)
	if err != nil {
		return 0, 0, err
	}
	if ev.ExitCode == nil || *ev.ExitCode != 0 || ev.Error != "" {
		return 0, 0, fmt.Errorf("true in %s: exit %+v", id, ev)
	}
	if ev.DurationUS <= 0 {
		return 0, 0, errNoDurationUS
	}
	return viaAPI, time.Duration(ev.DurationUS) * time.Microsecond, nil
}

// errNoDurationUS: the image's agent predates Exit.duration_us.
var errNoDurationUS = errors.New("the exit event has no duration_us: the image's guest agent predates it; rebuild the images (`make images`)")

func createSandbox(ctx context.Context, s *sandboxStack) (*api.Sandbox, error) {
	sb, err := s.c.CreateSandbox(ctx, benchSandbox)
	if err != nil {
		return nil, fmt.Errorf("create sandbox: %w", err)
	}
	return sb, nil
}

// SandboxExec is S1: what the API, the sandbox service and the agent session add to a
// process the guest spawns and reaps.
func SandboxExec(ctx context.Context, o Options) (_ Result, err error) {
	if why := sandboxPrereq(o); why != "" {
		return rowS1.Skipped(why), nil
	}
	s, err := startSandboxStack(ctx, o, 1)
	if err != nil {
		return Result{}, err
	}
	defer s.Close()
	sb, err := createSandbox(ctx, s)
	if err != nil {
		return Result{}, err
	}
	defer func() {
		if serr := s.stopAll(ctx, []string{sb.ID}); serr != nil && err == nil {
			err = serr
		}
	}()
	n := o.n(200, 40)
	for range 5 { // warm: connections, the agent's and the guest's caches
		if _, _, err := execTrue(ctx, s, sb.ID); err != nil {
			return Result{}, err
		}
	}
	viaAPI, agent := make([]time.Duration, n), make([]time.Duration, n)
	for i := range n {
		if viaAPI[i], agent[i], err = execTrue(ctx, s, sb.ID); err != nil {
			return Result{}, err
		}
	}
	r := rowS1.Compare(Overhead, NewSample("agent spawn→exit", agent), NewSample("via API", viaAPI),
		AtMost(SandboxExecMaxOverhead.Seconds()))
	r.Note = fmt.Sprintf("%d execs; p99 via API %s, agent %s; boot %s ms; accel %s", n,
		formatSeconds(Percentile(viaAPI, 99).Seconds()), formatSeconds(Percentile(agent, 99).Seconds()),
		sb.VM["boot_ms"], sb.VM["accel"])
	return r, nil
}

// SandboxFiles is S2: a file's round trip through the files API vs the same bytes copied
// inside the guest, at 1 MiB and 64 MiB.
func SandboxFiles(ctx context.Context, o Options) (_ []Result, err error) {
	if why := sandboxPrereq(o); why != "" {
		return []Result{rowS2a.Skipped(why), rowS2b.Skipped(why)}, nil
	}
	s, err := startSandboxStack(ctx, o, 1)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	sb, err := createSandbox(ctx, s)
	if err != nil {
		return nil, err
	}
	defer func() {
		if serr := s.stopAll(ctx, []string{sb.ID}); serr != nil && err == nil {
			err = serr
		}
	}()
	var out []Result
	for _, c := range []struct {
		row  Row
		size int
		n    int
	}{{rowS2a, 1 << 20, o.n(20, 5)}, {rowS2b, 64 << 20, o.n(5, 2)}} {
		r, err := fileRoundTrip(ctx, s, sb.ID, c.row, c.size, c.n)
		if err != nil {
			return out, err
		}
		o.logf("%s: %s", r.ID, r.Note)
		out = append(out, r)
	}
	return out, nil
}

func fileRoundTrip(ctx context.Context, s *sandboxStack, id string, row Row, size, n int) (Result, error) {
	data := make([]byte, size)
	rand.Read(data)
	const src, dst = "/tmp/vulcan-s2-api.bin", "/tmp/vulcan-s2-copy.bin"
	var buf bytes.Buffer
	buf.Grow(size)
	viaAPI, guest := make([]time.Duration, n), make([]time.Duration, n)
	for i := range n {
		buf.Reset()
		t0 := time.Now()
		if _, err := s.c.WriteFile(ctx, id, src, 0, bytes.NewReader(data)); err != nil {
			return Result{}, err
		}
		if _, err := s.c.ReadFile(ctx, id, src, &buf); err != nil {
			return Result{}, err
		}
		viaAPI[i] = time.Since(t0)
		if !bytes.Equal(buf.Bytes(), data) {
			return Result{}, fmt.Errorf("%s: read back %d bytes that differ from the %d written", row.ID, buf.Len(), size)
		}
		// The same bytes read and written inside the guest, with no shell: dd's own run.
		ev, err := s.c.Exec(ctx, id, api.ProcessRequest{Argv: []string{"dd", "if=" + src, "of=" + dst, "bs=1M"}}, nil)
		if err != nil {
			return Result{}, err
		}
		if ev.ExitCode == nil || *ev.ExitCode != 0 {
			return Result{}, fmt.Errorf("%s: dd in the guest: exit %+v", row.ID, ev)
		}
		if ev.DurationUS <= 0 {
			return Result{}, errNoDurationUS
		}
		guest[i] = time.Duration(ev.DurationUS) * time.Microsecond
	}
	r := row.Compare(Ratio, NewSample("in-guest dd", guest), NewSample("PUT+GET", viaAPI), AtMost(SandboxFileMaxRatio))
	mbps := func(d float64) string {
		if d <= 0 {
			return "—"
		}
		return sig3(float64(size)/1e6/d) + " MB/s"
	}
	r.Details = map[string]float64{"bytes": float64(size),
		"api_mb_per_s": float64(size) / 1e6 / r.Vulcan.Median, "guest_mb_per_s": float64(size) / 1e6 / r.Baseline.Median}
	for k, v := range r.Details { // JSON has no Inf
		if math.IsInf(v, 0) || math.IsNaN(v) {
			delete(r.Details, k)
		}
	}
	r.Note = fmt.Sprintf("%d round trips of %s: API %s (write+read), in guest %s (dd read+write); target ours",
		n, sizeLabel(size), mbps(r.Vulcan.Median), mbps(r.Baseline.Median))
	return r, nil
}

func sizeLabel(n int) string { return strconv.Itoa(n>>20) + " MiB" }

// Density is S3: boot idle sandboxes in steps up to o.Sandboxes (default 32, 8 with
// Quick), and at each step time `true` round-robin across all of them; N reached is the
// largest step whose exec p99 met DensityMaxExecP99. Every sandbox is stopped after, and
// the backend's state dir must be empty.
func Density(ctx context.Context, o Options) (_ Result, err error) {
	if why := sandboxPrereq(o); why != "" {
		return rowS3.Skipped(why), nil
	}
	target := o.Sandboxes
	if target <= 0 {
		target = 32
		if o.Quick {
			target = 8
		}
	}
	perBox := o.n(10, 5) // execs per sandbox at each step
	s, err := startSandboxStack(ctx, o, target)
	if err != nil {
		return Result{}, err
	}
	defer s.Close()
	var ids []string
	vmmPIDs := map[string]int{}
	defer func() {
		if serr := s.stopAll(ctx, ids); serr != nil && err == nil {
			err = serr
		}
	}()
	var steps []int
	for n := 2; n < target; n *= 2 {
		steps = append(steps, n)
	}
	steps = append(steps, target)

	reached, booted := 0, 0
	var lastExec []time.Duration
	var rss int64
	var tried []string
	bootStart := time.Now()
	for _, step := range steps {
		// Boot up to step, two at a time (2 host cores).
		var mu sync.Mutex
		var bootErr error
		var wg sync.WaitGroup
		sem := make(chan struct{}, 2)
		for range step - booted {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				sb, err := createSandbox(ctx, s)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					bootErr = err
					return
				}
				ids = append(ids, sb.ID)
				pid, _ := strconv.Atoi(sb.VM["vmm_pid"])
				vmmPIDs[sb.ID] = pid
			})
		}
		wg.Wait()
		if bootErr != nil {
			tried = append(tried, fmt.Sprintf("N=%d: boot failed after %d (%v)", step, len(ids), bootErr))
			break
		}
		booted = step
		// RSS of the idle VMMs, before this step's execs.
		rss = 0
		for _, id := range ids {
			kb, err := vmRSSKiB(vmmPIDs[id])
			if err != nil {
				return Result{}, fmt.Errorf("sandbox %s: %w", id, err)
			}
			rss += kb << 10
		}
		execs := make([]time.Duration, 0, perBox*step)
		for i := range perBox * step {
			d, _, err := execTrue(ctx, s, ids[i%len(ids)])
			if err != nil {
				return Result{}, err
			}
			execs = append(execs, d)
		}
		p99 := Percentile(execs, 99)
		tried = append(tried, fmt.Sprintf("N=%d p99 %s", step, formatSeconds(p99.Seconds())))
		o.logf("S3: %d sandboxes (booted in %s so far): exec p50 %s p99 %s, RSS/sandbox %.0f MiB", step,
			time.Since(bootStart).Round(time.Millisecond), formatSeconds(Median(execs).Seconds()),
			formatSeconds(p99.Seconds()), float64(rss)/float64(step)/(1<<20))
		lastExec = execs
		// Every step runs (the RSS and p99 at the largest N are reported either way); N
		// reached is the largest step that met the p99 bound.
		if p99 <= DensityMaxExecP99 {
			reached = step
		}
	}
	r := Result{ID: rowS3.ID, Title: rowS3.Title, Measures: rowS3.Measures, Kind: Count,
		Value: float64(reached), Unit: "sandboxes", Target: AtLeast(DensityMinSandboxes)}
	if len(lastExec) > 0 {
		v := NewSample(fmt.Sprintf("exec p50 at N=%d", booted), lastExec)
		r.Vulcan = &v
	}
	r = r.judged()
	perSandbox := 0.0
	if booted > 0 {
		perSandbox = float64(rss) / float64(booted)
	}
	p99 := Percentile(lastExec, 99)
	r.Details = map[string]float64{"n_tried": float64(target), "n_booted": float64(booted),
		"n_reached": float64(reached), "exec_p99_seconds": p99.Seconds(),
		"rss_per_sandbox_bytes": perSandbox, "rss_total_bytes": float64(rss)}
	r.Note = fmt.Sprintf("tried up to N=%d (%s); at N=%d: exec p99 %s over %d execs, host RSS %.0f MiB per idle sandbox "+
		"(VMMs' VmRSS / N, 256 MiB guests); host: %d CPUs, accel %s",
		target, strings.Join(tried, ", "), booted, formatSeconds(p99.Seconds()), len(lastExec),
		perSandbox/(1<<20), runtime.NumCPU(), accelName(o))
	if target < DensityMinSandboxes {
		r.Note += fmt.Sprintf("; N ≥ %d was not attempted here (--sandboxes sets N)", DensityMinSandboxes)
	}
	return r, nil
}

// vmRSSKiB is VmRSS from /proc/<pid>/status.
func vmRSSKiB(pid int) (int64, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("no vmm_pid in the sandbox's vm metadata")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

func accelName(o Options) string {
	if o.Accel == "" {
		return "tcg"
	}
	return o.Accel
}
