package protocol

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// CancelGrace is how long Run waits for the guest's exit after sending
// cancel before giving up on it.
const CancelGrace = 2 * time.Second

// Conn is the host side of one session with a guest agent over any byte
// stream. Reads happen on a background goroutine so that every call can
// honour its context even when the stream cannot be interrupted; that
// goroutine ends when the stream returns an error, so the caller must close
// the stream when done with the Conn (Close does it when the stream is an
// io.Closer). Run and ReadHello must not be called concurrently; Shutdown
// may be called at any time.
type Conn struct {
	rw io.ReadWriter
	// grace is CancelGrace, shortened by tests.
	grace time.Duration

	wmu sync.Mutex

	startReader sync.Once
	in          chan readResult
	closed      chan struct{}
	closeOnce   sync.Once

	// err is the sticky read error once the reader has stopped.
	err error
}

type readResult struct {
	m   *Message
	err error
}

// NewConn wraps a stream. Nothing is read until the first call.
func NewConn(rw io.ReadWriter) *Conn {
	return &Conn{rw: rw, grace: CancelGrace, in: make(chan readResult), closed: make(chan struct{})}
}

func (c *Conn) readLoop() {
	br := bufio.NewReaderSize(c.rw, 64<<10)
	for {
		m, err := ReadMessage(br)
		select {
		case c.in <- readResult{m, err}:
		case <-c.closed:
			return
		}
		if err != nil {
			return
		}
	}
}

// recv returns the next message, or ctx's error, or the stream's error.
func (c *Conn) recv(ctx context.Context) (*Message, error) {
	if c.err != nil {
		return nil, c.err
	}
	c.startReader.Do(func() { go c.readLoop() })
	select {
	case r := <-c.in:
		if r.err != nil {
			if r.err == io.EOF {
				r.err = fmt.Errorf("protocol: guest closed the stream: %w", io.ErrUnexpectedEOF)
			}
			c.err = r.err
		}
		return r.m, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.closed:
		return nil, errConnClosed
	}
}

var errConnClosed = errors.New("protocol: connection closed")

func (c *Conn) send(m *Message) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return WriteMessage(c.rw, m)
}

// sendCtx writes m but stops waiting when ctx is done: a guest that stops
// reading must not wedge the host. The write itself then completes or fails
// in the background once the caller closes the stream.
func (c *Conn) sendCtx(ctx context.Context, m *Message) error {
	done := make(chan error, 1)
	go func() { done <- c.send(m) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("protocol: send %s: %w", m.Type, ctx.Err())
	}
}

// ReadHello waits for the guest's first message, which must be a hello
// speaking this package's Version.
func (c *Conn) ReadHello(ctx context.Context) (*Hello, error) {
	m, err := c.recv(ctx)
	if err != nil {
		return nil, fmt.Errorf("protocol: waiting for hello: %w", err)
	}
	if m.Type != TypeHello {
		return nil, fmt.Errorf("%w: first guest message is %s, want hello", ErrUnexpected, m.Type)
	}
	if m.Hello.ProtocolVersion != Version {
		return nil, fmt.Errorf("%w: guest agent %q speaks protocol %d, host speaks %d",
			ErrVersion, m.Hello.AgentVersion, m.Hello.ProtocolVersion, Version)
	}
	return m.Hello, nil
}

// Run sends ex, calls onOutput for each output message in order (on the
// calling goroutine) and returns the guest's exit. ex.ProtocolVersion is
// filled in when zero; ex itself is not modified.
//
// When ctx is done, Run sends cancel and waits up to CancelGrace for the
// exit (still delivering output); it then returns the exit if one arrived,
// together with an error wrapping ctx.Err().
func (c *Conn) Run(ctx context.Context, ex *Exec, onOutput func(*Output)) (*Exit, error) {
	if ex == nil {
		return nil, errors.New("protocol: Run with nil Exec")
	}
	req := *ex
	if req.ProtocolVersion == 0 {
		req.ProtocolVersion = Version
	}
	if err := c.sendCtx(ctx, &Message{Type: TypeExec, Exec: &req}); err != nil {
		return nil, err
	}

	var lastSeq uint64
	waitCtx := ctx
	var cancelErr error
	for {
		m, err := c.recv(waitCtx)
		if err != nil {
			if cancelErr == nil && ctx.Err() != nil {
				// The caller gave up: ask the guest to stop and give it a
				// bounded grace, detached from the caller's cancellation.
				cancelErr = fmt.Errorf("protocol: exec %q: %w", req.ID, ctx.Err())
				var stop context.CancelFunc
				waitCtx, stop = context.WithTimeout(context.WithoutCancel(ctx), c.grace)
				defer stop()
				if err := c.sendCtx(waitCtx, &Message{Type: TypeCancel}); err != nil {
					return nil, errors.Join(cancelErr, err)
				}
				continue
			}
			if cancelErr != nil {
				return nil, cancelErr
			}
			return nil, fmt.Errorf("protocol: exec %q: %w", req.ID, err)
		}
		switch m.Type {
		case TypeOutput:
			if m.Output.Seq <= lastSeq {
				err := fmt.Errorf("%w: output seq %d after %d", ErrUnexpected, m.Output.Seq, lastSeq)
				return nil, errors.Join(cancelErr, err)
			}
			lastSeq = m.Output.Seq
			if onOutput != nil {
				onOutput(m.Output)
			}
		case TypeExit:
			return m.Exit, cancelErr
		default:
			err := fmt.Errorf("%w: %s during exec", ErrUnexpected, m.Type)
			return nil, errors.Join(cancelErr, err)
		}
	}
}

// Shutdown asks the agent to power the VM off. It does not wait for the
// stream to close.
func (c *Conn) Shutdown() error {
	return c.send(&Message{Type: TypeShutdown})
}

// Close stops the reader and closes the stream if it is an io.Closer.
func (c *Conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.closed)
		if cl, ok := c.rw.(io.Closer); ok {
			err = cl.Close()
		}
	})
	return err
}
