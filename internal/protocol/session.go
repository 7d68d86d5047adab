package protocol

// Sessions: the long-lived, multiplexed connection of a sandbox.
//
// A sandbox's agent connection starts like every other: the guest sends Hello (with
// Session set when it can serve one). The host then sends one TypeSession message, and
// from the next byte on the connection carries a yamux session (github.com/hashicorp/
// yamux) in which the host is the client and the guest the server. Every yamux stream the
// host opens carries exactly one operation:
//
//  1. the host writes one TypeRequest frame (the usual 4-byte length + JSON);
//  2. the guest answers with one TypeResponse frame; a Response with Error set ends the
//     operation;
//  3. what follows depends on the operation:
//     - process.start, process.attach: TypeEvent frames (Output, then one Exit) until the
//       guest closes the stream;
//     - fs.read: the file's raw bytes, then the guest closes the stream;
//     - fs.write: the host sends the raw bytes and half-closes its side; the guest then
//       writes a second TypeResponse (the written file's Info, or Error) and closes;
//     - fs.watch: TypeEvent frames (FS) until the host closes the stream, or one FS event
//       with Op "error" ends the watch;
//     - everything else: nothing; the guest closes the stream.
//
// The guest is hostile: the host caps every frame it reads (SessionFrameSize on a session
// stream), the number of entries and events it accepts, and the bytes of a file read. A
// request may be up to MaxFrameSize (an exec carries its code and archive).

// SessionFrameSize bounds a frame on a session stream. Bulk bytes (files, stdin) travel raw
// or in many frames, never in one big one.
const SessionFrameSize = 1 << 20

const (
	TypeSession  Type = "session"  // host → guest, no payload: the connection becomes a yamux session
	TypeRequest  Type = "request"  // host → guest, first frame of a session stream
	TypeResponse Type = "response" // guest → host
	TypeEvent    Type = "event"    // guest → host: a process's output or exit
)

// Operations, Request.Op.
const (
	OpProcessStart  = "process.start"  // Process → Response{PID}, then events
	OpProcessAttach = "process.attach" // PID or Tag → Response{PID}, then events from now on
	OpProcessList   = "process.list"   // → Response{Processes}
	OpProcessSignal = "process.signal" // PID or Tag, Signal → Response{}
	OpProcessStdin  = "process.stdin"  // PID or Tag, Data and/or CloseStdin → Response{}
	OpProcessResize = "process.resize" // PID or Tag, Size → Response{} (PTY processes)
	OpFSRead        = "fs.read"        // Path → Response{Info}, then raw bytes
	OpFSWrite       = "fs.write"       // Path, Mode, then raw bytes → Response{Info}
	OpFSList        = "fs.list"        // Path, Depth → Response{Entries}
	OpFSStat        = "fs.stat"        // Path → Response{Info}
	OpFSMkdir       = "fs.mkdir"       // Path → Response{Info}; parents made; an existing dir is fine
	OpFSMove        = "fs.move"        // Path, To → Response{Info of To}
	OpFSRemove      = "fs.remove"      // Path → Response{}; recursive; a missing path is ErrCodeNotFound
	OpFSWatch       = "fs.watch"       // Path (a directory), Recursive → Response{Info}, then FS events
	OpMetrics       = "sys.metrics"    // → Response{Metrics}
	// OpFSArchive (root only) streams a tar of the VM's file system: Layer "tree" is the
	// root file system (other mounts' contents left out), "diff" what the overlay's
	// writable layer changed since boot, with OCI whiteouts (package layer). Response{},
	// then the tar's bytes; the stream ends with it.
	OpFSArchive = "fs.archive"
	// OpFSApply (root only) writes a tar under Path (Layer "diff" applies whiteouts;
	// Owner owns every entry, else the tar's owners do): Response{}, then the tar's bytes
	// from the host until it closes its side, then Response{} or the error.
	OpFSApply = "fs.apply"
	// OpNetDial connects to 127.0.0.1:Port inside the guest (TCP) → Response{}, then the
	// stream carries the connection's bytes both ways until either side closes; a port
	// nothing listens on is ErrCodeNotFound. Reaching a sandbox's ports (its web app, the
	// code interpreter) goes through it, never through a network.
	OpNetDial = "net.dial"
	// OpIdentity makes a VM the host's own (Identity: hostname, clock, entropy): sent
	// once when a VM is handed to a sandbox or workload, which for a pooled or restored
	// VM is long after its boot → Response{}.
	OpIdentity = "sys.identity"
	// OpQuiesce readies the VM to be saved (Nonce) → Response{}: the agent leaves the
	// session, writes ParkedMarker+Nonce on its console, and from then on waits for
	// WakeMagic+Nonce on its channel before it greets a host again. A VM saved while
	// parked and restored (many times, from a snapshot) thus greets each new host once,
	// whatever state its old channel was left in.
	OpQuiesce = "sys.quiesce"
	// OpExec runs a one-shot workload (Exec: code or archive, runtime, stdin, limits —
	// what an exec message carries) → Response{}, then events (Output…, Exit). The host
	// half-closing the stream cancels it (the Exit then says Cancelled).
	OpExec = "exec"
)

