package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/microvm"
	"github.com/vulcanhq/vulcan/internal/model"
)

// Fast start (F1–F5): the warm pool, snapshot restores and pause/resume, each beside the
// cold path measured in the same run.

var (
	rowF1  = Row{"F1", "warm-pool acquire → first exec", "POST /v1/sandboxes (python, 256 MiB) → the exit of `true` in it, the VM taken from a warm pool (refilled between takes, untimed) vs booted cold, p50s"}
	rowF2  = Row{"F2", "snapshot restore vs cold boot", "VMM start → agent hello of the python template (1 vCPU, 256 MiB): restored from its snapshot vs booted, p50s, same backend"}
	rowF3  = Row{"F3", "python print(1) one-shot", "POST /v1/workloads `print(1)` to its result: the VM restored from the warmed python snapshot vs booted cold, p50s"}
	rowF4  = Row{"F4", "20 concurrent sandbox creates", "20 POST /v1/sandboxes at once to the last answer: with snapshots vs cold (total); p95s in the note"}
	rowF5a = Row{"F5a", "pause 256 MiB", "POST …/pause of a 256 MiB sandbox with 40% of its RAM filled with random bytes (in /dev/shm): wall time; the bytes' hash checked after the resume"}
	rowF5b = Row{"F5b", "resume 256 MiB", "POST …/resume of the F5a sandbox to running"}
	rowF5c = Row{"F5c", "pause 1 GiB", "as F5a, 1 GiB"}
	rowF5d = Row{"F5d", "resume 1 GiB", "as F5b, 1 GiB"}
)

// Fast-start targets: the (F1, F2, F4 is E2B's self-hosted 1.6 s, F5 beats E2B's
// published ≈4 s/GiB pause and ≈1 s resume); F3's ≤ 0.5 is ours.
const (
	PoolAcquireMax    = 20 * time.Millisecond
	RestoreMaxRatio   = 0.1
	OneShotMaxRatio   = 0.5
	ConcurrentMax     = 1600 * time.Millisecond
	PauseMaxPerGiB    = 4 * time.Second
	ResumeMax         = time.Second
	concurrentCreates = 20
)

var pythonShape = model.Resources{CPUs: 1, MemMB: 256}

// createToFirstExec times POST /v1/sandboxes → the exit of `true` in it; also the
// create's answer alone and the guest's spawn→exit of `true`.
func createToFirstExec(ctx context.Context, s *sandboxStack) (total, create, guest time.Duration, sb *api.Sandbox, err error) {
	t0 := time.Now()
	sb, err = s.c.CreateSandbox(ctx, benchSandbox)
	if err != nil {
		return 0, 0, 0, nil, err
	}
	create = time.Since(t0)
	if _, guest, err = execTrue(ctx, s, sb.ID); err != nil {
		return 0, 0, 0, sb, err
	}
	return time.Since(t0), create, guest, sb, nil
}

