package guest

import (
	"fmt"
	"runtime"
	"syscall"
)

// asUser runs fn with u's file-system identity when the agent is root and u is not:
// on an OS thread of its own whose fsuid/fsgid are u's and which has no supplementary
// groups, so every permission check the kernel makes for fn's system calls (path
// walk, open, create, rename, unlink, and each symlink followed) is the one u itself
// would get — including the loss of CAP_DAC_OVERRIDE and the other file capabilities,
// which the kernel drops when the fsuid leaves 0. Credentials are per thread on Linux
// and Go's syscall.Setfsuid-style raw calls change only the calling thread; the thread
// is never unlocked, so it ends with the goroutine instead of going back to the
// scheduler with u's identity. fn must do its system calls on its own goroutine.
func asUser(u sessUser, fn func() error) error {
	if !u.drop {
		return fn()
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		if err := setFSIdentity(u.uid, u.gid); err != nil {
			done <- err
			return
		}
		done <- fn()
	}()
	return <-done
}

func setFSIdentity(uid, gid int) error {
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETGROUPS, 0, 0, 0); e != 0 {
		return fmt.Errorf("setgroups: %w", e)
	}
	syscall.RawSyscall(syscall.SYS_SETFSGID, uintptr(gid), 0, 0)
	syscall.RawSyscall(syscall.SYS_SETFSUID, uintptr(uid), 0, 0)
	// Both return the previous id, never an error: an invalid id (-1) changes nothing
	// and returns the current one, which proves the change took.
	const query = 0xFFFFFFFF
	g, _, _ := syscall.RawSyscall(syscall.SYS_SETFSGID, query, 0, 0)
	u, _, _ := syscall.RawSyscall(syscall.SYS_SETFSUID, query, 0, 0)
	if int(g) != gid || int(u) != uid {
		return fmt.Errorf("setfsuid/setfsgid %d/%d did not take (now %d/%d)", uid, gid, u, g)
	}
	return nil
}
