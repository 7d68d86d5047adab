package guest

import (
	"os"
	"runtime"
	"syscall"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

func sampleSystem() (*protocol.Metrics, cpuSample, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return nil, cpuSample{}, err
	}
	cpu, n := parseProcStat(f)
	f.Close()
	if n == 0 {
		n = runtime.NumCPU()
	}
	m := &protocol.Metrics{CPUCount: n}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		total, avail := parseMeminfo(f)
		f.Close()
		m.MemTotal, m.MemUsed = total, max(total-avail, 0)
	}
	// "/" is the overlay whose upper layer is the writable one (scratch disk or
	// tmpfs): overlayfs reports the upper file system's figures.
	var st syscall.Statfs_t
	if err := syscall.Statfs("/", &st); err == nil {
		bs := int64(st.Bsize)
		m.DiskTotal = int64(st.Blocks) * bs
		m.DiskUsed = (int64(st.Blocks) - int64(st.Bfree)) * bs
	}
	return m, cpu, nil
}
