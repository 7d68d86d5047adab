// Package engine runs workloads: it validates and admits submissions, queues them behind a
// bounded number of concurrent runs, hands each to its backend, collects its output, fans
// live log lines out to followers and persists every status transition in the store.
//
// # Contexts
//
// A backend's Execute gets a context derived from the engine's own lifetime context
// (created in New, cancelled only by Shutdown), plus the workload's timeout and a kill
// switch. It never sees a caller's context: a synchronous HTTP request whose client
// disconnects stops waiting (Run returns the context's error) but the workload runs to
// its end and its result stays readable. Teardown (Cleanup, final writes) uses
// context.WithoutCancel plus its own timeout so that cancellation cannot skip it.
//
// # Output
//
// Backends stream lines to a Sink. The engine numbers them (seq from 1), keeps them in
// memory while the workload is live, flushes them to the store in batches, and writes the
// rest in the same transaction as the final status. stdout and stderr together are capped
// at Config.OutputLimit bytes; past it lines are dropped and the workload is marked
// truncated. While a workload is live its in-memory log is the authority, afterwards the
// store is — and the switch happens only after the store has every line, which is why a
// follower never loses or repeats a line across it.
//
// # Exit status
//
// A program that exits 0 ends "completed"; a non-zero exit, a signal, a backend-reported
// environment error, a backend failure or the timeout end "failed" with a reason in the
// error field; Kill ends "killed".
package engine
