package guest

import (
	"os"
	"syscall"
	"unsafe"
)

// pipeBuffered is how many bytes wait in the pipe behind r (FIONREAD), 0
// when that cannot be told.
func pipeBuffered(r *os.File) int {
	rc, err := r.SyscallConn()
	if err != nil {
		return 0
	}
	var n int32
	rc.Control(func(fd uintptr) {
		if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&n))); errno != 0 {
			n = 0
		}
	})
	return int(n)
}
