package protocol

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// fakeGuest runs script against the guest end of an in-memory stream.
func fakeGuest(t *testing.T, script func(g net.Conn)) *Conn {
	t.Helper()
	host, guest := net.Pipe()
	done := make(chan struct{})
	go func() { defer close(done); script(guest) }()
	c := NewConn(host)
	t.Cleanup(func() { c.Close(); guest.Close(); <-done })
	return c
}

func mustWrite(t *testing.T, g net.Conn, m *Message) {
	if err := WriteMessage(g, m); err != nil {
		t.Errorf("guest write: %v", err)
	}
}

func hello(v int) *Message {
	return &Message{Type: TypeHello, Hello: &Hello{AgentVersion: "test", ProtocolVersion: v}}
}

func TestConnRun(t *testing.T) {
	c := fakeGuest(t, func(g net.Conn) {
		mustWrite(t, g, hello(Version))
		m, err := ReadMessage(g)
		if err != nil || m.Type != TypeExec || m.Exec.ProtocolVersion != Version || m.Exec.ID != "a" {
			t.Errorf("guest got %+v, %v", m, err)
			return
		}
		mustWrite(t, g, &Message{Type: TypeOutput, Output: &Output{Seq: 1, Stream: Stdout, Data: "one"}})
		mustWrite(t, g, &Message{Type: TypeOutput, Output: &Output{Seq: 2, Stream: Stderr, Data: "two"}})
		mustWrite(t, g, &Message{Type: TypeExit, Exit: &Exit{Code: 3}})
	})
	ctx := context.Background()
	if h, err := c.ReadHello(ctx); err != nil || h.AgentVersion != "test" {
		t.Fatalf("ReadHello: %+v, %v", h, err)
	}
	ex := &Exec{ID: "a", Runtime: "python"}
	var got []string
	exit, err := c.Run(ctx, ex, func(o *Output) { got = append(got, o.Stream+":"+o.Data) })
	if err != nil || exit.Code != 3 {
		t.Fatalf("Run: %+v, %v", exit, err)
	}
	if len(got) != 2 || got[0] != "stdout:one" || got[1] != "stderr:two" {
		t.Fatalf("outputs %q", got)
	}
	if ex.ProtocolVersion != 0 {
		t.Fatal("Run modified the caller's Exec")
	}
}

func TestConnReadHelloVersionMismatch(t *testing.T) {
	c := fakeGuest(t, func(g net.Conn) { mustWrite(t, g, hello(Version+1)) })
	_, err := c.ReadHello(context.Background())
	if !errors.Is(err, ErrVersion) {
		t.Fatalf("got %v, want ErrVersion", err)
	}
	t.Log(err)
}

func TestConnReadHelloWrongFirstMessage(t *testing.T) {
	c := fakeGuest(t, func(g net.Conn) { mustWrite(t, g, &Message{Type: TypeExit, Exit: &Exit{}}) })
	if _, err := c.ReadHello(context.Background()); !errors.Is(err, ErrUnexpected) {
		t.Fatalf("got %v, want ErrUnexpected", err)
	}
}

func TestConnReadHelloContext(t *testing.T) {
	c := fakeGuest(t, func(g net.Conn) {}) // never speaks
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.ReadHello(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want deadline exceeded", err)
	}
}

func TestConnRunSeqMustIncrease(t *testing.T) {
	c := fakeGuest(t, func(g net.Conn) {
		ReadMessage(g)
		mustWrite(t, g, &Message{Type: TypeOutput, Output: &Output{Seq: 2, Stream: Stdout}})
		mustWrite(t, g, &Message{Type: TypeOutput, Output: &Output{Seq: 2, Stream: Stdout}})
	})
	if _, err := c.Run(context.Background(), &Exec{}, nil); !errors.Is(err, ErrUnexpected) {
		t.Fatalf("got %v, want ErrUnexpected", err)
	}
}

func TestConnRunGuestHangsUp(t *testing.T) {
	c := fakeGuest(t, func(g net.Conn) {
		ReadMessage(g)
		g.Close()
	})
	_, err := c.Run(context.Background(), &Exec{}, nil)
	if err == nil {
		t.Fatal("Run succeeded without an exit")
	}
	t.Log(err)
}

func TestConnRunCancel(t *testing.T) {
	c := fakeGuest(t, func(g net.Conn) {
		ReadMessage(g)
		mustWrite(t, g, &Message{Type: TypeOutput, Output: &Output{Seq: 1, Stream: Stdout, Data: "started"}})
		m, err := ReadMessage(g)
		if err != nil || m.Type != TypeCancel {
			t.Errorf("guest wanted cancel, got %+v, %v", m, err)
			return
		}
		mustWrite(t, g, &Message{Type: TypeExit, Exit: &Exit{Code: 137, Signal: "killed", Cancelled: true}})
	})
	ctx, cancel := context.WithCancel(context.Background())
	exit, err := c.Run(ctx, &Exec{}, func(o *Output) { cancel() })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if exit == nil || !exit.Cancelled {
		t.Fatalf("exit %+v, want the guest's cancelled exit", exit)
	}
}

func TestConnRunCancelGraceExpires(t *testing.T) {
	c := fakeGuest(t, func(g net.Conn) {
		for { // reads exec and cancel, never answers
			if _, err := ReadMessage(g); err != nil {
				return
			}
		}
	})
	c.grace = 50 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	exit, err := c.Run(ctx, &Exec{}, nil)
	if !errors.Is(err, context.DeadlineExceeded) || exit != nil {
		t.Fatalf("got (%v, %v), want deadline exceeded and no exit", exit, err)
	}
}

func TestConnShutdown(t *testing.T) {
	got := make(chan Type, 1)
	c := fakeGuest(t, func(g net.Conn) {
		m, err := ReadMessage(g)
		if err == nil {
			got <- m.Type
		}
	})
	if err := c.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if typ := <-got; typ != TypeShutdown {
		t.Fatalf("guest got %s", typ)
	}
}
