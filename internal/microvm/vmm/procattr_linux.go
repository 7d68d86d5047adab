package vmm

import "syscall"

// ProcAttr is how every VMM process starts: in its own process group, so a stop kills
// all it spawned, and with SIGKILL as its parent-death signal, so a crash of the server
// takes its VMMs along (the startup reclaim catches what this misses).
func ProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
