package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/server/servertest"
	"github.com/vulcanhq/vulcan/internal/store"
)

type testServer struct {
	*httptest.Server
	fake  *backendtest.Fake
	st    *store.Store
	token string
}

func newServer(t testing.TB, cfg engine.Config, fake *backendtest.Fake, token string) *testServer {
	t.Helper()
	s := servertest.NewStack(t, cfg, fake, func(o *api.Options) {
		o.Token, o.Heartbeat = token, 50*time.Millisecond
	})
	return &testServer{Server: s.Server, fake: fake, st: s.Store, token: token}
}

func (ts *testServer) do(t testing.TB, method, path string, body any, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, ts.URL+path, rd)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if ts.token != "" {
		req.Header.Set("Authorization", "Bearer "+ts.token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp, data
}

func decode[T any](t testing.TB, data []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("decoding %s: %v", data, err)
	}
	return v
}

func (ts *testServer) count(t *testing.T) int {
	_, total, err := ts.st.List(context.Background(), store.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

func TestSyncSubmitReturnsFinishedWorkload(t *testing.T) {
	ts := newServer(t, engine.Config{}, &backendtest.Fake{}, "")
	resp, body := ts.do(t, "POST", "/v1/workloads", `{"runtime":"python","code":"hello","input":{"a":1},"env":{"K":"v"},"resources":{"cpus":2}}`)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var raw map[string]any
	json.Unmarshal(body, &raw)
	for _, k := range []string{"id", "status", "isolation", "runtime", "exit_code", "output", "stdout", "stderr", "truncated", "error",
		"duration_ms", "queue_ms", "created_at", "started_at", "finished_at", "metadata", "backend", "entrypoint", "resources", "network"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("response lacks %q", k)
		}
	}
	for _, k := range []string{"code", "code_archive", "env", "input"} {
		if _, ok := raw[k]; ok {
			t.Errorf("response echoes %q", k)
		}
	}
	w := decode[api.Workload](t, body)
	if w.Status != model.StatusCompleted || w.Output != "hello\n" || *w.ExitCode != 0 || w.Isolation != "microvm" ||
		w.Resources.CPUs != 2 || w.Resources.MemMB != 256 || w.Network != "none" || w.Metadata["vm_id"] != "fake-"+w.ID {
		t.Fatalf("%+v", w)
	}
	resp, body = ts.do(t, "GET", "/v1/workloads/"+w.ID, nil)
	if got := decode[api.Workload](t, body); resp.StatusCode != 200 || got.ID != w.ID || got.Output != w.Output {
		t.Fatalf("GET: %d %s", resp.StatusCode, body)
	}
}

func TestAsyncSubmitListAndFilters(t *testing.T) {
	ts := newServer(t, engine.Config{}, &backendtest.Fake{}, "")
	var ids []string
	for _, rt := range []string{"python", "go", "python"} {
		resp, body := ts.do(t, "POST", "/v1/workloads/async", fmt.Sprintf(`{"runtime":%q,"code":"x"}`, rt))
		w := decode[api.Workload](t, body)
		if resp.StatusCode != 202 || resp.Header.Get("Location") != "/v1/workloads/"+w.ID || w.Status != model.StatusPending {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		ids = append(ids, w.ID)
	}
	for _, id := range ids {
		ts.do(t, "GET", "/v1/workloads/"+id+"/logs", nil) // returns when the workload is done
	}
	_, body := ts.do(t, "GET", "/v1/workloads?runtime=python&limit=1&offset=1", nil)
	l := decode[api.WorkloadList](t, body)
	if l.Total != 2 || l.Limit != 1 || l.Offset != 1 || len(l.Workloads) != 1 || l.Workloads[0].ID != ids[0] {
		t.Fatalf("%s", body)
	}
	_, body = ts.do(t, "GET", "/v1/workloads?status=completed&isolation=microvm", nil)
	if l := decode[api.WorkloadList](t, body); l.Total != 3 {
		t.Fatalf("%s", body)
	}
	for _, q := range []string{"limit=0", "limit=x", "offset=-1", "status=done", "runtime=rust", "isolation=gvisor"} {
		if resp, body := ts.do(t, "GET", "/v1/workloads?"+q, nil); resp.StatusCode != 400 {
			t.Errorf("%s: %d %s", q, resp.StatusCode, body)
		}
	}
	_, body = ts.do(t, "GET", "/v1/stats", nil)
	if st := decode[api.Stats](t, body); st.Total != 3 || st.ByRuntime["python"] != 2 || st.MaxConcurrent != 2 {
		t.Fatalf("stats %s", body)
	}
}

func TestBadInputIs4xxAndStoresNothing(t *testing.T) {
	ts := newServer(t, engine.Config{}, &backendtest.Fake{}, "")
	gz := base64.StdEncoding.EncodeToString([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255})
	for name, tc := range map[string]struct {
		body   string
		status int
		msg    string
	}{
		"invalid json":     {`{"runtime":`, 400, "not a valid workload"},
		"empty body":       {``, 400, "empty"},
		"trailing data":    {`{"runtime":"go","code":"x"} {}`, 400, "after the JSON"},
		"unknown field":    {`{"runtime":"go","code":"x","timeout":5}`, 400, "timeout"},
		"wrong type":       {`{"runtime":"go","code":"x","resources":{"cpus":"two"}}`, 400, "resources.cpus"},
		"both":             {`{"runtime":"go","code":"x","code_archive":"` + gz + `"}`, 400, "not both"},
		"neither":          {`{"runtime":"go"}`, 400, "required"},
		"bad base64":       {`{"runtime":"go","code_archive":"!!!notbase64"}`, 400, "base64"},
		"not gzip":         {`{"runtime":"go","code_archive":"` + base64.StdEncoding.EncodeToString([]byte("plain text")) + `"}`, 400, "gzip"},
		"unknown runtime":  {`{"runtime":"cobol","code":"x"}`, 400, "cobol"},
		"unknown isolate":  {`{"runtime":"go","code":"x","isolation":"gvisor"}`, 400, "gvisor"},
		"unknown network":  {`{"runtime":"go","code":"x","network":"lan"}`, 400, "lan"},
		"too many cpus":    {`{"runtime":"go","code":"x","resources":{"cpus":64}}`, 400, "cpus"},
		"too little mem":   {`{"runtime":"go","code":"x","resources":{"mem_mb":1}}`, 400, "mem_mb"},
		"timeout too long": {`{"runtime":"go","code":"x","resources":{"timeout_s":86400}}`, 400, "timeout_s"},
		"oversize body":    {`{"runtime":"go","code":"` + strings.Repeat("x", api.MaxBodyBytes) + `"}`, 413, "16 MiB"},
	} {
		for _, path := range []string{"/v1/workloads", "/v1/workloads/async"} {
			resp, body := ts.do(t, "POST", path, tc.body)
			e := decode[api.ErrorBody](t, body)
			if resp.StatusCode != tc.status || !strings.Contains(e.Error.Message, tc.msg) || e.Error.Code == "" {
				t.Errorf("%s %s: %d %s", name, path, resp.StatusCode, body)
			}
		}
	}
	if n := ts.count(t); n != 0 {
		t.Fatalf("%d workloads stored from bad input", n)
	}
	if got := ts.fake.Executed(); len(got) != 0 {
		t.Fatalf("bad input executed: %v", got)
	}
}

func TestNoBackendIs503WithReason(t *testing.T) {
	ts := newServer(t, engine.Config{}, nil, "")
	resp, body := ts.do(t, "POST", "/v1/workloads", `{"runtime":"python","code":"x"}`)
	e := decode[api.ErrorBody](t, body)
	if resp.StatusCode != 503 || e.Error.Code != "backend_unavailable" || !strings.Contains(e.Error.Message, "make images") {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	_, body = ts.do(t, "GET", "/v1/backends", nil)
	b := decode[api.Backends](t, body)
	if len(b.Backends) != 1 || b.Backends[0].Available || !strings.Contains(b.Backends[0].Reason, "make images") {
		t.Fatalf("%s", body)
	}
	if ts.count(t) != 0 {
		t.Fatal("stored a workload no backend can run")
	}
}

func TestKillAndConflict(t *testing.T) {
	b := backendtest.NewBlocker(1)
	ts := newServer(t, engine.Config{}, &backendtest.Fake{Run: b.Run}, "")
	_, body := ts.do(t, "POST", "/v1/workloads/async", `{"runtime":"go","code":"x"}`)
	w := decode[api.Workload](t, body)
	<-b.Started
	resp, body := ts.do(t, "DELETE", "/v1/workloads/"+w.ID, nil)
	if k := decode[api.Workload](t, body); resp.StatusCode != 200 || k.Status != model.StatusKilled {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	resp, body = ts.do(t, "DELETE", "/v1/workloads/"+w.ID, nil)
	if e := decode[api.ErrorBody](t, body); resp.StatusCode != 409 || e.Error.Code != "already_finished" {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if resp, _ := ts.do(t, "DELETE", "/v1/workloads/nope", nil); resp.StatusCode != 404 {
		t.Fatalf("kill unknown: %d", resp.StatusCode)
	}
	if resp, _ := ts.do(t, "GET", "/v1/workloads/nope", nil); resp.StatusCode != 404 {
		t.Fatalf("get unknown: %d", resp.StatusCode)
	}
}

func TestAdmissionLimitIs429(t *testing.T) {
	b := backendtest.NewBlocker(2)
	ts := newServer(t, engine.Config{MaxConcurrent: 1, QueueSize: 1}, &backendtest.Fake{Run: b.Run}, "")
	ts.do(t, "POST", "/v1/workloads/async", `{"runtime":"go","code":"1"}`)
	<-b.Started
	ts.do(t, "POST", "/v1/workloads/async", `{"runtime":"go","code":"2"}`)
	for _, path := range []string{"/v1/workloads/async", "/v1/workloads"} {
		resp, body := ts.do(t, "POST", path, `{"runtime":"go","code":"3"}`)
		if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || decode[api.ErrorBody](t, body).Error.Code != "busy" {
			t.Fatalf("%s: %d %v %s", path, resp.StatusCode, resp.Header, body)
		}
	}
	if n := ts.count(t); n != 2 {
		t.Fatalf("%d stored, want 2", n)
	}
	close(b.Release)
}

func TestTimeoutOverHTTP(t *testing.T) {
	fake := &backendtest.Fake{Run: func(ctx context.Context, _ backend.Job, _ backend.Sink) (backend.Result, error) {
		<-ctx.Done()
		return backend.Result{}, ctx.Err()
	}}
	ts := newServer(t, engine.Config{}, fake, "")
	_, body := ts.do(t, "POST", "/v1/workloads", `{"runtime":"go","code":"x","resources":{"timeout_s":1}}`)
	if w := decode[api.Workload](t, body); w.Status != model.StatusFailed || w.Error != "timed out after 1s" {
		t.Fatalf("%s", body)
	}
}

// sseEvent is one parsed Server-Sent Event.
type sseEvent struct{ id, event, data string }

func readSSE(t *testing.T, r io.Reader, stopAfter int) (events []sseEvent, heartbeats int) {
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	var cur sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur != (sseEvent{}) {
				events = append(events, cur)
				if cur.event == "done" || len(events) == stopAfter {
					return
				}
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, ":"):
			heartbeats++
		case strings.HasPrefix(line, "id: "):
			cur.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			cur.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			cur.data = line[6:]
		}
	}
	return
}

func TestSSEHistoryLiveResumeAndDone(t *testing.T) {
	step := make(chan struct{})
	fake := &backendtest.Fake{Run: func(ctx context.Context, _ backend.Job, sink backend.Sink) (backend.Result, error) {
		for i := 1; i <= 3; i++ {
			sink.Line(model.Stdout, fmt.Sprint("early ", i))
		}
		<-step
		for i := 4; i <= 6; i++ {
			sink.Line(model.Stderr, fmt.Sprint("late ", i))
		}
		return backend.Result{ExitCode: 0}, nil
	}}
	ts := newServer(t, engine.Config{}, fake, "")
	_, body := ts.do(t, "POST", "/v1/workloads/async", `{"runtime":"node","code":"x"}`)
	id := decode[api.Workload](t, body).ID

	resp, err := http.Get(ts.URL + "/v1/workloads/" + id + "/logs")
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("content type %q", resp.Header.Get("Content-Type"))
	}
	// Read the three early lines, then wait through heartbeats while nothing happens, and
	// hang up: the workload is still blocked on step.
	first, _ := readSSE(t, resp.Body, 3)
	resp.Body.Close()
	if len(first) != 3 || first[2].id != "3" {
		t.Fatalf("first connection: %+v", first)
	}
	close(step)

	// Resume after line 2: exactly lines 3..6, then done.
	req, _ := http.NewRequest("GET", ts.URL+"/v1/workloads/"+id+"/logs", nil)
	req.Header.Set("Last-Event-ID", "2")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rest, _ := readSSE(t, resp.Body, -1)
	resp.Body.Close()
	var seqs []string
	for _, e := range rest[:len(rest)-1] {
		var l model.LogLine
		json.Unmarshal([]byte(e.data), &l)
		if e.id != fmt.Sprint(l.Seq) || e.event != "" {
			t.Fatalf("event %+v", e)
		}
		seqs = append(seqs, e.id)
	}
	if strings.Join(seqs, ",") != "3,4,5,6" {
		t.Fatalf("resumed seqs %v", seqs)
	}
	done := rest[len(rest)-1]
	if done.event != "done" || decode[api.Workload](t, []byte(done.data)).Status != model.StatusCompleted {
		t.Fatalf("done event %+v", done)
	}
	// The lines carried the output; the done event does not repeat it.
	if fin := decode[api.Workload](t, []byte(done.data)); fin.Output != "" || fin.Stdout != "" || fin.ExitCode == nil {
		t.Fatalf("done event repeats the output or lacks the exit code: %+v", fin)
	}

	// After the end, the stored log replays the same way, and ?after works too.
	resp, err = http.Get(ts.URL + "/v1/workloads/" + id + "/logs?after=5")
	if err != nil {
		t.Fatal(err)
	}
	replay, _ := readSSE(t, resp.Body, -1)
	resp.Body.Close()
	if len(replay) != 2 || replay[0].id != "6" || replay[1].event != "done" {
		t.Fatalf("replay %+v", replay)
	}
	_, body = ts.do(t, "GET", "/v1/workloads/"+id+"/logs/history?after=4", nil)
	h := decode[api.LogHistory](t, body)
	if len(h.Lines) != 2 || h.Lines[0].Seq != 5 || h.Lines[0].Stream != model.Stderr || h.Lines[1].Text != "late 6" {
		t.Fatalf("history %s", body)
	}
	if resp, _ := ts.do(t, "GET", "/v1/workloads/nope/logs", nil); resp.StatusCode != 404 {
		t.Fatalf("logs of unknown: %d", resp.StatusCode)
	}
}

func TestSSEHeartbeat(t *testing.T) {
	b := backendtest.NewBlocker(1)
	ts := newServer(t, engine.Config{}, &backendtest.Fake{Run: b.Run}, "")
	_, body := ts.do(t, "POST", "/v1/workloads/async", `{"runtime":"go","code":"x"}`)
	id := decode[api.Workload](t, body).ID
	<-b.Started
	resp, err := http.Get(ts.URL + "/v1/workloads/" + id + "/logs")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if sc.Text() == ": heartbeat" {
			close(b.Release)
			return
		}
	}
	t.Fatal("stream ended without a heartbeat")
}

func TestAuth(t *testing.T) {
	ts := newServer(t, engine.Config{}, &backendtest.Fake{}, "s3cret")
	for _, path := range []string{"/v1/workloads", "/v1/backends", "/metrics", "/v1/openapi.json"} {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s without token: %d", path, resp.StatusCode)
		}
	}
	req, _ := http.NewRequest("GET", ts.URL+"/v1/workloads", nil)
	req.Header.Set("Authorization", "Bearer wrong")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 401 {
		t.Errorf("wrong token: %d", resp.StatusCode)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if resp, err := http.Get(ts.URL + path); err != nil || resp.StatusCode != 200 {
			t.Errorf("%s must not need the token: %d", path, resp.StatusCode)
		}
	}
	if resp, body := ts.do(t, "GET", "/v1/workloads", nil); resp.StatusCode != 200 {
		t.Errorf("with token: %d %s", resp.StatusCode, body)
	}
}

