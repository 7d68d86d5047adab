package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
)

func frame(body string) []byte {
	b := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(b, uint32(len(body)))
	copy(b[4:], body)
	return b
}

func TestRoundTrip(t *testing.T) {
	msgs := []*Message{
		{Type: TypeHello, Hello: &Hello{AgentVersion: "dev", ProtocolVersion: Version, Runtimes: map[string]string{"python": "3.11.2"}, UptimeSeconds: 0.42}},
		{Type: TypeExec, Exec: &Exec{ProtocolVersion: Version, ID: "w1", Runtime: "python", Code: "print(1)", Archive: []byte{0x1f, 0x8b, 0}, Stdin: []byte("in\n"), Env: map[string]string{"A": "b"}, TimeoutMS: 1000, OutputLimit: 10}},
		{Type: TypeCancel},
		{Type: TypeShutdown},
		{Type: TypeOutput, Output: &Output{Seq: 1, Stream: Stderr, Data: "héllo"}},
		{Type: TypeExit, Exit: &Exit{Code: 137, Signal: "killed", DurationMS: 5, Truncated: true, Error: "timeout", TimedOut: true}},
	}
	var buf bytes.Buffer
	for _, m := range msgs {
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatalf("write %s: %v", m.Type, err)
		}
	}
	for _, want := range msgs {
		got, err := ReadMessage(&buf)
		if err != nil {
			t.Fatalf("read %s: %v", want.Type, err)
		}
		var a, b bytes.Buffer
		WriteMessage(&a, want)
		WriteMessage(&b, got)
		if !bytes.Equal(a.Bytes(), b.Bytes()) {
			t.Errorf("round trip changed %s:\n got %s\nwant %s", want.Type, b.Bytes(), a.Bytes())
		}
	}
	if _, err := ReadMessage(&buf); err != io.EOF {
		t.Fatalf("at end: got %v, want io.EOF", err)
	}
}

// The JSON field names are the contract with the host backend: pin them.
func TestWireFormat(t *testing.T) {
	var buf bytes.Buffer
	WriteMessage(&buf, &Message{Type: TypeExec, Exec: &Exec{ProtocolVersion: 1, ID: "x", Runtime: "go", Entrypoint: "cmd/main.go", TimeoutMS: 5, OutputLimit: 7, Stdin: []byte("hi")}})
	want := `{"type":"exec","exec":{"protocol_version":1,"id":"x","runtime":"go","entrypoint":"cmd/main.go","stdin":"aGk=","timeout_ms":5,"output_limit":7}}`
	if got := string(buf.Bytes()[4:]); got != want {
		t.Errorf("exec frame\n got %s\nwant %s", got, want)
	}
	buf.Reset()
	WriteMessage(&buf, &Message{Type: TypeHello, Hello: &Hello{AgentVersion: "v", ProtocolVersion: 1, Runtimes: map[string]string{"node": "20.1.0"}, UptimeSeconds: 1.5}})
	want = `{"type":"hello","hello":{"agent_version":"v","protocol_version":1,"runtimes":{"node":"20.1.0"},"uptime_seconds":1.5}}`
	if got := string(buf.Bytes()[4:]); got != want {
		t.Errorf("hello frame\n got %s\nwant %s", got, want)
	}
}

