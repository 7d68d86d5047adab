package protocol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/hashicorp/yamux"
)

// MuxConfig is the yamux configuration both sides of a session use. No keepalives: a
// paused VM (and a slow TCG guest) must not be declared dead by a timer; the host notices
// a dead guest by the VMM exiting. Windows and backlogs are bounded so a hostile peer
// cannot make the other side buffer without limit.
func MuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = false
	c.AcceptBacklog = 256
	c.MaxStreamWindowSize = 1 << 20
	c.ConnectionWriteTimeout = 30 * time.Second
	c.StreamOpenTimeout = 30 * time.Second
	c.StreamCloseTimeout = 30 * time.Second
	c.LogOutput = io.Discard
	return c
}

// Session is the host's side of a sandbox's agent connection.
type Session struct {
	mux *yamux.Session
}

// StartSession turns conn (after the guest's hello, which must have Session set) into a
// session: it sends TypeSession and starts yamux as the client. Closing the session closes
// conn.
func StartSession(conn io.ReadWriteCloser, hello *Hello) (*Session, error) {
	if hello == nil || !hello.Session {
		return nil, fmt.Errorf("%w: the guest agent does not serve sessions (image too old?)", ErrVersion)
	}
	if err := WriteMessage(conn, &Message{Type: TypeSession}); err != nil {
		return nil, err
	}
	mux, err := yamux.Client(conn, MuxConfig())
	if err != nil {
		return nil, fmt.Errorf("protocol: session: %w", err)
	}
	return &Session{mux: mux}, nil
}

// Close ends the session and its connection.
func (s *Session) Close() error { return s.mux.Close() }

// Done is closed when the session has ended (the guest went away or Close was called).
func (s *Session) Done() <-chan struct{} { return s.mux.CloseChan() }

// Stream is one operation's stream.
type Stream struct {
	net.Conn
	limit int
}

// Open starts an operation: it opens a stream, sends req and reads the response. A
// Response carrying an OpError is returned as that error (with the stream closed). ctx
// bounds the opening and the first response only.
func (s *Session) Open(ctx context.Context, req *Request) (*Stream, *Response, error) {
	c, err := s.mux.OpenStream()
	if err != nil {
		return nil, nil, fmt.Errorf("protocol: open stream: %w", err)
	}
	st := &Stream{Conn: c, limit: SessionFrameSize}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if err := WriteMessage(c, &Message{Type: TypeRequest, Request: req}); err != nil {
		c.Close()
		return nil, nil, err
	}
	resp, err := st.Response()
	if !stop() && ctx.Err() != nil {
		c.Close()
		return nil, nil, fmt.Errorf("protocol: %s: %w", req.Op, ctx.Err())
	}
	c.SetDeadline(time.Time{})
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("protocol: %s: %w", req.Op, err)
	}
	if resp.Error != nil {
		c.Close()
		return nil, nil, resp.Error
	}
	return st, resp, nil
}

// Do runs an operation that has nothing after its response.
func (s *Session) Do(ctx context.Context, req *Request) (*Response, error) {
	st, resp, err := s.Open(ctx, req)
	if err != nil {
		return nil, err
	}
	st.Close()
	return resp, nil
}

// Response reads the next frame, which must be a response.
func (st *Stream) Response() (*Response, error) {
	m, err := ReadMessageLimit(st.Conn, st.limit)
	if err != nil {
		return nil, err
	}
	if m.Type != TypeResponse {
		return nil, fmt.Errorf("%w: %s where a response was due", ErrUnexpected, m.Type)
	}
	return m.Response, nil
}

// Event reads the next event of a process stream; io.EOF after the exit event.
func (st *Stream) Event() (*Event, error) {
	m, err := ReadMessageLimit(st.Conn, st.limit)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, err
	}
	if m.Type != TypeEvent {
		return nil, fmt.Errorf("%w: %s where an event was due", ErrUnexpected, m.Type)
	}
	return m.Event, nil
}

