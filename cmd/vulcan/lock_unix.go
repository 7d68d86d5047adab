//go:build unix

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockDataDir makes sure one server owns a data dir: at start the microVM backend reclaims
// every VM it finds there as a crashed run's orphan, which must never hit a live server's
// VMs. The lock is a flock, so a crash (even kill -9) releases it.
func lockDataDir(dir string) (release func(), err error) {
	path := filepath.Join(dir, "vulcan.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data directory lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			b := make([]byte, 32)
			n, _ := f.ReadAt(b, 0)
			holder := strings.TrimSpace(string(b[:n]))
			if _, perr := strconv.Atoi(holder); perr != nil {
				holder = "unknown"
			}
			return nil, fmt.Errorf("another vulcan serve (pid %s) is using the data directory %s; stop it or set VULCAN_DATA_DIR", holder, dir)
		}
		return nil, fmt.Errorf("data directory lock: %w", err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { f.Close() }, nil // closing the descriptor releases the flock
}
