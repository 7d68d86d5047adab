package acceptance

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPauseResumeAcrossRestart: a sandbox with a file, an env and a process running is
// paused, its server stopped and started again on the same data dir, and resumed: the
// file is there, the env applies to new processes (the host never stored it; the guest
// kept it), and the same process is still running and still working. Then a kill leaves
// nothing behind, the saved VM included.
func TestPauseResumeAcrossRestart(t *testing.T) {
	data, err := os.MkdirTemp("", "vacc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(data) })
	s := startServer(t, data)
	out, code := s.vulcan("sandbox", "create", "--template", "python", "--env", "SECRET=s3cret", "--timeout", "900")
	if code != 0 {
		t.Fatalf("create: %d %s", code, out)
	}
	id := strings.TrimSpace(out)
	// The ticker has ticked before the pause (a loaded host may take a while to start it);
	// it replaces its file whole, so a read never sees it truncated mid-write.
	pid, code := s.vulcan("exec", id, "--", "echo kept > keep.txt; setsid sh -c 'while sleep 0.2; do date +%s%N > tick.new && mv tick.new tick; done' </dev/null >/dev/null 2>&1 & echo $!; "+
		"for i in $(seq 100); do test -s tick && break; sleep 0.1; done")
	pid = strings.TrimSpace(pid)
	if code != 0 || pid == "" {
		t.Fatalf("exec: %d %s", code, pid)
	}
	out, code = s.vulcan("sandbox", "pause", id)
	if code != 0 || !strings.Contains(out, "paused in") {
		t.Fatalf("pause: %d %s", code, out)
	}
	t.Logf("pause: %s", strings.TrimSpace(out))
	if _, err := os.Stat(filepath.Join(data, "paused", id, "paused.json")); err != nil {
		t.Fatalf("no saved VM: %v", err)
	}
	if left := s.leftovers(); len(left) != 0 {
		t.Errorf("a paused sandbox holds no VM, but: %v", left)
	}
	s.stop()

	s = startServer(t, data)
	if out, code := s.vulcan("sandbox", "info", id); code != 0 || !strings.Contains(out, "paused") {
		t.Fatalf("after the restart: %d %s", code, out)
	}
	if out, code := s.vulcan("exec", id, "--", "true"); code == 0 || !strings.Contains(out, "paused") {
		t.Errorf("exec in a paused sandbox (no auto-resume): %d %s", code, out)
	}
	out, code = s.vulcan("sandbox", "resume", id)
	if code != 0 || !strings.Contains(out, "running in") {
		t.Fatalf("resume: %d %s", code, out)
	}
	t.Logf("resume: %s", strings.TrimSpace(out))
	first, code := s.vulcan("exec", id, "--", "cat keep.txt; echo $SECRET; tr '\\0' ' ' < /proc/"+pid+"/cmdline; echo; cat tick")
	if code != 0 {
		t.Fatalf("exec after resume: %d %s", code, first)
	}
	l := strings.Split(strings.TrimSpace(first), "\n")
	if len(l) != 4 || l[0] != "kept" || l[1] != "s3cret" || !strings.Contains(l[2], "while sleep 0.2") {
		t.Fatalf("after resume: %q (want kept, s3cret, process %s's command line, a tick)", first, pid)
	}
	time.Sleep(time.Second)
	second, _ := s.vulcan("exec", id, "--", "cat tick")
	if strings.TrimSpace(second) == l[3] {
		t.Errorf("the resumed process stopped ticking: %s then %s", l[3], second)
	}
	if out, code := s.vulcan("sandbox", "kill", id); code != 0 {
		t.Fatalf("kill: %d %s", code, out)
	}
	if left := s.leftovers(); len(left) != 0 {
		t.Errorf("after kill: %v", left)
	}
	if _, err := os.Stat(filepath.Join(data, "paused", id)); !os.IsNotExist(err) {
		t.Errorf("the saved VM outlived the sandbox: %v", err)
	}
}

// TestWarmPoolCrashReclaim: a server with a warm pool is killed -9 with its pool full;
// its pooled VMs die with it (parent-death signal) or at the next start (reclaim), which
// leaves no VMM and no VM state behind, and a workload then runs.
func TestWarmPoolCrashReclaim(t *testing.T) {
	data, err := os.MkdirTemp("", "vacc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(data) })
	s := startServer(t, data, "VULCAN_POOL=python=1:1")
	deadline := time.Now().Add(2 * time.Minute)
	for s.metric("vulcan_pool_idle_vms", `template="python"`) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the pool never filled")
		}
		time.Sleep(100 * time.Millisecond)
	}
	vms, _ := os.ReadDir(filepath.Join(data, "vms"))
	if len(vms) == 0 {
		t.Fatal("a full pool but no VM in the state dir")
	}
	s.crash()
	s = startServer(t, data) // pool off: whatever is left is the crashed server's
	if out, code := s.vulcan("run", "--runtime", "python", "--code", "print(7*6)"); code != 0 || !strings.Contains(out, "42") {
		t.Fatalf("run after the crash: %d %s", code, out)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		left := s.leftovers()
		pooled, _ := os.ReadDir(filepath.Join(data, "vms"))
		if len(left) == 0 && len(pooled) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the restart: %v, state dir %v", left, pooled)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// No VMM of the crashed server's pool survives either.
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), data) && strings.Contains(string(cmdline), "/vms/pool-") {
			t.Errorf("pool VMM %s of the crashed server still runs: %q", p.Name(), cmdline)
		}
	}
}
