//go:build linux

package guest

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
)

// sysOps is the part of the kernel PID 1 setup talks to; tests record the
// calls instead of making them.
type sysOps interface {
	Mount(source, target, fstype string, flags uintptr, data string) error
	Mkdir(path string, mode uint32) error
	Symlink(oldname, newname string) error
	Chdir(path string) error
	Chroot(path string) error
	Sethostname(name string) error
	LinkUp(name string) error
	RootReadOnly() (bool, error)
	// ScratchDevice returns the block device of the scratch disk the host attached
	// (ext4 labelled protocol.ScratchLabel), "" when there is none.
	ScratchDevice() string
	// KeepUpper holds the overlay's upper layer open, so that the agent can still read
	// it (fs.archive's diff) once the merged tree hides it.
	KeepUpper(path string)
}

// overlayDir is where the writable root is assembled: /tmp exists in every
// Debian image, and at this point nothing else is mounted on it.
const overlayDir = "/tmp"

// setupSystem makes the VM usable as PID 1: a writable root when the root
// filesystem is read-only, then the pseudo filesystems.
func setupSystem(sys sysOps, log *slog.Logger) error {
	ro, err := sys.RootReadOnly()
	if err != nil {
		return fmt.Errorf("statfs /: %w", err)
	}
	scratch := ""
	if ro {
		scratch = sys.ScratchDevice()
		if err := overlayRoot(sys, scratch); err != nil {
			return fmt.Errorf("writable root: %w", err)
		}
	}
	type mnt struct {
		src, target, fstype string
		flags               uintptr
		data                string
	}
	const nosuid, nodev, noexec = syscall.MS_NOSUID, syscall.MS_NODEV, syscall.MS_NOEXEC
	for _, m := range []mnt{
		{"proc", "/proc", "proc", nosuid | nodev | noexec, ""},
		{"sysfs", "/sys", "sysfs", nosuid | nodev | noexec, ""},
		{"devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755"},
		{"devpts", "/dev/pts", "devpts", nosuid | noexec, "gid=5,mode=0620,ptmxmode=0666"},
		{"tmpfs", "/dev/shm", "tmpfs", nosuid | nodev, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", nosuid | nodev, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", nosuid | nodev, "mode=1777"},
	} {
		if m.target == "/tmp" && scratch != "" {
			continue // /tmp stays on the scratch disk with the rest of the writable root
		}
		if err := sys.Mkdir(m.target, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("mkdir %s: %w", m.target, err)
		}
		err := sys.Mount(m.src, m.target, m.fstype, m.flags, m.data)
		// CONFIG_DEVTMPFS_MOUNT may have mounted /dev already.
		if err != nil && !(m.target == "/dev" && errors.Is(err, syscall.EBUSY)) {
			return fmt.Errorf("mount %s: %w", m.target, err)
		}
	}
	// Shells and runtimes expect these; udev would have made them.
	for _, l := range [][2]string{{"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"},
		{"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"}} {
		if err := sys.Symlink(l[0], l[1]); err != nil && !errors.Is(err, os.ErrExist) {
			log.Warn("symlink", "path", l[1], "err", err)
		}
	}
	return nil
}

// configure applies what the kernel command line asks for; it needs /proc.
func configure(sys sysOps, k KernelArgs, log *slog.Logger) error {
	if err := sys.Sethostname(k.Hostname); err != nil {
		log.Warn("sethostname", "err", err)
	}
	if err := sys.LinkUp("lo"); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	return nil
}

// overlayRoot stacks a writable layer over the read-only root and moves into
// the merged tree, so that the workload can write anywhere (the prewarmed
// /var/cache/go-build, /home) copy-on-write while the base image, shared
// by every VM, stays untouched.
func overlayRoot(sys sysOps, scratch string) error {
	// The writable layer goes on the host's scratch disk when there is one (sized on
	// the host, sparse there), else in a tmpfs, i.e. in the VM's memory.
	if dev := scratch; dev != "" {
		if err := sys.Mount(dev, overlayDir, "ext4", syscall.MS_NOSUID|syscall.MS_NODEV, ""); err != nil {
			return fmt.Errorf("scratch disk %s: %w", dev, err)
		}
	} else if err := sys.Mount("tmpfs", overlayDir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0755"); err != nil {
		return err
	}
	for _, d := range []string{"upper", "work", "merged"} {
		if err := sys.Mkdir(overlayDir+"/"+d, 0o755); err != nil {
			return err
		}
	}
	opts := "lowerdir=/,upperdir=" + overlayDir + "/upper,workdir=" + overlayDir + "/work"
	if err := sys.Mount("overlay", overlayDir+"/merged", "overlay", 0, opts); err != nil {
		return err
	}
	sys.KeepUpper(overlayDir + "/upper")
	// switch_root's way: move the new tree onto / and chroot into it.
	if err := sys.Chdir(overlayDir + "/merged"); err != nil {
		return err
	}
	if err := sys.Mount(".", "/", "", syscall.MS_MOVE, ""); err != nil {
		return err
	}
	if err := sys.Chroot("."); err != nil {
		return err
	}
	return sys.Chdir("/")
}

// resolverFromPNP gives the guest the name servers the host passed in the kernel's ip=
// argument: the kernel lists them in /proc/net/pnp ("nameserver A.B.C.D" lines, the
// resolv.conf format). Without any, resolv.conf is left as the image has it (empty).
func resolverFromPNP(pnp, resolvConf string) error {
	b, err := os.ReadFile(pnp)
	if errors.Is(err, os.ErrNotExist) {
		return nil // no ip= configuration at all: no network
	}
	if err != nil {
		return err
	}
	var out []byte
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && (f[0] == "nameserver" || f[0] == "domain") {
			out = append(out, line+"\n"...)
		}
	}
	if !strings.Contains(string(out), "nameserver") {
		return nil
	}
	// The image's /etc/resolv.conf may be a symlink; the file is the guest's own now.
	_ = os.Remove(resolvConf)
	return os.WriteFile(resolvConf, out, 0o644)
}

// findExt4Label returns the first of devs holding an ext4 filesystem labelled label: the
// superblock sits at byte 1024, its magic 0xEF53 at +56, its 16-byte volume name at +120.
func findExt4Label(devs []string, label string) string {
	for _, dev := range devs {
		f, err := os.Open(dev)
		if err != nil {
			continue
		}
		sb := make([]byte, 1024)
		n, _ := f.ReadAt(sb, 1024)
		f.Close()
		if n < 136 || sb[56] != 0x53 || sb[57] != 0xEF {
			continue
		}
		if name := strings.TrimRight(string(sb[120:136]), "\x00"); name == label {
			return dev
		}
	}
	return ""
}
