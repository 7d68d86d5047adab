// Package backend is the contract between the engine and the things that run workloads
// (the microVM backend and, in tests, fakes), plus the registry that routes a workload's
// isolation to one of them.
package backend

import (
	"context"
	"errors"

	"github.com/vulcanhq/vulcan/internal/model"
)

// ErrUnavailable is returned when no backend can run a workload; its text says why.
var ErrUnavailable = errors.New("backend unavailable")

// ErrUnsupported is returned for an operation the backend cannot do for this VM (pausing
// one with a network, say); nothing was changed.
var ErrUnsupported = errors.New("not supported by this server's VM backend")

// Job is one workload handed to a backend.
type Job struct {
	WorkloadID  string
	Spec        model.Spec // resources already defaulted and validated
	OutputLimit int        // bytes of stdout+stderr (each line's newline counted) the guest may send
	LineLimit   int        // lines of stdout+stderr the guest may send; 0: no cap
}

// Sink receives a workload's output as it appears, in order. Backends call it from one
// goroutine at a time. The program's bytes are the texts in order, each followed by a
// newline unless it came through Partial.
type Sink interface {
	// Line receives one line without its newline.
	Line(stream model.Stream, text string)
	// Partial receives bytes not followed by a newline: a chunk of a line too long for
	// one message, or the stream's last bytes when it did not end with a newline.
	Partial(stream model.Stream, text string)
}

// SinkFunc adapts a function to a Sink.
type SinkFunc func(stream model.Stream, text string, partial bool)

// Line calls f.
func (f SinkFunc) Line(stream model.Stream, text string) { f(stream, text, false) }

// Partial calls f.
func (f SinkFunc) Partial(stream model.Stream, text string) { f(stream, text, true) }

// Result is how a run ended, as far as the backend saw it. Output text reaches the engine
// through the Sink, not here.
type Result struct {
	ExitCode  int
	Signal    string // set when the program died of a signal
	Truncated bool   // the guest dropped output (past Job.OutputLimit or LineLimit, or see TruncatedReason)
	// TruncatedReason says why output was lost when it was not a limit (e.g. a process
	// left running held the output open after the program exited); shown to users.
	TruncatedReason string
	Error           string // a failure of the program's environment (build error, OOM), shown to users
	Metadata        map[string]string
}

// Capabilities describe what a backend can run.
type Capabilities struct {
	Isolation model.Isolation `json:"isolation"`
	Runtimes  []model.Runtime `json:"runtimes"`
	// Templates are the sandbox images present (the runtimes' and base), when the
	// backend starts sandboxes.
	Templates []model.Runtime   `json:"templates,omitempty"`
	MaxCPUs   int               `json:"max_cpus"`
	MaxMemMB  int               `json:"max_mem_mb"`
	Network   bool              `json:"network"`
	Details   map[string]string `json:"details,omitempty"` // e.g. vmm, accel, kernel version
	// Pool and Snapshots are the fast-start state (microVM backend): warm VMs per
	// template, and the template snapshots on disk.
	Pool      []PoolShelf    `json:"pool,omitempty"`
	Snapshots []SnapshotInfo `json:"snapshots,omitempty"`
}

// PoolShelf is one template's warm pool.
type PoolShelf struct {
	Template model.Runtime `json:"template"`
	CPUs     int           `json:"cpus"`
	MemMB    int           `json:"mem_mb"`
	Idle     int           `json:"idle"`
	Filling  int           `json:"filling"`
	Target   int           `json:"target"`
	Min      int           `json:"min"`
	Max      int           `json:"max"`
	Hits     int64         `json:"hits"`
	Misses   int64         `json:"misses"`
}

// SnapshotInfo describes a template snapshot on disk.
type SnapshotInfo struct {
	Template  model.Runtime `json:"template"`
	CPUs      int           `json:"cpus"`
	MemMB     int           `json:"mem_mb"`
	Key       string        `json:"key"`
	BuildMS   int64         `json:"build_ms"`
	SaveMS    int64         `json:"save_ms"`
	StateSize int64         `json:"state_bytes"`
	Mapped    bool          `json:"mapped"`  // RAM is a memory file mapped copy-on-write (else in the state)
	Current   bool          `json:"current"` // matches today's kernel, image, agent and VMM
}

// Backend runs workloads behind one kind of isolation.
type Backend interface {
	// Name is the isolation this backend provides ("microvm").
	Name() string
	// Capabilities reports what the backend can run.
	Capabilities() Capabilities
	// Available returns nil when the backend can run workloads now, else an error whose
	// text tells a user what is missing and how to fix it.
	Available(ctx context.Context) error
	// Execute runs the job to completion, streaming its output to sink. It returns when the
	// program has exited or ctx is done; in the latter case it must have stopped the
	// program and released what it acquired before returning.
	Execute(ctx context.Context, job Job, sink Sink) (Result, error)
	// Cleanup releases anything still held for a workload. It is idempotent and safe to
	// call for a workload the backend never saw.
	Cleanup(ctx context.Context, workloadID string) error
}
