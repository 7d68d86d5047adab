package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/template"
)

// TemplateList is GET /v1/templates.
type TemplateList struct {
	Templates []api.TemplateEntry `json:"templates"`
}

// Templates lists the built-in and user templates.
func (c *Client) Templates(ctx context.Context) (*TemplateList, error) {
	var l TemplateList
	return &l, c.do(ctx, http.MethodGet, "/v1/templates", nil, &l)
}

// RemoveTemplate removes a user template.
func (c *Client) RemoveTemplate(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/templates/"+url.PathEscape(name), nil, nil)
}

// BuildTemplate starts a build from a tar.gz context (query: name, dockerfile, network,
// build_arg...) and returns the build.
func (c *Client) BuildTemplate(ctx context.Context, query url.Values, context io.Reader) (*template.BuildInfo, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/templates?"+query.Encode(), context)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var b template.BuildInfo
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&b); err != nil {
		return nil, fmt.Errorf("decoding the build: %w", err)
	}
	return &b, nil
}

// FollowBuild streams a build's events from the start (resuming after a dropped
// connection) and returns the build once it has ended.
func (c *Client) FollowBuild(ctx context.Context, id string, fn func(template.Event)) (*template.BuildInfo, error) {
	last := 0
	return resumed(ctx, "following build "+id, func() (*template.BuildInfo, error) { return c.followBuildOnce(ctx, id, &last, fn) })
}

func (c *Client) followBuildOnce(ctx context.Context, id string, last *int, fn func(template.Event)) (*template.BuildInfo, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/builds/"+url.PathEscape(id)+"/events", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if *last > 0 {
		req.Header.Set("Last-Event-ID", strconv.Itoa(*last))
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 16<<20)
	var data string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data == "" {
				continue
			}
			var e template.Event
			if err := json.Unmarshal([]byte(data), &e); err != nil {
				return nil, fmt.Errorf("bad build event: %w", err)
			}
			data = ""
			*last = e.Seq
			fn(e)
			if e.Type == "end" && e.Build != nil {
				return e.Build, nil
			}
		case len(line) > 6 && line[:6] == "data: ":
			data = line[6:]
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, io.ErrUnexpectedEOF
}
