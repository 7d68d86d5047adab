//go:build !linux

package main

import (
	"errors"
	"syscall"
)

// The simulated guest needs what only Linux has: a parent-death signal and, as root, PID
// and UTS namespaces. (Firecracker itself runs only on Linux.)
var errUnsupported = errors.New("fcsim: the simulated guest is not supported on this OS (it needs Linux)")

func initProcAttr() (*syscall.SysProcAttr, bool, error) { return nil, false, errUnsupported }

func setHostname(string) error { return errUnsupported }