func TestMetricsAndProbes(t *testing.T) {
	ts := newServer(t, engine.Config{}, &backendtest.Fake{}, "")
	ts.do(t, "POST", "/v1/workloads", `{"runtime":"go","code":"x"}`)
	_, body := ts.do(t, "GET", "/metrics", nil)
	for _, want := range []string{
		`vulcan_http_requests_total{code="200",method="POST",route="/v1/workloads"} 1`,
		`vulcan_workloads_submitted_total{runtime="go"} 1`,
		`vulcan_workloads_finished_total{status="completed"} 1`,
		"vulcan_queue_depth 0", "vulcan_workloads_running 0", "vulcan_workload_duration_seconds_bucket",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if resp, body := ts.do(t, "GET", "/readyz", nil); resp.StatusCode != 200 {
		t.Errorf("readyz %d %s", resp.StatusCode, body)
	}
	if resp, body := ts.do(t, "GET", "/nope", nil); resp.StatusCode != 404 || decode[api.ErrorBody](t, body).Error.Code != "no_route" {
		t.Errorf("unknown route %d %s", resp.StatusCode, body)
	}
	if resp, _ := ts.do(t, "PUT", "/v1/workloads", nil); resp.StatusCode != 405 {
		t.Errorf("wrong method %d", resp.StatusCode)
	}
}

// Every route the router serves must be described in the OpenAPI document.
func TestOpenAPICoversEveryRoute(t *testing.T) {
	ts := newServer(t, engine.Config{}, &backendtest.Fake{}, "")
	_, body := ts.do(t, "GET", "/v1/openapi.json", nil)
	var doc struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(body, &doc); err != nil || !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("not an OpenAPI 3 document: %v", err)
	}
	st, _ := store.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	defer st.Close()
	e, _ := engine.New(context.Background(), engine.Options{Store: st, Registry: backend.NewRegistry()})
	defer e.Shutdown(context.Background())
	srv, _ := api.New(api.Options{Engine: e, Registry: backend.NewRegistry(), Gatherer: prometheus.NewRegistry()})
	n := 0
	err := chi.Walk(srv.Router(), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		n++
		if _, ok := doc.Paths[route][strings.ToLower(method)]; !ok {
			t.Errorf("%s %s is not in openapi.json", method, route)
		}
		return nil
	})
	if err != nil || n < 13 {
		t.Fatalf("walked %d routes: %v", n, err)
	}
}
