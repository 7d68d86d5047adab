package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
)

// logsStream serves a workload's log as Server-Sent Events: one event per line, with the
// line's seq as the event id, so a client that reconnects with Last-Event-ID (or ?after=N)
// resumes exactly after the last line it saw. When the workload has ended and every line
// has been sent, a "done" event carries the final workload (without its assembled output,
// which the lines already carried) and the stream closes.
func (s *Server) logsStream(w http.ResponseWriter, r *http.Request) {
	pos := r.Header.Get("Last-Event-ID")
	if pos == "" {
		pos = r.URL.Query().Get("after")
	}
	after, err := seqParam(pos)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f, err := s.o.Engine.Follow(r.Context(), chi.URLParam(r, "id"), after)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	bw, flush := startSSE(w)
	bw.WriteString("retry: 1000\n\n")
	if flush() != nil {
		return
	}
	for {
		ctx, cancel := context.WithTimeout(r.Context(), s.o.Heartbeat)
		lines, final, err := f.Next(ctx)
		cancel()
		switch {
		case r.Context().Err() != nil:
			return
		case errors.Is(err, context.DeadlineExceeded):
			bw.WriteString(": heartbeat\n\n")
		case err != nil:
			s.log.Error("streaming logs", "workload", chi.URLParam(r, "id"), "err", err)
			writeEvent(bw, "error", "", ErrorDetail{Code: "internal", Message: "log stream failed; reconnect to resume"})
			flush()
			return
		case final != nil:
			// The stream has delivered every line: the done event carries the final state
			// without the assembled output, which would repeat it (twice, as output and
			// stdout/stderr) in one unbounded event. GET the workload for it.
			done := NewWorkload(final)
			done.Output, done.Stdout, done.Stderr = "", "", ""
			writeEvent(bw, "done", "", done)
			flush()
			return
		default:
			for _, l := range lines {
				writeEvent(bw, "", formatSeq(l.Seq), l)
			}
		}
		if flush() != nil {
			return
		}
	}
}

// startSSE sends an event stream's headers and returns its buffered writer and a flush
// that pushes what is buffered to the client. Streams outlive any server write timeout
// by design.
func startSSE(w http.ResponseWriter) (*bufio.Writer, func() error) {
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriter(w)
	return bw, func() error {
		if err := bw.Flush(); err != nil {
			return err
		}
		return rc.Flush()
	}
}

func writeEvent(bw *bufio.Writer, event, id string, v any) {
	data, _ := json.Marshal(v) // our own types; cannot fail
	if event != "" {
		bw.WriteString("event: " + event + "\n")
	}
	if id != "" {
		bw.WriteString("id: " + id + "\n")
	}
	bw.WriteString("data: ")
	bw.Write(data)
	bw.WriteString("\n\n")
}

func formatSeq(n int64) string { return strconv.FormatInt(n, 10) }
