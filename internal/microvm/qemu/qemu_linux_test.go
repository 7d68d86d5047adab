package qemu

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"syscall"
	"testing"

	"github.com/vulcanhq/vulcan/internal/cell"
	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
	"github.com/vulcanhq/vulcan/internal/nic"
)

// In a cell the command is the setup step, whose argv names the VM dir (the startup
// reclaim matches it) and then QEMU's own argv.
func TestCellCommand(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	os.WriteFile(sock, nil, 0o600)
	os.WriteFile(QMPSocket(dir), nil, 0o600)
	d := New("sh", AccelKVM)
	c := &cell.Spec{UID: os.Getuid(), GID: os.Getgid(), Dir: dir}
	cmd, err := d.command(vmm.Config{ID: "wl1", Dir: dir, CPUs: 1, MemMB: 128, Cell: c,
		Network: &nic.NIC{NetNS: "/run/netns/n", TAP: "tap0", MAC: "02:00:00:00:00:01"}}, sock)
	if err != nil {
		t.Fatal(err)
	}
	sh, _ := exec.LookPath("sh")
	if cmd.Path != "/proc/self/exe" || !reflect.DeepEqual(cmd.Args[:4], []string{cell.ProcName, dir, "--", sh}) {
		t.Errorf("cell argv %q (path %s)", cmd.Args, cmd.Path)
	}
	if cmd.SysProcAttr.Cloneflags&syscall.CLONE_NEWNS == 0 || !cmd.SysProcAttr.Setpgid {
		t.Errorf("SysProcAttr %+v: want a new mount namespace and its own process group", cmd.SysProcAttr)
	}
	if !slices.Contains(c.Devices, "/dev/kvm") || c.NetNS != "/run/netns/n" || c.TAP != "tap0" {
		t.Errorf("cell spec %+v: want /dev/kvm under KVM and the VM's netns and TAP", c)
	}
}
