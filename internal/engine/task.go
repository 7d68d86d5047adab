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
	outBytes  int
	truncated bool
	out       strings.Builder
	stdout    strings.Builder
	stderr    strings.Builder
	changed   chan struct{} // closed and replaced whenever lines or status change
	cancel    context.CancelCauseFunc
	killed    bool
	elem      *list.Element // its place in Engine.queue while queued (guarded by Engine.mu)
	finishing bool            // finish has begun; the log is frozen
	final     *model.Workload // set once the terminal status is persisted
	limit     int

	// flushMu serialises writes of this task's lines so each is written exactly once;
	// persisted (guarded by it) counts the lines already in the store.
	flushMu   sync.Mutex
	persisted int

	finished chan struct{} // closed after final is set
}

func newTask(w *model.Workload, b backend.Backend, outputLimit int) *task {
	return &task{id: w.ID, backend: b, w: w, limit: outputLimit, changed: make(chan struct{}), finished: make(chan struct{})}
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

func (t *task) append(stream model.Stream, text string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.appendLocked(stream, text)
}

// appendLocked records one line, enforcing the output cap on stdout and stderr.
func (t *task) appendLocked(stream model.Stream, text string) {
	if t.finishing {
		return
	}
	switch stream {
	case model.Stdout, model.Stderr, model.System:
	default:
		stream = model.Stdout
	}
	text = strings.ToValidUTF8(text, "\uFFFD")
	if stream != model.System {
		room := t.limitBytes() - t.outBytes
		if len(text)+1 > room {
			if t.truncated {
				return
			}
			t.truncated = true
			// Keep what fits of the line that crossed the limit, cut on a rune boundary.
			if cut := room - 1; cut > 0 {
				for cut > 0 && !utf8.RuneStart(text[cut]) {
					cut--
				}
				t.record(stream, text[:cut])
			}
			t.outBytes = t.limitBytes()
			t.record(model.System, fmt.Sprintf("output truncated: the limit of %d bytes was reached", t.limitBytes()))
			t.broadcastLocked()
			return
		}
	}
	t.record(stream, text)
	t.broadcastLocked()
}

func (t *task) record(stream model.Stream, text string) {
	t.lines = append(t.lines, model.LogLine{Seq: int64(len(t.lines) + 1), Stream: stream, Text: text, Time: time.Now().UTC()})
	if stream == model.System {
		return
	}
	t.outBytes += len(text) + 1
	t.out.WriteString(text)
	t.out.WriteByte('\n')
	b := &t.stdout
	if stream == model.Stderr {
		b = &t.stderr
	}
	b.WriteString(text)
	b.WriteByte('\n')
}

func (t *task) limitBytes() int { return t.limit }

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

func (s taskSink) Line(stream model.Stream, text string) { s.t.append(stream, text) }
