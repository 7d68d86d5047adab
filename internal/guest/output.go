package guest

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
	"unicode/utf8"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// emitter numbers output messages and enforces the output limit. It holds
// its lock while sending so that Seq order is wire order.
type emitter struct {
	mu        sync.Mutex
	send      func(*protocol.Message) error
	seq       uint64
	sent      int64
	limit     int64
	truncated bool
	err       error // first send error; later output is discarded
}

func (e *emitter) emit(stream string, b []byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.truncated || e.err != nil {
		return
	}
	if room := e.limit - e.sent; int64(len(b)) > room {
		e.truncated = true
		b = b[:runeCut(b, int(room))]
		if len(b) == 0 {
			return
		}
	}
	e.seq++
	e.sent += int64(len(b))
	e.err = e.send(&protocol.Message{Type: protocol.TypeOutput, Output: &protocol.Output{
		Seq: e.seq, Stream: stream, Data: string(b),
	}})
}

func (e *emitter) wasTruncated() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.truncated
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

// pump reads one stream of the workload until EOF or the read deadline and
// emits it line by line; lines longer than maxLine go out in chunks.
func pump(r *os.File, stream string, maxLine int, e *emitter) {
	const readSize = 32 << 10
	store := make([]byte, maxLine+readSize)
	buf := store[:0]
	for {
		n, err := r.Read(store[len(buf) : len(buf)+readSize])
		buf = store[:len(buf)+n]
		for {
			i := bytes.IndexByte(buf, '\n')
			if i >= 0 && i <= maxLine {
				e.emit(stream, buf[:i])
				buf = buf[i+1:]
				continue
			}
			if len(buf) >= maxLine {
				cut := runeCut(buf, maxLine)
				if cut == 0 {
					cut = maxLine
				}
				e.emit(stream, buf[:cut])
				buf = buf[cut:]
				continue
			}
			break
		}
		buf = store[:copy(store, buf)]
		if err != nil {
			if len(buf) > 0 {
				e.emit(stream, buf)
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, os.ErrClosed) {
				e.emit(protocol.Stderr, []byte("vulcan-guest: reading "+stream+": "+err.Error()))
			}
			return
		}
	}
}