// WarmPoolAcquire is F1.
func WarmPoolAcquire(ctx context.Context, o Options) (_ Result, err error) {
	if why := sandboxPrereq(o); why != "" {
		return rowF1.Skipped(why), nil
	}
	n := o.n(15, 4)
	var creates, guests []time.Duration // of the pooled takes
	measure := func(fs fastStart, wait func(*sandboxStack) error) ([]time.Duration, []string, error) {
		s, err := startSandboxStack(ctx, o, 4, fs)
		if err != nil {
			return nil, nil, err
		}
		defer s.Close()
		var ds []time.Duration
		var sources []string
		for range n {
			if err := wait(s); err != nil {
				return nil, nil, err
			}
			d, create, guest, sb, err := createToFirstExec(ctx, s)
			if fs.pool != nil {
				creates, guests = append(creates, create), append(guests, guest)
			}
			if sb != nil {
				sources = append(sources, sb.VM["start"])
				if _, kerr := s.c.KillSandbox(context.WithoutCancel(ctx), sb.ID); kerr != nil && err == nil {
					err = kerr
				}
			}
			if err != nil {
				return nil, nil, err
			}
			ds = append(ds, d)
		}
		return ds, sources, nil
	}
	cold, _, err := measure(fastStart{}, func(*sandboxStack) error { return nil })
	if err != nil {
		return Result{}, fmt.Errorf("cold: %w", err)
	}
	pooled, sources, err := measure(fastStart{pool: map[model.Runtime]microvm.PoolSize{model.RuntimePython: {Min: 1, Max: 1}}, snapshots: true},
		func(s *sandboxStack) error { return waitPoolIdle(ctx, s, 1) })
	if err != nil {
		return Result{}, fmt.Errorf("pooled: %w", err)
	}
	for _, src := range sources {
		if src != "pool" {
			return Result{}, fmt.Errorf("a pooled take came from %q: %v", src, sources)
		}
	}
	cs, ps := NewSample("cold boot", cold), NewSample("warm pool", pooled)
	r := rowF1.Latency(ps, AtMost(PoolAcquireMax.Seconds()))
	r.Baseline = &cs
	r.Note = fmt.Sprintf("%d takes each; p95 pool %s, cold %s; pool to cold %.3fx; of the pooled p50: create answered in %s, "+
		"the guest's own spawn→exit of `true` %s", n, formatSeconds(Percentile(pooled, 95).Seconds()),
		formatSeconds(Percentile(cold, 95).Seconds()), ps.Median/cs.Median, formatSeconds(Median(creates).Seconds()), formatSeconds(Median(guests).Seconds()))
	r.Details = map[string]float64{"create_p50_s": Median(creates).Seconds(), "guest_true_p50_s": Median(guests).Seconds()}
	return r, nil
}

