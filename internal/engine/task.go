package engine

import (
	"container/list"
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/model"
)

// task is a live workload: admitted and not yet persisted as terminal.
type task struct {
	id      string
	backend backend.Backend

	mu        sync.Mutex
	w         *model.Workload // status, timestamps; output is built in out*
	lines     []model.LogLine // every line so far; lines[i].Seq == i+1
	outBytes  int             // stdout+stderr bytes kept, newlines included
	outLines  int             // stdout+stderr lines kept
	truncated bool
	out       strings.Builder
	stdout    strings.Builder
	stderr    strings.Builder
	changed   chan struct{} // closed and replaced whenever lines or status change
	cancel    context.CancelCauseFunc
	killed    bool
	elem      *list.Element   // its place in Engine.queue while queued (guarded by Engine.mu)
	finishing bool            // finish has begun; the log is frozen
	final     *model.Workload // set once the terminal status is persisted
	limit     int             // OutputLimit: bytes
	lineLimit int             // OutputLineLimit: lines (0: none)

	// flushMu serialises writes of this task's lines so each is written exactly once;
	// persisted (guarded by it) counts the lines already in the store.
	flushMu   sync.Mutex
	persisted int

	finished chan struct{} // closed after final is set
}

func newTask(w *model.Workload, b backend.Backend, outputLimit, lineLimit int) *task {
	return &task{id: w.ID, backend: b, w: w, limit: outputLimit, lineLimit: lineLimit,
		changed: make(chan struct{}), finished: make(chan struct{})}
}

// copyLocked returns a copy of the workload with the output collected so far.
func (t *task) copyLocked() *model.Workload {
	w := *t.w
	w.Metadata = maps.Clone(t.w.Metadata)
	w.Output, w.Stdout, w.Stderr = t.out.String(), t.stdout.String(), t.stderr.String()
	w.Truncated = w.Truncated || t.truncated
	return &w
}

func (t *task) snapshot() *model.Workload {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.final != nil {
		w := *t.final
		return &w
	}
	return t.copyLocked()
}

func (t *task) broadcastLocked() {
	close(t.changed)
	t.changed = make(chan struct{})
}

func (t *task) append(stream model.Stream, text string, partial bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.appendLocked(stream, text, partial)
}

// appendLocked records one line (or, when partial, bytes not followed by a newline),
// enforcing the output caps on stdout and stderr: bytes (each newline counted) and lines.
// Past a cap the rest is dropped, and one system line says which cap was reached.
func (t *task) appendLocked(stream model.Stream, text string, partial bool) {
	if t.finishing {
		return
	}
	switch stream {
	case model.Stdout, model.Stderr, model.System:
	default:
		stream = model.Stdout
	}
	text = strings.ToValidUTF8(text, "\uFFFD")
	if stream == model.System {
		t.record(stream, text, false)
		t.broadcastLocked()
		return
	}
	if t.truncated {
		return
	}
	if t.lineLimit > 0 && t.outLines >= t.lineLimit {
		t.truncateLocked(fmt.Sprintf("output truncated: the limit of %d lines was reached", t.lineLimit))
		return
	}
	cost := len(text)
	if !partial {
		cost++
	}
	if room := t.limit - t.outBytes; cost > room {
		// Keep what fits of the line that crossed the limit, cut on a rune boundary; its
		// newline did not fit, so it is stored as partial.
		cut := min(room, len(text))
		for cut > 0 && cut < len(text) && !utf8.RuneStart(text[cut]) {
			cut--
		}
		if cut > 0 {
			t.record(stream, text[:cut], true)
		}
		t.truncateLocked(fmt.Sprintf("output truncated: the limit of %d bytes was reached", t.limit))
		return
	}
	t.record(stream, text, partial)
	t.broadcastLocked()
}

// truncateLocked marks the output truncated and says why in a system line.
func (t *task) truncateLocked(why string) {
	t.truncated = true
	t.record(model.System, why, false)
	t.broadcastLocked()
}

func (t *task) record(stream model.Stream, text string, partial bool) {
	t.lines = append(t.lines, model.LogLine{Seq: int64(len(t.lines) + 1), Stream: stream, Text: text, Partial: partial, Time: time.Now().UTC()})
	if stream == model.System {
		return
	}
	t.outLines++
	t.outBytes += len(text)
	if !partial {
		t.outBytes++
	}
	b := &t.stdout
	if stream == model.Stderr {
		b = &t.stderr
	}
	t.out.WriteString(text)
	b.WriteString(text)
	if !partial {
		t.out.WriteByte('\n')
		b.WriteByte('\n')
	}
}

// linesAfter returns up to limit lines with seq > after, the channel that will be closed
// at the next change, and the final workload if the task has ended.
func (t *task) linesAfter(after int64, limit int) ([]model.LogLine, <-chan struct{}, *model.Workload) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []model.LogLine
	if after < 0 {
		after = 0
	}
	if after < int64(len(t.lines)) {
		rest := t.lines[after:]
		if limit > 0 && len(rest) > limit {
			rest = rest[:limit]
		}
		out = append([]model.LogLine(nil), rest...)
	}
	return out, t.changed, t.final
}

// taskSink is the Sink a backend writes a task's output to.
type taskSink struct{ t *task }

func (s taskSink) Line(stream model.Stream, text string) { s.t.append(stream, text, false) }

func (s taskSink) Partial(stream model.Stream, text string) { s.t.append(stream, text, true) }
