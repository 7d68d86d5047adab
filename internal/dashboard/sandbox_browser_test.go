package dashboard_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/dashboard"
	"github.com/vulcanhq/vulcan/internal/sandbox/sandboxtest"
	"github.com/vulcanhq/vulcan/internal/server/servertest"
	"github.com/vulcanhq/vulcan/internal/testenv"
	chromium "github.com/vulcanhq/vulcan/internal/testenv/browser"
)

// requiresTerminal skips when this tree was built without xterm.js (npm has not run):
// `make test` always vendors it first.
func requiresTerminal(t *testing.T) {
	t.Helper()
	if resp := get(t, dashboard.New(), "GET", "/assets/vendor/xterm.mjs"); resp.StatusCode != http.StatusOK {
		t.Skip("xterm.js is not vendored: run `make dashboard-vendor`")
	}
}

// TestSandboxPagesInBrowser drives the sandbox pages in headless Chromium against the
// API with a sandbox service whose "VMs" are the real guest agent in this process (real
// PTYs, real files, this machine's bash): the whole browser side in seconds. The same
// flow against a real `vulcan serve` booting a python microVM is a case of
// TestDashboardInBrowser.
func TestSandboxPagesInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a browser")
	}
	testenv.RequiresBinary(t, "chromium")
	testenv.RequiresBinary(t, "bash")
	requiresTerminal(t)
	stack := servertest.New(t, servertest.Options{Fake: &backendtest.Fake{}, Launcher: sandboxtest.NewAgentLauncher(t),
		API: func(o *api.Options) { o.Dashboard = dashboard.New() }})
	b := newBrowser(t, stack.Server.URL, 3*time.Minute)
	b.wait = 20 * time.Second           // no VM boots here: seconds are plenty
	sandboxFlow(t, b, "inproc-", false) // the in-process agent cannot be paused
	if errs := b.errors(); len(errs) > 0 {
		t.Errorf("console errors:\n%s", strings.Join(errs, "\n"))
	}
}

func newBrowser(t *testing.T, base string, timeout time.Duration) *browser {
	t.Helper()
	ctx := chromium.NewTab(t, 1440, 1100, timeout)
	b := &browser{t: t, ctx: ctx, base: base, shots: artifactsDir(t)}
	if err := chromedp.Listen(ctx, b.console); err != nil {
		t.Fatal(err)
	}
	return b
}