// Exec runs a workload over the session, like Conn.Run: it calls onOutput for each output
// in order and returns the exit. When ctx ends it half-closes the stream (which cancels
// the workload) and waits up to grace for the exit, still delivering output; it then
// returns the exit if one came, with an error wrapping ctx.Err().
func (s *Session) Exec(ctx context.Context, ex *Exec, grace time.Duration, onOutput func(*Output)) (*Exit, error) {
	req := *ex
	if req.ProtocolVersion == 0 {
		req.ProtocolVersion = Version
	}
	st, _, err := s.Open(ctx, &Request{Op: OpExec, Exec: &req})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	var cancelErr error
	stop := context.AfterFunc(ctx, func() {
		st.CloseWrite()
		st.SetReadDeadline(time.Now().Add(grace))
	})
	defer stop()
	var lastSeq uint64
	for {
		ev, err := st.Event()
		if ctx.Err() != nil && cancelErr == nil {
			cancelErr = fmt.Errorf("protocol: exec %q: %w", req.ID, ctx.Err())
		}
		if err != nil {
			if cancelErr != nil {
				return nil, cancelErr
			}
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: the stream ended before the exit", ErrUnexpected)
			}
			return nil, fmt.Errorf("protocol: exec %q: %w", req.ID, err)
		}
		switch {
		case ev.Output != nil:
			if ev.Output.Seq <= lastSeq {
				return nil, errors.Join(cancelErr, fmt.Errorf("%w: output seq %d after %d", ErrUnexpected, ev.Output.Seq, lastSeq))
			}
			if ev.Output.Stream != Stdout && ev.Output.Stream != Stderr {
				return nil, errors.Join(cancelErr, fmt.Errorf("%w: exec output on stream %.16q", ErrUnexpected, ev.Output.Stream))
			}
			lastSeq = ev.Output.Seq
			if onOutput != nil {
				onOutput(ev.Output)
			}
		case ev.Exit != nil:
			return ev.Exit, cancelErr
		}
	}
}

// CloseWrite half-closes the host's side (yamux sends FIN; the guest reads EOF and can
// still answer).
func (st *Stream) CloseWrite() error { return st.Conn.Close() }

// ServeSession is the guest's side: after TypeSession arrived on conn, it serves yamux
// streams, calling handle for each in its own goroutine, until the session ends or ctx is
// done. handle gets the request (already read) and the stream to answer on.
func ServeSession(ctx context.Context, conn io.ReadWriteCloser, handle func(ctx context.Context, req *Request, st net.Conn)) error {
	mux, err := yamux.Server(conn, MuxConfig())
	if err != nil {
		return fmt.Errorf("protocol: session: %w", err)
	}
	defer mux.Close()
	stop := context.AfterFunc(ctx, func() { mux.Close() })
	defer stop()
	for {
		c, err := mux.AcceptStream()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if mux.IsClosed() {
				return io.EOF
			}
			return err
		}
		go func() {
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			m, err := ReadMessageLimit(c, MaxFrameSize) // the host's frames: an exec's may be large
			c.SetReadDeadline(time.Time{})
			if err != nil || m.Type != TypeRequest {
				WriteMessage(c, &Message{Type: TypeResponse, Response: &Response{Error: &OpError{Code: ErrCodeInvalid, Message: "the first frame of a stream must be a request"}}})
				return
			}
			handle(ctx, m.Request, c)
		}()
	}
}

// Respond writes a response frame.
func Respond(w io.Writer, r *Response) error {
	return WriteMessage(w, &Message{Type: TypeResponse, Response: r})
}

// Fail writes a response carrying an error.
func Fail(w io.Writer, code, format string, args ...any) error {
	return Respond(w, &Response{Error: &OpError{Code: code, Message: fmt.Sprintf(format, args...)}})
}

// SendEvent writes an event frame.
func SendEvent(w io.Writer, e *Event) error {
	return WriteMessage(w, &Message{Type: TypeEvent, Event: e})
}
