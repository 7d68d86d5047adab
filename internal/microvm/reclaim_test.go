package microvm

import (
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
)

// A crashed run leaves VM dirs with pid files and live VMMs. Reclaim kills the VMMs that
// are really ours (their command line names the VM dir), never a process that merely
// reuses a recorded pid, and removes every dir.
func TestReclaim(t *testing.T) {
	state := t.TempDir()
	orphanDir := filepath.Join(state, "01ORPHAN")
	staleDir := filepath.Join(state, "01STALE")
	for _, d := range []string{orphanDir, staleDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(d, "agent.sock"), nil, 0o600)
	}
	// The orphan stands in for a VMM: its argv names its VM dir, like QEMU's socket paths.
	// (Not a lone "sleep 300": sh would exec it and the dir would leave the argv, which
	// made this test fail whenever reclaim looked after that exec.)
	orphan := exec.Command("sh", "-c", "sleep 300; exit 0", orphanDir)
	orphan.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- orphan.Wait() }()
	t.Cleanup(func() { syscall.Kill(-orphan.Process.Pid, syscall.SIGKILL) })
	vmm.WritePIDFile(orphanDir, orphan.Process.Pid)

	// The stale dir's pid now belongs to an unrelated process: this test itself.
	vmm.WritePIDFile(staleDir, os.Getpid())

	n, err := Reclaim(state, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("reclaimed %d dirs, want 2", n)
	}
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("orphaned VMM still running after reclaim")
	}
	if entries, _ := os.ReadDir(state); len(entries) != 0 {
		t.Errorf("state dir not empty: %v", entries)
	}
	// Still alive: reclaim did not kill a process just because a pid file named it.
	if err := syscall.Kill(os.Getpid(), 0); errors.Is(err, syscall.ESRCH) {
		t.Fatal("unreachable")
	}
	if n, err := Reclaim(state, slog.New(slog.DiscardHandler)); n != 0 || err != nil {
		t.Errorf("second reclaim: %d %v", n, err)
	}
}

// Two servers on one host have a state dir each. Reclaim of one kills its own orphaned
// VMM and leaves the other server's running VMM and its dir alone, even when a pid file
// of the first names the second's VMM.
func TestReclaimLeavesAnotherServersVMs(t *testing.T) {
	mine, theirs := t.TempDir(), t.TempDir()
	start := func(dir string) (*exec.Cmd, chan error) {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		c := exec.Command("sh", "-c", "sleep 300; exit 0", dir)
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		t.Cleanup(func() { syscall.Kill(-c.Process.Pid, syscall.SIGKILL) })
		vmm.WritePIDFile(dir, c.Process.Pid)
		return c, done
	}
	_, orphanGone := start(filepath.Join(mine, "01MINE"))
	live, liveGone := start(filepath.Join(theirs, "01THEIRS"))
	// A stale pid file of ours that happens to hold the other server's VMM's pid.
	stale := filepath.Join(mine, "01STALE")
	os.MkdirAll(stale, 0o750)
	vmm.WritePIDFile(stale, live.Process.Pid)

	if n, err := Reclaim(mine, slog.New(slog.DiscardHandler)); err != nil || n != 2 {
		t.Fatalf("reclaimed %d dirs (%v), want 2", n, err)
	}
	select {
	case <-orphanGone:
	case <-time.After(10 * time.Second):
		t.Fatal("this server's orphaned VMM still running")
	}
	select {
	case err := <-liveGone:
		t.Fatalf("the other server's VMM died: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := os.Stat(filepath.Join(theirs, "01THEIRS", vmm.PIDFileName)); err != nil {
		t.Errorf("the other server's VM dir: %v", err)
	}
}