// sandboxFlow is the sandbox pages from a user's seat: a refused form, a created
// sandbox, a command typed into the terminal and its answer read off the screen, the
// file browser seeing what the shell wrote, uploads by drag and drop and by the chooser,
// a download, the process list, Extend, and Kill. Screenshots are named prefix+page.
func sandboxFlow(t *testing.T, b *browser, prefix string, canPause bool) {
	var id string
	t.Run("form refuses what the server refuses, next to the field", func(t *testing.T) {
		b.do(t, chromedp.Navigate(b.base+"/sandboxes"), chromedp.WaitVisible(chromedp.CSS(`#new-sandbox`)),
			chromedp.Click(chromedp.CSS(`#new-sandbox`)), chromedp.WaitVisible(chromedp.CSS(`#template`)))
		b.poll(t, `[...document.querySelectorAll('#template option')].some(o => o.value === 'python')`)
		b.do(t, chromedp.SetValue(chromedp.CSS(`#mem`), "64"), chromedp.Click(chromedp.CSS(`#submit`)))
		b.poll(t, `document.querySelector('#mem-error').checkVisibility()`)
		if got := b.eval(t, `document.querySelector('#mem-error').textContent`); !strings.Contains(got, "mem_mb") {
			t.Errorf("memory error: %q", got)
		}
		if got := b.eval(t, `location.pathname`); got != "/sandboxes/new" {
			t.Errorf("left the form for %s", got)
		}
		b.shot(t, prefix+"sandbox-new-invalid")
	})

	t.Run("create from the form", func(t *testing.T) {
		b.do(t, chromedp.Navigate(b.base+"/sandboxes/new"), chromedp.WaitVisible(chromedp.CSS(`#template`)))
		b.poll(t, `[...document.querySelectorAll('#template option')].some(o => o.value === 'python')`)
		b.do(t, chromedp.SetValue(chromedp.CSS(`#template`), "python"), chromedp.SetValue(chromedp.CSS(`#timeout`), "600"),
			chromedp.SetValue(chromedp.CSS(`#meta-key-1`), "owner"), chromedp.SetValue(chromedp.CSS(`#meta-value-1`), "browser-test"))
		b.shot(t, prefix+"sandbox-new")
		b.do(t, chromedp.Click(chromedp.CSS(`#submit`)))
		b.poll(t, `/^\/sandboxes\/[0-9A-Z]+$/.test(location.pathname) && document.querySelector('#state')?.dataset.state === 'running'`)
		id = strings.TrimPrefix(b.eval(t, `location.pathname`), "/sandboxes/")
		var sb api.Sandbox
		apiGet(t, b.base+"/v1/sandboxes/"+id, &sb)
		if sb.Metadata["owner"] != "browser-test" || sb.Template != "python" || sb.TimeoutS != 600 {
			t.Errorf("created %+v", sb)
		}
		if got := b.eval(t, `document.querySelector('#facts [data-k=metadata]').textContent`); got != "owner=browser-test" {
			t.Errorf("metadata shown as %q", got)
		}
	})
	if id == "" {
		t.FailNow()
	}

	t.Run("type into the terminal and read the screen", func(t *testing.T) {
		b.poll(t, `document.querySelector('#terminal').dataset.state === 'connected' && document.querySelector('#terminal .xterm-rows') !== null`)
		// The rendered rows (xterm's DOM renderer) are what a user sees.
		screen := `[...document.querySelectorAll('#terminal .xterm-rows > div')].map(r => r.textContent.trimEnd())`
		b.do(t, chromedp.Click(chromedp.CSS(`#terminal .xterm-screen`)), typeKeys("echo typed $((6*7))\r"))
		b.pollOr(t, screen+`.includes('typed 42')`, screen+`.join('\n')`)
		b.do(t, typeKeys("echo from-the-terminal > made-in-shell.txt; stty size\r"))
		// The PTY has the size xterm fitted to the box (stty prints rows, then columns).
		b.poll(t, screen+`.some(l => /^\d+ \d+$/.test(l))`)
		var shown string
		b.evalInto(t, screen+`.find(l => /^\d+ \d+$/.test(l))`, &shown)
		var rows, cols int
		fmt.Sscan(shown, &rows, &cols)
		var fitted struct{ Cols, Rows int }
		b.evalInto(t, `(() => { const r = document.querySelector('#terminal .xterm-rows'); return {rows: r.children.length, cols: 0}; })()`, &fitted)
		if rows != fitted.Rows || cols < 60 {
			t.Errorf("stty size in the terminal: %q; the page draws %d rows", shown, fitted.Rows)
		}
		b.shot(t, prefix+"sandbox-terminal")
	})

	t.Run("file browser lists, uploads and downloads", func(t *testing.T) {
		b.poll(t, `document.querySelector('#fs-path').value.startsWith('/')`)
		// The file the shell wrote, after a refresh of the directory.
		b.do(t, chromedp.Click(chromedp.CSS(`#files form button[type=submit]`)))
		b.poll(t, `document.querySelector('#fs-list tr[data-name="made-in-shell.txt"]') !== null`)
		// Drag and drop: the drop handler gets a DataTransfer as from the desktop.
		b.do(t, chromedp.Evaluate[chromedp.Void](`(() => {
			const dt = new DataTransfer();
			dt.items.add(new File(["dropped by the browser test\n"], "dropped.txt", {type: "text/plain"}));
			const card = document.querySelector('#files');
			for (const type of ["dragenter", "dragover", "drop"]) card.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: dt}));
		})()`))
		b.poll(t, `document.querySelector('#fs-list tr[data-name="dropped.txt"]') !== null && document.querySelector('#fs-msg').textContent.startsWith('Uploaded 1 file')`)
		home := b.eval(t, `document.querySelector('#fs-path').value`)
		if got := apiText(t, b.base+"/v1/sandboxes/"+id+"/files?path="+home+"/dropped.txt"); got != "dropped by the browser test\n" {
			t.Errorf("dropped file holds %q", got)
		}
		// The chooser, with a real file from disk.
		local := filepath.Join(t.TempDir(), "chosen.bin")
		if err := os.WriteFile(local, []byte("chosen\x00bytes\xff"), 0o644); err != nil {
			t.Fatal(err)
		}
		b.do(t, chromedp.SetUploadFiles(chromedp.CSS(`#upload`), []string{local}))
		b.poll(t, `document.querySelector('#fs-list tr[data-name="chosen.bin"]') !== null`)
		if got := apiText(t, b.base+"/v1/sandboxes/"+id+"/files?path="+home+"/chosen.bin"); got != "chosen\x00bytes\xff" {
			t.Errorf("chosen file holds %q", got)
		}
		// Download: the link serves the file's bytes.
		if got := b.eval(t, `document.querySelector('#fs-list tr[data-name="made-in-shell.txt"] a[download]').getAttribute('download')`); got != "made-in-shell.txt" {
			t.Errorf("download name %q", got)
		}
		b.do(t, chromedp.Evaluate[chromedp.Void](`fetch(document.querySelector('#fs-list tr[data-name="made-in-shell.txt"] a[download]').href).then(r => r.text()).then(t => { window.__downloaded = t; })`))
		b.poll(t, `window.__downloaded === 'from-the-terminal\n'`)
		b.shot(t, prefix+"sandbox-files")
	})

	t.Run("processes list the terminal's shell", func(t *testing.T) {
		b.do(t, chromedp.Click(chromedp.CSS(`#procs-refresh`)))
		b.poll(t, `[...document.querySelectorAll('#processes tr[data-pid] td:nth-child(5)')].some(td => /^\d+×\d+$/.test(td.textContent))`)
	})

	t.Run("extend and kill", func(t *testing.T) {
		var before, after api.Sandbox
		apiGet(t, b.base+"/v1/sandboxes/"+id, &before)
		b.do(t, chromedp.SetValue(chromedp.CSS(`#extend-by`), "900"), chromedp.Click(chromedp.CSS(`#extend`)))
		b.poll(t, `document.querySelector('#action-msg').textContent.startsWith('Extended')`)
		apiGet(t, b.base+"/v1/sandboxes/"+id, &after)
		if d := after.ExpiresAt.Sub(before.ExpiresAt); d < 800*time.Second || d > 1000*time.Second {
			t.Errorf("Extend +15 min moved the expiry by %v", d)
		}
		// Pause and resume from the page: the state follows, and the file the terminal
		// made is still there after.
		b.do(t, chromedp.Click(chromedp.CSS(`#pause`)))
		if canPause {
			b.poll(t, `document.querySelector('#state').dataset.state === 'paused' && document.querySelector('#resume')?.checkVisibility() && !document.querySelector('#pause').checkVisibility()`)
			b.shot(t, prefix+"sandbox-paused")
			b.do(t, chromedp.Click(chromedp.CSS(`#resume`)))
			b.poll(t, `document.querySelector('#state').dataset.state === 'running' && document.querySelector('#action-msg').textContent.startsWith('Resumed')`)
			b.do(t, chromedp.Evaluate[chromedp.Void](`fetch('/v1/sandboxes/`+id+`/files?path=made-in-shell.txt').then(r => r.text()).then(t => { window.__afterResume = t; })`))
			b.poll(t, `window.__afterResume === 'from-the-terminal\n'`)
		} else {
			// A backend that cannot pause: the page says so and the sandbox runs on.
			b.poll(t, `document.querySelector('#action-msg').textContent.includes('not supported') && document.querySelector('#state').dataset.state === 'running'`)
		}
		b.do(t, chromedp.Navigate(b.base+"/sandboxes"))
		b.poll(t, `document.querySelector('tr[data-id="`+id+`"] [data-k=mem]')?.textContent.includes('/')`)
		b.shot(t, prefix+"sandboxes")
		b.do(t, chromedp.Click(chromedp.CSS(`tr[data-id="`+id+`"] a`)))
		b.poll(t, `document.querySelector('#terminal').dataset.state === 'connected' && document.querySelector('#kill')?.checkVisibility()`)
		b.do(t, chromedp.Click(chromedp.CSS(`#kill`)))
		b.poll(t, `document.querySelector('#state').dataset.state === 'killed'`)
		if b.visible(t, "#kill") {
			t.Error("Kill still shown on a killed sandbox")
		}
		var sb api.Sandbox
		apiGet(t, b.base+"/v1/sandboxes/"+id, &sb)
		if sb.State != "killed" {
			t.Errorf("API says %s", sb.State)
		}
		b.poll(t, `['closed', 'exited', 'error'].includes(document.querySelector('#terminal').dataset.state)`)
		b.shot(t, prefix+"sandbox-killed")
	})
}

// typeKeys types keys as a keyboard does: per key a keyDown that carries its text (the
// browser derives keypress and input from it), then a keyUp. chromedp.KeyEvent sends a
// separate "char" event instead, and xterm.js, which reads keydown and keypress, then
// types every key twice.
func typeKeys(keys string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		for _, r := range keys {
			evs := kb.Encode(r)
			var text, unmodified string
			for _, k := range evs {
				if k.Type == kb.KeyChar {
					text, unmodified = k.Text, k.UnmodifiedText
				}
			}
			for _, k := range evs {
				switch k.Type {
				case kb.KeyChar:
					continue
				case kb.KeyDown:
					k.Text, k.UnmodifiedText = text, unmodified
				}
				if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, *k); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func apiText(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	return string(body)
}
