package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/portproxy"
	"github.com/vulcanhq/vulcan/internal/sandbox"
)

// CodeRequest is POST /v1/sandboxes/{id}/code: a cell for the sandbox's code interpreter
// (the code-interpreter template's service on port 49999).
type CodeRequest struct {
	Code string `json:"code"`
	// Language picks the language's default context (python, the default, or
	// javascript); ContextID a context made with POST .../ports/49999/contexts.
	Language  string            `json:"language,omitempty"`
	ContextID string            `json:"context_id,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	// TimeoutS interrupts the cell after this long (the context and its state live on);
	// 0: no limit but the client's.
	TimeoutS int `json:"timeout_s,omitempty"`
}

// maxCellEvent caps one event read from the interpreter (a large PNG is a few MiB).
const maxCellEvent = 64 << 20

// code runs a cell and streams its events as SSE: stdout, stderr, result (a MIME bundle:
// text, html, markdown, svg, png, jpeg, json, latex, chart), error {name, value,
// traceback}, number_of_executions, and end (after end_of_execution, or with the
// timeout's error).
func (s *Server) code(w http.ResponseWriter, r *http.Request) {
	svc := s.sandboxes(w, r)
	if svc == nil {
		return
	}
	var req CodeRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.TimeoutS < 0 || req.TimeoutS > model.MaxSandboxTimeoutS {
		s.writeError(w, r, invalidField("timeout_s", "timeout_s is 0 (none) to %d", model.MaxSandboxTimeoutS))
		return
	}
	id := chi.URLParam(r, "id")
	sb, err := svc.Get(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if sb.State != model.SandboxRunning {
		s.writeError(w, r, fmt.Errorf("%w: sandbox %s is %s", sandbox.ErrNotRunning, id, sb.State))
		return
	}
	ctx := r.Context()
	cancel := func() {}
	if req.TimeoutS > 0 {
		ctx, cancel = context.WithTimeout(ctx, time.Duration(req.TimeoutS)*time.Second)
	}
	defer cancel()
	body, _ := json.Marshal(map[string]any{"code": req.Code, "language": req.Language, "context_id": req.ContextID, "env_vars": req.Env})
	hreq, _ := http.NewRequestWithContext(ctx, http.MethodPost, portproxy.URL(sb.ID, sandbox.CodeInterpreterPort, "/execute"), bytes.NewReader(body))
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := s.ports.Client().Do(hreq)
	if err != nil {
		s.writeError(w, r, fmt.Errorf("%w: sandbox %s has no code interpreter answering on port %d (create it from the code-interpreter template): %v",
			sandbox.ErrNotRunning, id, sandbox.CodeInterpreterPort, err))
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 1<<20)).Decode(&e)
		s.writeError(w, r, fmt.Errorf("%w: the code interpreter: %s", sandbox.ErrInvalid, e.Error))
		return
	}
	bw, flush := startSSE(w)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, maxCellEvent)
	seq := 0
	for sc.Scan() {
		var ev struct {
			Type string `json:"type"`
		}
		line := sc.Bytes()
		if json.Unmarshal(line, &ev) != nil || ev.Type == "" {
			continue
		}
		if ev.Type == "keepalive" {
			bw.WriteString(": keepalive\n\n")
		} else {
			seq++
			writeRaw(bw, ev.Type, strconv.Itoa(seq), line)
		}
		if flush() != nil {
			return
		}
		if ev.Type == "end_of_execution" {
			writeRaw(bw, "end", strconv.Itoa(seq+1), []byte(`{"type":"end"}`))
			flush()
			return
		}
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) && r.Context().Err() == nil {
		msg, _ := json.Marshal(map[string]string{"type": "error", "name": "TimeoutError",
			"value": fmt.Sprintf("the cell ran longer than %d s and was interrupted (its context keeps its state)", req.TimeoutS), "traceback": ""})
		writeRaw(bw, "error", strconv.Itoa(seq+1), msg)
	}
	writeRaw(bw, "end", strconv.Itoa(seq+2), []byte(`{"type":"end"}`))
	flush()
}

// writeRaw writes an SSE event whose data is already JSON (one line).
func writeRaw(bw *bufio.Writer, event, id string, data []byte) {
	bw.WriteString("event: " + event + "\nid: " + id + "\ndata: ")
	bw.Write(data)
	bw.WriteString("\n\n")
}
