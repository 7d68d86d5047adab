package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
)

func sandboxPath(id string, rest ...string) string {
	p := "/v1/sandboxes/" + url.PathEscape(id)
	for _, r := range rest {
		p += r
	}
	return p
}

// CreateSandbox creates a sandbox and returns it running.
func (c *Client) CreateSandbox(ctx context.Context, spec model.SandboxSpec) (*api.Sandbox, error) {
	var sb api.Sandbox
	return &sb, c.do(ctx, http.MethodPost, "/v1/sandboxes", spec, &sb)
}

// GetSandbox returns one sandbox.
func (c *Client) GetSandbox(ctx context.Context, id string) (*api.Sandbox, error) {
	var sb api.Sandbox
	return &sb, c.do(ctx, http.MethodGet, sandboxPath(id), nil, &sb)
}

// ListSandboxes returns one page; query holds state, metadata, limit, cursor.
func (c *Client) ListSandboxes(ctx context.Context, query url.Values) (*api.SandboxList, error) {
	var l api.SandboxList
	return &l, c.do(ctx, http.MethodGet, "/v1/sandboxes?"+query.Encode(), nil, &l)
}

// KillSandbox kills a sandbox and returns it ended.
func (c *Client) KillSandbox(ctx context.Context, id string) (*api.Sandbox, error) {
	var sb api.Sandbox
	return &sb, c.do(ctx, http.MethodDelete, sandboxPath(id), nil, &sb)
}

// SetSandboxTimeout makes a sandbox end seconds from now.
func (c *Client) SetSandboxTimeout(ctx context.Context, id string, seconds int) (*api.Sandbox, error) {
	var sb api.Sandbox
	return &sb, c.do(ctx, http.MethodPost, sandboxPath(id, "/timeout"), map[string]int{"timeout_s": seconds}, &sb)
}

// PauseSandbox saves a running sandbox and stops its VM.
func (c *Client) PauseSandbox(ctx context.Context, id string) (*api.Sandbox, error) {
	var sb api.Sandbox
	return &sb, c.do(ctx, http.MethodPost, sandboxPath(id, "/pause"), struct{}{}, &sb)
}

// ResumeSandbox restores a paused sandbox; timeoutS 0 keeps its own timeout.
func (c *Client) ResumeSandbox(ctx context.Context, id string, timeoutS int) (*api.Sandbox, error) {
	var sb api.Sandbox
	return &sb, c.do(ctx, http.MethodPost, sandboxPath(id, "/resume"), map[string]int{"timeout_s": timeoutS}, &sb)
}

// Exec starts a process and calls fn for each of its events until its exit, which it
// returns.
func (c *Client) Exec(ctx context.Context, id string, req api.ProcessRequest, fn func(api.ProcessEvent)) (*api.ProcessEvent, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+sandboxPath(id, "/processes"), bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := c.send(hr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 8<<20)
	for sc.Scan() {
		var ev api.ProcessEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, fmt.Errorf("process stream: %w", err)
		}
		switch ev.Type {
		case "exit":
			return &ev, nil
		case "error":
			return nil, fmt.Errorf("process stream: %s", ev.Error)
		}
		if fn != nil {
			fn(ev)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("process stream: %w", err)
	}
	return nil, fmt.Errorf("process stream ended before the process's exit")
}

// ReadFile streams a file of a sandbox to w and returns its size.
func (c *Client) ReadFile(ctx context.Context, id, path string, w io.Writer) (int64, error) {
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+sandboxPath(id, "/files?path="+url.QueryEscape(path)), nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.send(hr)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = fmt.Errorf("read %s: got %d of %d bytes", path, n, resp.ContentLength)
	}
	return n, err
}

// WriteFile streams r into a file of a sandbox (parents made) with mode (0: default).
func (c *Client) WriteFile(ctx context.Context, id, path string, mode uint32, r io.Reader) (*protocol.FileInfo, error) {
	q := "/files?path=" + url.QueryEscape(path)
	if mode != 0 {
		q += "&mode=" + strconv.FormatUint(uint64(mode), 8)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPut, c.base+sandboxPath(id, q), r)
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.send(hr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var info protocol.FileInfo
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		return nil, fmt.Errorf("write %s: decoding response: %w", path, err)
	}
	return &info, nil
}

// Stat describes a path in a sandbox.
func (c *Client) Stat(ctx context.Context, id, path string) (*protocol.FileInfo, error) {
	var info protocol.FileInfo
	return &info, c.do(ctx, http.MethodGet, sandboxPath(id, "/fs/stat?path="+url.QueryEscape(path)), nil, &info)
}

// ListDir lists a directory of a sandbox to depth.
func (c *Client) ListDir(ctx context.Context, id, path string, depth int) ([]protocol.FileInfo, error) {
	var out struct {
		Entries []protocol.FileInfo `json:"entries"`
	}
	return out.Entries, c.do(ctx, http.MethodGet, sandboxPath(id, fmt.Sprintf("/fs?path=%s&depth=%d", url.QueryEscape(path), depth)), nil, &out)
}

// Watch watches a directory of a sandbox and calls fn for each change until ctx ends
// (nil error) or the watch ends (the error says why).
func (c *Client) Watch(ctx context.Context, id, path string, recursive bool, fn func(api.FSEvent)) error {
	q := fmt.Sprintf("/fs/watch?path=%s&recursive=%t", url.QueryEscape(path), recursive)
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+sandboxPath(id, q), nil)
	if err != nil {
		return err
	}
	resp, err := c.send(hr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 16<<10), 1<<20)
	var event, data string
	for sc.Scan() {
		switch line := sc.Text(); {
		case line == "":
			switch event {
			case "fs":
				var ev api.FSEvent
				if err := json.Unmarshal([]byte(data), &ev); err != nil {
					return fmt.Errorf("watch stream: %w", err)
				}
				fn(ev)
			case "error":
				var e api.ErrorDetail
				json.Unmarshal([]byte(data), &e)
				return fmt.Errorf("watch ended: %s", e.Message)
			}
			event, data = "", ""
		case strings.HasPrefix(line, "event: "):
			event = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			data = line[len("data: "):]
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("watch stream: %w", err)
	}
	return fmt.Errorf("the watch stream ended without saying why")
}
