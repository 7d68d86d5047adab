package guest

import (
	"bytes"
	"testing"
	"unicode/utf8"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// FuzzPTYChunks: PTY output split into reads anywhere comes back byte for byte (each
// message valid UTF-8, a newline after each non-partial one), as ptyPump holds a
// rune split by a read and emitChunk cuts long lines.
func FuzzPTYChunks(f *testing.F) {
	f.Add([]byte("hello\nworld"), uint16(3), uint16(8))
	f.Add([]byte("é€𝄞\n\n𝄞𝄞𝄞𝄞"), uint16(2), uint16(1))
	f.Fuzz(func(t *testing.T, data []byte, split uint16, maxLine uint16) {
		if !utf8.Valid(data) {
			return
		}
		ml := int(maxLine)%16 + utf8.UTFMax
		var got bytes.Buffer
		e := &emitter{limit: 1 << 30, send: func(m *protocol.Message) error {
			if !utf8.ValidString(m.Output.Data) {
				t.Fatalf("message %q is not valid UTF-8", m.Output.Data)
			}
			got.WriteString(m.Output.Data)
			if !m.Output.Partial {
				got.WriteByte('\n')
			}
			return nil
		}}
		k := int(split) % (len(data) + 1)
		var held []byte
		for _, read := range [][]byte{data[:k], data[k:]} {
			buf := append(held, read...)
			keep := incompleteRune(buf)
			emitChunk(e, protocol.PTY, buf[:len(buf)-keep], ml)
			held = append([]byte(nil), buf[len(buf)-keep:]...)
		}
		emitChunk(e, protocol.PTY, held, ml)
		if !bytes.Equal(got.Bytes(), data) {
			t.Fatalf("got %q, want %q", got.Bytes(), data)
		}
	})
}
