package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vulcanhq/vulcan/internal/cell"
	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
	"github.com/vulcanhq/vulcan/internal/nic"
)

// The kernel command line and QEMU argv are the contract with the guest and the VMM:
// pinned literally.
func TestBootArgs(t *testing.T) {
	got := BootArgs([]string{"vulcan.hostname=vulcan", "ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off"})
	want := "console=ttyS0 reboot=t panic=-1 quiet root=/dev/vda ro rootfstype=ext4 init=/usr/local/bin/vulcan-guest " +
		"random.trust_cpu=on i8042.noaux i8042.nokbd no_timer_check vulcan.listen=serial:vulcan.agent vulcan.hostname=vulcan " +
		"ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off"
	if got != want {
		t.Errorf("BootArgs =\n%s\nwant\n%s", got, want)
	}
}

func TestArgv(t *testing.T) {
	d := New("qemu-system-x86_64", AccelTCG)
	cfg := vmm.Config{ID: "wl1", Dir: "/s/wl1", Kernel: "/i/vmlinux", RootFS: "/i/rootfs-python.ext4", CPUs: 2, MemMB: 512, CID: 7}
	want := "-name vulcan-wl1 -object memory-backend-ram,id=ram,size=512M -M microvm,acpi=off,memory-backend=ram " +
		"-accel tcg,tb-size=256 -cpu max -smp 2 -m 512M " +
		"-nodefaults -no-user-config -display none -no-reboot " +
		"-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny " +
		"-serial stdio -kernel /i/vmlinux " +
		"-append " + BootArgs(nil) + " " +
		"-drive id=root,file=/i/rootfs-python.ext4,format=raw,if=none,readonly=on -device virtio-blk-device,drive=root " +
		"-object rng-random,id=rng,filename=/dev/urandom -device virtio-rng-device,rng=rng " +
		"-device virtio-serial-device -chardev socket,id=agent,path=/s/wl1/agent.sock " +
		"-device virtserialport,chardev=agent,name=vulcan.agent " +
		"-chardev socket,id=qmp,path=/s/wl1/qmp.sock -mon chardev=qmp,mode=control"
	if got := strings.Join(d.Argv(cfg), " "); got != want {
		t.Errorf("argv =\n%s\nwant\n%s", got, want)
	}
	if got := strings.Join(New("q", AccelKVM).Argv(cfg), " "); !strings.Contains(got, "-accel kvm -cpu host") {
		t.Errorf("kvm argv: %s", got)
	}
	cfg.Scratch = "/s/wl1/scratch.ext4"
	if got := strings.Join(d.Argv(cfg), " "); !strings.HasSuffix(got, " -mon chardev=qmp,mode=control "+
		"-drive id=scratch,file=/s/wl1/scratch.ext4,format=raw,if=none,discard=unmap -device virtio-blk-device,drive=scratch") {
		t.Errorf("scratch disk argv: %s", got)
	}
	// A snapshot's VM writes its RAM to a shared file; a restored one maps it private,
	// read-only on disk, and waits for its state.
	cfg.Scratch = ""
	cfg.MemFile = &vmm.MemFile{Path: "/snap/mem", Shared: true}
	if got := strings.Join(d.Argv(cfg), " "); !strings.Contains(got, "-object memory-backend-file,id=ram,size=512M,mem-path=/snap/mem,share=on -M microvm,acpi=off,memory-backend=ram ") ||
		strings.Contains(got, "-incoming") {
		t.Errorf("shared memory argv: %s", got)
	}
	cfg.MemFile.Shared, cfg.Restore = false, "/snap/state"
	if got := strings.Join(d.Argv(cfg), " "); !strings.Contains(got, "-object memory-backend-file,id=ram,size=512M,mem-path=/snap/mem,share=off,readonly=on,rom=off ") ||
		!strings.HasSuffix(got, " -incoming defer") {
		t.Errorf("restore argv: %s", got)
	}
	cfg.MemFile, cfg.Restore = nil, ""
	// A network: by name without a cell; in a cell the TAP comes opened, as fd 3.
	cfg.Scratch = ""
	cfg.Network = &nic.NIC{NetNS: "/run/netns/vulcan-x-wl1", TAP: "tap0", MAC: "02:fc:00:00:00:07"}
	if got := strings.Join(d.Argv(cfg), " "); !strings.HasSuffix(got, " -netdev tap,id=net0,ifname=tap0,script=no,downscript=no -device virtio-net-device,netdev=net0,mac=02:fc:00:00:00:07") {
		t.Errorf("network argv: %s", got)
	}
	cfg.Cell = &cell.Spec{UID: 1 << 30, GID: 1 << 30, Dir: cfg.Dir}
	if got := strings.Join(d.Argv(cfg), " "); !strings.HasSuffix(got, " -netdev tap,id=net0,fd=3 -device virtio-net-device,netdev=net0,mac=02:fc:00:00:00:07") {
		t.Errorf("network argv in a cell: %s", got)
	}
}

// A cached verdict is reused only for the same QEMU, kernel and boot.
func TestProbeCacheKey(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("kernel-a"), 0o644)
	cache := filepath.Join(dir, "probe.json")
	k1 := probeKey("sh", kernel)
	if k1 == "" {
		t.Fatal("no key")
	}
	os.WriteFile(cache, []byte(`{"key":"`+strings.ReplaceAll(k1, `\`, `\\`)+`","accel":"kvm","reason":""}`), 0o644)
	if accel, _ := ProbeAccelCached(context.Background(), "sh", kernel, cache); accel != AccelKVM {
		t.Fatalf("cached verdict not used: %s", accel)
	}
	os.WriteFile(kernel, []byte("kernel-b"), 0o644)
	if probeKey("sh", kernel) == k1 {
		t.Fatal("a different kernel kept the same key")
	}
}
