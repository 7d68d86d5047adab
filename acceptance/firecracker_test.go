package acceptance

import (
	"os"
	"os/exec"
	"testing"

	"github.com/vulcanhq/vulcan/internal/testenv"
)

// TestACSuiteOnFirecracker runs AC1–AC9 again with VULCAN_VMM=firecracker, in a child run
// of this test binary, where KVM and a firecracker binary exist; elsewhere it skips and
// says which is missing.
func TestACSuiteOnFirecracker(t *testing.T) {
	if os.Getenv("VULCAN_VMM") != "" {
		t.Skip("this run already has its VMM chosen (VULCAN_VMM)")
	}
	requireVMs(t)
	testenv.RequiresKVM(t)
	bin := os.Getenv("VULCAN_FIRECRACKER_BIN")
	if bin == "" {
		bin = "firecracker"
	}
	if _, err := exec.LookPath(bin); err != nil {
		t.Skipf("skipped: no firecracker binary (%v); set VULCAN_FIRECRACKER_BIN or run `make download`", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestAC[0-9]", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "VULCAN_VMM=firecracker", "VULCAN_FIRECRACKER_BIN="+bin)
	out, err := cmd.CombinedOutput()
	t.Logf("acceptance suite on firecracker:\n%s", out)
	if err != nil {
		t.Fatalf("acceptance suite on firecracker failed: %v", err)
	}
}
