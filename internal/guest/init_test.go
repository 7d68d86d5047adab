//go:build linux

package guest

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// recordingSys records what PID 1 setup would do.
type recordingSys struct {
	ro      bool
	scratch string
	calls   []string
}

func (r *recordingSys) add(f string, a ...any) error {
	r.calls = append(r.calls, fmt.Sprintf(f, a...))
	return nil
}
func (r *recordingSys) Mount(src, target, fstype string, flags uintptr, data string) error {
	return r.add("mount %s %s %s %#x %q", src, target, fstype, flags, data)
}
func (r *recordingSys) Mkdir(path string, mode uint32) error { return r.add("mkdir %s", path) }
func (r *recordingSys) Symlink(o, n string) error            { return r.add("symlink %s %s", o, n) }
func (r *recordingSys) Chdir(path string) error              { return r.add("chdir %s", path) }
func (r *recordingSys) Chroot(path string) error             { return r.add("chroot %s", path) }
func (r *recordingSys) Sethostname(name string) error        { return r.add("hostname %s", name) }
func (r *recordingSys) LinkUp(name string) error             { return r.add("up %s", name) }
func (r *recordingSys) RootReadOnly() (bool, error)          { return r.ro, nil }
func (r *recordingSys) ScratchDevice() string                { return r.scratch }
func (r *recordingSys) KeepUpper(path string)                { r.add("keep %s", path) }

const pseudoMounts = `mkdir /proc
mount proc /proc proc 0xe ""
mkdir /sys
mount sysfs /sys sysfs 0xe ""
mkdir /dev
mount devtmpfs /dev devtmpfs 0x2 "mode=0755"
mkdir /dev/pts
mount devpts /dev/pts devpts 0xa "gid=5,mode=0620,ptmxmode=0666"
mkdir /dev/shm
mount tmpfs /dev/shm tmpfs 0x6 "mode=1777"
mkdir /run
mount tmpfs /run tmpfs 0x6 "mode=0755"
mkdir /tmp
mount tmpfs /tmp tmpfs 0x6 "mode=1777"
symlink /proc/self/fd /dev/fd
symlink /proc/self/fd/0 /dev/stdin
symlink /proc/self/fd/1 /dev/stdout
symlink /proc/self/fd/2 /dev/stderr
hostname box
up lo`

