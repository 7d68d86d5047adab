package cell

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Probe builds a real cell in a temporary dir and runs `true` in it: the uid drop, the
// mount namespace and pivot_root work here when it returns nil. Needs root.
func Probe() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("vulcan is not root (euid %d): VMMs would run as this user, in the host's mount namespace", os.Geteuid())
	}
	dir, err := os.MkdirTemp("", "vulcan-cell-probe")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	s := &Spec{UID: UIDBase, GID: UIDBase, Dir: dir, Root: filepath.Join(dir, RootDirName), ParentPID: os.Getpid()}
	if err := s.PrepareDir(); err != nil {
		return err
	}
	cmd, err := s.Command("true", nil)
	if err != nil {
		return err
	}
	cmd.SysProcAttr = SysProcAttr(&syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL})
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
