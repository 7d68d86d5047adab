package microvm

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/model"
)

type metrics struct {
	boot      *prometheus.HistogramVec
	active    *prometheus.GaugeVec
	roundtrip *prometheus.HistogramVec
	cleanup   *prometheus.HistogramVec
	workloads *prometheus.CounterVec

	starts         *prometheus.HistogramVec // by source: pool, snapshot, boot
	poolTakes      *prometheus.CounterVec
	poolRefill     *prometheus.HistogramVec
	snapshotBuilds *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		boot: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vulcan_microvm_boot_seconds",
			Help:    "Time from VMM start to the guest agent's hello.",
			Buckets: []float64{0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 8, 13, 20, 30},
		}, []string{"vmm"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vulcan_microvm_active_vms",
			Help: "MicroVMs currently running.",
		}, []string{"vmm"}),
		roundtrip: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vulcan_microvm_agent_roundtrip_seconds",
			Help:    "Host-side time of an exec over the agent channel minus the program's own run time: the protocol's latency.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
		}, []string{"vmm"}),
		cleanup: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vulcan_microvm_cleanup_seconds",
			Help:    "Time to tear a VM down and release everything it held.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}, []string{"vmm"}),
		workloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vulcan_microvm_workloads_total",
			Help: "Workloads run in microVMs, by runtime and outcome (completed, failed, timeout, cancelled, error).",
		}, []string{"vmm", "runtime", "outcome"}),
		starts: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vulcan_microvm_start_seconds",
			Help:    "Time to hand a caller a VM ready for its first command, by where it came from: pool (a warm VM), snapshot (restored) or boot (cold).",
			Buckets: []float64{0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 1, 2, 5, 10},
		}, []string{"source"}),
		poolTakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vulcan_pool_takes_total",
			Help: "Requests for a warm-pool VM, by template and result (hit, miss).",
		}, []string{"template", "result"}),
		poolRefill: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vulcan_pool_refill_seconds",
			Help:    "Time to start one warm-pool VM, by template and source (snapshot, boot).",
			Buckets: []float64{0.05, 0.1, 0.2, 0.35, 0.5, 1, 2, 3, 5, 10},
		}, []string{"template", "source"}),
		snapshotBuilds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vulcan_snapshot_builds_total",
			Help: "Template snapshot builds, by template and outcome (built, failed).",
		}, []string{"template", "outcome"}),
	}
	for _, src := range []string{"pool", "snapshot", "boot"} {
		m.starts.WithLabelValues(src)
	}
	for _, t := range model.Templates {
		for _, r := range []string{"hit", "miss"} {
			m.poolTakes.WithLabelValues(string(t), r)
		}
		for _, o := range []string{"built", "failed"} {
			m.snapshotBuilds.WithLabelValues(string(t), o)
		}
	}
	// Every series whose labels are known exists from start-up, at 0: the VMMs (all of
	// them: which one runs is found out at the first boot), runtimes and outcomes.
	for _, vmm := range vmmNames {
		m.boot.WithLabelValues(vmm)
		m.active.WithLabelValues(vmm)
		m.roundtrip.WithLabelValues(vmm)
		m.cleanup.WithLabelValues(vmm)
		for _, rt := range model.Runtimes {
			for _, o := range outcomes {
				m.workloads.WithLabelValues(vmm, string(rt), o)
			}
		}
	}
	if reg != nil {
		reg.MustRegister(m.boot, m.active, m.roundtrip, m.cleanup, m.workloads, m.starts, m.poolTakes, m.poolRefill, m.snapshotBuilds)
	}
	return m
}

// vmmNames are the drivers' Name()s, and outcomes what Execute records a run as.
var (
	vmmNames = []string{"firecracker", "qemu"}
	outcomes = []string{"completed", "failed", "timeout", "cancelled", "error"}
)
