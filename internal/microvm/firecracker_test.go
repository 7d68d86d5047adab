package microvm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/microvm/firecracker"
	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// TestConformanceFirecrackerSim runs the conformance suite through the Firecracker
// driver — SDK, API socket, hybrid vsock, stop escalation — against fcsim, which runs
// the real agent on this host as the "guest". The runtimes are the host's.
func TestConformanceFirecrackerSim(t *testing.T) {
	driver, imagesDir, runtimes := simDriver(t)
	h := newHarness(t, imagesDir, func() (vmm.Driver, error) { return driver, nil })
	h.emulated = true
	runConformance(t, h, runtimes)
}

// TestFirecrackerSnapshotsSim drives the Firecracker snapshot path through the SDK
// against fcsim: a template's snapshot is built (PATCH /vm Paused, PUT /snapshot/create),
// two VMs are restored from it (PUT /snapshot/load, the vsock and scratch paths relative
// to each VM's own dir), and a sandbox is paused and resumed. fcsim cannot restore a
// process: its "restored" agent is a fresh one started parked, so this proves the calls,
// the park/wake handshake and the files, not that memory survives (QEMU's tests do).
func TestFirecrackerSnapshotsSim(t *testing.T) {
	driver, imagesDir, _ := simDriver(t)
	state, snaps, paused := shortDir(t), shortDir(t), shortDir(t)
	b, err := New(Config{ImagesDir: imagesDir, StateDir: state, SnapshotDir: snaps, BootTimeout: 60 * time.Second, ScratchMB: 64},
		func() (vmm.Driver, error) { return driver, nil })
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	ctx := context.Background()
	res := model.Resources{CPUs: 1, MemMB: 256}
	info, err := b.BuildSnapshot(ctx, model.RuntimePython, res)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"state", "state.mem", "scratch.ext4", "snapshot.json"} {
		if !fileExists(filepath.Join(b.snaps.path(shapeOf(model.RuntimePython, res), info.Key), f)) {
			t.Errorf("snapshot has no %s", f)
		}
	}
	var vms []*SandboxVM
	for i := range 2 {
		sb, err := b.StartSandbox(ctx, VMSpec{ID: fmt.Sprintf("fcclone%d-%d", i, time.Now().UnixNano()%1e6), Template: model.RuntimePython, Resources: res})
		if err != nil {
			t.Fatal(err)
		}
		vms = append(vms, sb)
		if md := sb.Metadata(); md["start"] != "snapshot" {
			t.Errorf("clone %d started from %q", i, md["start"])
		}
		if out, exit := runProc(t, sb.Session(), protocol.ProcessSpec{Shell: "echo restored-" + strconv.Itoa(i)}); exit.Code != 0 || out[protocol.Stdout] != fmt.Sprintf("restored-%d\n", i) {
			t.Errorf("clone %d: %q %+v", i, out, exit)
		}
	}
	// Pause one (PauseVM + CreateSnapshot into the paused dir) and resume it.
	dir := filepath.Join(paused, "p")
	os.MkdirAll(dir, 0o700)
	if err := vms[0].Pause(ctx, dir); err != nil {
		t.Fatalf("pause: %v", err)
	}
	back, err := b.ResumeSandbox(ctx, VMSpec{ID: "fcresumed"}, dir)
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	if out, exit := runProc(t, back.Session(), protocol.ProcessSpec{Shell: "echo resumed"}); exit.Code != 0 || out[protocol.Stdout] != "resumed\n" {
		t.Errorf("resumed: %q %+v", out, exit)
	}
	for _, v := range append(vms, back) {
		if err := v.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	}
	if entries, _ := os.ReadDir(state); len(entries) != 0 {
		t.Errorf("state dir after every stop: %v", entries)
	}
}