// Request is the first frame of a session stream.
type Request struct {
	Op string `json:"op"`
	// Process starts a process (OpProcessStart).
	Process *ProcessSpec `json:"process,omitempty"`
	// Exec is a workload to run (OpExec).
	Exec *Exec `json:"exec,omitempty"`
	// PID or Tag names a process started in this session (attach, signal, stdin, resize).
	PID int    `json:"pid,omitempty"`
	Tag string `json:"tag,omitempty"`
	// Signal is "TERM", "KILL", "INT", "HUP", "QUIT", "USR1" or "USR2".
	Signal string `json:"signal,omitempty"`
	// Data is stdin bytes (at most SessionFrameSize/2 per request).
	Data       []byte `json:"data,omitempty"`
	CloseStdin bool   `json:"close_stdin,omitempty"`
	Size       *Size  `json:"size,omitempty"`
	// Path is absolute, or relative to the user's home; To is a move's destination.
	Path string `json:"path,omitempty"`
	To   string `json:"to,omitempty"`
	// User does the file operation ("user", the default, or "root"): permissions are
	// that user's, as if it ran the operation itself.
	User  string `json:"user,omitempty"`
	Mode  uint32 `json:"mode,omitempty"`  // fs.write (default 0644) and fs.mkdir (default 0755); permission bits
	Depth int    `json:"depth,omitempty"` // fs.list: 1 lists the dir's own entries (the default)
	// Recursive watches the directory's subdirectories too, those made later included
	// (fs.watch).
	Recursive bool `json:"recursive,omitempty"`
	// Layer is what fs.archive writes or how fs.apply reads ("tree", "diff", or "" for a
	// plain tar in fs.apply).
	Layer string `json:"layer,omitempty"`
	// Port is net.dial's guest port.
	Port  int        `json:"port,omitempty"`
	Owner *FileOwner `json:"owner,omitempty"`
	// Identity is what OpIdentity applies.
	Identity *Identity `json:"identity,omitempty"`
	// Nonce names a quiesce (OpQuiesce): 16 to 64 characters [0-9a-f].
	Nonce string `json:"nonce,omitempty"`
}

// Layer kinds (Request.Layer).
const (
	LayerTree = "tree"
	LayerDiff = "diff"
)

// FileOwner is a numeric owner for fs.apply.
type FileOwner struct {
	UID int `json:"uid"`
	GID int `json:"gid"`
}

// Parking (OpQuiesce). The wake line is host → guest raw bytes on the channel, before any
// frame; the guest skips whatever precedes it (what an old host had in flight).
const (
	ParkedMarker = "vulcan-guest: parked "
	WakeMagic    = "\nVULCAN-WAKE "
)

// WakeLine is what the host writes to wake a VM parked with nonce.
func WakeLine(nonce string) []byte { return []byte(WakeMagic + nonce + "\n") }

// Identity is what makes one VM unlike its siblings restored from the same snapshot
// (or booted ahead into the same pool).
type Identity struct {
	Hostname string `json:"hostname,omitempty"`
	// UnixNano sets the guest's wall clock (a restored VM wakes at its snapshot's time).
	UnixNano int64 `json:"unix_nano,omitempty"`
	// Seed is fresh host randomness the agent credits to the kernel's pool and reseeds
	// its generator with, so clones do not share random streams.
	Seed []byte `json:"seed,omitempty"`
	// Env is set under every process the VM's sessions start (their own env wins): the
	// sandbox's env, kept by the guest so that it survives a pause and a server restart
	// (the host never stores env values). None keeps what the guest has.
	Env map[string]string `json:"env,omitempty"`
}

// Identity caps.
const (
	MinIdentitySeed = 32
	MaxIdentitySeed = 512
	MaxHostnameLen  = 64
)

