package microvm

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
)

// Reclaim removes what a crashed run left in stateDir: it kills each VMM whose pid file is
// there (only if that process's command line still names the VM's dir, so a recycled pid
// is never killed) and removes every VM dir. It runs before the backend accepts work, so
// everything in stateDir is an orphan. It returns how many VM dirs it removed.
func Reclaim(stateDir string, log *slog.Logger) (int, error) {
	entries, err := os.ReadDir(stateDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	var errs []error
	n := 0
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(stateDir, e.Name())
		if pid := vmm.ReadPIDFile(dir); pid > 0 && processMentions(pid, dir) {
			log.Info("killing orphaned VMM", "pid", pid, "dir", dir)
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
			waitGone(pid, 5*time.Second)
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// processMentions reports whether pid is alive and its command line contains dir.
func processMentions(pid int, dir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return bytes.Contains(b, []byte(dir))
}

func waitGone(pid int, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		// A zombie whose parent died is reaped by init; the check above then succeeds.
		time.Sleep(20 * time.Millisecond)
	}
}
