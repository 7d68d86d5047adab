package doctor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// fakeRoot builds an images dir holding what names lists ("kernel", "python", ...), with
// the agent speaking protocol proto.
func fakeRoot(t *testing.T, proto int, names ...string) Options {
	t.Helper()
	root := t.TempDir()
	imgs := filepath.Join(root, "images")
	os.MkdirAll(imgs, 0o755)
	for _, n := range names {
		if n == "kernel" {
			os.WriteFile(filepath.Join(imgs, "vmlinux"), []byte("ELF"), 0o644)
			os.WriteFile(filepath.Join(imgs, "kernel.json"), []byte(`{"kind":"kernel","version":"6.1.0","size_bytes":18000000}`), 0o644)
			continue
		}
		os.WriteFile(filepath.Join(imgs, "rootfs-"+n+".ext4"), []byte("ext4"), 0o644)
		os.WriteFile(filepath.Join(imgs, "rootfs-"+n+".json"), []byte(fmt.Sprintf(
			`{"kind":"rootfs","runtime":%q,"runtime_version":"1.0","agent_version":"vulcan-guest test protocol %d","size_bytes":100000000}`, n, proto)), 0o644)
	}
	return Options{
		ImagesDir: imgs,
		StateDir:  filepath.Join(root, "state"),
		DevKVM:    filepath.Join(root, "no-kvm"),
	}
}

func bins(have ...string) (func(string) (string, error), func(context.Context, string, ...string) (string, error)) {
	look := func(name string) (string, error) {
		for _, h := range have {
			if h == name {
				return "/usr/bin/" + name, nil
			}
		}
		return "", errors.New("not found")
	}
	out := func(_ context.Context, name string, _ ...string) (string, error) {
		return filepath.Base(name) + " version 1.2.3\nmore", nil
	}
	return look, out
}

func find(r Report, name string) Check {
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	return Check{Name: "absent"}
}

func TestDoctorAllPresentWithQEMU(t *testing.T) {
	o := fakeRoot(t, protocol.Version, "kernel", "python", "node", "go")
	o.LookPath, o.Output = bins("qemu-system-x86_64", "ip", "nft")
	r := Run(context.Background(), o)
	if !r.MicroVM || r.VMM != "qemu" {
		t.Fatalf("microvm=%v vmm=%q: %+v", r.MicroVM, r.VMM, r.Checks)
	}
	if c := find(r, "kvm"); c.OK || c.Fix == "" {
		t.Errorf("kvm check on a host without /dev/kvm: %+v", c)
	}
	if c := find(r, "firecracker"); c.OK || !strings.Contains(c.Fix, "make download") {
		t.Errorf("firecracker check: %+v", c)
	}
	if c := find(r, "qemu"); !c.OK || !strings.Contains(c.Detail, "version 1.2.3") {
		t.Errorf("qemu check: %+v", c)
	}
}

func TestDoctorMissingPieces(t *testing.T) {
	cases := []struct {
		name    string
		have    []string
		bins    []string
		proto   int
		check   string
		fix     string
		microvm bool
	}{
		{"no kernel", []string{"python"}, []string{"qemu-system-x86_64"}, protocol.Version, "kernel", "make kernel", false},
		{"no images", []string{"kernel"}, []string{"qemu-system-x86_64"}, protocol.Version, "runtime images", "make images", false},
		{"no vmm", []string{"kernel", "python"}, nil, protocol.Version, "vmm", "apt-get install qemu-system-x86", false},
		{"one runtime missing", []string{"kernel", "python"}, []string{"qemu-system-x86_64"}, protocol.Version, "rootfs-node", "make rootfs RUNTIME=node", true},
		{"stale agent", []string{"kernel", "python"}, []string{"qemu-system-x86_64"}, protocol.Version + 1, "rootfs-python", "make rootfs RUNTIME=python", false},
		{"no nft", []string{"kernel", "python"}, []string{"qemu-system-x86_64"}, protocol.Version, "nftables", "apt-get install nftables", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := fakeRoot(t, tc.proto, tc.have...)
			o.LookPath, o.Output = bins(tc.bins...)
			r := Run(context.Background(), o)
			c := find(r, tc.check)
			if c.OK || !strings.Contains(c.Fix, tc.fix) {
				t.Errorf("check %s = %+v, want not ok with fix %q", tc.check, c, tc.fix)
			}
			if r.MicroVM != tc.microvm {
				t.Errorf("microvm available = %v, want %v", r.MicroVM, tc.microvm)
			}
			var sb strings.Builder
			r.Print(&sb)
			if !strings.Contains(sb.String(), "fix: "+c.Fix) {
				t.Errorf("printed report lacks the fix:\n%s", sb.String())
			}
		})
	}
}

