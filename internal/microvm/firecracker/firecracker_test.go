//go:build linux

package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	sdk "github.com/firecracker-microvm/firecracker-go-sdk"
	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"

	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
	"github.com/vulcanhq/vulcan/internal/nic"
	"github.com/vulcanhq/vulcan/internal/protocol"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

func TestBootArgs(t *testing.T) {
	base := "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda ro rootfstype=ext4 init=/usr/local/bin/vulcan-guest quiet random.trust_cpu=on vulcan.listen=vsock:1024"
	for _, c := range []struct {
		extra []string
		want  string
	}{
		{nil, base},
		{[]string{"vulcan.hostname=vulcan"}, base + " vulcan.hostname=vulcan"},
		{[]string{"", " ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off "}, base + " ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off"},
	} {
		if got := BootArgs(c.extra); got != c.want {
			t.Errorf("BootArgs(%q):\n got %s\nwant %s", c.extra, got, c.want)
		}
	}
}

var sample = vmm.Config{
	ID: "wl1", Dir: "/var/lib/vulcan/vms/wl1", Kernel: "/img/vmlinux", RootFS: "/img/rootfs-python.ext4",
	CPUs: 2, MemMB: 300, CID: 7, Args: []string{"vulcan.hostname=vulcan"},
}

func TestSDKConfig(t *testing.T) {
	net := sample
	net.Network = &nic.NIC{NetNS: "/run/netns/wl1", TAP: "tap0", MAC: "02:fc:00:00:00:07"}
	for _, c := range []struct {
		name string
		cfg  vmm.Config
		want sdk.Config
	}{
		{"plain", sample, sdk.Config{
			VMID:            "wl1",
			SocketPath:      "/var/lib/vulcan/vms/wl1/fc.sock",
			KernelImagePath: "/img/vmlinux",
			KernelArgs:      "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda ro rootfstype=ext4 init=/usr/local/bin/vulcan-guest quiet random.trust_cpu=on vulcan.listen=vsock:1024 vulcan.hostname=vulcan",
			Drives: []models.Drive{{
				DriveID: sdk.String("rootfs"), PathOnHost: sdk.String("/img/rootfs-python.ext4"),
				IsRootDevice: sdk.Bool(true), IsReadOnly: sdk.Bool(true),
			}},
			VsockDevices:   []sdk.VsockDevice{{ID: "agent", Path: "/var/lib/vulcan/vms/wl1/v.sock", CID: 7}},
			MachineCfg:     models.MachineConfiguration{VcpuCount: sdk.Int64(2), MemSizeMib: sdk.Int64(300)},
			ForwardSignals: []os.Signal{},
		}},
		{"network", net, sdk.Config{
			VMID:            "wl1",
			SocketPath:      "/var/lib/vulcan/vms/wl1/fc.sock",
			KernelImagePath: "/img/vmlinux",
			KernelArgs:      "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda ro rootfstype=ext4 init=/usr/local/bin/vulcan-guest quiet random.trust_cpu=on vulcan.listen=vsock:1024 vulcan.hostname=vulcan",
			Drives: []models.Drive{{
				DriveID: sdk.String("rootfs"), PathOnHost: sdk.String("/img/rootfs-python.ext4"),
				IsRootDevice: sdk.Bool(true), IsReadOnly: sdk.Bool(true),
			}},
			NetworkInterfaces: sdk.NetworkInterfaces{{StaticConfiguration: &sdk.StaticNetworkConfiguration{MacAddress: "02:fc:00:00:00:07", HostDevName: "tap0"}}},
			NetNS:             "/run/netns/wl1",
			VsockDevices:      []sdk.VsockDevice{{ID: "agent", Path: "/var/lib/vulcan/vms/wl1/v.sock", CID: 7}},
			MachineCfg:        models.MachineConfiguration{VcpuCount: sdk.Int64(2), MemSizeMib: sdk.Int64(300)},
			ForwardSignals:    []os.Signal{},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := New(Options{}).SDKConfig(c.cfg)
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("SDKConfig:\n got %s\nwant %s", dump(got), dump(c.want))
			}
		})
	}
}

