package images

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// repoFragment is the committed kernel config fragment.
func repoFragment(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs("../../images/kernel/vulcan.config")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestKernelConfigHasRequiredOptions checks the built kernel's final .config keeps every
// option Vulcan needs — the fragment's own list plus the ones the issue names — since
// olddefconfig silently drops options whose dependencies are off.
func TestKernelConfigHasRequiredOptions(t *testing.T) {
	if testing.Short() {
		t.Skip("reads the built kernel")
	}
	dir := testenv.RequiresImages(t)
	final := readConfig(t, filepath.Join(dir, KernelConfigFile))
	required := []string{
		// Both VMMs: 64-bit PVH boot, virtio-mmio from the command line, 8250 console.
		"64BIT", "PVH", "KVM_GUEST", "VIRTIO_MMIO", "VIRTIO_MMIO_CMDLINE_DEVICES", "SERIAL_8250_CONSOLE",
		// Devices: block, net, vsock (Firecracker), console ports (QEMU), entropy.
		"VIRTIO_BLK", "VIRTIO_NET", "VIRTIO_VSOCKETS", "VSOCKETS", "VIRTIO_CONSOLE", "HW_RANDOM_VIRTIO",
		// Firecracker's reboot and Ctrl-Alt-Del go through the i8042.
		"SERIO_I8042", "KEYBOARD_ATKBD",
		// Filesystems: ext4 root, overlay + tmpfs for the writable layer, devtmpfs.
		"EXT4_FS", "OVERLAY_FS", "TMPFS", "DEVTMPFS", "PROC_FS", "SYSFS",
		// cgroups v2 with memory, namespaces, seccomp.
		"CGROUPS", "MEMCG", "CGROUP_PIDS", "NAMESPACES", "PID_NS", "NET_NS", "SECCOMP_FILTER",
		// Networking with the kernel ip= argument, unix sockets.
		"NET", "INET", "IP_PNP", "UNIX", "PACKET",
		// What the runtimes need.
		"FUTEX", "EPOLL", "EVENTFD", "TIMERFD", "SIGNALFD", "AIO", "SHMEM", "SYSVIPC", "BINFMT_SCRIPT",
	}
	for _, opt := range required {
		if final["CONFIG_"+opt] != "y" {
			t.Errorf("CONFIG_%s = %q in the built kernel, want y", opt, final["CONFIG_"+opt])
		}
	}
	// Every =y line of the committed fragment must have survived too.
	f, err := os.Open(repoFragment(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "CONFIG_") && final[k] != v {
			t.Errorf("fragment wants %s=%s, built kernel has %q", k, v, final[k])
		}
		if strings.HasPrefix(line, "# CONFIG_") && strings.HasSuffix(line, " is not set") {
			k := strings.TrimSuffix(strings.TrimPrefix(line, "# "), " is not set")
			if final[k] == "y" {
				t.Errorf("fragment disables %s, built kernel has it on", k)
			}
		}
	}
	for _, off := range []string{"CONFIG_MODULES", "CONFIG_PCI", "CONFIG_ACPI"} {
		if final[off] == "y" {
			t.Errorf("%s is on; the guest kernel is meant to be module-less, virtio-mmio only", off)
		}
	}
}

func readConfig(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run `make kernel`)", err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "CONFIG_") {
			out[k] = v
		}
	}
	return out
}

