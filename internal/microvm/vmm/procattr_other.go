//go:build !linux

package vmm

import "syscall"

// ProcAttr starts a VMM process in its own process group, so a stop kills all it
// spawned. Only Linux has a parent-death signal; the VMMs Vulcan drives need Linux
// anyway (the drivers say so in Available).
func ProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
