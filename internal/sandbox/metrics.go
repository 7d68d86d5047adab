package sandbox

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/model"
)

type metrics struct {
	created  prometheus.Counter
	rejected *prometheus.CounterVec
	ended    *prometheus.CounterVec
	boot     prometheus.Histogram
	paused   prometheus.Histogram
	resumed  prometheus.Histogram
	// Op is the latency of operations in running sandboxes (process start to first
	// response, file operations), by op.
	Op *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer, s *Service) (*metrics, error) {
	m := &metrics{
		created: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vulcan_sandboxes_created_total", Help: "Sandboxes admitted.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vulcan_sandboxes_rejected_total", Help: "Sandbox creations refused, by reason.",
		}, []string{"reason"}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vulcan_sandboxes_ended_total", Help: "Sandboxes that ended, by final state.",
		}, []string{"state"}),
		boot: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "vulcan_sandbox_boot_seconds", Help: "Time to boot a sandbox's VM to a serving agent.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 10),
		}),
		paused: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "vulcan_sandbox_pause_seconds", Help: "Time to pause a sandbox: park its agent, save its memory and disk, stop its VM.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 10),
		}),
		resumed: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "vulcan_sandbox_resume_seconds", Help: "Time to resume a paused sandbox to a serving agent.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 10),
		}),
		Op: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vulcan_sandbox_op_seconds", Help: "Latency of operations in running sandboxes, by op.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"op"}),
	}
	for _, r := range []string{"busy", "shutting_down", "other"} {
		m.rejected.WithLabelValues(r)
	}
	for _, st := range model.SandboxStates {
		if st.Terminal() {
			m.ended.WithLabelValues(string(st))
		}
	}
	for _, op := range Ops {
		m.Op.WithLabelValues(op)
	}
	if reg == nil {
		return m, nil
	}
	live := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "vulcan_sandboxes", Help: "Live sandboxes, by state.",
	}, []string{"state"})
	collector := &liveCollector{s: s, g: live}
	var errs []error
	for _, c := range []prometheus.Collector{m.created, m.rejected, m.ended, m.boot, m.paused, m.resumed, m.Op, collector} {
		errs = append(errs, reg.Register(c))
	}
	return m, errors.Join(errs...)
}

// liveCollector reports the live sandboxes by state at scrape time.
type liveCollector struct {
	s *Service
	g *prometheus.GaugeVec
}

func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) { c.g.Describe(ch) }

func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.s.liveByState()
	for _, st := range []model.SandboxState{model.SandboxStarting, model.SandboxRunning, model.SandboxStopping} {
		c.g.WithLabelValues(string(st)).Set(float64(counts[st]))
	}
	c.g.Collect(ch)
}
