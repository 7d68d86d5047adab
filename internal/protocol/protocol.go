// Package protocol is the wire format between the Vulcan host and the
// vulcan-guest agent running as PID 1 inside a microVM.
//
// A stream carries frames: a 4-byte big-endian length followed by that many
// bytes of JSON encoding one Message. The guest speaks first with a hello
// carrying its protocol version; the host then sends exec (and possibly
// cancel or shutdown); the guest answers with output messages, in order,
// followed by exactly one exit.
//
// From the host's point of view the guest runs untrusted code and may be
// compromised, so the decoder is strict and bounded: a frame is never larger
// than MaxFrameSize, memory is allocated as bytes actually arrive rather than
// as the peer claims they will, and a message must have a known type and the
// payload that type requires. The package uses only the standard library so
// that the static guest binary stays small.
package protocol

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Version is the protocol version. The guest announces it in Hello and the
// host repeats it in Exec; either side refuses a version it does not speak.
// Version 2: Output.Partial, Exec.LineLimit, Exit.OutputCut, and the output
// limit counts each line's newline.
const Version = 2

// MaxFrameSize bounds the JSON body of one frame. It is sized for an exec
// frame: JSON carries Archive as base64, so the archive itself must stay
// under about 12 MiB (12 MiB of base64 output is 16 MiB, minus the other
// fields).
const MaxFrameSize = 16 << 20

// ScratchLabel is the ext4 label of a VM's scratch disk, when the host attaches one: the
// agent finds it by this label (not by device order) and puts the guest's writable layer
// on it instead of in memory.
const ScratchLabel = "vulcan-scratch"

const headerSize = 4

// Sentinel errors. Everything returned by this package that concerns the
// peer's behaviour wraps one of them, so callers can tell a hostile or
// broken peer from an I/O failure with errors.Is.
var (
	// ErrFrameTooLarge: a frame declares (or would need) more than MaxFrameSize bytes.
	ErrFrameTooLarge = errors.New("protocol: frame too large")
	// ErrMalformed: a frame is truncated, is not valid JSON, has an unknown
	// type or lacks the payload its type requires.
	ErrMalformed = errors.New("protocol: malformed frame")
	// ErrVersion: the peer speaks another protocol version.
	ErrVersion = errors.New("protocol: version mismatch")
	// ErrUnexpected: a well-formed message arrived when the session state
	// does not allow it (e.g. an exit before hello, or Seq going backwards).
	ErrUnexpected = errors.New("protocol: unexpected message")
)

// Type names a message kind.
type Type string

const (
	TypeHello    Type = "hello"    // guest → host, first message of every session
	TypeExec     Type = "exec"     // host → guest
	TypeCancel   Type = "cancel"   // host → guest, no payload
	TypeShutdown Type = "shutdown" // host → guest, no payload: power off
	TypeOutput   Type = "output"   // guest → host
	TypeExit     Type = "exit"     // guest → host, last message of an exec
)

// Stream names for Output.Stream.
const (
	Stdout = "stdout"
	Stderr = "stderr"
)

// Message is the envelope of every frame. Exactly the payload matching Type
// is set; cancel and shutdown carry none.
type Message struct {
	Type     Type      `json:"type"`
	Hello    *Hello    `json:"hello,omitempty"`
	Exec     *Exec     `json:"exec,omitempty"`
	Output   *Output   `json:"output,omitempty"`
	Exit     *Exit     `json:"exit,omitempty"`
	Request  *Request  `json:"request,omitempty"`
	Response *Response `json:"response,omitempty"`
	Event    *Event    `json:"event,omitempty"`
}

// Hello is the guest's greeting.
type Hello struct {
	AgentVersion    string `json:"agent_version"`
	ProtocolVersion int    `json:"protocol_version"`
	// Runtimes maps a runtime name to its version, e.g. "python": "3.11.2".
	// A runtime missing from the map is not installed in this image.
	Runtimes map[string]string `json:"runtimes"`
	// UptimeSeconds is the time since the guest kernel started
	// (/proc/uptime), which lets the host measure boot cost.
	UptimeSeconds float64 `json:"uptime_seconds"`
	// Session: the agent serves a session (see session.go) when the host sends
	// TypeSession instead of an exec.
	Session bool `json:"session,omitempty"`
}

