package acceptance

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/client"
	"github.com/vulcanhq/vulcan/internal/model"
)

// soakCount is how many workloads the soak submits: VULCAN_SOAK_COUNT (`make soak` runs
// 200), else a reduced count that keeps `make test` within CI's budget under TCG.
func soakCount() int {
	if n, err := strconv.Atoi(os.Getenv("VULCAN_SOAK_COUNT")); err == nil && n > 0 {
		return n
	}
	return 40
}

type soakCase struct {
	spec       model.Spec
	wantStatus model.Status
	wantLines  int // stdout lines a completed workload must have, in order
	kill       bool
}

// soakMix: mixed runtimes, about 20% failing, timing out or killed.
func soakMix(i int) soakCase {
	const lines = 20
	printer := fmt.Sprintf("for i in range(%d):\n    print('line', i, flush=True)\n", lines)
	switch {
	case i%10 == 7:
		return soakCase{spec: spec(model.RuntimePython, "import sys\nprint('failing')\nsys.exit(3)\n"), wantStatus: model.StatusFailed}
	case i%10 == 8:
		return soakCase{spec: spec(model.RuntimePython, "import time\ntime.sleep(30)\n", func(s *model.Spec) { s.Resources.TimeoutS = 2 }), wantStatus: model.StatusFailed}
	case i%10 == 9:
		return soakCase{spec: spec(model.RuntimePython, "import time\nprint('killable', flush=True)\ntime.sleep(60)\n"), wantStatus: model.StatusKilled, kill: true}
	case i%20 == 3:
		return soakCase{spec: spec(model.RuntimeGo, fmt.Sprintf("package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfor i := 0; i < %d; i++ {\n\t\tfmt.Println(\"line\", i)\n\t}\n}\n", lines)), wantStatus: model.StatusCompleted, wantLines: lines}
	case i%5 == 1:
		return soakCase{spec: spec(model.RuntimeNode, fmt.Sprintf("for (let i = 0; i < %d; i++) console.log('line', i)", lines)), wantStatus: model.StatusCompleted, wantLines: lines}
	default:
		return soakCase{spec: spec(model.RuntimePython, printer), wantStatus: model.StatusCompleted, wantLines: lines}
	}
}

// TestSoakAndCrashRecovery: N workloads at concurrency 4, submitted faster than they run,
// all end terminal with complete logs; then the server is killed with -9 while VMs run,
// restarted on the same data dir: unfinished workloads are failed, every orphan is
// reclaimed, and 20 more workloads succeed.
func TestSoakAndCrashRecovery(t *testing.T) {
	n := soakCount()
	s := startServer(t, "", "VULCAN_MAX_CONCURRENT=4", "VULCAN_QUEUE_SIZE="+strconv.Itoa(n+8))
	ctx := ctxFor(t, 40*time.Minute)

	cases := make([]soakCase, n)
	ids := make([]string, n)
	for i := range n {
		cases[i] = soakMix(i)
		w, err := s.c.Submit(ctx, cases[i].spec)
		if err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
		ids[i] = w.ID
	}
	// Kill the killable ones once each has printed (so it was really running), or at
	// once when still queued: both must end killed.
	var wg sync.WaitGroup
	for i, c := range cases {
		if !c.kill {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%20 == 9 { // half of them while queued or booting
				if _, err := s.c.Kill(ctx, ids[i]); err != nil {
					t.Errorf("kill %d: %v", i, err)
				}
				return
			}
			printed := make(chan struct{})
			var once sync.Once
			go s.c.Follow(ctx, ids[i], func(model.LogLine) { once.Do(func() { close(printed) }) })
			select {
			case <-printed:
			case <-ctx.Done():
				return
			}
			if _, err := s.c.Kill(ctx, ids[i]); err != nil {
				t.Errorf("kill %d: %v", i, err)
			}
		}()
	}
	wg.Wait()

	for i, id := range ids {
		w := waitTerminal(t, s, id)
		c := cases[i]
		if w.Status != c.wantStatus {
			t.Errorf("workload %d (%s): status %s, want %s (error %q)", i, c.spec.Runtime, w.Status, c.wantStatus, w.Error)
			continue
		}
		if c.wantLines == 0 {
			continue
		}
		logs, err := s.c.Logs(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for j, l := range logs {
			if l.Seq != int64(j+1) {
				t.Errorf("workload %d: log seq %d at position %d", i, l.Seq, j)
				break
			}
			if l.Stream == model.Stdout {
				got = append(got, l.Text)
			}
		}
		if len(got) != c.wantLines || got[0] != "line 0" || got[len(got)-1] != fmt.Sprintf("line %d", c.wantLines-1) {
			t.Errorf("workload %d: %d stdout lines %v", i, len(got), got)
		}
	}
	list, err := s.c.List(ctx, client.ListOptions{Limit: 1})
	if err != nil || list.Total != n {
		t.Fatalf("list total %d err %v, want %d (none lost)", list.Total, err, n)
	}
	if left := s.leftovers(); len(left) != 0 {
		t.Errorf("after the soak: %v", left)
	}

	// Crash with VMs running.
	var running []string
	for range 4 {
		w, err := s.c.Submit(ctx, spec(model.RuntimePython, "import time\nprint('up', flush=True)\ntime.sleep(120)\n"))
		if err != nil {
			t.Fatal(err)
		}
		running = append(running, w.ID)
	}
	for _, id := range running {
		printed := make(chan struct{})
		var once sync.Once
		go s.c.Follow(ctx, id, func(model.LogLine) { once.Do(func() { close(printed) }) })
		select {
		case <-printed:
		case <-time.After(3 * time.Minute):
			t.Fatalf("workload %s never started", id)
		}
	}
	if len(s.leftovers()) == 0 {
		t.Fatal("no VM state while VMs run: the leftovers check cannot see anything")
	}
	s.crash()

	s2 := startServer(t, s.dataDir, "VULCAN_MAX_CONCURRENT=4")
	for _, id := range running {
		w, err := s2.c.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if w.Status != model.StatusFailed || !strings.Contains(w.Error, "restart") {
			t.Errorf("unfinished workload after restart: status %s error %q", w.Status, w.Error)
		}
	}
	// The restart reclaimed every orphan (a VM's first boot waits for nothing else).
	if left := s2.leftovers(); len(left) != 0 {
		t.Errorf("after restart: %v", left)
	}
	var after []string
	for i := range 20 {
		w, err := s2.c.Submit(ctx, spec(model.RuntimePython, fmt.Sprintf("print(%d)", i)))
		if err != nil {
			t.Fatal(err)
		}
		after = append(after, w.ID)
	}
	for i, id := range after {
		if w := waitTerminal(t, s2, id); w.Status != model.StatusCompleted || strings.TrimSpace(w.Stdout) != strconv.Itoa(i) {
			t.Errorf("post-restart workload %d: %s %q %q", i, w.Status, w.Stdout, w.Error)
		}
	}
	if left := s2.leftovers(); len(left) != 0 {
		t.Errorf("at the end: %v", left)
	}
}
