package api_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/dashboard"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/server/servertest"
)

// newServerWith is newServer with more API options.
func newServerWith(t testing.TB, fake *backendtest.Fake, opts func(*api.Options)) *testServer {
	t.Helper()
	s := servertest.NewStack(t, engine.Config{}, fake, func(o *api.Options) {
		o.Heartbeat = 50 * time.Millisecond
		if opts != nil {
			opts(o)
		}
	})
	return &testServer{Server: s.Server, fake: fake, st: s.Store}
}

// raw sends one request with exactly the given headers (Host among them) and no others
// the helper would add.
func (ts *testServer) raw(t testing.TB, method, path, body string, hdr map[string]string) (*http.Response, api.ErrorBody) {
	t.Helper()
	req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
	if body == "" {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e api.ErrorBody
	json.NewDecoder(resp.Body).Decode(&e)
	return resp, e
}

// A web page can make a browser send a "simple" cross-site request (text/plain, form
// encodings) to a loopback server, and a rebound DNS name reaches it as same-origin:
// neither may run code.
func TestCrossSiteRequestsAreRefused(t *testing.T) {
	ts := newServerWith(t, &backendtest.Fake{}, func(o *api.Options) {
		o.AllowedHosts = []string{"vulcan.internal", "proxy.example:8443"}
		o.AllowedOrigins = []string{"https://UI.example"}
	})
	self := ts.Listener.Addr().String()
	_, port, _ := strings.Cut(self, ":")
	const run = `{"runtime":"python","code":"print(1)"}`
	ctJSON := "application/json"
	for name, tc := range map[string]struct {
		hdr  map[string]string
		want int
		code string
	}{
		"text/plain from a form":        {map[string]string{"Content-Type": "text/plain", "Origin": "http://evil.example"}, 403, "origin_not_allowed"},
		"text/plain, no Origin":         {map[string]string{"Content-Type": "text/plain"}, 415, "unsupported_media_type"},
		"form encoded (curl -d)":        {map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"},
		"no content type":               {map[string]string{}, 415, "unsupported_media_type"},
		"json lookalike":                {map[string]string{"Content-Type": "application/json-seq"}, 415, "unsupported_media_type"},
		"json from another origin":      {map[string]string{"Content-Type": ctJSON, "Origin": "http://evil.example"}, 403, "origin_not_allowed"},
		"json from a null origin":       {map[string]string{"Content-Type": ctJSON, "Origin": "null"}, 403, "origin_not_allowed"},
		"loopback origin, another port": {map[string]string{"Content-Type": ctJSON, "Origin": "http://127.0.0.1:1"}, 403, "origin_not_allowed"},
		"rebound name":                  {map[string]string{"Content-Type": ctJSON, "Host": "evil.example:" + port}, 403, "host_not_allowed"},
		"rebound name, same origin":     {map[string]string{"Content-Type": ctJSON, "Host": "evil.example:" + port, "Origin": "http://evil.example:" + port}, 403, "host_not_allowed"},
		"loopback on another port":      {map[string]string{"Content-Type": ctJSON, "Host": "127.0.0.1:1"}, 403, "host_not_allowed"},
		"localhost, no port":            {map[string]string{"Content-Type": ctJSON, "Host": "localhost"}, 403, "host_not_allowed"},
		"suffix of a configured name":   {map[string]string{"Content-Type": ctJSON, "Host": "evil.vulcan.internal"}, 403, "host_not_allowed"},
		"configured name, other port":   {map[string]string{"Content-Type": ctJSON, "Host": "proxy.example:1"}, 403, "host_not_allowed"},

		"same origin":               {map[string]string{"Content-Type": ctJSON, "Origin": "http://" + self}, 200, ""},
		"json with a charset":       {map[string]string{"Content-Type": "application/json; charset=utf-8"}, 200, ""},
		"localhost":                 {map[string]string{"Content-Type": ctJSON, "Host": "localhost:" + port, "Origin": "http://localhost:" + port}, 200, ""},
		"IPv6 loopback":             {map[string]string{"Content-Type": ctJSON, "Host": "[::1]:" + port}, 200, ""},
		"configured name, any port": {map[string]string{"Content-Type": ctJSON, "Host": "VULCAN.internal:9"}, 200, ""},
		"configured name":           {map[string]string{"Content-Type": ctJSON, "Host": "vulcan.internal"}, 200, ""},
		"configured name:port":      {map[string]string{"Content-Type": ctJSON, "Host": "proxy.example:8443", "Origin": "https://proxy.example:8443"}, 200, ""},
		"configured origin":         {map[string]string{"Content-Type": ctJSON, "Origin": "https://ui.example"}, 200, ""},
		"no Origin (curl, the CLI)": {map[string]string{"Content-Type": ctJSON}, 200, ""},
	} {
		resp, e := ts.raw(t, "POST", "/v1/workloads", run, tc.hdr)
		if resp.StatusCode != tc.want || e.Error.Code != tc.code {
			t.Errorf("%s: %d %+v, want %d %q", name, resp.StatusCode, e, tc.want, tc.code)
		}
	}
	if got := len(ts.fake.Executed()); got != 9 {
		t.Errorf("%d workloads ran, want the 9 allowed", got)
	}
	// Reads are guarded too: a rebound page must not list workloads or stream logs.
	for _, path := range []string{"/v1/workloads", "/metrics", "/healthz"} {
		if resp, e := ts.raw(t, "GET", path, "", map[string]string{"Host": "evil.example:" + port}); resp.StatusCode != 403 || e.Error.Code != "host_not_allowed" {
			t.Errorf("GET %s with a foreign Host: %d %+v", path, resp.StatusCode, e)
		}
		if resp, e := ts.raw(t, "GET", path, "", map[string]string{"Origin": "http://evil.example"}); resp.StatusCode != 403 || e.Error.Code != "origin_not_allowed" {
			t.Errorf("GET %s from a foreign origin: %d %+v", path, resp.StatusCode, e)
		}
	}
	// A body-less DELETE needs no content type.
	if resp, e := ts.raw(t, "DELETE", "/v1/workloads/nope", "", nil); resp.StatusCode != 404 || e.Error.Code != "not_found" {
		t.Errorf("DELETE: %d %+v", resp.StatusCode, e)
	}
}

// Every failure is the API's JSON error, on every route, whoever produced it.
func TestEveryErrorIsJSON(t *testing.T) {
	ts := newServerWith(t, &backendtest.Fake{}, func(o *api.Options) { o.Dashboard = dashboard.New() })
	big := strings.Repeat("x", api.MaxHeaderBytes)
	for _, tc := range []struct {
		method, path string
		hdr          map[string]string
		status       int
		code, allow  string
	}{
		{"GET", "/v1/nope", nil, 404, "no_route", ""},
		{"GET", "/v1/workloads/x/nope", nil, 404, "no_route", ""},
		{"GET", "/assets/nope.js", nil, 404, "no_route", ""}, // the dashboard's own 404
		{"GET", "/favicon.ico", nil, 404, "no_route", ""},
		{"PUT", "/v1/workloads", nil, 405, "method_not_allowed", "GET, POST"},
		{"DELETE", "/v1/workloads", nil, 405, "method_not_allowed", "GET, POST"},
		{"POST", "/v1/workloads/abc", nil, 405, "method_not_allowed", "GET, DELETE"},
		{"POST", "/readyz", nil, 405, "method_not_allowed", "GET, HEAD"}, // HEAD: the dashboard
		{"BREW", "/v1/workloads", nil, 405, "method_not_allowed", "GET, POST"},
		{"POST", "/", nil, 405, "method_not_allowed", "GET, HEAD"}, // the dashboard's page
		{"DELETE", "/workloads/abc", nil, 405, "method_not_allowed", "GET, HEAD"},
		{"GET", "/v1/workloads", map[string]string{"X-Big": big}, 431, "headers_too_large", ""},
		{"GET", "/v1/workloads?limit=9999", nil, 400, "invalid_request", ""},
	} {
		resp, e := ts.raw(t, tc.method, tc.path, "", tc.hdr)
		if resp.StatusCode != tc.status || e.Error.Code != tc.code || e.Error.Message == "" ||
			resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: %d %s Allow %q %+v", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Allow"), e)
		}
	}
	// The dashboard still serves its page and assets.
	for _, path := range []string{"/", "/workloads/abc", "/assets/app.js"} {
		if resp, _ := ts.raw(t, "GET", path, "", nil); resp.StatusCode != 200 || strings.Contains(resp.Header.Get("Content-Type"), "json") {
			t.Errorf("GET %s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
	// Past net/http's own bound (1 MiB here, httptest's default) the server answers 431
	// itself, in plain text, before any handler: the one error that cannot be JSON.
	if resp, _ := ts.raw(t, "GET", "/v1/workloads", "", map[string]string{"X-Big": strings.Repeat("x", 1<<20+8<<10)}); resp.StatusCode != 431 {
		t.Errorf("over net/http's bound: %d", resp.StatusCode)
	}
}

// A filter that cannot be applied is refused, never dropped: the answer would be to
// another question.
func TestListFilterMistakesAre400(t *testing.T) {
	ts := newServer(t, engine.Config{}, &backendtest.Fake{}, "")
	for q, field := range map[string]string{
		"status=":                        "status",
		"status":                         "status",
		"status=done":                    "status",
		"status=completed&status=failed": "status",
		"runtime=":                       "runtime",
		"runtime=rust":                   "runtime",
		"isolation=":                     "isolation",
		"isolation=gvisor":               "isolation",
		"limit=":                         "limit",
		"limit=0":                        "limit",
		"limit=501":                      "limit",
		"limit=1&limit=2":                "limit",
		"offset=":                        "offset",
		"offset=-1":                      "offset",
		"stauts=completed":               "stauts",
		"page=2":                         "page",
	} {
		resp, data := ts.do(t, "GET", "/v1/workloads?"+q, nil)
		if e := decode[api.ErrorBody](t, data); resp.StatusCode != 400 || e.Error.Field != field {
			t.Errorf("%s: %d %s, want field %q", q, resp.StatusCode, data, field)
		}
	}
	q := url.Values{"status": {"completed"}, "runtime": {"go"}, "isolation": {"microvm"}, "limit": {"5"}, "offset": {"1"}}
	if resp, data := ts.do(t, "GET", "/v1/workloads?"+q.Encode(), nil); resp.StatusCode != 200 {
		t.Errorf("every filter: %d %s", resp.StatusCode, data)
	}
	if resp, data := ts.do(t, "GET", "/v1/workloads", nil); resp.StatusCode != 200 {
		t.Errorf("no filter: %d %s", resp.StatusCode, data)
	}
}