func TestSDKConfigJailer(t *testing.T) {
	d := New(Options{Bin: "/usr/bin/firecracker", Jailer: &Jailer{UID: 123, GID: 456}})
	got := d.SDKConfig(sample).JailerCfg
	want := &sdk.JailerConfig{
		ID: "wl1", UID: sdk.Int(123), GID: sdk.Int(456), NumaNode: sdk.Int(0),
		ExecFile: "/usr/bin/firecracker", JailerBinary: "jailer", ChrootBaseDir: "/var/lib/vulcan/vms/wl1/jail",
		ChrootStrategy: sdk.NewNaiveChrootStrategy("/img/vmlinux"), CgroupVersion: "2",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("jailer config:\n got %+v\nwant %+v", got, want)
	}
	// The jailed VMM's command line names the VM dir, which the startup reclaim needs.
	cmd := d.command(context.Background(), sample, nil)
	if !strings.Contains(strings.Join(cmd.Args, " "), "-- --api-sock /var/lib/vulcan/vms/wl1/fc.sock") {
		t.Errorf("jailer argv %q does not pass the API socket in the VM dir", cmd.Args)
	}
}

func dump(c sdk.Config) string {
	s := fmt.Sprintf("%+v", c)
	for _, d := range c.Drives {
		s += fmt.Sprintf("\n drive %s %s root=%v ro=%v", *d.DriveID, *d.PathOnHost, *d.IsRootDevice, *d.IsReadOnly)
	}
	s += fmt.Sprintf("\n machine vcpus=%d mem=%d", *c.MachineCfg.VcpuCount, *c.MachineCfg.MemSizeMib)
	for _, n := range c.NetworkInterfaces {
		s += fmt.Sprintf("\n nic %+v", *n.StaticConfiguration)
	}
	return s
}

func TestArgv(t *testing.T) {
	cmd := New(Options{Bin: "/opt/fc/firecracker"}).command(context.Background(), sample, nil)
	want := []string{"/opt/fc/firecracker", "--api-sock", "/var/lib/vulcan/vms/wl1/fc.sock", "--id", "wl1"}
	if !reflect.DeepEqual(cmd.Args, want) {
		t.Errorf("argv %q, want %q", cmd.Args, want)
	}
	if a := cmd.SysProcAttr; a == nil || !a.Setpgid || a.Pdeathsig != syscall.SIGKILL {
		t.Errorf("SysProcAttr %+v: want its own process group and SIGKILL on parent death", a)
	}
}

// fakeVsock serves one hybrid-vsock connection with a scripted reply.
func fakeVsock(t *testing.T, reply string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "v.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		if string(buf[:n]) != "CONNECT 1024\n" {
			fmt.Fprintf(c, "BAD %q\n", buf[:n])
			return
		}
		c.Write([]byte(reply)) // one write: the ack and the guest's first bytes together
		io.Copy(io.Discard, c)
	}()
	return path
}

