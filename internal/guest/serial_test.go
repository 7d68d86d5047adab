package guest

import (
	"os"
	"testing"
	"time"
)

// A virtio-serial port is one stream: a second session must not start (and write a
// second hello into the same stream) until the first one is closed.
func TestSerialListenerOneSessionAtATime(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	l := newSerialListener(w, "serial:test")
	defer l.Close()

	first, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	second := make(chan error, 1)
	go func() {
		s, err := l.Accept()
		if err == nil {
			s.Close()
		}
		second <- err
	}()
	select {
	case err := <-second:
		t.Fatalf("second Accept returned while the first session was open (err %v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	first.Close()
	first.Close() // idempotent: must not hand out two tokens
	if err := <-second; err != nil {
		t.Fatalf("second Accept after close: %v", err)
	}
}