// TestBuiltImages reads each built rootfs with debugfs (no mount): the agent is there and
// executable, the runtime is there, and the manifests inside and beside agree.
func TestBuiltImages(t *testing.T) {
	if testing.Short() {
		t.Skip("reads the built images")
	}
	debugfs := testenv.RequiresBinary(t, "debugfs")
	dir := testenv.RequiresImages(t, "python")
	runtimeBin := map[model.Runtime]string{
		model.RuntimePython: "/usr/bin/python3",
		model.RuntimeNode:   "/usr/bin/node",
		model.RuntimeGo:     "/usr/local/go/bin/go",
		model.RuntimeBase:   "/usr/bin/git",
	}
	set := Load(dir)
	if set.Kernel == nil || set.Kernel.Manifest.Version == "" || set.Kernel.Manifest.SHA256 == "" {
		t.Errorf("kernel manifest incomplete: %+v", set.Kernel)
	}
	for _, rt := range model.Templates {
		img := filepath.Join(dir, RootFSFile(rt))
		if _, err := os.Stat(img); err != nil {
			if rt == model.RuntimePython {
				t.Fatalf("python image missing: %v", err)
			}
			t.Logf("no %s image; skipping it", rt)
			continue
		}
		t.Run(string(rt), func(t *testing.T) {
			fs := set.RootFS[rt]
			if fs == nil {
				t.Fatalf("image present but not loadable: %v", set.Problems)
			}
			m := fs.Manifest
			if m.RuntimeVersion == "" || m.AgentSHA256 == "" || m.SHA256 == "" || m.SizeBytes == 0 || !strings.Contains(m.AgentVersion, "protocol") {
				t.Errorf("manifest incomplete: %+v", m)
			}
			agent := debugfsCmd(t, debugfs, img, "stat /usr/local/bin/vulcan-guest")
			if !strings.Contains(agent, "Mode:  0755") && !strings.Contains(agent, "Mode:  0775") {
				t.Errorf("agent not executable in the image:\n%s", agent)
			}
			if out := debugfsCmd(t, debugfs, img, "stat "+runtimeBin[rt]); strings.Contains(out, "File not found") {
				t.Errorf("%s missing from the image", runtimeBin[rt])
			}
			var inside RootFSManifest
			if err := json.Unmarshal([]byte(debugfsCmd(t, debugfs, img, "cat /etc/vulcan/image.json")), &inside); err != nil {
				t.Fatalf("manifest inside the image: %v", err)
			}
			if inside.Runtime != string(rt) || inside.AgentSHA256 != m.AgentSHA256 || inside.RuntimeVersion != m.RuntimeVersion {
				t.Errorf("manifest inside %+v disagrees with the one beside %+v", inside, m)
			}
			// Processes run as user (uid 1000, home /home/user: E2B's convention).
			if out := debugfsCmd(t, debugfs, img, "cat /etc/passwd"); !strings.Contains(out, "user:x:1000:1000:user:/home/user:") {
				t.Errorf("no unprivileged user (uid 1000, home /home/user) in the image")
			}
			if out := debugfsCmd(t, debugfs, img, "stat /etc/shadow"); !strings.Contains(out, "Mode:  0640") {
				t.Errorf("/etc/shadow is not 0640:\n%s", out)
			}
			if rt != model.RuntimeBase {
				return
			}
			// base: what E2B users expect of theirs.
			for _, bin := range []string{"/usr/bin/bash", "/usr/bin/python3", "/usr/bin/python", "/usr/bin/node", "/usr/bin/npm", "/usr/bin/curl", "/usr/bin/sudo", "/usr/bin/tput"} {
				if out := debugfsCmd(t, debugfs, img, "stat "+bin); strings.Contains(out, "File not found") {
					t.Errorf("%s missing from the base image", bin)
				}
			}
			if out := debugfsCmd(t, debugfs, img, "cat /etc/sudoers.d/user"); !strings.Contains(out, "user ALL=(ALL:ALL) NOPASSWD: ALL") {
				t.Errorf("user may not sudo without a password: %q", out)
			}
		})
	}
}

func debugfsCmd(t *testing.T, debugfs, img, req string) string {
	t.Helper()
	cmd := exec.Command(debugfs, "-R", req, img)
	var stderr strings.Builder
	cmd.Stderr = &stderr // debugfs prints its banner there
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("debugfs %s: %v: %s", req, err, stderr.String())
	}
	return string(out)
}
