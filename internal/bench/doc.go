// Package bench measures Vulcan's performance targets P1–P5, each against the baseline it
// is judged by, in the same run and interleaved so that background load hits both sides
// alike:
//
//	P1 control plane: a no-op workload through HTTP + engine + SQLite vs a direct backend
//	   call (p50 overhead), and sustained no-op workloads/s
//	P2 agent: `python3 -c pass` through the guest agent over a unix socket vs run directly
//	P3 rootfs: per-VM provisioning (state dir + the shared read-only image) vs a private copy
//	P4 boot: cold boot to the agent's hello vs a bare boot of the same kernel to init
//	P5 logs: latency and throughput from a backend's sink to an SSE client of the API
//
// Each benchmark is a plain function returning Results, so `vulcan bench` and the
// `go test -bench` wrappers run the same code. P1 and P5 use a backend of this package
// that does no work; it exists only inside the benchmark's private server and is never
// registered by `vulcan serve`.
package bench
