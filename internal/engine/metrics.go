package engine

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/model"
)

type metrics struct {
	submitted *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	finished  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	queueWait prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, e *Engine) (*metrics, error) {
	m := &metrics{
		submitted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vulcan_workloads_submitted_total", Help: "Workloads admitted, by runtime.",
		}, []string{"runtime"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vulcan_workloads_rejected_total", Help: "Submissions refused, by reason (invalid, unavailable, busy, shutting_down).",
		}, []string{"reason"}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vulcan_workloads_finished_total", Help: "Workloads that reached a terminal status, by status.",
		}, []string{"status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vulcan_workload_duration_seconds", Help: "Run time from start to finish, by final status.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"status"}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "vulcan_workload_queue_seconds", Help: "Time from submission to start.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
	}
	m.zero()
	if reg == nil {
		return m, nil
	}
	running := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "vulcan_workloads_running", Help: "Workloads executing now.",
	}, func() float64 { r, _ := e.load(); return float64(r) })
	queued := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "vulcan_queue_depth", Help: "Admitted workloads waiting for a run slot.",
	}, func() float64 { _, q := e.load(); return float64(q) })
	var errs []error
	for _, c := range []prometheus.Collector{m.submitted, m.rejected, m.finished, m.duration, m.queueWait, running, queued} {
		errs = append(errs, reg.Register(c))
	}
	return m, errors.Join(errs...)
}

// rejectReasons are the reasons Submit refuses with.
var rejectReasons = []string{"invalid", "unavailable", "busy", "shutting_down"}

// zero creates every series whose labels are known in advance, so that /metrics shows
// them at 0 from start-up: a rate() over a counter that appears with its first event
// misses that event, and a dashboard has nothing to draw before it.
func (m *metrics) zero() {
	for _, rt := range model.Runtimes {
		m.submitted.WithLabelValues(string(rt))
	}
	for _, r := range rejectReasons {
		m.rejected.WithLabelValues(r)
	}
	for _, st := range []model.Status{model.StatusCompleted, model.StatusFailed, model.StatusKilled} {
		m.finished.WithLabelValues(string(st))
		m.duration.WithLabelValues(string(st))
	}
}
