// Package model holds Vulcan's domain types: workloads, their lifecycle and their specs.
// It imports nothing of Vulcan's own; every other package may import it.
package model

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"
)

// Status is where a workload is in its life. The only legal moves are listed in
// transitions; CanTransition is the single place that enforces them.
type Status string

const (
	StatusPending   Status = "pending"
	StatusRunning   Status = "running"
	StatusCompleted Status = "completed"
	StatusFailed    Status = "failed"
	StatusKilled    Status = "killed"
)

var transitions = map[Status][]Status{
	StatusPending: {StatusRunning, StatusFailed, StatusKilled},
	StatusRunning: {StatusCompleted, StatusFailed, StatusKilled},
}

// CanTransition reports whether a workload may move from one status to another.
func CanTransition(from, to Status) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// Terminal reports whether no transition leaves s.
func (s Status) Terminal() bool {
	return s == StatusCompleted || s == StatusFailed || s == StatusKilled
}

// Valid reports whether s is a known status.
func (s Status) Valid() bool {
	switch s {
	case StatusPending, StatusRunning, StatusCompleted, StatusFailed, StatusKilled:
		return true
	}
	return false
}

// Runtime is the language a workload is written in.
type Runtime string

const (
	RuntimeGo     Runtime = "go"
	RuntimeNode   Runtime = "node"
	RuntimePython Runtime = "python"
	// RuntimeBase is a template only (no workload runs "base"): Debian with bash,
	// python3, nodejs + npm, git, curl and sudo, what E2B users expect of theirs.
	RuntimeBase Runtime = "base"
	// RuntimeCodeInterpreter is a template only: python3 with numpy, pandas and
	// matplotlib, node, and Vulcan's code interpreter service on port 49999 (what
	// @e2b/code-interpreter speaks to), started with the sandbox.
	RuntimeCodeInterpreter Runtime = "code-interpreter"
)

// Runtimes lists every runtime a workload may name, in a stable order.
var Runtimes = []Runtime{RuntimeGo, RuntimeNode, RuntimePython}

// Templates lists the images a sandbox may start from: the runtimes' and base.
var Templates = []Runtime{RuntimeBase, RuntimeCodeInterpreter, RuntimeGo, RuntimeNode, RuntimePython}

// ValidTemplate reports whether r names a built-in sandbox template.
func (r Runtime) ValidTemplate() bool {
	return r == RuntimeBase || r == RuntimeCodeInterpreter || r.Valid()
}

// Valid reports whether r is a known runtime.
func (r Runtime) Valid() bool {
	switch r {
	case RuntimeGo, RuntimeNode, RuntimePython:
		return true
	}
	return false
}

// DefaultEntrypoint is the file run when a workload names none.
func (r Runtime) DefaultEntrypoint() string {
	switch r {
	case RuntimeGo:
		return "main.go"
	case RuntimeNode:
		return "index.js"
	case RuntimePython:
		return "main.py"
	}
	return ""
}

// Isolation is the kind of boundary a workload runs behind. "auto" is resolved by the
// backend registry before a workload is stored.
type Isolation string

const (
	IsolationAuto    Isolation = "auto"
	IsolationMicroVM Isolation = "microvm"
)

// Valid reports whether i is a known isolation.
func (i Isolation) Valid() bool { return i == IsolationAuto || i == IsolationMicroVM }

// NetworkPolicy says what a workload's guest may reach.
type NetworkPolicy string

const (
	NetworkNone   NetworkPolicy = "none"   // no NIC at all (the default)
	NetworkHost   NetworkPolicy = "host"   // only the host's bridge address
	NetworkEgress NetworkPolicy = "egress" // NAT to the outside
)

// Valid reports whether n is a known policy.
func (n NetworkPolicy) Valid() bool {
	return n == NetworkNone || n == NetworkHost || n == NetworkEgress
}

// Resources are the limits a workload runs under.
type Resources struct {
	CPUs     int `json:"cpus"`
	MemMB    int `json:"mem_mb"`
	TimeoutS int `json:"timeout_s"`
}

// Limits bound what a request may ask for and fill what it leaves out.
type Limits struct {
	DefaultCPUs, MaxCPUs             int
	DefaultMemMB, MinMemMB, MaxMemMB int
	DefaultTimeoutS, MaxTimeoutS     int
}

// DefaultLimits are the limits used unless configuration says otherwise.
var DefaultLimits = Limits{
	DefaultCPUs: 1, MaxCPUs: 8,
	DefaultMemMB: 256, MinMemMB: 128, MaxMemMB: 8192,
	DefaultTimeoutS: 60, MaxTimeoutS: 3600,
}

// FieldError is a request that is wrong in one field: Field names it as the API spells it
// ("runtime", "resources.mem_mb", "env.NAME"), Reason says what is wrong, for the user.
// Validation returns one as soon as it knows, so nobody has to work out the field later.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Reason }