func TestReadMessageRejects(t *testing.T) {
	huge := make([]byte, 4)
	binary.BigEndian.PutUint32(huge, MaxFrameSize+1)
	max := make([]byte, 4)
	binary.BigEndian.PutUint32(max, 0xffffffff)
	cases := []struct {
		name  string
		input []byte
		want  error
	}{
		{"oversize", huge, ErrFrameTooLarge},
		{"max uint32", max, ErrFrameTooLarge},
		{"empty frame", frame(""), ErrMalformed},
		{"truncated header", []byte{0, 0}, ErrMalformed},
		{"truncated body", frame(`{"type":"cancel"}`)[:10], ErrMalformed},
		{"declares 16MiB sends 3 bytes", append(append([]byte{}, 1, 0, 0, 0), "abc"...), ErrMalformed},
		{"not json", frame("hello"), ErrMalformed},
		{"json array", frame("[]"), ErrMalformed},
		{"trailing garbage", frame(`{"type":"cancel"} x`), ErrMalformed},
		{"unknown type", frame(`{"type":"rm -rf"}`), ErrMalformed},
		{"no type", frame(`{}`), ErrMalformed},
		{"exit without payload", frame(`{"type":"exit"}`), ErrMalformed},
		{"exit null payload", frame(`{"type":"exit","exit":null}`), ErrMalformed},
		{"hello with exec payload", frame(`{"type":"hello","exec":{}}`), ErrMalformed},
		{"two payloads", frame(`{"type":"exit","exit":{},"output":{"stream":"stdout"}}`), ErrMalformed},
		{"cancel with payload", frame(`{"type":"cancel","exit":{}}`), ErrMalformed},
		{"bad stream", frame(`{"type":"output","output":{"seq":1,"stream":"stdin"}}`), ErrMalformed},
		{"wrong field type", frame(`{"type":"output","output":{"seq":"1","stream":"stdout"}}`), ErrMalformed},
		{"negative seq", frame(`{"type":"output","output":{"seq":-1,"stream":"stdout"}}`), ErrMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ReadMessage(bytes.NewReader(tc.input))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got (%v, %v), want error wrapping %v", m, err, tc.want)
			}
			t.Logf("%v", err)
		})
	}
}

func TestWriteMessageRefusesOversize(t *testing.T) {
	m := &Message{Type: TypeExec, Exec: &Exec{Runtime: "python", Archive: make([]byte, 12<<20+1)}}
	var buf bytes.Buffer
	if err := WriteMessage(&buf, m); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("got %v, want ErrFrameTooLarge", err)
	}
	if buf.Len() != 0 {
		t.Fatalf("wrote %d bytes of a refused frame", buf.Len())
	}
	if err := WriteMessage(&buf, &Message{Type: "bogus"}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("got %v, want ErrMalformed", err)
	}
}

// A peer declaring a 16 MiB frame and then sending little must not make the
// reader allocate 16 MiB up front.
func TestReadMessageAllocatesAsDataArrives(t *testing.T) {
	in := append([]byte{0, 0xff, 0xff, 0xff}, strings.Repeat("x", 100)...)
	before := heapAlloc()
	for range 20 {
		if _, err := ReadMessage(bytes.NewReader(in)); !errors.Is(err, ErrMalformed) {
			t.Fatalf("got %v, want ErrMalformed", err)
		}
	}
	if d := heapAlloc() - before; d > 20*(2*initialBuffer)+1<<20 {
		t.Fatalf("allocated %.0f bytes for 20 short frames", d)
	}
}

func FuzzReadMessage(f *testing.F) {
	seeds := []*Message{
		{Type: TypeHello, Hello: &Hello{AgentVersion: "dev", ProtocolVersion: 1, Runtimes: map[string]string{"go": "1.26"}}},
		{Type: TypeExec, Exec: &Exec{ProtocolVersion: 1, Runtime: "node", Code: "console.log(1)", Archive: []byte("x"), Env: map[string]string{"K": "V"}}},
		{Type: TypeCancel},
		{Type: TypeShutdown},
		{Type: TypeOutput, Output: &Output{Seq: 9, Stream: Stdout, Data: "line"}},
		{Type: TypeExit, Exit: &Exit{Code: -1, Error: "bad archive"}},
	}
	for _, m := range seeds {
		var buf bytes.Buffer
		if err := WriteMessage(&buf, m); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add(frame(`{"type":"exit","exit":null}`))
	f.Add(frame(`{"type":"output","output":{"seq":1,"stream":"x"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			m, err := ReadMessage(r)
			if err != nil {
				if m != nil {
					t.Fatalf("message returned with error %v", err)
				}
				return
			}
			if err := m.Validate(); err != nil {
				t.Fatalf("ReadMessage accepted an invalid message: %v", err)
			}
			// Whatever was accepted must re-encode and decode to itself.
			var buf bytes.Buffer
			if err := WriteMessage(&buf, m); err != nil {
				t.Fatalf("re-encode: %v", err)
			}
			if _, err := ReadMessage(&buf); err != nil {
				t.Fatalf("decode of re-encoded message: %v", err)
			}
		}
	})
}

func heapAlloc() float64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.TotalAlloc)
}
