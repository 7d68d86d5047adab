package vmm

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// PIDFileName is the file in a VM's state dir recording its VMM process, so the startup
// reclaim can find and kill VMMs a crashed run left behind.
const PIDFileName = "vmm.pid"

// WritePIDFile records pid in dir.
func WritePIDFile(dir string, pid int) error {
	if err := os.WriteFile(filepath.Join(dir, PIDFileName), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	return nil
}

// ReadPIDFile returns the pid recorded in dir, or 0.
func ReadPIDFile(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, PIDFileName))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}
