package guest

import (
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// ApplyIdentity gives the VM the host's identity: the seed is credited to the kernel's
// entropy pool and the generator reseeded at once (a restored clone otherwise keeps
// producing its siblings' random bytes until the next scheduled reseed), the wall clock
// set, the hostname changed. PID 1 only (it needs CAP_SYS_ADMIN and CAP_SYS_TIME).
func ApplyIdentity(id *protocol.Identity) error {
	if err := reseed(id.Seed); err != nil {
		return err
	}
	if id.UnixNano > 0 {
		ts := unix.NsecToTimespec(id.UnixNano)
		if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
			return fmt.Errorf("set clock: %w", err)
		}
	}
	if id.Hostname != "" {
		if err := unix.Sethostname([]byte(id.Hostname)); err != nil {
			return fmt.Errorf("sethostname: %w", err)
		}
	}
	return nil
}

// reseed adds seed to the input pool with RNDADDENTROPY (struct rand_pool_info: int
// entropy_count in bits, int buf_size in bytes, then the bytes) and forces a reseed of
// the kernel's generator with RNDRESEEDCRNG.
func reseed(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("entropy: %w", err)
	}
	defer f.Close()
	buf := make([]byte, 8+len(seed))
	binary.NativeEndian.PutUint32(buf[0:], uint32(len(seed)*8))
	binary.NativeEndian.PutUint32(buf[4:], uint32(len(seed)))
	copy(buf[8:], seed)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
		return fmt.Errorf("entropy: RNDADDENTROPY: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("entropy: RNDRESEEDCRNG: %w", e)
	}
	return nil
}
