package main

import (
	"os"
	"syscall"
)

// initProcAttr is how the guest's init starts: killed when fcsim dies, and when root in
// new PID and UTS namespaces (pidns), so its death takes the whole "VM" along.
func initProcAttr() (attr *syscall.SysProcAttr, pidns bool, err error) {
	attr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() == 0 {
		attr.Cloneflags = syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS
	}
	return attr, attr.Cloneflags != 0, nil
}

func setHostname(name string) error { return syscall.Sethostname([]byte(name)) }
