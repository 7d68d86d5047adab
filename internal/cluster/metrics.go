package cluster

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	nodes         prometheus.Gauge
	memFree       *prometheus.GaugeVec
	sandboxes     *prometheus.GaugeVec
	slotsFree     *prometheus.GaugeVec
	queueDepth    prometheus.Gauge
	queued        prometheus.Counter
	claimed       prometheus.Counter
	done          prometheus.Counter
	reaped        *prometheus.CounterVec
	outboxRetries prometheus.Counter
	pausedStored  prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		nodes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vulcan_cluster_nodes", Help: "Live nodes in the cluster, as this node sees it."}),
		memFree: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vulcan_cluster_node_mem_free_mb",
			Help: "Free sandbox memory budget each live node announces."}, []string{"node"}),
		sandboxes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vulcan_cluster_node_sandboxes",
			Help: "Live sandboxes each live node announces."}, []string{"node"}),
		slotsFree: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vulcan_cluster_node_slots_free",
			Help: "Free workload slots each live node announces."}, []string{"node"}),
		queueDepth: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vulcan_cluster_queue_depth",
			Help: "Workloads waiting in the cluster's work queue, not yet fetched by any node."}),
		queued: prometheus.NewCounter(prometheus.CounterOpts{Name: "vulcan_cluster_workloads_queued_total",
			Help: "Workloads this node admitted to the cluster's queue."}),
		claimed: prometheus.NewCounter(prometheus.CounterOpts{Name: "vulcan_cluster_workloads_claimed_total",
			Help: "Queued workloads this node claimed to run."}),
		done: prometheus.NewCounter(prometheus.CounterOpts{Name: "vulcan_cluster_workloads_acked_total",
			Help: "Claimed workloads whose result this node stored and acknowledged."}),
		reaped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vulcan_cluster_records_lost_total",
			Help: "Records of dead nodes this node marked lost, by kind."}, []string{"kind"}),
		outboxRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: "vulcan_cluster_directory_write_retries_total",
			Help: "Directory writes that failed (NATS away) and were retried."}),
		pausedStored: prometheus.NewCounter(prometheus.CounterOpts{Name: "vulcan_cluster_paused_stored_total",
			Help: "Paused sandboxes' saved VMs this node stored in the cluster's object store."}),
	}
}

// Register adds the node's metrics to reg.
func (n *Node) Register(reg prometheus.Registerer) error {
	m := n.m
	for _, c := range []prometheus.Collector{m.nodes, m.memFree, m.sandboxes, m.slotsFree, m.queueDepth, m.queued, m.claimed, m.done, m.reaped, m.outboxRetries, m.pausedStored} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	m.reaped.WithLabelValues("workload")
	m.reaped.WithLabelValues("sandbox")
	return nil
}

// observe refreshes the gauges from the node's view (each heartbeat).
func (m *metrics) observe(n *Node) {
	live := 0
	m.memFree.Reset()
	m.sandboxes.Reset()
	m.slotsFree.Reset()
	for _, info := range n.Nodes() {
		if !info.Alive {
			continue
		}
		live++
		m.memFree.WithLabelValues(info.ID).Set(float64(info.MemFreeMB))
		m.sandboxes.WithLabelValues(info.ID).Set(float64(info.Sandboxes))
		m.slotsFree.WithLabelValues(info.ID).Set(float64(info.SlotsFree))
	}
	m.nodes.Set(float64(live))
	ctx, cancel := context.WithTimeout(n.ctx, time.Second)
	defer cancel()
	if d, err := n.QueueDepth(ctx); err == nil {
		m.queueDepth.Set(float64(d))
	}
}
