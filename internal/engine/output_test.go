package engine_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
)

// logBytes puts a stream back together from log lines: each text followed by a newline
// unless partial.
func logBytes(lines []model.LogLine, s model.Stream) []byte {
	var b []byte
	for _, l := range lines {
		if l.Stream == s {
			b = append(b, l.Text...)
			if !l.Partial {
				b = append(b, '\n')
			}
		}
	}
	return b
}

// Property: whatever a backend hands the sink (lines and partial chunks, both streams,
// random sizes) is what the workload's stdout/stderr, its live log, its stored log and its
// history say, byte for byte — up to the cap, past which each is a prefix and one system
// line says so.
func TestOutputBytesSurviveEveryLayer(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 1))
	var compared int
	for c := range 40 {
		type piece struct {
			s       model.Stream
			text    string
			partial bool
		}
		var pieces []piece
		wantOut, wantErr := []byte{}, []byte{}
		for i := range r.IntN(3000) + 1 {
			s := model.Stdout
			if r.IntN(2) == 0 {
				s = model.Stderr
			}
			text := strings.Repeat(string(rune('a'+i%26)), r.IntN(200))
			partial := r.IntN(10) == 0
			pieces = append(pieces, piece{s, text, partial})
			b := []byte(text)
			if !partial {
				b = append(b, '\n')
			}
			if s == model.Stdout {
				wantOut = append(wantOut, b...)
			} else {
				wantErr = append(wantErr, b...)
			}
		}
		limit := 1 << 20
		if c%2 == 1 {
			limit = r.IntN(len(wantOut)+len(wantErr)) + 1
		}
		fake := &backendtest.Fake{Run: func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
			for _, p := range pieces {
				if p.partial {
					sink.Partial(p.s, p.text)
				} else {
					sink.Line(p.s, p.text)
				}
			}
			return backend.Result{}, nil
		}}
		env := newEnv(t, engine.Config{OutputLimit: limit, LogFlushInterval: time.Millisecond}, fake)
		w, err := env.e.Run(context.Background(), py("x"))
		if err != nil {
			t.Fatal(err)
		}
		stored, _ := env.st.Logs(context.Background(), w.ID, 0, 0)
		history, _ := env.e.Logs(context.Background(), w.ID, 0, 0)
		total := len(wantOut) + len(wantErr)
		check := func(name string, got, want []byte) {
			t.Helper()
			compared += len(got)
			if total <= limit && !bytes.Equal(got, want) || total > limit && !bytes.HasPrefix(want, got) {
				t.Fatalf("case %d %s: %d bytes, want %d (limit %d, written %d)", c, name, len(got), len(want), limit, total)
			}
		}
		check("stdout", []byte(w.Stdout), wantOut)
		check("stderr", []byte(w.Stderr), wantErr)
		check("stored stdout", logBytes(stored, model.Stdout), wantOut)
		check("stored stderr", logBytes(stored, model.Stderr), wantErr)
		check("history stdout", logBytes(history, model.Stdout), wantOut)
		if got := len(w.Stdout) + len(w.Stderr); got != min(total, limit) || len(w.Output) != got {
			t.Fatalf("case %d: kept %d bytes (output %d), want %d", c, got, len(w.Output), min(total, limit))
		}
		if w.Truncated != (total > limit) {
			t.Fatalf("case %d: truncated=%v with %d bytes written under a %d cap", c, w.Truncated, total, limit)
		}
		if w.Truncated && !strings.Contains(stored[len(stored)-1].Text, "output truncated") {
			t.Fatalf("case %d: last line %+v, want the truncation notice", c, stored[len(stored)-1])
		}
	}
	t.Logf("%d bytes compared", compared)
}

// The line cap: the byte cap alone admitted 1,048,576 empty lines (history of 87 MB).
func TestOutputLineLimit(t *testing.T) {
	fake := &backendtest.Fake{Run: func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
		if job.LineLimit != 1000 {
			return backend.Result{}, fmt.Errorf("job line limit %d, want the engine's 1000", job.LineLimit)
		}
		for range 1 << 20 {
			sink.Line(model.Stdout, "")
		}
		return backend.Result{}, nil
	}}
	env := newEnv(t, engine.Config{OutputLineLimit: 1000}, fake)
	w, err := env.e.Run(context.Background(), py("x"))
	if err != nil {
		t.Fatal(err)
	}
	lines, _ := env.st.Logs(context.Background(), w.ID, 0, 0)
	if !w.Truncated || w.Status != model.StatusCompleted || w.Stdout != strings.Repeat("\n", 1000) || len(lines) != 1001 {
		t.Fatalf("truncated=%v status %s, %d stdout bytes, %d lines", w.Truncated, w.Status, len(w.Stdout), len(lines))
	}
	if last := lines[1000]; last.Stream != model.System || !strings.Contains(last.Text, "1000 lines") {
		t.Fatalf("last line %+v", last)
	}
}

// Output the guest dropped (a cut drain, its own cap) is reported with a system line too.
func TestGuestTruncationIsLogged(t *testing.T) {
	for name, reason := range map[string]string{"cut": "output cut: something held stdout", "limit": ""} {
		t.Run(name, func(t *testing.T) {
			fake := &backendtest.Fake{Run: func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
				sink.Line(model.Stdout, "kept")
				return backend.Result{Truncated: true, TruncatedReason: reason}, nil
			}}
			env := newEnv(t, engine.Config{}, fake)
			w, err := env.e.Run(context.Background(), py("x"))
			if err != nil {
				t.Fatal(err)
			}
			lines, _ := env.st.Logs(context.Background(), w.ID, 0, 0)
			want := reason
			if want == "" {
				want = "output truncated by the guest"
			}
			if !w.Truncated || w.Stdout != "kept\n" || len(lines) != 2 || lines[1].Stream != model.System || !strings.Contains(lines[1].Text, want) {
				t.Fatalf("truncated=%v stdout %q lines %+v", w.Truncated, w.Stdout, lines)
			}
		})
	}
}
