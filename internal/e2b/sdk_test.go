package e2b_test

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/sandbox"
	"github.com/vulcanhq/vulcan/internal/sandbox/sandboxtest"
	"github.com/vulcanhq/vulcan/internal/store"
)

// e2bServer is Vulcan's API (E2B's routes included) over sandboxes whose "VMs" are the
// real guest agent in this process; the real-VM path runs in acceptance.
func e2bServer(t *testing.T, token string) *backendtest.Stack {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "sbx.db"))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := sandbox.New(context.Background(), sandbox.Options{Store: st, Launcher: sandboxtest.NewAgentLauncher(t), Metrics: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Shutdown(context.Background()); st.Close() })
	return backendtest.NewStack(t, engine.Config{}, &backendtest.Fake{}, func(o *api.Options) { o.Sandboxes, o.Token = svc, token })
}

// sdkDir is where scripts/e2b-sdk.sh installed the pinned SDK ($VULCAN_E2B_SDK, as
// make test sets it, or the script's default cache dir); the test's script is copied
// next to its node_modules so that node resolves "e2b" there.
func sdkDir(t *testing.T) string {
	dir := os.Getenv("VULCAN_E2B_SDK")
	if dir == "" {
		cache := os.Getenv("VULCAN_CACHE_DIR")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache", "vulcan")
		}
		dir = filepath.Join(cache, "e2b-sdk")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "e2b", "package.json")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the E2B SDK is not installed in %s (make e2b-sdk): %v", dir, err)
		}
		t.Skipf("the E2B SDK is not installed (make e2b-sdk)")
	}
	script, err := os.ReadFile("testdata/sdk/sdk_test.mjs")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sdk_test.mjs"), script, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// SDKModules are the pinned SDK versions: 2.51 creates with POST /v2/sandboxes, 2.50
// with POST /sandboxes.
var SDKModules = []string{"e2b", "e2b-2.50"}

// RunSDK runs the official SDK's script (module: one of SDKModules) against url and
// fails t with each check that failed.
func RunSDK(t *testing.T, module, url, key, template string) {
	t.Helper()
	dir := sdkDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "sdk_test.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "E2B_API_URL="+url, "E2B_SANDBOX_URL="+url, "E2B_API_KEY="+key, "TEMPLATE="+template, "E2B_MODULE="+module,
		"E2B_DOMAIN=vulcan.invalid") // nothing may leave loopback: a URL the SDK built itself would not resolve
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	oks := 0
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "ok "):
			oks++
		case strings.HasPrefix(line, "FAIL "):
			t.Error(line)
		}
	}
	if err != nil || oks < 20 {
		t.Fatalf("the SDK's script: %v, %d checks passed; output:\n%s", err, oks, out.String())
	}
	t.Logf("%d checks passed through the official SDK", oks)
}

// TestOfficialSDK drives the official E2B JavaScript SDK (pinned) through every call
// it makes for sandboxes, commands, files, watches and terminals, against a real
// server with a token.
func TestOfficialSDK(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node is not installed")
	}
	s := e2bServer(t, "sekret")
	for _, m := range SDKModules {
		t.Run(m, func(t *testing.T) { RunSDK(t, m, s.Server.URL, "sekret", "python") })
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
		{"POST", "/v2/sandboxes", "sekret", `{"templateID":"python","autoPause":true}`, 400, `auto-pause`},
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