// Apply fills zero fields with defaults and checks the result against the limits. A
// limit broken is a *FieldError.
func (l Limits) Apply(r Resources) (Resources, error) {
	if r.CPUs == 0 {
		r.CPUs = l.DefaultCPUs
	}
	if r.MemMB == 0 {
		r.MemMB = l.DefaultMemMB
	}
	if r.TimeoutS == 0 {
		r.TimeoutS = l.DefaultTimeoutS
	}
	switch {
	case r.CPUs < 1 || r.CPUs > l.MaxCPUs:
		return r, &FieldError{"resources.cpus", fmt.Sprintf("resources.cpus must be between 1 and %d, got %d", l.MaxCPUs, r.CPUs)}
	case r.MemMB < l.MinMemMB || r.MemMB > l.MaxMemMB:
		return r, &FieldError{"resources.mem_mb", fmt.Sprintf("resources.mem_mb must be between %d and %d, got %d", l.MinMemMB, l.MaxMemMB, r.MemMB)}
	case r.TimeoutS < 1 || r.TimeoutS > l.MaxTimeoutS:
		return r, &FieldError{"resources.timeout_s", fmt.Sprintf("resources.timeout_s must be between 1 and %d, got %d", l.MaxTimeoutS, r.TimeoutS)}
	}
	return r, nil
}

// MaxSpecBytes bounds a spec's WireSize. The backend sends all of it to the guest agent in
// one frame of at most 16 MiB (protocol.MaxFrameSize, checked against this in
// internal/microvm's tests), so the spec leaves room for the frame's own fields.
const MaxSpecBytes = 15 << 20

// WireSize is about what the spec takes on the way to the guest: its JSON encoding with
// the input replaced by the stdin bytes it becomes, base64-encoded as the agent protocol
// sends them.
func (s *Spec) WireSize() (int, error) {
	c := *s
	c.Input = nil
	enc, err := json.Marshal(c)
	if err != nil {
		return 0, err
	}
	return len(enc) + base64.StdEncoding.EncodedLen(len(s.Stdin())), nil
}

// Spec is what a user asked to run: everything needed to execute a workload.
type Spec struct {
	Runtime    Runtime           `json:"runtime"`
	Isolation  Isolation         `json:"isolation"`
	Code       string            `json:"code,omitempty"`
	Archive    []byte            `json:"code_archive,omitempty"` // tar.gz bytes (base64 on the wire)
	Entrypoint string            `json:"entrypoint,omitempty"`
	Input      json.RawMessage   `json:"input,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	Resources  Resources         `json:"resources"`
	Network    NetworkPolicy     `json:"network,omitempty"`
	// NetworkRules narrow or widen what an egress guest reaches (internal/network/netrules
	// validates them; the README's Networking section gives the precedence).
	NetworkRules *NetworkRules `json:"network_rules,omitempty"`
}

// NetworkRules are a workload's allow and deny lists: each entry an IPv4 address or CIDR,
// an exact domain name, or "*.suffix" (any name below suffix, not suffix itself).
type NetworkRules struct {
	Allow []string `json:"allow,omitempty"`
	Deny  []string `json:"deny,omitempty"`
}

// Stdin is what the program reads on standard input: a JSON string input is given as its
// text, any other JSON value as its JSON encoding, no input as nothing.
func (s *Spec) Stdin() []byte {
	if len(s.Input) == 0 || string(s.Input) == "null" {
		return nil
	}
	var str string
	if err := json.Unmarshal(s.Input, &str); err == nil {
		return []byte(str)
	}
	return []byte(s.Input)
}

// Workload is one submitted piece of code and everything known about its run.
type Workload struct {
	ID         string            `json:"id"`
	Status     Status            `json:"status"`
	Spec       Spec              `json:"-"`
	Backend    string            `json:"backend,omitempty"`
	ExitCode   *int              `json:"exit_code"`
	Output     string            `json:"output"`
	Stdout     string            `json:"stdout"`
	Stderr     string            `json:"stderr"`
	Truncated  bool              `json:"truncated"`
	Error      string            `json:"error,omitempty"`
	CreatedAt  time.Time         `json:"created_at"`
	StartedAt  *time.Time        `json:"started_at"`
	FinishedAt *time.Time        `json:"finished_at"`
	Metadata   map[string]string `json:"metadata"`
}

// DurationMS is the run time from start to finish, or 0 when the workload never ran.
func (w *Workload) DurationMS() int64 {
	if w.StartedAt == nil || w.FinishedAt == nil {
		return 0
	}
	return w.FinishedAt.Sub(*w.StartedAt).Milliseconds()
}

// QueueMS is how long the workload waited before it started (or until it ended unstarted).
func (w *Workload) QueueMS() int64 {
	end := w.StartedAt
	if end == nil {
		end = w.FinishedAt
	}
	if end == nil {
		return 0
	}
	return end.Sub(w.CreatedAt).Milliseconds()
}

// Stream names which output a log line came from.
type Stream string

const (
	Stdout Stream = "stdout"
	Stderr Stream = "stderr"
	System Stream = "system" // Vulcan's own lines: boot, timeout, kill
)

// LogLine is one line of a workload's output, numbered from 1 in the order it arrived.
// Text has no newline; one followed it in the program's stream unless Partial is set (a
// chunk of a line too long for one message, or a stream's last bytes without a newline).
type LogLine struct {
	Seq     int64     `json:"seq"`
	Stream  Stream    `json:"stream"`
	Text    string    `json:"text"`
	Partial bool      `json:"partial,omitempty"`
	Time    time.Time `json:"time"`
}
