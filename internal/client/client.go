// Package client talks to a Vulcan server's HTTP API. The CLI and tests use it.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/model"
)

// Error is an error response from the server.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// Client is a Vulcan API client.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// New returns a client for the server at base (e.g. http://127.0.0.1:8080).
func New(base, token string) *Client { return NewHTTP(base, token, &http.Client{}) }

// NewHTTP is New with the HTTP client to use.
func NewHTTP(base, token string, hc *http.Client) *Client {
	return &Client{base: strings.TrimRight(base, "/"), token: token, http: hc}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decoding response: %w", method, path, err)
	}
	return nil
}

// send adds the token and turns error responses into *Error.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the Vulcan server at %s (is `vulcan serve` running? set --server or VULCAN_SERVER): %w", c.base, err)
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		var eb api.ErrorBody
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(data, &eb) != nil || eb.Error.Message == "" {
			eb.Error = api.ErrorDetail{Code: "http_" + strconv.Itoa(resp.StatusCode), Message: strings.TrimSpace(resp.Status + " " + string(data))}
		}
		return nil, &Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	return resp, nil
}

// Run submits a workload and waits for it to end.
func (c *Client) Run(ctx context.Context, spec model.Spec) (*api.Workload, error) {
	var w api.Workload
	return &w, c.do(ctx, http.MethodPost, "/v1/workloads", spec, &w)
}

// Submit submits a workload and returns it pending.
func (c *Client) Submit(ctx context.Context, spec model.Spec) (*api.Workload, error) {
	var w api.Workload
	return &w, c.do(ctx, http.MethodPost, "/v1/workloads/async", spec, &w)
}

// Get returns a workload.
func (c *Client) Get(ctx context.Context, id string) (*api.Workload, error) {
	var w api.Workload
	return &w, c.do(ctx, http.MethodGet, "/v1/workloads/"+url.PathEscape(id), nil, &w)
}

// Kill kills a workload.
func (c *Client) Kill(ctx context.Context, id string) (*api.Workload, error) {
	var w api.Workload
	return &w, c.do(ctx, http.MethodDelete, "/v1/workloads/"+url.PathEscape(id), nil, &w)
}

// ListOptions filter List.
type ListOptions struct {
	Status, Runtime, Isolation string
	Limit, Offset              int
}

// List returns a page of workloads.
func (c *Client) List(ctx context.Context, o ListOptions) (*api.WorkloadList, error) {
	q := url.Values{}
	for k, v := range map[string]string{"status": o.Status, "runtime": o.Runtime, "isolation": o.Isolation} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	if o.Offset > 0 {
		q.Set("offset", strconv.Itoa(o.Offset))
	}
	var l api.WorkloadList
	return &l, c.do(ctx, http.MethodGet, "/v1/workloads?"+q.Encode(), nil, &l)
}

// Logs returns the log so far, reading it page by page.
func (c *Client) Logs(ctx context.Context, id string) ([]model.LogLine, error) {
	var all []model.LogLine
	var after int64
	for {
		var h api.LogHistory
		path := "/v1/workloads/" + url.PathEscape(id) + "/logs/history?limit=10000&after=" + strconv.FormatInt(after, 10)
		if err := c.do(ctx, http.MethodGet, path, nil, &h); err != nil {
			return all, err
		}
		all = append(all, h.Lines...)
		if !h.More || h.NextAfter <= after {
			return all, nil
		}
		after = h.NextAfter
	}
}

// Backends lists the server's backends.
func (c *Client) Backends(ctx context.Context) (*api.Backends, error) {
	var b api.Backends
	return &b, c.do(ctx, http.MethodGet, "/v1/backends", nil, &b)
}

// Follow streams a workload's log from the start, calling fn for each line, and returns
// the final workload. A dropped connection is resumed from the last line seen.
func (c *Client) Follow(ctx context.Context, id string, fn func(model.LogLine)) (*api.Workload, error) {
	var last int64
	return resumed(ctx, "following logs of "+id, func() (*api.Workload, error) { return c.followOnce(ctx, id, &last, fn) })
}

// resumed calls once until it succeeds, the server answers an error, ctx ends or five
// tries have failed, waiting a little longer before each new try: a stream a dropped
// connection cut resumes where once's own state left it.
func resumed[T any](ctx context.Context, what string, once func() (T, error)) (T, error) {
	var zero T
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return zero, ctx.Err()
			case <-time.After(time.Duration(attempt) * 500 * time.Millisecond):
			}
		}
		v, err := once()
		if err == nil {
			return v, nil
		}
		var apiErr *Error
		if errors.As(err, &apiErr) || ctx.Err() != nil {
			return zero, err
		}
		lastErr = err
	}
	return zero, fmt.Errorf("%s: %w", what, lastErr)
}

func (c *Client) followOnce(ctx context.Context, id string, last *int64, fn func(model.LogLine)) (*api.Workload, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/workloads/"+url.PathEscape(id)+"/logs", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if *last > 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatInt(*last, 10))
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	// One event is one line; the buffer grows only as far as the longest one. The server
	// keeps events small (a log line, or the final state without output), so this bound
	// only stops a broken or hostile server from growing it without end.
	sc.Buffer(nil, 16<<20)
	var event, data string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			switch event {
			case "done":
				var w api.Workload
				if err := json.Unmarshal([]byte(data), &w); err != nil {
					return nil, fmt.Errorf("bad done event: %w", err)
				}
				return &w, nil
			case "":
				if data != "" {
					var l model.LogLine
					if err := json.Unmarshal([]byte(data), &l); err != nil {
						return nil, fmt.Errorf("bad log event: %w", err)
					}
					if l.Seq > *last {
						*last = l.Seq
						fn(l)
					}
				}
			}
			event, data = "", ""
		case strings.HasPrefix(line, "event: "):
			event = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			data = line[len("data: "):]
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, io.ErrUnexpectedEOF
}

// ClusterStatus reports the cluster the server is a node of (404 for a single node).
func (c *Client) ClusterStatus(ctx context.Context) (*api.ClusterStatus, error) {
	var out api.ClusterStatus
	return &out, c.do(ctx, http.MethodGet, "/v1/cluster", nil, &out)
}
