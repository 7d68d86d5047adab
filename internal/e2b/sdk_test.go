package e2b_test

import (
	"bytes"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/e2b/e2btest"
	"github.com/vulcanhq/vulcan/internal/sandbox/sandboxtest"
	"github.com/vulcanhq/vulcan/internal/server/servertest"
)

// e2bServer is Vulcan's API (E2B's routes included) over sandboxes whose "VMs" are the
// real guest agent in this process; the real-VM path runs in acceptance.
func e2bServer(t *testing.T, token string) *servertest.Stack {
	t.Helper()
	return servertest.New(t, servertest.Options{Fake: &backendtest.Fake{}, Launcher: sandboxtest.NewAgentLauncher(t),
		API: func(o *api.Options) { o.Token = token }})
}

// TestOfficialSDK drives the official E2B JavaScript SDK (pinned) through every call
// it makes for sandboxes, commands, files, watches and terminals, against a real
// server with a token.
func TestOfficialSDK(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node is not installed")
	}
	s := e2bServer(t, "sekret")
	for _, m := range e2btest.SDKModules {
		t.Run(m, func(t *testing.T) { e2btest.RunSDK(t, m, s.Server.URL, "sekret", "python") })
	}
}

// TestControlPlaneEdges: what the SDK does not send (wrong keys, malformed bodies,
// refused options) gets E2B's error shape with a numeric code.
func TestControlPlaneEdges(t *testing.T) {
	s := e2bServer(t, "sekret")
	do := func(method, path, key, body string, hdr ...string) (int, string) {
		req, _ := http.NewRequest(method, s.Server.URL+path, strings.NewReader(body))
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		if key != "" {
			req.Header.Set("X-API-Key", key)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String()
	}
	for _, c := range []struct {
		method, path, key, body string
		status                  int
		want                    string
	}{
		{"POST", "/v2/sandboxes", "", `{"templateID":"python"}`, 401, `"code":401`},
		{"POST", "/v2/sandboxes", "wrong", `{"templateID":"python"}`, 401, `"code":401`},
		{"POST", "/v2/sandboxes", "sekret", `{"templateID":`, 400, `"code":400`},
		{"POST", "/v2/sandboxes", "sekret", `{"templateID":"cobol"}`, 404, `not found`},
		{"POST", "/v2/sandboxes", "sekret", `{"templateID":"python","autoPause":true,"autoPauseMemory":false}`, 400, `memory only`},
		{"POST", "/v2/sandboxes", "sekret", `{"templateID":"python","mcp":{"x":{}}}`, 400, `MCP`},
		{"POST", "/v2/sandboxes", "sekret", `{"templateID":"python","timeout":0}`, 400, `timeout`},
		{"POST", "/v2/sandboxes", "sekret", `{"templateID":"python","timeout":999999999}`, 400, `timeout`},
		{"POST", "/v2/sandboxes", "sekret", `{"templateID":"python","network":{"rules":{"a":[]}}}`, 400, `allowOut`},
		{"GET", "/sandboxes/01hzzzzzzzzzzzzzzzzzzzzzzz", "sekret", "", 404, `"code":404`},
		{"GET", "/sandboxes/NOT-A-ULID", "sekret", "", 404, `"code":404`},
		{"DELETE", "/sandboxes/01hzzzzzzzzzzzzzzzzzzzzzzz", "sekret", "", 404, `"code":404`},
		{"GET", "/v2/sandboxes?state=exploded", "sekret", "", 400, `"code":400`},
		{"GET", "/v2/sandboxes?nextToken=zzz", "sekret", "", 400, `"code":400`},
		{"GET", "/v2/sandboxes?limit=0", "sekret", "", 400, `"code":400`},
		{"GET", "/v2/sandboxes?state=paused", "sekret", "", 200, `[]`},
		{"GET", "/v2/sandboxes/x/nothing", "sekret", "", 404, `"code":404`},
	} {
		status, body := do(c.method, c.path, c.key, c.body)
		if status != c.status || !strings.Contains(body, c.want) {
			t.Errorf("%s %s (key %q, body %s): %d %s; want %d with %s", c.method, c.path, c.key, c.body, status, body, c.status, c.want)
		}
	}
	// The dashboard's pages stay where they were: a browser's GET of /sandboxes (no
	// API key) is not E2B's.
	if status, body := do("GET", "/sandboxes", "", ""); strings.Contains(body, `"code":401`) {
		t.Errorf("GET /sandboxes without a key went to E2B: %d %s", status, body)
	}

	// envd: unknown sandbox, wrong token, other ports.
	status, body := do("POST", "/v2/sandboxes", "sekret", `{"templateID":"python"}`)
	if status != 201 {
		t.Fatalf("create: %d %s", status, body)
	}
	id := between(body, `"sandboxID":"`, `"`)
	token := between(body, `"envdAccessToken":"`, `"`)
	for _, c := range []struct {
		hdr    []string
		status int
	}{
		{[]string{"E2b-Sandbox-Id", id, "X-Access-Token", "wrong"}, 401},
		{[]string{"E2b-Sandbox-Id", "01hzzzzzzzzzzzzzzzzzzzzzzz", "X-Access-Token", token}, 502},
		{[]string{"E2b-Sandbox-Id", "bogus", "X-Access-Token", token}, 502},
		{[]string{"E2b-Sandbox-Id", id, "X-Access-Token", token, "E2b-Sandbox-Port", "8080"}, 502},
		{[]string{"E2b-Sandbox-Id", id, "X-Access-Token", token, "Authorization", "Basic " + "bm9ib2R5Og=="}, 401}, // nobody:
		{[]string{"E2b-Sandbox-Id", id, "X-Access-Token", token}, 204},
	} {
		if status, body := do("GET", "/health", "", "", c.hdr...); status != c.status {
			t.Errorf("envd /health with %v: %d %s, want %d", c.hdr, status, body, c.status)
		}
	}
	hdr := []string{"E2b-Sandbox-Id", id, "X-Access-Token", token}
	if status, body := do("POST", "/files?path=/tmp/x", "", "plain", append(hdr, "Content-Type", "text/plain")...); status != 415 {
		t.Errorf("upload as text/plain: %d %s", status, body)
	}
	if status, body := do("POST", "/files?path=/tmp/x", "", "x", append(hdr, "Content-Type", "application/octet-stream", "X-Metadata-K", "v")...); status != 400 {
		t.Errorf("upload with metadata: %d %s", status, body)
	}
	if status, body := do("POST", "/files?path=/tmp/x", "", "not gzip", append(hdr, "Content-Type", "application/octet-stream", "Content-Encoding", "gzip")...); status != 400 {
		t.Errorf("bad gzip: %d %s", status, body)
	}
	if status, body := do("GET", "/files?path=/nope", "", "", hdr...); status != 404 || !strings.Contains(body, `"code":404`) {
		t.Errorf("read missing: %d %s", status, body)
	}
	if status, _ := do("DELETE", "/sandboxes/"+id, "sekret", ""); status != 204 {
		t.Errorf("kill: %d", status)
	}
	// A killed sandbox's daemon is gone: every envd call is a 502.
	if status, body := do("GET", "/health", "", "", hdr...); status != 502 || !strings.Contains(body, "killed") {
		t.Errorf("health after kill: %d %s", status, body)
	}
	if status, _ := do("POST", "/process.Process/List", "", "{}", append(hdr, "Content-Type", "application/json")...); status != 502 {
		t.Errorf("List after kill: %d", status)
	}
}

func between(s, a, b string) string {
	_, rest, _ := strings.Cut(s, a)
	v, _, _ := strings.Cut(rest, b)
	return v
}
