package cell

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The setup step: when this binary was started as a cell (SpecEnv set), build the cell
// and exec the VMM before any main runs. Errors go to stderr (the VM's console log,
// which the backend shows when the VM does not boot) and exit 127.
func init() {
	s, argv, err := specFromEnv()
	if s == nil && err == nil {
		return
	}
	runtime.LockOSThread() // namespaces and credentials below belong to this thread
	if err == nil {
		err = s.enter(argv)
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", ProcName, err)
	os.Exit(127)
}

// SysProcAttr adds what the cell needs to a VMM's process attributes: a new mount
// namespace, made in the child before it runs a line of Go.
func SysProcAttr(a *syscall.SysProcAttr) *syscall.SysProcAttr {
	if a == nil {
		a = &syscall.SysProcAttr{}
	}
	a.Cloneflags |= syscall.CLONE_NEWNS
	return a
}

// enter builds the cell around the calling thread and execs argv; it returns only on
// failure.
func (s *Spec) enter(argv []string) error {
	if s.UID <= 0 || s.GID <= 0 {
		return fmt.Errorf("refusing uid %d gid %d: the VMM must not run as root", s.UID, s.GID)
	}
	for _, p := range s.CgroupProcs {
		if err := os.WriteFile(p, []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			return fmt.Errorf("join cgroup: %w", err)
		}
	}
	if s.NetNS != "" {
		if err := setns(s.NetNS); err != nil {
			return err
		}
	}
	if s.TAP != "" {
		if err := openTAP(s.TAP, TAPFD); err != nil {
			return err
		}
	}
	last, err := capLast() // before the host's /proc is gone
	if err != nil {
		return err
	}
	if err := s.buildRoot(); err != nil {
		return err
	}
	if err := s.dropPrivileges(last); err != nil {
		return err
	}
	// The VMM gets no environment: nothing of the host's leaks in.
	return fmt.Errorf("exec %s: %w", argv[0], unix.Exec(argv[0], argv, []string{}))
}

func setns(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", path, err)
	}
	return nil
}

// openTAP attaches to the (persistent) TAP name and leaves the queue open on fd, without
// close-on-exec, for the VMM.
func openTAP(name string, fd int) error {
	tun, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(tun)
		return fmt.Errorf("tap %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(tun, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(tun)
		return fmt.Errorf("attach tap %s: %w", name, err)
	}
	if tun != fd {
		if err := unix.Dup3(tun, fd, 0); err != nil {
			return fmt.Errorf("tap fd: %w", err)
		}
		unix.Close(tun)
	} else if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
		return err
	}
	return nil
}

// buildRoot makes the cell's root: a fresh tmpfs holding bind mounts of exactly what the
// VMM needs at their host paths, pivots into it and drops the host's tree.
func (s *Spec) buildRoot() error {
	// Nothing done here may propagate back to the host's mount namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	root := s.Root
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("vulcan-cell", root, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "size=64k,mode=0755"); err != nil {
		return fmt.Errorf("cell root: %w", err)
	}
	// /usr holds the VMM and its libraries (merged /usr: /lib, /lib64, /bin are links).
	if err := bind(root, "/usr", unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID); err != nil {
		return err
	}
	for _, l := range []string{"/lib", "/lib64", "/bin", "/sbin"} {
		if target, err := os.Readlink(l); err == nil {
			if err := os.Symlink(target, filepath.Join(root, l)); err != nil {
				return err
			}
		} else if st, err := os.Stat(l); err == nil && st.IsDir() {
			if err := bind(root, l, unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID); err != nil {
				return err
			}
		}
	}
	// The dynamic linker's cache, so the VMM loads the libraries the host's ld.so would.
	if _, err := os.Stat("/etc/ld.so.cache"); err == nil {
		if err := bind(root, "/etc/ld.so.cache", unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC); err != nil {
			return err
		}
	}
	for _, p := range s.ReadOnly {
		flags := uintptr(unix.MS_RDONLY | unix.MS_NODEV | unix.MS_NOSUID)
		if strings.HasPrefix(p, "/usr/") {
			continue // already there
		}
		if err := bind(root, p, flags); err != nil {
			return err
		}
	}
	if err := bind(root, s.Dir, unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC); err != nil {
		return err
	}
	for _, p := range s.Writable {
		if err := bind(root, p, unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC); err != nil {
			return err
		}
	}
	for _, d := range append(append([]string{}, DefaultDevices...), s.Devices...) {
		if err := bind(root, d, unix.MS_NOSUID|unix.MS_NOEXEC); err != nil {
			return err
		}
	}
	old := filepath.Join(root, ".old")
	if err := os.Mkdir(old, 0o700); err != nil {
		return err
	}
	if err := unix.PivotRoot(root, old); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/.old", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach host root: %w", err)
	}
	if err := os.Remove("/.old"); err != nil {
		return err
	}
	// The root itself read-only: the VMM can write only its writable files.
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("remount root read-only: %w", err)
	}
	return nil
}

// bind mounts host path p at the same path under root with flags (a bind mount takes
// MS_RDONLY etc. only on a remount).
func bind(root, p string, flags uintptr) error {
	st, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("cell: %w", err)
	}
	dst := filepath.Join(root, p)
	// A file of a dir bound before (the scratch disk in the VM dir) is already there.
	if _, err := os.Lstat(dst); err != nil {
		if err := mountPoint(dst, st.IsDir()); err != nil {
			return err
		}
	}
	if err := unix.Mount(p, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", p, err)
	}
	if err := unix.Mount("", dst, "", unix.MS_REMOUNT|unix.MS_BIND|flags, ""); err != nil {
		return fmt.Errorf("remount %s: %w", p, err)
	}
	return nil
}

func mountPoint(dst string, dir bool) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if dir {
		return os.Mkdir(dst, 0o755)
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// dropPrivileges leaves the thread (and the VMM it execs) with uid/gid s.UID/s.GID, no
// supplementary groups, no capabilities in any set (bounding and ambient too),
// no_new_privs, and SIGKILL when the backend dies.
func (s *Spec) dropPrivileges(last int) error {
	for c := 0; c <= last; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	// syscall's Setgroups/Setresgid/Setresuid apply to every thread of the process.
	if err := syscall.Setgroups([]int{s.GID}); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(s.GID, s.GID, s.GID); err != nil {
		return fmt.Errorf("setresgid: %w", err)
	}
	if err := syscall.Setresuid(s.UID, s.UID, s.UID); err != nil {
		return fmt.Errorf("setresuid: %w", err)
	}
	// A uid change from 0 clears the permitted and effective sets; clear inheritable and
	// ambient too, so nothing can come back at exec.
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	// The credential change cleared the parent-death signal the backend asked for.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("pdeathsig: %w", err)
	}
	if s.ParentPID > 0 && os.Getppid() != s.ParentPID {
		return errors.New("the backend exited during the cell's setup")
	}
	return nil
}

func capLast() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
