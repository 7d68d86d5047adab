package guest

import (
	"bufio"
	"bytes"
	"io"
	"strconv"
	"time"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// cpuSample is the CPU time counters of /proc/stat's first line, in ticks.
type cpuSample struct {
	total, idle uint64
}

// metrics samples the guest: CPU use since the previous sample (the first since
// boot), memory, the writable layer's disk and the CPU count.
func (a *Agent) metrics() (*protocol.Metrics, *protocol.OpError) {
	m, cur, err := sampleSystem()
	if err != nil {
		return nil, opErr(protocol.ErrCodeInternal, "metrics: %v", err)
	}
	a.sess.cpuMu.Lock()
	prev := a.sess.cpuPrv
	a.sess.cpuPrv = cur
	a.sess.cpuMu.Unlock()
	m.CPUUsedPct = cpuPercent(prev, cur)
	m.TimestampMS = time.Now().UnixMilli()
	return m, nil
}

func cpuPercent(prev, cur cpuSample) float64 {
	if cur.total <= prev.total || cur.idle < prev.idle {
		return 0
	}
	dt, di := cur.total-prev.total, cur.idle-prev.idle
	if di > dt {
		return 0
	}
	return float64(dt-di) * 100 / float64(dt)
}

// parseProcStat reads the aggregate cpu line and counts the cpuN lines.
func parseProcStat(r io.Reader) (cpuSample, int) {
	var s cpuSample
	n := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) == 0 || !bytes.HasPrefix(f[0], []byte("cpu")) {
			continue
		}
		if len(f[0]) > 3 {
			n++
			continue
		}
		// user nice system idle iowait irq softirq steal (guest and guest_nice are
		// already in user and nice).
		for i, v := range f[1:min(len(f), 9)] {
			x, _ := strconv.ParseUint(string(v), 10, 64)
			s.total += x
			if i == 3 || i == 4 {
				s.idle += x
			}
		}
	}
	return s, n
}

// parseMeminfo returns MemTotal and MemAvailable in bytes.
func parseMeminfo(r io.Reader) (total, avail int64) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(string(f[1]), 10, 64)
		switch string(f[0]) {
		case "MemTotal:":
			total = v << 10
		case "MemAvailable:":
			avail = v << 10
		}
	}
	return total, avail
}
