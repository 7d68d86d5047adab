package guest

import (
	"bytes"
	"errors"
	"io"
	"os"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// ptyPump reads a PTY's output (stream "pty") and emits each read as soon as it
// arrives: a terminal shows prompts no newline ends, so nothing waits for one. A
// newline inside a read ends a line (Partial false); the bytes after the last newline
// of a read go out as a Partial message, so concatenating Data with a newline after
// each non-partial message still gives the bytes back. A UTF-8 sequence split by a
// read is held until its rest arrives. The drain after exit follows pump's rules; EIO
// is a PTY's end of file (every slave side is closed).
func ptyPump(r *os.File, maxLine int, e *emitter, exit *exitSignal) {
	const readSize = 32 << 10
	store := make([]byte, readSize+utf8.UTFMax)
	held := 0
	d := newDrain(r, exit)
	for {
		readAt := time.Now()
		n, err := r.Read(store[held : held+readSize])
		d.read(n)
		buf := store[:held+n]
		keep := 0
		if err == nil {
			keep = incompleteRune(buf)
		}
		emitChunk(e, protocol.PTY, buf[:len(buf)-keep], maxLine)
		held = copy(store, buf[len(buf)-keep:])
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if d.more(readAt) {
				continue
			}
			e.markCut()
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.EIO) && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, os.ErrClosed) {
				e.emit(protocol.PTY, []byte("\r\nvulcan-guest: reading the pty: "+err.Error()), false)
			}
			return
		}
	}
}

// emitChunk emits b split at its newlines, lines longer than maxLine in partial pieces.
func emitChunk(e *emitter, stream string, b []byte, maxLine int) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		line, partial := b, true
		if i >= 0 {
			line, partial = b[:i], false
		}
		for len(line) > maxLine {
			cut := runeCut(line, maxLine)
			if cut == 0 {
				cut = maxLine
			}
			e.emit(stream, line[:cut], true)
			line = line[cut:]
		}
		if len(line) > 0 || !partial {
			e.emit(stream, line, partial)
		}
		if i < 0 {
			return
		}
		b = b[i+1:]
	}
}
