//go:build linux

package firecracker

import (
	"context"
	"reflect"
	"strings"
	"testing"

	sdk "github.com/firecracker-microvm/firecracker-go-sdk"

	"github.com/vulcanhq/vulcan/internal/cell"
	"github.com/vulcanhq/vulcan/internal/nic"
)

// In a cell the jailer drops to the VM's own uid/gid, joins the VM's netns, and nests its
// cgroup in the VM's (v2): the config and argv it gets are pinned literally.
func TestJailerInCell(t *testing.T) {
	d := New(Options{Bin: "/usr/bin/firecracker", Jailer: &Jailer{UID: 123, GID: 456}})
	cfg := sample
	cfg.Network = &nic.NIC{NetNS: "/run/netns/vulcan-abc-wl1", TAP: "tap0", MAC: "02:fc:00:00:00:07"}
	cfg.Cell = &cell.Spec{UID: 1073741831, GID: 1073741831, Dir: cfg.Dir, CgroupParent: "vulcan-abc.slice/wl1"}
	got := d.SDKConfig(cfg).JailerCfg
	want := &sdk.JailerConfig{
		ID: "wl1", UID: sdk.Int(1073741831), GID: sdk.Int(1073741831), NumaNode: sdk.Int(0),
		ExecFile: "/usr/bin/firecracker", JailerBinary: "jailer", ChrootBaseDir: "/var/lib/vulcan/vms/wl1/jail",
		ChrootStrategy: sdk.NewNaiveChrootStrategy("/img/vmlinux"), CgroupVersion: "2",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("jailer config:\n got %+v\nwant %+v", got, want)
	}
	argv := strings.Join(d.command(context.Background(), cfg, nil).Args, " ")
	wantArgv := "jailer --netns /run/netns/vulcan-abc-wl1 --parent-cgroup vulcan-abc.slice/wl1 " +
		"--id wl1 --uid 1073741831 --gid 1073741831 --exec-file /usr/bin/firecracker " +
		"--cgroup cpuset.mems=0 --cgroup cpuset.cpus=" + cpuList(t) +
		" --cgroup-version 2 --chroot-base-dir /var/lib/vulcan/vms/wl1/jail -- --api-sock /var/lib/vulcan/vms/wl1/fc.sock"
	if argv != wantArgv {
		t.Errorf("jailer argv\n got %s\nwant %s", argv, wantArgv)
	}
	if ok, _ := d.Confines(); !ok {
		t.Error("a driver with a jailer must report it confines its VMMs")
	}
	if ok, why := New(Options{}).Confines(); ok || !strings.Contains(why, "jailer") {
		t.Errorf("without a jailer: confines %v (%q)", ok, why)
	}
}

// cpuList is the cpuset the SDK's builder writes for NUMA node 0 on this host.
func cpuList(t *testing.T) string {
	args := sdk.NewJailerCommandBuilder().WithNumaNode(0).Args()
	for i, a := range args {
		if strings.HasPrefix(a, "cpuset.cpus=") && i > 0 {
			return strings.TrimPrefix(a, "cpuset.cpus=")
		}
	}
	t.Fatalf("no cpuset.cpus in %q", args)
	return ""
}
