package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/vulcanhq/vulcan/internal/api"
)

// CodeEvent is one event of a cell: Type is stdout, stderr, result, error,
// number_of_executions or end; the rest are its fields.
type CodeEvent struct {
	Type           string          `json:"type"`
	Text           string          `json:"text,omitempty"`
	Name           string          `json:"name,omitempty"`
	Value          string          `json:"value,omitempty"`
	Traceback      string          `json:"traceback,omitempty"`
	IsMainResult   bool            `json:"is_main_result,omitempty"`
	ExecutionCount int             `json:"execution_count,omitempty"`
	HTML           string          `json:"html,omitempty"`
	PNG            string          `json:"png,omitempty"`
	Chart          json.RawMessage `json:"chart,omitempty"`
	Raw            json.RawMessage `json:"-"`
}

// RunCode runs a cell in a sandbox's code interpreter, calling fn for each event in order.
func (c *Client) RunCode(ctx context.Context, id string, req api.CodeRequest, fn func(CodeEvent)) error {
	b, _ := json.Marshal(req)
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+sandboxPath(id, "/code"), bytes.NewReader(b))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("Accept", "text/event-stream")
	resp, err := c.send(hr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var e CodeEvent
		if json.Unmarshal([]byte(data), &e) != nil {
			continue
		}
		e.Raw = json.RawMessage(data)
		fn(e)
		if e.Type == "end" {
			return nil
		}
	}
	return sc.Err()
}
