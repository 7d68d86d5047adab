// Package dashboard is Vulcan's web UI: hand-written HTML, CSS and JavaScript modules
// embedded in the binary and served next to the API by `vulcan serve`. It talks to the
// API like any client (fetch, with the bearer token when the server wants one) and needs
// no network beyond the server itself. The one third-party piece, xterm.js for the
// sandbox terminal, is installed from npm at build time (`make dashboard-vendor`) into
// static/assets/vendor, which is gitignored: a tree built without it serves everything
// but the terminal, whose panel then says to run make.
package dashboard

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// contentTypes is explicit rather than read from the OS's mime tables, which a minimal
// Debian lacks and which may map .js to a type that browsers refuse for modules.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".mjs":  "text/javascript; charset=utf-8",
	".txt":  "text/plain; charset=utf-8",
	".svg":  "image/svg+xml",
	".json": "application/json",
}

// csp allows only the server itself: every asset is embedded, charts are SVG built with
// DOM calls, and no script is inline. Styles may be: xterm.js's DOM renderer writes
// <style> elements and style attributes for the terminal's grid and colours (VS Code's
// own CSP makes the same allowance). That lets no script run; text from the server still
// enters the page only as text nodes. connect-src 'self' covers the terminal's WebSocket.
const csp = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; " +
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

type file struct {
	body        []byte
	contentType string
	etag        string
}

// Handler serves the dashboard: /assets/* from the embedded files, and index.html for
// every other extensionless GET so that client-side routes (/workloads/ID, /backends)
// survive a reload or a shared link.
type Handler struct {
	files map[string]file // by URL path
	index file
}

// New loads the embedded files.
func New() *Handler {
	h := &Handler{files: map[string]file{}}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		ct := contentTypes[path.Ext(p)]
		if ct == "" {
			ct = "application/octet-stream"
		}
		h.files[strings.TrimPrefix(p, "static")] = file{body: body, contentType: ct, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		panic("dashboard: embedded files: " + err.Error()) // the embed is fixed at build time
	}
	h.index = h.files["/index.html"]
	delete(h.files, "/index.html")
	return h
}

// Static is the embedded tree, rooted at the page (index.html, assets/...).
func Static() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // "static" is a valid path by construction
	}
	return sub
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	p := path.Clean("/" + r.URL.Path)
	f, ok := h.files[p]
	switch {
	case ok:
	case strings.HasPrefix(p, "/assets/") || path.Ext(p) != "":
		// A missing asset must not be answered with the page: a module script that gets
		// HTML fails with a confusing MIME error instead of a plain 404.
		http.NotFound(w, r)
		return
	default:
		f = h.index
	}
	hd := w.Header()
	hd.Set("Content-Type", f.contentType)
	// The asset names carry no content hash, so browsers revalidate every time; the
	// ETag turns that into a cheap 304.
	hd.Set("Cache-Control", "no-cache")
	hd.Set("ETag", f.etag)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	if f.contentType == contentTypes[".html"] {
		hd.Set("Content-Security-Policy", csp)
		hd.Set("X-Frame-Options", "DENY")
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.body))
}
