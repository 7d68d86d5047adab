package api_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
)

// A million empty lines fit the 1 MiB byte cap; the history endpoint used to answer them
// in one 87 MB response. Now the engine caps lines and the endpoint pages.
func TestHistoryPagedAndBounded(t *testing.T) {
	fake := &backendtest.Fake{Run: func(ctx context.Context, job backend.Job, sink backend.Sink) (backend.Result, error) {
		for range 1 << 20 {
			sink.Line(model.Stdout, "")
		}
		return backend.Result{}, nil
	}}
	ts := newServer(t, engine.Config{OutputLineLimit: 25_000}, fake, "")
	resp, body := ts.do(t, http.MethodPost, "/v1/workloads", map[string]any{"runtime": "python", "code": "x"})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("submit: %d %s", resp.StatusCode, body)
	}
	w := decode[api.Workload](t, body)
	if !w.Truncated {
		t.Fatal("a million lines were not truncated by the line cap")
	}

	// The default page is bounded.
	resp, body = ts.do(t, http.MethodGet, "/v1/workloads/"+w.ID+"/logs/history", nil)
	first := decode[api.LogHistory](t, body)
	if resp.StatusCode != http.StatusOK || len(first.Lines) != 1000 || !first.More || first.NextAfter != 1000 {
		t.Fatalf("default page: %d, %d lines, more=%v next=%d", resp.StatusCode, len(first.Lines), first.More, first.NextAfter)
	}
	if len(body) > 200<<10 {
		t.Errorf("default page is %d bytes", len(body))
	}

	// Paging through gives every line once, in order, and ends with the truncation notice.
	var seqs []int64
	var last model.LogLine
	pages := 0
	for after := int64(0); ; pages++ {
		_, body := ts.do(t, http.MethodGet, fmt.Sprintf("/v1/workloads/%s/logs/history?limit=10000&after=%d", w.ID, after), nil)
		p := decode[api.LogHistory](t, body)
		for _, l := range p.Lines {
			seqs = append(seqs, l.Seq)
			last = l
		}
		if !p.More {
			break
		}
		after = p.NextAfter
	}
	if len(seqs) != 25_001 || pages != 2 {
		t.Fatalf("%d lines in %d pages, want 25,001 in 3", len(seqs), pages+1)
	}
	for i, s := range seqs {
		if s != int64(i+1) {
			t.Fatalf("line %d has seq %d", i, s)
		}
	}
	if last.Stream != model.System || !strings.Contains(last.Text, "25000 lines") {
		t.Fatalf("last line %+v", last)
	}

	// Past the end: an empty page that says so.
	_, body = ts.do(t, http.MethodGet, "/v1/workloads/"+w.ID+"/logs/history?after=999999", nil)
	if p := decode[api.LogHistory](t, body); len(p.Lines) != 0 || p.More || p.NextAfter != 999999 {
		t.Fatalf("past the end: %+v", p)
	}
	for _, q := range []string{"limit=0", "limit=10001", "limit=x", "after=-1", "after=y"} {
		resp, body := ts.do(t, http.MethodGet, "/v1/workloads/"+w.ID+"/logs/history?"+q, nil)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `"error"`) {
			t.Errorf("%s: %d %s", q, resp.StatusCode, body)
		}
	}
}
