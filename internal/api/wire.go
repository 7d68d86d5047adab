package api

import (
	"time"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
)

// SubmitRequest is the body of POST /v1/workloads and /v1/workloads/async.
type SubmitRequest = model.Spec

// Workload is a workload as the API shows it. The code, archive, input and env values
// are deliberately absent: they can be large or secret.
type Workload struct {
	ID         string              `json:"id"`
	Status     model.Status        `json:"status"`
	Isolation  model.Isolation     `json:"isolation"`
	Runtime    model.Runtime       `json:"runtime"`
	Backend    string              `json:"backend"`
	Entrypoint string              `json:"entrypoint"`
	Resources  model.Resources     `json:"resources"`
	Network    model.NetworkPolicy `json:"network"`
	ExitCode   *int                `json:"exit_code"`
	Output     string              `json:"output"`
	Stdout     string              `json:"stdout"`
	Stderr     string              `json:"stderr"`
	Truncated  bool                `json:"truncated"`
	// OutputOn names the node that holds the output this answer lacks (a cluster's
	// workload whose node is gone; its output was too large to travel with its record).
	OutputOn   string            `json:"output_on,omitempty"`
	Error      string            `json:"error"`
	DurationMS int64             `json:"duration_ms"`
	QueueMS    int64             `json:"queue_ms"`
	CreatedAt  time.Time         `json:"created_at"`
	StartedAt  *time.Time        `json:"started_at"`
	FinishedAt *time.Time        `json:"finished_at"`
	Metadata   map[string]string `json:"metadata"`
}

// NewWorkload converts a model workload to its wire form.
func NewWorkload(w *model.Workload) Workload {
	meta := w.Metadata
	if meta == nil {
		meta = map[string]string{}
	}
	return Workload{
		ID: w.ID, Status: w.Status, Isolation: w.Spec.Isolation, Runtime: w.Spec.Runtime, Backend: w.Backend,
		Entrypoint: w.Spec.Entrypoint, Resources: w.Spec.Resources, Network: w.Spec.Network,
		ExitCode: w.ExitCode, Output: w.Output, Stdout: w.Stdout, Stderr: w.Stderr, Truncated: w.Truncated, Error: w.Error,
		DurationMS: w.DurationMS(), QueueMS: w.QueueMS(), CreatedAt: w.CreatedAt, StartedAt: w.StartedAt, FinishedAt: w.FinishedAt,
		Metadata: meta,
	}
}

// WorkloadList is the body of GET /v1/workloads.
type WorkloadList struct {
	Workloads []Workload `json:"workloads"`
	Total     int        `json:"total"`
	Limit     int        `json:"limit"`
	Offset    int        `json:"offset"`
}

// LogHistory is the body of GET /v1/workloads/{id}/logs/history: one page of lines.
type LogHistory struct {
	Lines []model.LogLine `json:"lines"`
	// NextAfter is the seq to pass as after for the next page (the last line's, or the
	// request's after when the page is empty).
	NextAfter int64 `json:"next_after"`
	// More is true when lines past this page exist already.
	More bool `json:"more"`
}

// Backends is the body of GET /v1/backends.
type Backends struct {
	Backends []backend.Status `json:"backends"`
}

// Stats is the body of GET /v1/stats.
type Stats = engine.Stats

// ErrorBody is the body of every error response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail says what went wrong: Code is stable for programs, Message is for people.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Field names the request field a validation error concerns ("runtime",
	// "resources.mem_mb", "env.NAME"), when the server can tell.
	Field string `json:"field,omitempty"`
}
