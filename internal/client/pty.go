package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/coder/websocket"

	"github.com/vulcanhq/vulcan/internal/api"
)

// Terminal is an open PTY in a sandbox (GET /v1/sandboxes/{id}/pty).
type Terminal struct {
	c *websocket.Conn
}

// OpenTerminal starts a terminal of cols×rows in a sandbox: a login shell, or cmd.
func (c *Client) OpenTerminal(ctx context.Context, id string, cols, rows int, cmd string) (*Terminal, error) {
	q := url.Values{"cols": {strconv.Itoa(cols)}, "rows": {strconv.Itoa(rows)}}
	if cmd != "" {
		q.Set("cmd", cmd)
	}
	u := "ws" + strings.TrimPrefix(c.base, "http") + sandboxPath(id, "/pty?"+q.Encode())
	h := http.Header{}
	if c.token != "" {
		h.Set("Authorization", "Bearer "+c.token)
	}
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: h, Subprotocols: []string{"vulcan.pty.v1"}})
	if err != nil {
		if resp != nil && resp.StatusCode >= 400 {
			var eb api.ErrorBody
			if resp.Body != nil && json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&eb) == nil && eb.Error.Message != "" {
				return nil, &Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
			}
		}
		return nil, fmt.Errorf("open terminal: %w", err)
	}
	conn.SetReadLimit(16 << 20)
	return &Terminal{c: conn}, nil
}

// Input sends keystrokes.
func (t *Terminal) Input(ctx context.Context, b []byte) error {
	return t.c.Write(ctx, websocket.MessageBinary, b)
}

// Resize changes the terminal's size.
func (t *Terminal) Resize(ctx context.Context, cols, rows int) error {
	b, _ := json.Marshal(api.PTYControl{Type: "resize", Cols: uint16(cols), Rows: uint16(rows)})
	return t.c.Write(ctx, websocket.MessageText, b)
}

// Copy writes the terminal's output to w until the process exits, and returns its exit.
func (t *Terminal) Copy(ctx context.Context, w io.Writer) (*api.PTYControl, error) {
	for {
		typ, data, err := t.c.Read(ctx)
		if err != nil {
			return nil, fmt.Errorf("terminal: %w", err)
		}
		if typ == websocket.MessageBinary {
			if _, err := w.Write(data); err != nil {
				return nil, err
			}
			continue
		}
		var ctl api.PTYControl
		if json.Unmarshal(data, &ctl) != nil {
			continue
		}
		switch ctl.Type {
		case "exit":
			return &ctl, nil
		case "error":
			return nil, fmt.Errorf("terminal: %s", ctl.Error)
		}
	}
}

// Close hangs the terminal up.
func (t *Terminal) Close() error { return t.c.Close(websocket.StatusNormalClosure, "") }
