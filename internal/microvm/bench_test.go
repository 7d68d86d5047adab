package microvm

import (
	"context"
	"crypto/rand"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/microvm/qemu"
	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
	"github.com/vulcanhq/vulcan/internal/protocol"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// BenchmarkP3RootfsProvisioning compares what a VM's root filesystem costs the backend —
// a state dir, the shared read-only image attached as is, writes going to the guest's
// overlay — with the naive alternative, a private copy of a 1 GiB image per VM.
func BenchmarkP3RootfsProvisioning(b *testing.B) {
	dir := b.TempDir()
	base := filepath.Join(dir, "base.ext4")
	f, err := os.Create(base)
	if err != nil {
		b.Fatal(err)
	}
	// Real data, not a sparse file: a sparse copy would flatter the copy.
	if _, err := io.CopyN(f, rand.Reader, 1<<30); err != nil {
		b.Fatal(err)
	}
	f.Close()

	shared := func(i int) {
		vmDir := filepath.Join(dir, "vm-shared")
		if err := os.MkdirAll(vmDir, 0o750); err != nil {
			b.Fatal(err)
		}
		// The backend only checks the image is there; the VMM opens it read-only.
		if _, err := os.Stat(base); err != nil {
			b.Fatal(err)
		}
		os.RemoveAll(vmDir)
	}
	copied := func(i int) {
		dst := filepath.Join(dir, "vm-copy.ext4")
		in, _ := os.Open(base)
		out, _ := os.Create(dst)
		if _, err := io.Copy(out, in); err != nil {
			b.Fatal(err)
		}
		out.Sync()
		in.Close()
		out.Close()
		os.Remove(dst)
	}
	var tShared, tCopy time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		shared(i)
		t1 := time.Now()
		copied(i)
		tShared += t1.Sub(t0)
		tCopy += time.Since(t1)
	}
	b.ReportMetric(float64(tShared.Microseconds())/float64(b.N), "shared-µs/vm")
	b.ReportMetric(float64(tCopy.Milliseconds())/float64(b.N), "copy-ms/vm")
	b.ReportMetric(float64(tCopy)/float64(tShared), "copy/shared-ratio")
}

// BenchmarkP4BootToHello compares a cold boot through the backend's QEMU path (VMM start
// to the agent's hello over the channel) with a bare QEMU boot of the same kernel and
// rootfs whose init is /bin/true (VMM start to the kernel's panic that init exited, with
// panic=-1 making QEMU exit at once): the agent's own cost on top of kernel boot.
func BenchmarkP4BootToHello(b *testing.B) {
	testenv.RequiresBinary(b, "qemu-system-x86_64")
	imgs := testenv.RequiresImages(b, "python")
	kernel := filepath.Join(imgs, "vmlinux")
	rootfs := filepath.Join(imgs, "rootfs-python.ext4")
	d := qemu.New("qemu-system-x86_64", qemu.AccelTCG)
	if os.Getenv("VULCAN_QEMU_ACCEL") == qemu.AccelKVM {
		d = qemu.New("qemu-system-x86_64", qemu.AccelKVM)
	}
	var agent, bare []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		agent = append(agent, bootToHello(b, d, kernel, rootfs))
		bare = append(bare, bareBoot(b, d, kernel, rootfs))
	}
	a, r := median(agent), median(bare)
	b.ReportMetric(float64(a.Milliseconds()), "agent-hello-ms")
	b.ReportMetric(float64(r.Milliseconds()), "bare-init-ms")
	b.ReportMetric(float64(a)/float64(r), "hello/bare-ratio")
}

func bootToHello(b *testing.B, d *qemu.Driver, kernel, rootfs string) time.Duration {
	dir, _ := os.MkdirTemp("", "p4")
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := time.Now()
	m, err := d.Start(ctx, vmmConfig(dir, kernel, rootfs))
	if err != nil {
		b.Fatal(err)
	}
	defer m.Stop(context.Background())
	conn, err := m.DialAgent(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	pc := protocol.NewConn(conn)
	if _, err := pc.ReadHello(ctx); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func bareBoot(b *testing.B, d *qemu.Driver, kernel, rootfs string) time.Duration {
	dir, _ := os.MkdirTemp("", "p4")
	defer os.RemoveAll(dir)
	cfg := vmmConfig(dir, kernel, rootfs)
	args := d.Argv(cfg)
	// Same machine, same devices; only init differs. The agent socket must exist for the
	// chardev, so listen on it without ever accepting.
	for i, a := range args {
		if strings.HasPrefix(a, "console=") {
			args[i] = strings.Replace(a, "init=/usr/local/bin/vulcan-guest", "init=/bin/true", 1)
		}
	}
	ln, err := net.Listen("unix", qemu.AgentSocket(dir))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	cmd := exec.Command(d.Bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("bare boot: %v: %s", err, out)
	}
	return time.Since(start)
}

func vmmConfig(dir, kernel, rootfs string) vmm.Config {
	return vmm.Config{ID: "p4", Dir: dir, Kernel: kernel, RootFS: rootfs, CPUs: 1, MemMB: 256, CID: 3}
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
