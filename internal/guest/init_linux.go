package guest

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

type linuxSys struct{}

func (linuxSys) Mount(source, target, fstype string, flags uintptr, data string) error {
	return unix.Mount(source, target, fstype, flags, data)
}
func (linuxSys) Mkdir(path string, mode uint32) error  { return os.Mkdir(path, os.FileMode(mode)) }
func (linuxSys) Symlink(oldname, newname string) error { return os.Symlink(oldname, newname) }
func (linuxSys) Chdir(path string) error               { return unix.Chdir(path) }
func (linuxSys) Chroot(path string) error              { return unix.Chroot(path) }
func (linuxSys) Sethostname(name string) error         { return unix.Sethostname([]byte(name)) }

// upperLayer is the overlay's upper layer, held open by KeepUpper (nil without an
// overlay: a writable root has no layer of its own).
var upperLayer *os.File

func (linuxSys) KeepUpper(path string) {
	if f, err := os.Open(path); err == nil {
		upperLayer = f
	}
}

func (linuxSys) RootReadOnly() (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return false, err
	}
	return st.Flags&unix.ST_RDONLY != 0, nil
}

func (linuxSys) LinkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

func (linuxSys) ScratchDevice() string {
	// The kernel mounted devtmpfs on /dev (DEVTMPFS_MOUNT) before starting init.
	devs, _ := filepath.Glob("/dev/vd[a-z]")
	return findExt4Label(devs, protocol.ScratchLabel)
}

// IsInit reports whether the agent is PID 1.
func IsInit() bool { return os.Getpid() == 1 }

// Init prepares the VM when the agent is PID 1 and returns the kernel
// arguments. Ctrl-Alt-Del (Firecracker's SendCtrlAltDel) is turned into a
// SIGINT, which cancels ctx's child so the caller powers off cleanly.
func Init(ctx context.Context, log *slog.Logger) (context.Context, KernelArgs, error) {
	if err := setupSystem(linuxSys{}, log); err != nil {
		return ctx, KernelArgs{}, err
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return ctx, KernelArgs{}, err
	}
	k := ParseCmdline(string(cmdline))
	if err := configure(linuxSys{}, k, log); err != nil {
		return ctx, KernelArgs{}, err
	}
	if err := resolverFromPNP("/proc/net/pnp", "/etc/resolv.conf"); err != nil {
		log.Warn("resolv.conf", "err", err)
	}
	os.Setenv("PATH", defaultPath)
	unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	ctx, _ = signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	return ctx, k, nil
}

// PowerOff ends the VM: everything else is killed, data synced and the root
// made read-only (so the next boot of a writable image finds a clean
// journal), then reboot(RESTART), which the VMMs (reboot=t, -no-reboot)
// turn into an exit. It does not return.
func PowerOff(log *slog.Logger) {
	syscall.Kill(-1, syscall.SIGKILL)
	time.Sleep(50 * time.Millisecond) // let the killed release their files
	unix.Sync()
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		log.Debug("remount / read-only", "err", err)
	}
	unix.Sync()
	for {
		err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
		log.Error("reboot", "err", err)
		time.Sleep(time.Second)
	}
}
