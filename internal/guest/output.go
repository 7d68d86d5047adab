package guest

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// emitter numbers output messages and enforces the output limits. It holds
// its lock while sending so that Seq order is wire order.
type emitter struct {
	mu        sync.Mutex
	send      func(*protocol.Message) error
	seq       uint64
	sent      int64 // bytes, each complete line counting its newline
	limit     int64
	lineLimit int64 // 0: none
	truncated bool
	cut       bool  // the drain after exit was cut short
	err       error // first send error; later output is discarded
}

// emit sends b as one message: a line (partial false) or bytes not followed
// by a newline (partial true).
func (e *emitter) emit(stream string, b []byte, partial bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.truncated || e.err != nil {
		return
	}
	if e.lineLimit > 0 && int64(e.seq) >= e.lineLimit {
		e.truncated = true
		return
	}
	cost := int64(len(b))
	if !partial {
		cost++
	}
	if room := e.limit - e.sent; cost > room {
		// Keep what fits, as a partial line: its newline did not fit.
		e.truncated = true
		b = b[:runeCut(b, int(room))]
		if len(b) == 0 {
			return
		}
		partial, cost = true, int64(len(b))
	}
	e.seq++
	e.sent += cost
	e.err = e.send(&protocol.Message{Type: protocol.TypeOutput, Output: &protocol.Output{
		Seq: e.seq, Stream: stream, Data: string(b), Partial: partial,
	}})
}

func (e *emitter) markCut() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cut = true
}

func (e *emitter) state() (truncated, cut bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.truncated || e.cut, e.cut
}

// runeCut returns n, or less so that b[:n] does not end inside a UTF-8
// sequence (which JSON would turn into U+FFFD).
func runeCut(b []byte, n int) int {
	if n >= len(b) {
		return len(b)
	}
	for i := n; i > 0 && n-i < utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			return i
		}
	}
	return n
}

// incompleteRune is how many bytes at the end of b begin a UTF-8 sequence whose rest
// has not arrived yet.
func incompleteRune(b []byte) int {
	for i := len(b) - 1; i >= 0 && len(b)-i < utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if utf8.FullRune(b[i:]) {
				return 0
			}
			return len(b) - i
		}
	}
	return 0
}

// Draining after the program has exited. Its process group is killed then,
// so EOF comes at once unless a process that left the group (setsid, a
// daemon) still holds the pipe. What the pipe held when the program exited
// was written by the program: it is read in full, however slowly the host
// takes it. Past that, reading goes on while a read finds bytes (or has
// not yet waited drainIdle on an empty pipe), for at most drainMax; then
// the rest is given up and the exec reports OutputCut.
const (
	drainIdle = 500 * time.Millisecond
	drainMax  = 5 * time.Second
)

// exitSignal tells the pumps when the program exited and how many bytes
// each of its pipes held then: pending and at are set before done is
// closed.
type exitSignal struct {
	done    chan struct{}
	at      time.Time
	pending map[*os.File]int
}

func newExitSignal() *exitSignal { return &exitSignal{done: make(chan struct{})} }

// fire records the exit and what each of files (the read ends) holds; call
// it after the program's group is dead, so nothing of it writes any more.
func (x *exitSignal) fire(files ...*os.File) {
	x.at = time.Now()
	x.pending = map[*os.File]int{}
	for _, f := range files {
		if f != nil {
			x.pending[f] = pipeBuffered(f)
		}
	}
	close(x.done)
}

// exitedAt is when the program exited, or the zero time while it runs.
func (x *exitSignal) exitedAt() time.Time {
	select {
	case <-x.done:
		return x.at
	default:
		return time.Time{}
	}
}

// drain applies the rules above to one pipe.
type drain struct {
	r     *os.File
	exit  *exitSignal
	owed  int       // bytes the pipe held at exit, not yet read; -1 until the exit is seen
	clear time.Time // when they had all been read
}

func newDrain(r *os.File, exit *exitSignal) *drain { return &drain{r: r, exit: exit, owed: -1} }

// read records n bytes just read. Bytes read before the exit is seen do not
// count against what was owed: that errs towards reading more.
func (d *drain) read(n int) {
	if d.owed < 0 {
		if d.exit.exitedAt().IsZero() {
			return
		}
		d.owed = d.exit.pending[d.r]
	} else {
		d.owed -= n
	}
	if d.owed <= 0 && d.clear.IsZero() {
		d.owed, d.clear = 0, time.Now()
	}
}

// more is called when a read hit its deadline (set only once the program
// has exited). It reports whether to read on, and if so pushes the deadline
// back. readAt is when that read began: a read that did not wait drainIdle
// (the deadline passed while a send to a slow host blocked) proves nothing.
func (d *drain) more(readAt time.Time) bool {
	d.read(0)
	waited := time.Since(readAt) >= drainIdle
	if d.owed != 0 || time.Since(d.clear) < drainMax && (!waited || pipeBuffered(d.r) > 0) {
		d.r.SetReadDeadline(time.Now().Add(drainIdle))
		return true
	}
	return false
}

// pump reads one stream of the workload until EOF and emits it line by
// line; lines longer than maxLine go out in partial chunks. Once exit has
// fired (and the caller set a read deadline) the drain rules above apply. Reads never stop on a deadline while the pipe still holds bytes:
// the deadline may pass while a send to a slow host blocks, and bytes the
// program wrote before it exited are never dropped for that.
func pump(r *os.File, stream string, maxLine int, e *emitter, exit *exitSignal) {
	const readSize = 32 << 10
	store := make([]byte, maxLine+readSize)
	buf := store[:0]
	d := newDrain(r, exit)
	for {
		readAt := time.Now()
		n, err := r.Read(store[len(buf) : len(buf)+readSize])
		buf = store[:len(buf)+n]
		d.read(n)
		for {
			i := bytes.IndexByte(buf, '\n')
			if i >= 0 && i <= maxLine {
				e.emit(stream, buf[:i], false)
				buf = buf[i+1:]
				continue
			}
			if len(buf) >= maxLine {
				cut := runeCut(buf, maxLine)
				if cut == len(buf) {
					// runeCut cannot see past buf: a rune split by the read ends it.
					cut -= incompleteRune(buf)
				}
				if cut == 0 {
					cut = maxLine
				}
				e.emit(stream, buf[:cut], true)
				buf = buf[cut:]
				continue
			}
			break
		}
		buf = store[:copy(store, buf)]
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if d.more(readAt) {
				continue
			}
			e.markCut()
		}
		if err != nil {
			if len(buf) > 0 {
				e.emit(stream, buf, true)
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, os.ErrClosed) {
				e.emit(protocol.Stderr, []byte("vulcan-guest: reading "+stream+": "+err.Error()), false)
			}
			return
		}
	}
}