func waitPoolIdle(ctx context.Context, s *sandboxStack, want int) error {
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		for _, st := range s.vms.PoolStats() {
			if st.Template == model.RuntimePython && st.Idle >= want {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("the pool did not refill: %+v", s.vms.PoolStats())
}

// SnapshotRestore is F2: VMM start → hello (the backend's boot_ms) of restored vs booted
// VMs, alternating.
func SnapshotRestore(ctx context.Context, o Options) (_ Result, err error) {
	if why := sandboxPrereq(o); why != "" {
		return rowF2.Skipped(why), nil
	}
	s, err := startSandboxStack(ctx, o, 2, fastStart{snapshots: true})
	if err != nil {
		return Result{}, err
	}
	defer s.Close()
	info, err := s.vms.BuildSnapshot(ctx, model.RuntimePython, pythonShape)
	if err != nil {
		return Result{}, err
	}
	n := o.n(15, 4)
	var restored, cold []time.Duration
	start := func(spec model.SandboxSpec) (time.Duration, string, error) {
		sb, err := s.c.CreateSandbox(ctx, spec)
		if err != nil {
			return 0, "", err
		}
		defer s.c.KillSandbox(context.WithoutCancel(ctx), sb.ID)
		ms, err := strconv.Atoi(sb.VM["boot_ms"])
		if err != nil {
			return 0, "", fmt.Errorf("boot_ms %q", sb.VM["boot_ms"])
		}
		return time.Duration(ms) * time.Millisecond, sb.VM["start"], nil
	}
	// A shape the snapshot does not have boots cold; its own snapshot would be built
	// after the first such boot, so each cold boot uses a shape of its own.
	for i := range n {
		d, src, err := start(benchSandbox)
		if err != nil {
			return Result{}, err
		}
		if src != "snapshot" {
			return Result{}, fmt.Errorf("restore %d started from %q", i, src)
		}
		restored = append(restored, d)
		coldSpec := benchSandbox
		coldSpec.Resources.MemMB = 256 + 4*(i+1)
		if d, src, err = start(coldSpec); err != nil {
			return Result{}, err
		}
		if src != "boot" {
			return Result{}, fmt.Errorf("cold boot %d started from %q", i, src)
		}
		cold = append(cold, d)
	}
	r := rowF2.Compare(Ratio, NewSample("cold boot", cold), NewSample("restore", restored), AtMost(RestoreMaxRatio))
	r.Note = fmt.Sprintf("%d each; snapshot state %s MiB, built in %d ms (save %d ms); RAM %s", n,
		sig3(float64(info.StateSize)/(1<<20)), info.BuildMS, info.SaveMS, map[bool]string{true: "mapped", false: "in the state (QEMU < 8: no rom=off)"}[info.Mapped])
	return r, nil
}

// OneShotRestore is F3.
func OneShotRestore(ctx context.Context, o Options) (_ Result, err error) {
	if why := sandboxPrereq(o); why != "" {
		return rowF3.Skipped(why), nil
	}
	n := o.n(10, 3)
	run := func(fs fastStart) ([]time.Duration, error) {
		s, err := startSandboxStack(ctx, o, 2, fs)
		if err != nil {
			return nil, err
		}
		defer s.Close()
		if fs.snapshots {
			if _, err := s.vms.BuildSnapshot(ctx, model.RuntimePython, pythonShape); err != nil {
				return nil, err
			}
		}
		var ds []time.Duration
		for range n {
			t0 := time.Now()
			w, err := s.c.Run(ctx, model.Spec{Runtime: model.RuntimePython, Code: "print(1)",
				Resources: model.Resources{CPUs: 1, MemMB: 256, TimeoutS: 60}})
			if err != nil {
				return nil, err
			}
			if w.Stdout != "1\n" || w.Status != model.StatusCompleted {
				return nil, fmt.Errorf("print(1): %s %q %s", w.Status, w.Stdout, w.Error)
			}
			if want := map[bool]string{true: "snapshot", false: "boot"}[fs.snapshots]; w.Metadata["start"] != want {
				return nil, fmt.Errorf("the workload's VM started from %q, want %s", w.Metadata["start"], want)
			}
			ds = append(ds, time.Since(t0))
		}
		return ds, nil
	}
	cold, err := run(fastStart{})
	if err != nil {
		return Result{}, fmt.Errorf("cold: %w", err)
	}
	restored, err := run(fastStart{snapshots: true})
	if err != nil {
		return Result{}, fmt.Errorf("restored: %w", err)
	}
	r := rowF3.Compare(Ratio, NewSample("cold", cold), NewSample("restored", restored), AtMost(OneShotMaxRatio))
	r.Note = fmt.Sprintf("%d runs each; the snapshot ran python3 once before it was saved", n)
	return r, nil
}

// ConcurrentCreates is F4.
func ConcurrentCreates(ctx context.Context, o Options) (_ Result, err error) {
	if why := sandboxPrereq(o); why != "" {
		return rowF4.Skipped(why), nil
	}
	n := o.n(concurrentCreates, 5)
	burst := func(fs fastStart) (time.Duration, []time.Duration, error) {
		s, err := startSandboxStack(ctx, o, n, fs)
		if err != nil {
			return 0, nil, err
		}
		defer s.Close()
		if fs.snapshots {
			if _, err := s.vms.BuildSnapshot(ctx, model.RuntimePython, pythonShape); err != nil {
				return 0, nil, err
			}
		}
		each := make([]time.Duration, n)
		ids := make([]string, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		t0 := time.Now()
		for i := range n {
			wg.Go(func() {
				t := time.Now()
				sb, err := s.c.CreateSandbox(ctx, benchSandbox)
				each[i], errs[i] = time.Since(t), err
				if sb != nil {
					ids[i] = sb.ID
				}
			})
		}
		wg.Wait()
		total := time.Since(t0)
		var live []string
		for i, id := range ids {
			if errs[i] != nil {
				return 0, nil, errs[i]
			}
			live = append(live, id)
		}
		return total, each, s.stopAll(ctx, live)
	}
	coldTotal, coldEach, err := burst(fastStart{})
	if err != nil {
		return Result{}, fmt.Errorf("cold: %w", err)
	}
	fastTotal, fastEach, err := burst(fastStart{snapshots: true})
	if err != nil {
		return Result{}, fmt.Errorf("snapshots: %w", err)
	}
	cs, fs := NewSample("cold, total", []time.Duration{coldTotal}), NewSample("snapshots, total", []time.Duration{fastTotal})
	r := rowF4.Latency(fs, AtMost(ConcurrentMax.Seconds()))
	r.Baseline = &cs
	r.Note = fmt.Sprintf("%d at once; p95 with snapshots %s, cold %s; %d host CPUs", n, formatSeconds(Percentile(fastEach, 95).Seconds()),
		formatSeconds(Percentile(coldEach, 95).Seconds()), runtime.NumCPU())
	r.Details = map[string]float64{"p95_snapshots_s": Percentile(fastEach, 95).Seconds(), "p95_cold_s": Percentile(coldEach, 95).Seconds(), "cold_total_s": coldTotal.Seconds()}
	return r, nil
}

// PauseResume is F5: at 256 MiB and 1 GiB, a sandbox with 40% of its RAM holding random
// bytes is paused and resumed; the bytes must come back.
func PauseResume(ctx context.Context, o Options) (_ []Result, err error) {
	if why := sandboxPrereq(o); why != "" {
		return []Result{rowF5a.Skipped(why), rowF5b.Skipped(why), rowF5c.Skipped(why), rowF5d.Skipped(why)}, nil
	}
	s, err := startSandboxStack(ctx, o, 2, fastStart{pause: true})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var out []Result
	for _, c := range []struct {
		mem           int
		pause, resume Row
	}{{256, rowF5a, rowF5b}, {1024, rowF5c, rowF5d}} {
		spec := benchSandbox
		spec.Resources.MemMB = c.mem
		sb, err := s.c.CreateSandbox(ctx, spec)
		if err != nil {
			return nil, err
		}
		fill := c.mem * 4 / 10
		ev, err := s.c.Exec(ctx, sb.ID, api.ProcessRequest{Cmd: fmt.Sprintf("head -c %dM /dev/urandom > /dev/shm/fill && sha256sum < /dev/shm/fill", fill)}, nil)
		if err != nil || ev.ExitCode == nil || *ev.ExitCode != 0 {
			return nil, fmt.Errorf("fill %d MiB: %v %+v", fill, err, ev)
		}
		want, err := sha(ctx, s, sb.ID)
		if err != nil {
			return nil, err
		}
		t0 := time.Now()
		paused, err := s.c.PauseSandbox(ctx, sb.ID)
		pause := time.Since(t0)
		if err != nil {
			return nil, err
		}
		t0 = time.Now()
		if _, err := s.c.ResumeSandbox(ctx, sb.ID, 0); err != nil {
			return nil, err
		}
		resume := time.Since(t0)
		got, err := sha(ctx, s, sb.ID)
		if err != nil {
			return nil, err
		}
		if got != want {
			return nil, fmt.Errorf("after pause and resume /dev/shm/fill hashes %s, was %s", got, want)
		}
		if err := s.stopAll(ctx, []string{sb.ID}); err != nil {
			return nil, err
		}
		gib := float64(c.mem) / 1024
		pr := c.pause.Latency(NewSample("pause", []time.Duration{pause}), AtMost(PauseMaxPerGiB.Seconds()*gib))
		pr.Note = fmt.Sprintf("%d MiB of random bytes resident; %s s/GiB of RAM; server-side %s ms", fill,
			sig3(pause.Seconds()/gib), paused.VM["pause_ms"])
		rr := c.resume.Latency(NewSample("resume", []time.Duration{resume}), AtMost(ResumeMax.Seconds()))
		rr.Note = "the bytes' sha256 matched after the resume"
		out = append(out, pr, rr)
	}
	return out, nil
}

func sha(ctx context.Context, s *sandboxStack, id string) (string, error) {
	var b strings.Builder
	ev, err := s.c.Exec(ctx, id, api.ProcessRequest{Cmd: "sha256sum < /dev/shm/fill"}, func(e api.ProcessEvent) { b.WriteString(e.Data) })
	if err != nil || ev.ExitCode == nil || *ev.ExitCode != 0 {
		return "", fmt.Errorf("sha256sum: %v %+v", err, ev)
	}
	sum := strings.Fields(b.String())
	if len(sum) == 0 {
		return "", fmt.Errorf("sha256sum printed %q", b.String())
	}
	if _, err := hex.DecodeString(sum[0]); err != nil || len(sum[0]) != sha256.Size*2 {
		return "", fmt.Errorf("sha256sum printed %q", b.String())
	}
	return sum[0], nil
}