func TestDialVsock(t *testing.T) {
	// The agent speaks first; its hello may arrive in the same read as the ack.
	t.Run("bytes after the ack are kept", func(t *testing.T) {
		conn, err := DialVsock(context.Background(), fakeVsock(t, "OK 1073741825\nHELLO-FRAME"), AgentPort)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		got := make([]byte, len("HELLO-FRAME"))
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(conn, got); err != nil || string(got) != "HELLO-FRAME" {
			t.Fatalf("read %q (%v), want the bytes that followed the ack", got, err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		if _, err := DialVsock(context.Background(), fakeVsock(t, ""), AgentPort); err == nil {
			t.Fatal("a closed connection was taken for an accepted one")
		}
	})
	t.Run("garbage", func(t *testing.T) {
		if _, err := DialVsock(context.Background(), fakeVsock(t, "NOPE 1\n"), AgentPort); err == nil || !strings.Contains(err.Error(), "NOPE") {
			t.Fatalf("err %v, want a bad acknowledgement", err)
		}
	})
}

// The driver against the simulator: the whole SDK path without KVM.

var binDir string

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "fcb")
	if err != nil {
		panic(err)
	}
	binDir = d
	code := func() int {
		defer os.RemoveAll(d)
		for _, b := range [][2]string{{"fcsim", "./fcsim"}, {"vulcan-guest", "github.com/vulcanhq/vulcan/cmd/vulcan-guest"}} {
			if err := testenv.GoBuild(filepath.Join(d, b[0]), b[1], "CGO_ENABLED=0"); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

func simDriver() *Driver {
	return New(Options{Bin: filepath.Join(binDir, "fcsim"), KVMCheck: func() error { return nil }})
}

func simConfig(t *testing.T) vmm.Config {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, f := range []string{"vmlinux", "rootfs.ext4"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	vm := filepath.Join(dir, "vm")
	if err := os.Mkdir(vm, 0o755); err != nil {
		t.Fatal(err)
	}
	return vmm.Config{ID: "t1", Dir: vm, Kernel: filepath.Join(dir, "vmlinux"), RootFS: filepath.Join(dir, "rootfs.ext4"),
		CPUs: 1, MemMB: 128, CID: 3}
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func TestStartDialStop(t *testing.T) {
	t.Setenv("VULCAN_FCSIM_AGENT_ARGS", "--runtimes-file /nonexistent")
	d := simDriver()
	if err := d.Available(); err != nil {
		t.Fatal(err)
	}
	cfg := simConfig(t)
	startCtx, cancelStart := context.WithTimeout(context.Background(), 30*time.Second)
	m, err := d.Start(startCtx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The start context ends; the VM must live on.
	cancelStart()
	if vmm.ReadPIDFile(cfg.Dir) != m.PID() {
		t.Errorf("pid file %d, VMM pid %d", vmm.ReadPIDFile(cfg.Dir), m.PID())
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", m.PID()))
	if !strings.Contains(string(cmdline), cfg.Dir) {
		t.Errorf("VMM command line %q does not name the VM dir (the startup reclaim needs it)", cmdline)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := m.DialAgent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hc := protocol.NewConn(conn)
	if _, err := hc.ReadHello(ctx); err != nil {
		t.Fatalf("hello through the driver: %v", err)
	}
	select {
	case <-m.Done():
		t.Fatal("VMM exited although only the start context was cancelled")
	default:
	}

	if err := m.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-m.Done()
	if alive(m.PID()) {
		t.Errorf("VMM %d alive after Stop", m.PID())
	}
	if err := m.Stop(context.Background()); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if _, err := os.Stat(APISocket(cfg.Dir)); !os.IsNotExist(err) {
		t.Errorf("API socket left: %v", err)
	}
	hc.Close()
}

// A VMM that ignores Ctrl-Alt-Del and SIGTERM is killed with its process group.
func TestStopEscalatesToSIGKILL(t *testing.T) {
	politeWait, termWait = 100*time.Millisecond, 100*time.Millisecond
	t.Cleanup(func() { politeWait, termWait = time.Second, 2*time.Second })
	dir, err := os.MkdirTemp("", "fce")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	// A "firecracker" whose API is served by fcsim (which exits on Ctrl-Alt-Del) but
	// which itself ignores SIGTERM and keeps a child in its process group.
	stubborn := filepath.Join(dir, "stubborn")
	script := "#!/bin/sh\ntrap '' TERM\nsleep 1000 &\necho $! > " + filepath.Join(dir, "child") + "\n" +
		filepath.Join(binDir, "fcsim") + " \"$@\" &\nwait\n"
	if err := os.WriteFile(stubborn, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	d := New(Options{Bin: stubborn, KVMCheck: func() error { return nil }})
	cfg := simConfig(t)
	m, err := d.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if alive(m.PID()) {
		t.Errorf("VMM %d alive after Stop", m.PID())
	}
	b, _ := os.ReadFile(filepath.Join(dir, "child"))
	var child int
	fmt.Sscan(string(b), &child)
	if child == 0 {
		t.Fatal("no child pid recorded")
	}
	// The child is reparented and reaped by init; give it a moment only to disappear.
	deadline := time.Now().Add(5 * time.Second)
	for alive(child) && !isZombie(child) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(child) && !isZombie(child) {
		t.Errorf("child %d of the VMM survived the process-group kill", child)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] == "Z"
}

func TestStartFailureReleases(t *testing.T) {
	d := simDriver()
	cfg := simConfig(t)
	cfg.Kernel = filepath.Join(cfg.Dir, "missing-vmlinux")
	if _, err := d.Start(context.Background(), cfg); err == nil {
		t.Fatal("start with a missing kernel succeeded")
	}
	// An interrupted start kills the VMM it had started.
	cfg = simConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := d.Start(ctx, cfg)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want canceled", err)
	}
	if pid := vmm.ReadPIDFile(cfg.Dir); pid != 0 && alive(pid) && !isZombie(pid) {
		t.Errorf("VMM %d alive after a failed start", pid)
	}
}