// simDriver builds fcsim and the agent and returns the Firecracker driver on them, with
// images made of the host's runtimes.
func simDriver(t *testing.T) (vmm.Driver, string, []model.Runtime) {
	if testing.Short() {
		t.Skip("builds the simulator and the agent, runs workloads")
	}
	testenv.RequiresLinux(t)
	bin := shortDir(t)
	for _, b := range [][2]string{{"fcsim", "./firecracker/fcsim"}, {"vulcan-guest", "github.com/vulcanhq/vulcan/cmd/vulcan-guest"}} {
		if err := testenv.GoBuild(filepath.Join(bin, b[0]), b[1], "CGO_ENABLED=0"); err != nil {
			t.Fatal(err)
		}
	}

	// The agent, as root, runs workloads as uid 1000: give go workloads a build cache
	// that uid can write (the image prewarms /var/cache/go-build; the host has none).
	cache := filepath.Join(bin, "gocache")
	if err := os.Mkdir(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	prewarmGoCache(t, cache)
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	// No runtimes file: the agent asks the binaries for their versions.
	t.Setenv("VULCAN_FCSIM_AGENT_ARGS", "--gocache "+cache+" --runtimes-file "+filepath.Join(bin, "none.json"))

	imagesDir, runtimes := hostImages(t)
	driver := firecracker.New(firecracker.Options{
		Bin:      filepath.Join(bin, "fcsim"),
		KVMCheck: func() error { return nil }, // the simulator needs none
	})
	return driver, imagesDir, runtimes
}

// prewarmGoCache does what the go image build does for /var/cache/go-build: compiling
// the standard library from a cold cache needs more memory than a small VM has (fcsim
// enforces the VM's size), so the cache must hold it before a go workload runs. The
// environment matches the agent's so that the cache keys do.
func prewarmGoCache(t *testing.T, cache string) {
	t.Helper()
	gobin := "/usr/local/go/bin/go"
	if _, err := os.Stat(gobin); err != nil {
		return
	}
	src := filepath.Join(cache, "..", "prewarm")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"go.mod":  "module prewarm\n\ngo 1.21\n",
		"main.go": "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(6 * 7) }\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(src, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(gobin, "build", "-o", filepath.Join(src, "main"), ".")
	cmd.Dir = src
	cmd.Env = []string{"PATH=/usr/local/go/bin:/usr/bin:/bin", "HOME=" + src, "GOCACHE=" + cache, "GOPATH=" + filepath.Join(src, "gopath"),
		"GOTOOLCHAIN=local", "GOPROXY=off", "GOFLAGS=-mod=mod", "CGO_ENABLED=0"}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("prewarm go cache: %v\n%s", err, out)
	}
	if os.Geteuid() == 0 {
		// The agent runs workloads as uid 1000.
		err := filepath.WalkDir(cache, func(p string, _ os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, 1000, 1000)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// hostImages makes an images dir whose "rootfs" images stand for the host's runtimes:
// fcsim opens the kernel and drives but runs the workloads with the host's binaries,
// found on the agent's fixed PATH.
func hostImages(t *testing.T) (string, []model.Runtime) {
	t.Helper()
	dir := shortDir(t)
	write := func(name string, v any) {
		b := []byte("placeholder: fcsim opens but never boots this\n")
		if v != nil {
			var err error
			if b, err = json.Marshal(v); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(images.KernelFile, nil)
	write(images.KernelManifestFile, images.KernelManifest{Kind: "kernel", Version: "fcsim"})
	bins := map[model.Runtime]string{model.RuntimePython: "/usr/bin/python3", model.RuntimeNode: "/usr/bin/node", model.RuntimeGo: "/usr/local/go/bin/go"}
	var have []model.Runtime
	for _, rt := range model.Runtimes {
		if _, err := os.Stat(bins[rt]); err != nil {
			t.Logf("host has no %s (%s): its cases skip", rt, bins[rt])
			continue
		}
		have = append(have, rt)
		write(images.RootFSFile(rt), nil)
		write(images.RootFSManifestFile(rt), images.RootFSManifest{Kind: "rootfs", Runtime: string(rt), RuntimeVersion: "host", SHA256: "host"})
	}
	return dir, have
}

// TestConformanceFirecrackerReal boots real Firecracker microVMs where KVM, the binary
// and the images exist, through the same driver that VULCAN_VMM=firecracker resolves.
func TestConformanceFirecrackerReal(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	testenv.RequiresKVM(t)
	bin := os.Getenv("VULCAN_FIRECRACKER_BIN")
	if bin == "" {
		p, err := exec.LookPath("firecracker")
		if err != nil {
			t.Skip("skipped: no firecracker binary (set VULCAN_FIRECRACKER_BIN or put it on PATH; `make download`)")
		}
		bin = p
	}
	dir := testenv.RequiresImages(t, "python")
	var runtimes []model.Runtime
	for _, rt := range model.Runtimes {
		if _, err := os.Stat(filepath.Join(dir, images.RootFSFile(rt))); err == nil {
			runtimes = append(runtimes, rt)
		}
	}
	resolve := ResolveDriver(DriverOptions{VMM: "firecracker", FirecrackerBin: bin})
	d, err := resolve()
	if err != nil {
		t.Skipf("skipped: %v", err)
	}
	if _, ok := d.(*firecracker.Driver); !ok {
		t.Fatalf("VULCAN_VMM=firecracker resolved %T, want the firecracker driver", d)
	}
	h := newHarness(t, dir, resolve)
	runConformance(t, h, runtimes)
}

// VULCAN_VMM=firecracker resolves to the Firecracker driver when KVM and the binary
// are there, and says which is missing when not.
func TestResolveFirecracker(t *testing.T) {
	fake := filepath.Join(shortDir(t), "firecracker")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := ResolveDriver(DriverOptions{VMM: "firecracker", FirecrackerBin: fake})()
	if kvm := vmm.KVMUsable(); kvm != nil {
		if err == nil || !strings.Contains(err.Error(), "KVM") {
			t.Fatalf("without KVM (%v): err %v, want one naming KVM", kvm, err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if fd, ok := d.(*firecracker.Driver); !ok || fd.Name() != "firecracker" {
		t.Fatalf("resolved %T, want *firecracker.Driver", d)
	}
	_, err = ResolveDriver(DriverOptions{VMM: "firecracker", FirecrackerBin: fake + "-missing"})()
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%s-missing not found", fake)) {
		t.Fatalf("missing binary: err %v", err)
	}
}
