//go:build linux

package microvm

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/cell"
	"github.com/vulcanhq/vulcan/internal/instance"
	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// A VMM left by a crashed run inside its cell (another uid, another mount namespace, its
// cgroup) is still found by the startup reclaim through its command line, and its cgroup
// is reclaimed; another instance's cgroup is left alone.
func TestReclaimCellOrphan(t *testing.T) {
	testenv.RequiresRoot(t)
	state := shortDir(t)
	dir := filepath.Join(state, "wl1")
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	mine, other := cell.NewCgroups("r"+instance.New()[:6]), cell.NewCgroups("o"+instance.New()[:6])
	if mine.Err() != nil {
		t.Skipf("no cgroups: %v", mine.Err())
	}
	g, err := mine.Create("wl1", cell.Limits{MemoryBytes: 64 << 20, CPUs: 1, Pids: 8})
	if err != nil {
		t.Fatal(err)
	}
	og, err := other.Create("wl9", cell.Limits{MemoryBytes: 64 << 20, CPUs: 1, Pids: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { og.Delete(); other.RemoveParent(); g.Delete(); mine.RemoveParent() })

	s := &cell.Spec{UID: cell.UIDBase + 3, GID: cell.UIDBase + 3, Dir: dir, Root: filepath.Join(dir, cell.RootDirName), CgroupProcs: g.Procs}
	if err := s.PrepareDir(); err != nil {
		t.Fatal(err)
	}
	// The "VMM" names its VM dir in its argv, as QEMU's does.
	cmd, err := s.Command("sh", []string{"-c", "sleep 300; :", filepath.Join(dir, "agent.sock")})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = cell.SysProcAttr(&syscall.SysProcAttr{Setpgid: true})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	pid := cmd.Process.Pid
	t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGKILL) })
	if err := vmm.WritePIDFile(dir, pid); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		// Dropped to its uid and exec'd into the "VMM" (whose argv names the dir, which is
		// how the reclaim knows it): before the exec its command line is the cell's.
		if st, err := cell.ReadStatus(pid); err == nil && st.UID[0] == s.UID && processMentions(pid, dir) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cell never dropped to its uid: %s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}

	if n, err := Reclaim(state, slog.New(slog.DiscardHandler)); err != nil || n != 1 {
		t.Fatalf("reclaim: %d, %v", n, err)
	}
	// Dead means gone or a zombie: the process is this test's child, reaped by its own
	// Wait goroutine a moment after the kill.
	if !deadSoon(pid, 5*time.Second) {
		t.Errorf("orphan VMM %d still alive after reclaim", pid)
	}
	if n, err := mine.Reclaim(); err != nil || n != 1 {
		t.Errorf("cgroup reclaim: %d, %v", n, err)
	}
	for _, p := range g.Paths {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("cgroup %s left after reclaim", p)
		}
	}
	for _, p := range og.Paths {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("another instance's cgroup %s was reclaimed: %v", p, err)
		}
	}
}

// deadSoon waits up to d for pid to be gone or a zombie.
func deadSoon(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		// The state follows the ")" that ends the command name.
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