// Exec asks the guest to run one workload.
type Exec struct {
	ProtocolVersion int    `json:"protocol_version"`
	ID              string `json:"id"`
	Runtime         string `json:"runtime"` // go | node | python
	// Code is written to Entrypoint when Archive is empty.
	Code string `json:"code,omitempty"`
	// Archive is a tar.gz extracted into the work dir.
	Archive []byte `json:"archive,omitempty"`
	// Entrypoint is relative to the work dir; empty means the runtime's
	// default (main.py, index.js, main.go).
	Entrypoint string            `json:"entrypoint,omitempty"`
	Stdin      []byte            `json:"stdin,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	// TimeoutMS bounds the whole exec (including a go build); 0 means none.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// OutputLimit caps the bytes of stdout+stderr sent back, each complete
	// line counting its newline; 0 means the agent's default.
	OutputLimit int64 `json:"output_limit,omitempty"`
	// LineLimit caps the number of Output messages; 0 means no cap.
	LineLimit int64 `json:"line_limit,omitempty"`
}

// Output is one line (without its newline) of the workload's stdout or
// stderr, or, when Partial, bytes not followed by a newline: a chunk of a
// line longer than the agent's maximum, or a stream's last bytes when it
// did not end with a newline. Concatenating Data, with a newline after each
// message that is not Partial, gives back the stream's bytes. Bytes that
// are not valid UTF-8 reach the host as U+FFFD.
type Output struct {
	// Seq starts at 1 for each exec and strictly increases across both streams.
	Seq     uint64 `json:"seq"`
	Stream  string `json:"stream"` // stdout | stderr
	Data    string `json:"data"`
	Partial bool   `json:"partial,omitempty"`
}

// Exit ends an exec.
type Exit struct {
	// Code is the exit status, or 128+signal number when Signal is set.
	// It is -1 when the workload never started (see Error).
	Code       int    `json:"code"`
	Signal     string `json:"signal,omitempty"` // e.g. "killed"
	DurationMS int64  `json:"duration_ms"`
	// DurationUS is the same, in microseconds: what the program took as the agent saw it
	// (spawn to exit), so the host can tell its own overhead from the program's time.
	DurationUS int64 `json:"duration_us,omitempty"`
	// Truncated: output went over the limit (or OutputCut); the rest was
	// discarded while the program kept running.
	Truncated bool `json:"truncated,omitempty"`
	// OutputCut: after the program exited, a process it left outside its
	// process group still held stdout or stderr open, and the agent stopped
	// reading after a bounded drain; what that process wrote later is lost.
	OutputCut bool `json:"output_cut,omitempty"`
	// Error describes a failure of the environment rather than of the user's
	// program: bad archive, runtime missing, timeout, cancelled.
	Error     string `json:"error,omitempty"`
	TimedOut  bool   `json:"timed_out,omitempty"`
	Cancelled bool   `json:"cancelled,omitempty"`
}

// Validate reports whether m has a known type and exactly the payload that
// type requires.
func (m *Message) Validate() error {
	set := 0
	for _, p := range []bool{m.Hello != nil, m.Exec != nil, m.Output != nil, m.Exit != nil,
		m.Request != nil, m.Response != nil, m.Event != nil} {
		if p {
			set++
		}
	}
	var want bool
	switch m.Type {
	case TypeHello:
		want = m.Hello != nil
	case TypeExec:
		want = m.Exec != nil
	case TypeOutput:
		want = m.Output != nil
		if want && m.Output.Stream != Stdout && m.Output.Stream != Stderr {
			return fmt.Errorf("%w: output stream %q", ErrMalformed, m.Output.Stream)
		}
	case TypeExit:
		want = m.Exit != nil
	case TypeRequest:
		want = m.Request != nil
	case TypeResponse:
		want = m.Response != nil
	case TypeEvent:
		want = m.Event != nil
		if want {
			e := m.Event
			n := 0
			for _, set := range []bool{e.Output != nil, e.Exit != nil, e.FS != nil} {
				if set {
					n++
				}
			}
			if n != 1 {
				return fmt.Errorf("%w: event carries %s", ErrMalformed, "not exactly one of output, exit and fs")
			}
			if f := e.FS; f != nil && (len(f.Path) > 4096 || len(f.Error) > 4096) {
				return fmt.Errorf("%w: fs event of %d path bytes", ErrMalformed, len(f.Path))
			}
			if o := e.Output; o != nil && o.Stream != Stdout && o.Stream != Stderr && o.Stream != PTY {
				return fmt.Errorf("%w: output stream %.16q", ErrMalformed, o.Stream)
			}
		}
	case TypeCancel, TypeShutdown, TypeSession:
		if set != 0 {
			return fmt.Errorf("%w: %s carries a payload", ErrMalformed, m.Type)
		}
		return nil
	default:
		return fmt.Errorf("%w: unknown message type %.32q", ErrMalformed, m.Type)
	}
	if !want {
		return fmt.Errorf("%w: %s without its payload", ErrMalformed, m.Type)
	}
	if set != 1 {
		return fmt.Errorf("%w: %s carries more than one payload", ErrMalformed, m.Type)
	}
	return nil
}

// WriteMessage encodes m as one frame and writes it with a single Write, so
// that a writer shared under a mutex never interleaves frames.
func WriteMessage(w io.Writer, m *Message) error {
	if err := m.Validate(); err != nil {
		return err
	}
	body, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("protocol: encode %s: %w", m.Type, err)
	}
	if len(body) > MaxFrameSize {
		return fmt.Errorf("%w: %s message is %d bytes, max %d", ErrFrameTooLarge, m.Type, len(body), MaxFrameSize)
	}
	frame := make([]byte, headerSize+len(body))
	binary.BigEndian.PutUint32(frame, uint32(len(body)))
	copy(frame[headerSize:], body)
	if _, err := w.Write(frame); err != nil {
		return fmt.Errorf("protocol: write %s: %w", m.Type, err)
	}
	return nil
}

// initialBuffer is how much ReadMessage allocates before any body byte has
// arrived; a peer that declares a large frame and then stalls costs no more.
const initialBuffer = 64 << 10

// ReadMessage reads one frame. A clean end of stream before the first header
// byte returns io.EOF unwrapped; every other failure wraps ErrFrameTooLarge,
// ErrMalformed or the underlying read error.
func ReadMessage(r io.Reader) (*Message, error) { return ReadMessageLimit(r, MaxFrameSize) }

// ReadMessageLimit is ReadMessage with a smaller frame cap (SessionFrameSize on session
// streams). It reads exactly one frame and nothing past it, so raw bytes that follow a
// frame on a stream stay unread.
func ReadMessageLimit(r io.Reader, limit int) (*Message, error) {
	var hdr [headerSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: truncated frame header: %w", ErrMalformed, err)
		}
		return nil, fmt.Errorf("protocol: read frame header: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 {
		return nil, fmt.Errorf("%w: empty frame", ErrMalformed)
	}
	if int64(n) > int64(min(limit, MaxFrameSize)) {
		return nil, fmt.Errorf("%w: frame declares %d bytes, max %d", ErrFrameTooLarge, n, min(limit, MaxFrameSize))
	}
	body, err := readBody(r, int(n))
	if err != nil {
		return nil, err
	}
	var m Message
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// readBody reads exactly n bytes, growing the buffer only as data arrives.
func readBody(r io.Reader, n int) ([]byte, error) {
	buf := make([]byte, 0, min(n, initialBuffer))
	for len(buf) < n {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(2*cap(buf), n))
			copy(grown, buf)
			buf = grown
		}
		got, err := io.ReadFull(r, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+got]
		if err != nil {
			if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("%w: truncated frame: got %d of %d bytes: %w", ErrMalformed, len(buf), n, io.ErrUnexpectedEOF)
			}
			return nil, fmt.Errorf("protocol: read frame body: %w", err)
		}
	}
	return buf, nil
}