func TestDoctorKVMProbeFailure(t *testing.T) {
	o := fakeRoot(t, protocol.Version, "kernel", "python")
	kvm := filepath.Join(t.TempDir(), "kvm")
	os.WriteFile(kvm, nil, 0o600)
	o.DevKVM = kvm
	o.LookPath, o.Output = bins("qemu-system-x86_64", "firecracker")
	o.ProbeKVM = func(context.Context) (bool, string) { return false, "KVM internal error" }
	r := Run(context.Background(), o)
	if c := find(r, "kvm"); c.OK || c.Detail != "KVM internal error" {
		t.Errorf("kvm = %+v", c)
	}
	// Firecracker is installed but KVM cannot run guests: auto must pick QEMU.
	if r.VMM != "qemu" || !r.MicroVM {
		t.Errorf("vmm = %q microvm = %v", r.VMM, r.MicroVM)
	}
}

func TestDoctorCNIPlugins(t *testing.T) {
	o := fakeRoot(t, protocol.Version, "kernel", "python")
	o.LookPath, o.Output = bins("qemu-system-x86_64", "ip", "nft")
	o.CNIBinDir = t.TempDir()
	for _, p := range []string{"bridge", "host-local"} {
		os.WriteFile(filepath.Join(o.CNIBinDir, p), []byte("#!/bin/sh\n"), 0o755)
	}
	if c := find(Run(context.Background(), o), "cni plugins"); c.OK || !strings.Contains(c.Detail, "vulcan-cni-tap") || c.Fix != "make build" {
		t.Errorf("without our TAP plugin: %+v", c)
	}
	os.WriteFile(filepath.Join(o.CNIBinDir, "vulcan-cni-tap"), []byte("#!/bin/sh\n"), 0o755)
	if c := find(Run(context.Background(), o), "cni plugins"); !c.OK {
		t.Errorf("with all plugins: %+v", c)
	}
}

// Each layer of the VMM's cell is reported as active or why not.
func TestCellLayers(t *testing.T) {
	o := fakeRoot(t, protocol.Version, "kernel", "python")
	look, _ := bins("qemu-system-x86_64")
	o.LookPath = look
	o.Output = func(_ context.Context, name string, args ...string) (string, error) {
		if len(args) == 1 && args[0] == "--help" {
			return "-sandbox on[,obsolete=allow|deny][,elevateprivileges=allow|deny|children]", nil
		}
		return "QEMU emulator version 7.2.0", nil
	}
	o.ProbeCell = func() error { return nil }
	o.Cgroups = func() (string, string, bool, error) { return "v1", "vulcan-abc", false, nil }
	r := Run(context.Background(), o)
	for _, name := range []string{"cell: uid drop", "cell: mount ns", "cell: seccomp", "cell: cgroup"} {
		if c := find(r, name); !c.OK || c.Required {
			t.Errorf("%s: %+v, want active and not required", name, c)
		}
	}
	if c := find(r, "cell: cgroup"); !strings.Contains(c.Detail, "cgroup v1 under vulcan-abc") || !strings.Contains(c.Detail, "no io weight") {
		t.Errorf("cgroup detail %q", c.Detail)
	}

	o.ProbeCell = func() error { return errors.New("vulcan is not root (euid 1000)") }
	o.Cgroups = func() (string, string, bool, error) {
		return "", "", false, errors.New("cgroup v2 without the memory controller")
	}
	o.Output = func(context.Context, string, ...string) (string, error) { return "QEMU emulator version 7.2.0", nil }
	r = Run(context.Background(), o)
	for name, why := range map[string]string{
		"cell: uid drop": "not root", "cell: mount ns": "not root",
		"cell: seccomp": "without seccomp", "cell: cgroup": "without the memory controller",
	} {
		c := find(r, name)
		if c.OK || !strings.Contains(c.Detail, why) || c.Fix == "" {
			t.Errorf("%s: %+v, want off because %q, with a fix", name, c, why)
		}
	}
	if !r.MicroVM {
		t.Error("a missing cell layer made the backend unavailable; it must only warn")
	}
}
