package dashboard_test

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"path"
	"regexp"
	"strings"
	"testing"

	"github.com/vulcanhq/vulcan/internal/dashboard"
)

func get(t *testing.T, h http.Handler, method, target string, hdr ...string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func TestServesAssetsAndClientRoutes(t *testing.T) {
	h := dashboard.New()
	for _, tc := range []struct {
		path, status, contentType, body string
	}{
		{"/", "200", "text/html; charset=utf-8", `<script type="module" src="/assets/app.js">`},
		// Client routes get the page, so reloads and shared links work.
		{"/workloads/01HZX", "200", "text/html; charset=utf-8", "<main"},
		{"/workloads/new", "200", "text/html; charset=utf-8", "<main"},
		{"/charts", "200", "text/html; charset=utf-8", "<main"},
		{"/assets/app.js", "200", "text/javascript; charset=utf-8", "import"},
		{"/assets/style.css", "200", "text/css; charset=utf-8", ":root"},
		{"/assets/icon.svg", "200", "image/svg+xml", "<svg"},
		// A missing file is a 404, never the page: a module answered with HTML fails
		// with a misleading MIME error.
		{"/assets/missing.js", "404", "text/plain; charset=utf-8", "not found"},
		{"/assets/pages", "404", "text/plain; charset=utf-8", "not found"},
		{"/favicon.ico", "404", "text/plain; charset=utf-8", "not found"},
		{"/index.html", "404", "text/plain; charset=utf-8", "not found"},
	} {
		resp := get(t, h, "GET", tc.path)
		body, _ := io.ReadAll(resp.Body)
		if got := resp.Status[:3]; got != tc.status || resp.Header.Get("Content-Type") != tc.contentType || !strings.Contains(string(body), tc.body) {
			t.Errorf("%s: %s %q %.80q", tc.path, resp.Status, resp.Header.Get("Content-Type"), body)
		}
		if tc.status == "200" && (resp.Header.Get("Cache-Control") != "no-cache" || resp.Header.Get("ETag") == "" || resp.Header.Get("X-Content-Type-Options") != "nosniff") {
			t.Errorf("%s: caching/safety headers %v", tc.path, resp.Header)
		}
	}
	// Scripts come from the server only; styles may be inline because xterm.js's DOM
	// renderer writes them, and nothing else is allowed beyond the server.
	page := get(t, h, "GET", "/backends")
	csp := page.Header.Get("Content-Security-Policy")
	for _, d := range strings.Split(csp, ";") {
		d = strings.TrimSpace(d)
		if strings.Contains(d, "unsafe") && d != "style-src 'self' 'unsafe-inline'" {
			t.Errorf("page CSP allows %q", d)
		}
	}
	if !strings.Contains(csp, "script-src 'self';") || !strings.Contains(csp, "default-src 'self';") {
		t.Errorf("page CSP %q", csp)
	}
}

func TestRevalidationAndMethods(t *testing.T) {
	h := dashboard.New()
	first := get(t, h, "GET", "/assets/app.js")
	etag := first.Header.Get("ETag")
	if again := get(t, h, "GET", "/assets/app.js", "If-None-Match", etag); again.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match with the current ETag: %s", again.Status)
	}
	if other := get(t, h, "GET", "/assets/style.css"); other.Header.Get("ETag") == etag {
		t.Error("two files share an ETag")
	}
	if head := get(t, h, "HEAD", "/workloads"); head.StatusCode != http.StatusOK {
		t.Errorf("HEAD: %s", head.Status)
	}
	post := get(t, h, "POST", "/workloads/new")
	if post.StatusCode != http.StatusMethodNotAllowed || post.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %s %v", post.Status, post.Header)
	}
}

// Every module import and every asset the page names must exist, so a typo fails here
// rather than as a blank page in a browser. The vendored files (xterm.js, from npm at
// build time) are checked when this tree has them.
func TestEveryReferencedAssetExists(t *testing.T) {
	h := dashboard.New()
	vendored := get(t, h, "GET", "/assets/vendor/xterm.mjs").StatusCode == http.StatusOK
	imports := regexp.MustCompile(`(?m)^(?:import|export)[^"';]*["'](\.{1,2}/[^"']+)["']|import\(\s*["'](\.{1,2}/[^"']+)["']\s*\)`)
	refs := regexp.MustCompile(`(?:src|href)="(/assets/[^"]+)"`)
	jsRefs := regexp.MustCompile(`["'](/assets/[^"'\s]+\.[a-z]+)["']`)
	seen := map[string]bool{}
	var walk func(p string)
	walk = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		if strings.HasPrefix(p, "/assets/vendor/") && !vendored {
			return
		}
		resp := get(t, h, "GET", p)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %s", p, resp.Status)
			return
		}
		for _, m := range refs.FindAllStringSubmatch(string(body), -1) {
			walk(m[1])
		}
		if strings.HasSuffix(p, ".js") {
			for _, m := range imports.FindAllStringSubmatch(string(body), -1) {
				walk(path.Join(path.Dir(p), m[1]+m[2]))
			}
			for _, m := range jsRefs.FindAllStringSubmatch(string(body), -1) {
				walk(m[1])
			}
		}
	}
	walk("/")
	want := []string{"/assets/app.js", "/assets/api.js", "/assets/pages/detail.js", "/assets/chart.js", "/assets/prom.js", "/assets/style.css",
		"/assets/pages/sandbox.js", "/assets/terminal.js"}
	if vendored {
		want = append(want, "/assets/vendor/xterm.mjs", "/assets/vendor/addon-fit.mjs", "/assets/vendor/xterm.css",
			"/assets/vendor/xterm.LICENSE.txt", "/assets/vendor/addon-fit.LICENSE.txt")
	} else {
		t.Log("xterm.js is not vendored (make dashboard-vendor): its files are not checked")
	}
	for _, w := range want {
		if !seen[w] {
			t.Errorf("%s is not reachable from the page", w)
		}
	}
	// And nothing is embedded that nothing uses.
	fs.WalkDir(dashboard.Static(), ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && p != "index.html" && !seen["/"+p] {
			t.Errorf("%s is embedded but never referenced", p)
		}
		return nil
	})
}
