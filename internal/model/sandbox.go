package model

import "time"

// SandboxState is where a sandbox is in its life.
type SandboxState string

const (
	SandboxStarting SandboxState = "starting"
	SandboxRunning  SandboxState = "running"
	SandboxStopping SandboxState = "stopping"
	SandboxKilled   SandboxState = "killed"
	SandboxTimedOut SandboxState = "timed_out"
	SandboxFailed   SandboxState = "failed"
	// SandboxLost: its VM died with a crashed server; set at the next start.
	SandboxLost SandboxState = "lost"
	// SandboxPaused: its memory and disk are saved in the data dir and its VM is gone;
	// resuming restores it as it was (it outlives server restarts).
	SandboxPaused SandboxState = "paused"
)

var sandboxTransitions = map[SandboxState][]SandboxState{
	SandboxStarting: {SandboxRunning, SandboxStopping, SandboxFailed, SandboxLost, SandboxPaused},
	SandboxRunning:  {SandboxStopping, SandboxFailed, SandboxLost, SandboxPaused},
	// A paused sandbox resumes (starting), is killed, or fails (its saved state gone).
	SandboxPaused:   {SandboxStarting, SandboxKilled, SandboxFailed},
	SandboxStopping: {SandboxKilled, SandboxTimedOut, SandboxFailed, SandboxLost},
}

// CanTransition reports whether a sandbox may move from s to to.
func (s SandboxState) CanTransition(to SandboxState) bool {
	for _, t := range sandboxTransitions[s] {
		if t == to {
			return true
		}
	}
	return false
}

// Terminal reports whether no transition leaves s.
func (s SandboxState) Terminal() bool {
	switch s {
	case SandboxKilled, SandboxTimedOut, SandboxFailed, SandboxLost:
		return true
	}
	return false
}

// Valid reports whether s is a known state.
func (s SandboxState) Valid() bool {
	return s == SandboxStarting || s == SandboxRunning || s == SandboxStopping || s == SandboxPaused || s.Terminal()
}

// SandboxStates lists every state, in life order.
var SandboxStates = []SandboxState{SandboxStarting, SandboxRunning, SandboxPaused, SandboxStopping, SandboxKilled, SandboxTimedOut, SandboxFailed, SandboxLost}

// Sandbox limits.
const (
	DefaultSandboxTimeoutS = 300
	MaxSandboxTimeoutS     = 24 * 60 * 60
	MaxMetadataEntries     = 64
	MaxMetadataBytes       = 256 // per key and per value
)

// SandboxSpec is what a user asks for when creating a sandbox.
type SandboxSpec struct {
	// Template names the image: python, node, go (and later user templates).
	Template     Runtime           `json:"template"`
	Resources    Resources         `json:"resources"` // TimeoutS is ignored: see TimeoutS below
	Network      NetworkPolicy     `json:"network,omitempty"`
	NetworkRules *NetworkRules     `json:"network_rules,omitempty"`
	Env          map[string]string `json:"env,omitempty"`
	Metadata     map[string]string `json:"metadata,omitempty"`
	// TimeoutS is how long the sandbox lives from creation (or from the last SetTimeout);
	// default 300, at most 24 h.
	TimeoutS int `json:"timeout_s,omitempty"`
	// AutoPause pauses the sandbox at its timeout instead of killing it.
	AutoPause bool `json:"auto_pause,omitempty"`
	// AutoResume resumes a paused sandbox at the next call that needs it running.
	AutoResume bool `json:"auto_resume,omitempty"`
}

// Sandbox is a long-lived VM many processes and file operations run in.
type Sandbox struct {
	ID        string       `json:"id"`
	State     SandboxState `json:"state"`
	Spec      SandboxSpec  `json:"-"`
	Error     string       `json:"error,omitempty"`
	CreatedAt time.Time    `json:"created_at"`
	StartedAt *time.Time   `json:"started_at"`
	EndedAt   *time.Time   `json:"ended_at"`
	// ExpiresAt is when the timeout kills it (while it is starting or running).
	ExpiresAt time.Time `json:"expires_at"`
	// VM facts (vm_id, vmm, accel, boot_ms, cid, guest_ip, ...).
	VM map[string]string `json:"vm"`
}