// ProcessSpec is a process to start.
type ProcessSpec struct {
	// Argv runs a program directly; Shell runs a command line with `/bin/bash -l -c`
	// (/bin/sh -c where bash is missing). Exactly one is set.
	Argv  []string          `json:"argv,omitempty"`
	Shell string            `json:"shell,omitempty"`
	Env   map[string]string `json:"env,omitempty"`
	// Cwd is absolute or relative to the user's home; default the home.
	Cwd string `json:"cwd,omitempty"`
	// User is "user" (the default: uid 1000, home /home/user) or "root".
	User string `json:"user,omitempty"`
	// Tag names the process for attach/signal/stdin (unique among running processes).
	Tag string `json:"tag,omitempty"`
	// Stdin keeps the process's stdin open for OpProcessStdin; otherwise it reads EOF.
	Stdin bool `json:"stdin,omitempty"`
	// PTY runs the process on a pseudo-terminal of this size; its output is one stream
	// ("pty").
	PTY *Size `json:"pty,omitempty"`
	// TimeoutMS kills the process (its whole group) after this long; 0 means none.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// OutputLimit and LineLimit cap what is sent, as for Exec; 0 means the agent's
	// defaults (OutputLimit) and none (LineLimit).
	OutputLimit int64 `json:"output_limit,omitempty"`
	LineLimit   int64 `json:"line_limit,omitempty"`
}

// Size is a terminal size.
type Size struct {
	Cols uint16 `json:"cols"`
	Rows uint16 `json:"rows"`
}

// Stream name of a PTY process's output, beside Stdout and Stderr.
const PTY = "pty"

// Response answers a Request.
type Response struct {
	Error     *OpError      `json:"error,omitempty"`
	PID       int           `json:"pid,omitempty"`
	Processes []ProcessInfo `json:"processes,omitempty"`
	Info      *FileInfo     `json:"info,omitempty"`
	Entries   []FileInfo    `json:"entries,omitempty"`
	Metrics   *Metrics      `json:"metrics,omitempty"`
}

// Error codes of OpError, which the host maps to HTTP statuses.
const (
	ErrCodeNotFound    = "not_found"   // 404
	ErrCodePermission  = "permission"  // 403
	ErrCodeExists      = "exists"      // 409
	ErrCodeInvalid     = "invalid"     // 400: bad path, op, argument
	ErrCodeNotDir      = "not_dir"     // 400
	ErrCodeIsDir       = "is_dir"      // 400
	ErrCodeTooLarge    = "too_large"   // 413
	ErrCodeInternal    = "internal"    // 500
	ErrCodeNoProcess   = "no_process"  // 404: no running process has that pid/tag
	ErrCodeUnsupported = "unsupported" // 501
)

// OpError is a failed operation, safe to show users.
type OpError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *OpError) Error() string { return e.Message }

// ProcessInfo describes a running process started in the session.
type ProcessInfo struct {
	PID   int          `json:"pid"`
	Tag   string       `json:"tag,omitempty"`
	Spec  *ProcessSpec `json:"spec"` // Env values are not echoed
	Start int64        `json:"start_unix_ms"`
}

// FileInfo describes a path.
type FileInfo struct {
	Name    string `json:"name"`
	Path    string `json:"path"` // absolute
	Type    string `json:"type"` // file | dir | symlink | other
	Size    int64  `json:"size"`
	Mode    uint32 `json:"mode"` // permission bits
	ModTime int64  `json:"mtime_unix_ms"`
	Owner   string `json:"owner,omitempty"`
	Target  string `json:"target,omitempty"` // a symlink's target, as stored
}

// Metrics are the guest's resource use, sampled when asked.
type Metrics struct {
	CPUCount    int     `json:"cpu_count"`
	CPUUsedPct  float64 `json:"cpu_used_pct"` // since the previous sample (or boot)
	MemTotal    int64   `json:"mem_total"`    // bytes
	MemUsed     int64   `json:"mem_used"`
	DiskTotal   int64   `json:"disk_total"` // the writable layer
	DiskUsed    int64   `json:"disk_used"`
	TimestampMS int64   `json:"timestamp_unix_ms"`
}

// Event is a process's output or its end (Output.Seq is per process), or a change seen
// by a watch.
type Event struct {
	Output *Output  `json:"output,omitempty"`
	Exit   *Exit    `json:"exit,omitempty"`
	FS     *FSEvent `json:"fs,omitempty"`
}

// FS event ops. A watch reports what inotify reports, one event per change; a rename
// is a FSRename of the old name and a FSCreate of the new one (where it lands inside the
// watch).
const (
	FSCreate = "create"
	FSWrite  = "write"
	FSRemove = "remove"
	FSRename = "rename"
	FSChmod  = "chmod"
	// FSError ends a watch: Error says why (the watched directory went away, the
	// kernel's event queue overflowed, too many directories to watch).
	FSError = "error"
)

// FSEvent is one change under a watched directory.
type FSEvent struct {
	Op    string `json:"op"`
	Path  string `json:"path,omitempty"` // absolute
	Error string `json:"error,omitempty"`
}