func TestSetupSystem(t *testing.T) {
	cases := []struct {
		name    string
		ro      bool
		scratch string
		want    string
	}{
		{"writable root", false, "", pseudoMounts},
		{"read-only root with a scratch disk: the overlay's upper layer on it", true, "/dev/vdb", `mount /dev/vdb /tmp ext4 0x6 ""
mkdir /tmp/upper
mkdir /tmp/work
mkdir /tmp/merged
mount overlay /tmp/merged overlay 0x0 "lowerdir=/,upperdir=/tmp/upper,workdir=/tmp/work"
keep /tmp/upper
chdir /tmp/merged
mount . / ` + " " + `0x2000 ""
chroot .
chdir /
` + strings.Replace(pseudoMounts, "mkdir /tmp\nmount tmpfs /tmp tmpfs 0x6 \"mode=1777\"\n", "", 1)},
		{"read-only root gets an overlay", true, "", `mount tmpfs /tmp tmpfs 0x6 "mode=0755"
mkdir /tmp/upper
mkdir /tmp/work
mkdir /tmp/merged
mount overlay /tmp/merged overlay 0x0 "lowerdir=/,upperdir=/tmp/upper,workdir=/tmp/work"
keep /tmp/upper
chdir /tmp/merged
mount . / ` + " " + `0x2000 ""
chroot .
chdir /
` + pseudoMounts},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sys := &recordingSys{ro: tc.ro, scratch: tc.scratch}
			log := slog.New(slog.DiscardHandler)
			if err := setupSystem(sys, log); err != nil {
				t.Fatal(err)
			}
			if err := configure(sys, KernelArgs{Hostname: "box"}, log); err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(sys.calls, "\n"); got != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

func TestParseCmdline(t *testing.T) {
	cases := []struct {
		in   string
		want KernelArgs
	}{
		{"", KernelArgs{Oneshot: true, Hostname: "vulcan"}},
		{"console=ttyS0 root=/dev/vda ro init=/usr/local/bin/vulcan-guest vulcan.listen=serial:vulcan.agent vulcan.oneshot=0 vulcan.hostname=w-42 reboot=t",
			KernelArgs{Listen: "serial:vulcan.agent", Oneshot: false, Hostname: "w-42"}},
		{"vulcan.listen=vsock:1025 vulcan.oneshot=1", KernelArgs{Listen: "vsock:1025", Oneshot: true, Hostname: "vulcan"}},
	}
	for _, tc := range cases {
		if got := ParseCmdline(tc.in); got != tc.want {
			t.Errorf("ParseCmdline(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestFindSerialPort(t *testing.T) {
	dev, sys := t.TempDir(), t.TempDir()
	os.MkdirAll(sys+"/vport1p1", 0o755)
	os.WriteFile(sys+"/vport1p1/name", []byte("vulcan.agent\n"), 0o644)
	os.MkdirAll(sys+"/vport1p2", 0o755)
	os.WriteFile(sys+"/vport1p2/name", []byte("other\n"), 0o644)
	got, err := findSerialPort("vulcan.agent", dev, sys)
	if err != nil || got != dev+"/vport1p1" {
		t.Fatalf("got %q, %v", got, err)
	}
	os.MkdirAll(dev+"/virtio-ports", 0o755)
	os.WriteFile(dev+"/virtio-ports/vulcan.agent", nil, 0o644)
	if got, _ := findSerialPort("vulcan.agent", dev, sys); got != dev+"/virtio-ports/vulcan.agent" {
		t.Fatalf("udev name not preferred: %q", got)
	}
	if _, err := findSerialPort("missing", dev, sys); err == nil {
		t.Fatal("found a missing port")
	}
}

// The reaper (PID 1 mode) must hand the workload's own status to the
// agent even though it reaps with wait4(-1).
func TestReaperKeepsWorkloadStatus(t *testing.T) {
	a := New(Config{Reap: true, WorkRoot: shared.workRoot, UID: testUID, GID: testGID})
	// While it runs it reaps every child of the test binary.
	defer a.spawn.(*reaper).stop()
	for i := range 20 {
		pid, wait, err := a.spawn.start("/bin/sh", []string{"sh", "-c", fmt.Sprintf("sleep 0.0%d & exit %d", i%3, i)},
			&os.ProcAttr{Sys: &syscall.SysProcAttr{Setpgid: true}})
		if err != nil {
			t.Fatal(err)
		}
		if ws := wait(); ws.ExitStatus() != i {
			t.Fatalf("pid %d: status %d, want %d", pid, ws.ExitStatus(), i)
		}
	}
}

func TestResolverFromPNP(t *testing.T) {
	dir := t.TempDir()
	pnp, resolv := filepath.Join(dir, "pnp"), filepath.Join(dir, "resolv.conf")
	os.WriteFile(resolv, nil, 0o644)

	// No /proc/net/pnp (no ip= argument): nothing to do.
	if err := resolverFromPNP(filepath.Join(dir, "absent"), resolv); err != nil {
		t.Fatal(err)
	}
	// Manual configuration without name servers (policy host): resolv.conf untouched.
	os.WriteFile(pnp, []byte("#MANUAL\n"), 0o644)
	if err := resolverFromPNP(pnp, resolv); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(resolv); len(b) != 0 {
		t.Fatalf("resolv.conf written without name servers: %q", b)
	}
	// What the kernel lists for ip=...:off:10.214.0.2:10.214.0.3.
	os.WriteFile(pnp, []byte("#MANUAL\nnameserver 10.214.0.2\nnameserver 10.214.0.3\n"), 0o644)
	if err := resolverFromPNP(pnp, resolv); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(resolv); string(b) != "nameserver 10.214.0.2\nnameserver 10.214.0.3\n" {
		t.Fatalf("resolv.conf = %q", b)
	}
}

// The scratch disk is found by its ext4 label, whatever order the devices come in.
func TestFindExt4Label(t *testing.T) {
	dir := t.TempDir()
	mk := func(name, label string, magic bool) string {
		b := make([]byte, 4096)
		if magic {
			b[1024+56], b[1024+57] = 0x53, 0xEF
		}
		copy(b[1024+120:], label)
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o644)
		return p
	}
	root := mk("vda", "vulcan-python", true)
	fake := mk("vdb", protocol.ScratchLabel, false) // right name, not ext4
	scratch := mk("vdc", protocol.ScratchLabel, true)
	if got := findExt4Label([]string{root, fake, scratch}, protocol.ScratchLabel); got != scratch {
		t.Errorf("found %q, want %q", got, scratch)
	}
	if got := findExt4Label([]string{root, filepath.Join(dir, "absent")}, protocol.ScratchLabel); got != "" {
		t.Errorf("found %q without a scratch disk", got)
	}
}
