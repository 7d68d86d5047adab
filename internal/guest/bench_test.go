package guest

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// BenchmarkP2AgentOverhead compares `python3 -c pass` run directly with
// the same program run through the agent over its unix socket (hello on a
// new connection, exec, exit). The two alternate within each iteration so
// that background load hits both alike; medians are reported, and
// agent/direct is the P2 ratio (target ≤ 1.05).
func BenchmarkP2AgentOverhead(b *testing.B) {
	requireRuntime(b, "python")
	python, _ := lookPath("python3", defaultPath)
	ta := startAgent(b, Config{})
	direct := func() {
		cmd := exec.Command(python, "-c", "pass")
		cmd.Env = []string{"PATH=" + defaultPath, "LANG=C.UTF-8", "HOME=" + os.TempDir()}
		if os.Geteuid() == 0 { // as the agent would run it
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true,
				Credential: &syscall.Credential{Uid: testUID, Gid: testGID, Groups: []uint32{}}}
		}
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
	}
	viaAgent := func() {
		c, _ := ta.dial(b)
		exit, err := c.Run(context.Background(), &protocol.Exec{Runtime: "python", Code: "pass"}, nil)
		if err != nil || exit.Code != 0 {
			b.Fatalf("exit %+v err %v", exit, err)
		}
		c.Close()
	}
	direct()
	viaAgent()
	var d, a []time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		direct()
		t1 := time.Now()
		viaAgent()
		t2 := time.Now()
		d = append(d, t1.Sub(t0))
		a = append(a, t2.Sub(t1))
	}
	b.StopTimer()
	slices.Sort(d)
	slices.Sort(a)
	md, ma := d[len(d)/2], a[len(a)/2]
	b.ReportMetric(float64(md.Microseconds()), "direct-µs")
	b.ReportMetric(float64(ma.Microseconds()), "agent-µs")
	b.ReportMetric(float64(ma)/float64(md), "ratio")
}
