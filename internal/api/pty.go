package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
	"github.com/vulcanhq/vulcan/internal/sandbox"
)

// ptySubprotocol is the WebSocket subprotocol of /v1/sandboxes/{id}/pty. Binary messages
// are terminal bytes both ways (keystrokes in, screen out); text messages are JSON
// control: {"type":"resize","cols":C,"rows":R} from the client, {"type":"exit",
// "exit_code":N,...} from the server as its last message.
const ptySubprotocol = "vulcan.pty.v1"

// PTYControl is a text message on the PTY WebSocket.
type PTYControl struct {
	Type     string `json:"type"` // resize | exit | error
	Cols     uint16 `json:"cols,omitempty"`
	Rows     uint16 `json:"rows,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Signal   string `json:"signal,omitempty"`
	Error    string `json:"error,omitempty"`
}

// ptyConnect starts a terminal in a sandbox (a login shell, or ?cmd=) and bridges it to
// a WebSocket. Closing the socket hangs the terminal up (SIGHUP to its process group).
func (s *Server) ptyConnect(w http.ResponseWriter, r *http.Request) {
	svc := s.sandboxes(w, r)
	if svc == nil {
		return
	}
	q := r.URL.Query()
	size := protocol.Size{Cols: 80, Rows: 24}
	for name, dst := range map[string]*uint16{"cols": &size.Cols, "rows": &size.Rows} {
		if v := q.Get(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1000 {
				s.writeError(w, r, fmt.Errorf("%w: %w", sandbox.ErrInvalid, &model.FieldError{Field: name, Reason: name + " must be 1 to 1000"}))
				return
			}
			*dst = uint16(n)
		}
	}
	spec := protocol.ProcessSpec{PTY: &size, Stdin: true, User: q.Get("user"), Cwd: q.Get("cwd"),
		Env: map[string]string{"TERM": "xterm-256color"}}
	if cmd := q.Get("cmd"); cmd != "" {
		spec.Shell = cmd
	} else {
		spec.Argv = []string{"/bin/bash", "-l"}
	}
	id := chi.URLParam(r, "id")
	st, pid, err := svc.StartProcess(r.Context(), id, spec)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer st.Close()
	// The guard has checked Origin and Host already (and refuses other origins), so the
	// library's own same-origin check is not needed on top.
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{ptySubprotocol}, InsecureSkipVerify: true})
	if err != nil {
		svc.Do(context.WithoutCancel(r.Context()), id, &protocol.Request{Op: protocol.OpProcessSignal, PID: pid, Signal: "KILL"})
		return
	}
	c.SetReadLimit(protocol.SessionFrameSize / 2)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()

	// Keystrokes and resizes, until the socket closes: then hang the terminal up.
	go func() {
		defer cancel()
		for {
			typ, data, err := c.Read(ctx)
			if err != nil {
				svc.Do(context.WithoutCancel(ctx), id, &protocol.Request{Op: protocol.OpProcessSignal, PID: pid, Signal: "HUP"})
				return
			}
			var req *protocol.Request
			if typ == websocket.MessageBinary {
				req = &protocol.Request{Op: protocol.OpProcessStdin, PID: pid, Data: data}
			} else {
				var ctl PTYControl
				if json.Unmarshal(data, &ctl) != nil || ctl.Type != "resize" || ctl.Cols == 0 || ctl.Rows == 0 || ctl.Cols > 1000 || ctl.Rows > 1000 {
					continue
				}
				req = &protocol.Request{Op: protocol.OpProcessResize, PID: pid, Size: &protocol.Size{Cols: ctl.Cols, Rows: ctl.Rows}}
			}
			if _, err := svc.Do(ctx, id, req); err != nil && ctx.Err() == nil {
				var oe *protocol.OpError
				if errors.As(err, &oe) && oe.Code == protocol.ErrCodeNoProcess {
					return // it exited; the event loop says so
				}
			}
		}
	}()

	for {
		ev, err := st.Event()
		if err != nil {
			msg := "the terminal's stream ended"
			if !errors.Is(err, io.EOF) {
				msg += ": " + err.Error()
			}
			writeControl(ctx, c, PTYControl{Type: "error", Error: msg})
			c.Close(websocket.StatusInternalError, "stream ended")
			return
		}
		switch {
		case ev.Output != nil:
			// The agent ends a message at each newline and leaves the newline out (only
			// a Partial message had none): put it back, or the screen never moves down.
			data := []byte(ev.Output.Data)
			if !ev.Output.Partial {
				data = append(data, '\n')
			}
			if err := c.Write(ctx, websocket.MessageBinary, data); err != nil {
				return
			}
		case ev.Exit != nil:
			code := ev.Exit.Code
			writeControl(ctx, c, PTYControl{Type: "exit", ExitCode: &code, Signal: ev.Exit.Signal, Error: ev.Exit.Error})
			c.Close(websocket.StatusNormalClosure, "exited")
			return
		}
	}
}

func writeControl(ctx context.Context, c *websocket.Conn, ctl PTYControl) {
	b, _ := json.Marshal(ctl)
	c.Write(ctx, websocket.MessageText, b)
}
