package microvm

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vulcanhq/vulcan/internal/microvm/firecracker"
	"github.com/vulcanhq/vulcan/internal/microvm/qemu"
)

// Every microVM series with known labels is on /metrics, at 0, before the first VM boots.
func TestMetricsExistFromStartUp(t *testing.T) {
	for _, name := range []string{qemu.New("", "").Name(), firecracker.New(firecracker.Options{}).Name()} {
		if !strings.Contains(strings.Join(vmmNames, " "), name) {
			t.Errorf("driver %q is not in vmmNames %v", name, vmmNames)
		}
	}
	reg := prometheus.NewRegistry()
	newMetrics(reg)
	want := map[string]int{ // series per family: 2 VMMs, × 3 runtimes × 5 outcomes
		"vulcan_microvm_boot_seconds":            2,
		"vulcan_microvm_active_vms":              2,
		"vulcan_microvm_agent_roundtrip_seconds": 2,
		"vulcan_microvm_cleanup_seconds":         2,
		"vulcan_microvm_workloads_total":         30,
		"vulcan_microvm_start_seconds":           3,  // pool, snapshot, boot
		"vulcan_pool_takes_total":                10, // 5 templates × hit, miss
		"vulcan_snapshot_builds_total":           10, // 5 templates × built, failed
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if n := len(f.GetMetric()); n != want[f.GetName()] {
			t.Errorf("%s: %d series at start-up, want %d", f.GetName(), n, want[f.GetName()])
		}
		delete(want, f.GetName())
	}
	if len(want) > 0 {
		t.Errorf("missing at start-up: %v", want)
	}
	expo := `
# HELP vulcan_microvm_active_vms MicroVMs currently running.
# TYPE vulcan_microvm_active_vms gauge
vulcan_microvm_active_vms{vmm="firecracker"} 0
vulcan_microvm_active_vms{vmm="qemu"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expo), "vulcan_microvm_active_vms"); err != nil {
		t.Error(err)
	}
}
