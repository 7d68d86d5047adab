package dashboard_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/vulcanhq/vulcan/internal/cluster/clustertest"
	"github.com/vulcanhq/vulcan/internal/testenv"
	chromium "github.com/vulcanhq/vulcan/internal/testenv/browser"
)

// TestDashboardInBrowser drives the dashboard in headless Chromium against a real
// `vulcan serve` that boots microVMs, and saves a screenshot of every page. One server
// and one tab serve every case: each boot under TCG costs seconds.
func TestDashboardInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("boots microVMs and a browser")
	}
	testenv.RequiresBinary(t, "chromium")
	images := testenv.RequiresImages(t, "python")
	base := startServer(t, images)
	shots := artifactsDir(t)
	ctx := chromium.NewTab(t, 1440, 1000, 8*time.Minute)

	b := &browser{t: t, ctx: ctx, base: base, shots: shots}
	if err := chromedp.Listen(ctx, b.console); err != nil {
		t.Fatal(err)
	}
	// Prove the console listener hears errors before trusting its silence later.
	b.do(t, chromedp.Navigate(base+"/"), chromedp.Evaluate[chromedp.Void](`console.error("vulcan-console-probe")`))
	b.poll(t, `true`)
	if !b.heard("vulcan-console-probe") {
		t.Fatal("the console listener did not hear console.error")
	}

	t.Run("backends", func(t *testing.T) {
		b.do(t, chromedp.Navigate(base+"/backends"), chromedp.WaitVisible(chromedp.CSS(`section.backend[data-name="microvm"]`)))
		avail := b.eval(t, `document.querySelector('section.backend[data-name="microvm"]').dataset.available`)
		text := b.eval(t, `document.querySelector('#backends').innerText`)
		if avail != "true" || !strings.Contains(text, "python") || !strings.Contains(text, "Max vCPUs") {
			t.Errorf("backends page: available=%s\n%s", avail, text)
		}
		b.shot(t, "backends")
	})

	var inlineID string
	t.Run("inline python runs and shows output and log", func(t *testing.T) {
		code := "import os, sys\n" +
			"data = sys.stdin.read()\n" +
			"print('out:', data.strip().upper())\n" +
			"print('env:', os.environ['GREETING'])\n" +
			"print('to stderr', file=sys.stderr)\n"
		b.do(t, chromedp.Navigate(base+"/workloads/new"), chromedp.WaitVisible(chromedp.CSS(`#code`)),
			chromedp.SetValue(chromedp.CSS(`#code`), code), chromedp.SetValue(chromedp.CSS(`#stdin`), "vulcan in a browser"))
		b.shot(t, "new-workload-inline")
		b.do(t, chromedp.Click(chromedp.CSS(`#submit`)))
		inlineID = b.waitDetail(t, "completed")
		b.poll(t, `document.querySelector('#log').dataset.complete === 'true'`)
		stdout := b.eval(t, `document.querySelector('#stdout').textContent`)
		stderr := b.eval(t, `document.querySelector('#stderr').textContent`)
		if !strings.Contains(stdout, "out: VULCAN IN A BROWSER") || !strings.Contains(stdout, "env: hello") || !strings.Contains(stderr, "to stderr") {
			t.Errorf("output: stdout %q stderr %q", stdout, stderr)
		}
		if b.visible(t, "#kill") {
			t.Error("Kill button shown on a finished workload")
		}
		if got := b.eval(t, `document.querySelector('#facts [data-k=exit]').textContent`); got != "0" {
			t.Errorf("exit code shown: %q", got)
		}
		// The log on the page is the stored log: every line once, in order, streams kept.
		var shown []logLine
		b.evalInto(t, `[...document.querySelectorAll('#log li')].map(li => ({seq: +li.dataset.seq, stream: li.dataset.stream, text: li.querySelector('.text').textContent}))`, &shown)
		var stored struct{ Lines []logLine }
		apiGet(t, base+"/v1/workloads/"+inlineID+"/logs/history", &stored)
		if fmt.Sprint(shown) != fmt.Sprint(stored.Lines) {
			t.Errorf("log on the page differs from the stored log:\npage   %v\nstored %v", shown, stored.Lines)
		}
		if !hasLine(shown, "stdout", "env: hello") || !hasLine(shown, "stderr", "to stderr") {
			t.Errorf("log lines lack stdout/stderr: %v", shown)
		}
		// The microVM panel shows what the backend recorded.
		var wl struct{ Metadata map[string]string }
		apiGet(t, base+"/v1/workloads/"+inlineID, &wl)
		for _, k := range []string{"vm_id", "vmm", "accel", "cid", "kernel_version", "image_runtime"} {
			if got := b.eval(t, `(document.querySelector('#microvm [data-k=`+k+`]') || {}).textContent || ''`); got == "" || got != wl.Metadata[k] {
				t.Errorf("microVM panel %s: %q, API says %q", k, got, wl.Metadata[k])
			}
		}
		if got := b.eval(t, `(document.querySelector('#microvm [data-k=boot_ms]') || {}).textContent || ''`); !strings.HasSuffix(got, "s") {
			t.Errorf("boot time shown as %q", got)
		}
		b.shot(t, "workload-detail")
	})

	t.Run("archive upload runs", func(t *testing.T) {
		archive := filepath.Join(t.TempDir(), "site.tar.gz")
		writeTarGz(t, archive, map[string]string{
			"app/run.py":   "import os\nhere = os.path.dirname(os.path.abspath(__file__))\nprint('from the archive:', open(os.path.join(here, 'data.txt')).read().strip())\n",
			"app/data.txt": "forty-two\n",
		})
		b.do(t, chromedp.Navigate(base+"/workloads/new"), chromedp.WaitVisible(chromedp.CSS(`#code`)),
			chromedp.Click(chromedp.CSS(`#source-archive`)), chromedp.WaitVisible(chromedp.CSS(`#dropzone`)),
			chromedp.SetUploadFiles(chromedp.CSS(`#archive`), []string{archive}))
		// SetUploadFiles fires change, as a real file choice does.
		b.poll(t, `document.querySelector('.drop-name').textContent.includes('site.tar.gz')`)
		b.do(t, chromedp.SetValue(chromedp.CSS(`#entrypoint`), "app/run.py"))
		b.shot(t, "new-workload-archive")
		b.do(t, chromedp.Click(chromedp.CSS(`#submit`)))
		id := b.waitDetail(t, "completed")
		if got := b.eval(t, `document.querySelector('#stdout').textContent`); !strings.Contains(got, "from the archive: forty-two") {
			t.Errorf("archive workload %s stdout %q", id, got)
		}
		if got := b.eval(t, `document.querySelector('#facts').innerText`); !strings.Contains(got, "app/run.py") {
			t.Errorf("entrypoint not shown: %q", got)
		}
	})

	t.Run("kill a running workload", func(t *testing.T) {
		code := "import time\nprint('started', flush=True)\ntime.sleep(600)\n"
		b.do(t, chromedp.Navigate(base+"/workloads/new"), chromedp.WaitVisible(chromedp.CSS(`#code`)),
			chromedp.SetValue(chromedp.CSS(`#code`), code), chromedp.Click(chromedp.CSS(`#submit`)))
		b.poll(t, `location.pathname.startsWith('/workloads/') && !location.pathname.endsWith('/new')`)
		// A line that arrives while the workload runs can only have come over the stream.
		b.poll(t, `document.querySelector('#status')?.dataset.status === 'running' &&
			[...document.querySelectorAll('#log li[data-stream=stdout] .text')].some(e => e.textContent === 'started')`)
		if !b.visible(t, "#kill") {
			t.Fatal("no Kill button on a running workload")
		}
		b.shot(t, "workload-running")
		b.do(t, chromedp.Click(chromedp.CSS(`#kill`)))
		id := b.waitDetail(t, "killed")
		if b.visible(t, "#kill") {
			t.Error("Kill button still shown on a killed workload")
		}
		var wl struct{ Status string }
		apiGet(t, base+"/v1/workloads/"+id, &wl)
		if wl.Status != "killed" {
			t.Errorf("API says %s", wl.Status)
		}
		b.shot(t, "workload-killed")
	})

	t.Run("invalid form shows errors next to fields", func(t *testing.T) {
		var before struct{ Total int }
		apiGet(t, base+"/v1/workloads?limit=1", &before)
		b.do(t, chromedp.Navigate(base+"/workloads/new"), chromedp.WaitVisible(chromedp.CSS(`#code`)), empty(`#code`),
			// The editor keeps Tab for indentation.
			chromedp.Focus(chromedp.CSS(`#code`)), chromedp.KeyEvent("\t"))
		if got := b.eval(t, `document.querySelector('#code').value`); got != "    " {
			t.Errorf("Tab in the python editor gave %q", got)
		}
		// Client-side: no code, a bad env name.
		b.do(t, empty(`#code`), chromedp.SetValue(chromedp.CSS(`#env-name-1`), "1BAD"),
			chromedp.Click(chromedp.CSS(`#submit`)))
		b.poll(t, `document.querySelector('#code-error').checkVisibility() && document.querySelector('#env-name-1-error').checkVisibility()`)
		if got := b.eval(t, `document.querySelector('#code-error').textContent`); !strings.Contains(got, "Write some code") {
			t.Errorf("code error: %q", got)
		}
		if got := b.eval(t, `document.activeElement.id`); got != "code" {
			t.Errorf("focus after a failed submit is on %q, not the first bad field", got)
		}
		b.shot(t, "new-workload-invalid-client")
		// Server-side: the form lets 64 MiB through, the server refuses it and names the field.
		b.do(t, chromedp.SetValue(chromedp.CSS(`#code`), "print(1)"), chromedp.SetValue(chromedp.CSS(`#env-name-1`), "GOOD"),
			chromedp.SetValue(chromedp.CSS(`#mem`), "64"), chromedp.Click(chromedp.CSS(`#submit`)))
		b.poll(t, `document.querySelector('#mem-error').checkVisibility()`)
		if got := b.eval(t, `document.querySelector('#mem-error').textContent`); !strings.Contains(got, "mem_mb must be between") {
			t.Errorf("memory error: %q", got)
		}
		if b.visible(t, "#code-error") || b.eval(t, `document.querySelector('#mem').getAttribute('aria-invalid')`) != "true" {
			t.Error("stale client error, or the memory field not marked invalid")
		}
		if got := b.eval(t, `location.pathname`); got != "/workloads/new" {
			t.Errorf("left the form for %s", got)
		}
		var after struct{ Total int }
		apiGet(t, base+"/v1/workloads?limit=1", &after)
		if after.Total != before.Total {
			t.Errorf("an invalid form created a workload: %d → %d", before.Total, after.Total)
		}
		b.shot(t, "new-workload-invalid-server")
	})

	t.Run("list filters and links", func(t *testing.T) {
		b.do(t, chromedp.Navigate(base+"/"))
		b.poll(t, `document.querySelectorAll('tr[data-id]').length >= 3`)
		b.shot(t, "workloads")
		b.do(t, chromedp.Evaluate[chromedp.Void](`(() => { const s = document.querySelector('#filter-status'); s.value = 'killed'; s.dispatchEvent(new Event('change')); })()`))
		b.poll(t, `location.search === '?status=killed' && document.querySelectorAll('tr[data-id]').length === 1 && document.querySelector('tr[data-id]').dataset.status === 'killed'`)
		b.shot(t, "workloads-filtered")
		b.do(t, chromedp.Click(chromedp.CSS(`tr[data-id] a`)))
		b.poll(t, `document.querySelector('#status')?.dataset.status === 'killed'`)
	})

	t.Run("metrics charts", func(t *testing.T) {
		boots := bootCount(t, base)
		b.do(t, chromedp.Navigate(base+"/charts"))
		b.poll(t, `document.querySelectorAll('#boot-chart rect.bar').length > 0 && document.querySelectorAll('#outcome-chart rect.bar').length > 0 &&
			document.querySelector('#active-chart path.line') !== null`)
		if got := b.eval(t, `document.querySelector('#tiles [data-k=boot]').textContent`); !strings.Contains(got, fmt.Sprintf("(%d boots)", boots)) {
			t.Errorf("boot tile %q, /metrics counts %d boots", got, boots)
		}
		// The histogram's bars add up to every boot.
		if got := b.eval(t, `String([...document.querySelectorAll('#boot-chart rect.bar')].reduce((a, r) => a + parseInt(r.querySelector('title').textContent), 0))`); got != fmt.Sprint(boots) {
			t.Errorf("boot bars add up to %s, want %d", got, boots)
		}
		b.shot(t, "metrics")
	})

	// A template built from the Templates page: the build's steps progress to done in a
	// build VM, its log streams, and the new template is listed; a bad Dockerfile's line
	// is shown next to the form.
	t.Run("templates", func(t *testing.T) {
		b.do(t, chromedp.Navigate(base+"/templates"), chromedp.WaitVisible(chromedp.CSS(`#build-form`)))
		b.poll(t, `!!document.querySelector('#templates tr[data-name="python"]')`)
		b.do(t, chromedp.SetValue(chromedp.CSS(`#tpl-name`), "bad-one"),
			chromedp.SetValue(chromedp.CSS(`#tpl-dockerfile`), "FROM python\nEXPOSE 80\n"), chromedp.Click(chromedp.CSS(`#build-form button[type=submit]`)))
		b.poll(t, `/line 2/.test(document.querySelector('#build-form [role=alert]').textContent)`)
		b.do(t, chromedp.SetValue(chromedp.CSS(`#tpl-name`), "from-browser"),
			chromedp.SetValue(chromedp.CSS(`#tpl-dockerfile`), "FROM python\nENV MADE=browser\nRUN echo built-in-a-vm > /built && echo step-output-line\n"),
			chromedp.SetValue(chromedp.CSS(`#tpl-network`), "none"), chromedp.Click(chromedp.CSS(`#build-form button[type=submit]`)))
		b.pollOr(t, `document.querySelector('section.build[data-template="from-browser"] [data-k=state]')?.textContent === 'ready'`,
			`document.querySelector('#builds')?.innerText`)
		card := `document.querySelector('section.build[data-template="from-browser"]')`
		if got := b.eval(t, `String(`+card+`.querySelectorAll('li[data-state=done] progress[value="100"]').length)`); got != "3" {
			t.Errorf("%s steps shown done with a full bar, want 3 (FROM and two): %s", got, b.eval(t, card+`.innerText`))
		}
		if log := b.eval(t, card+`.querySelector('.build-log').textContent`); !strings.Contains(log, "step-output-line") {
			t.Errorf("the step's output is not in the build's log: %q", log)
		}
		b.poll(t, `!!document.querySelector('#templates tr[data-name="from-browser"]')`)
		b.shot(t, "templates")
	})

	// A code-interpreter sandbox's page runs cells: a matplotlib chart shows as an image,
	// a pandas table in a sandboxed frame, and a variable persists between cells.
	t.Run("code interpreter", func(t *testing.T) {
		testenv.RequiresImages(t, "code-interpreter")
		var sb struct{ ID string }
		apiPost(t, base+"/v1/sandboxes", map[string]any{"template": "code-interpreter"}, &sb)
		defer apiDelete(t, base+"/v1/sandboxes/"+sb.ID)
		b.do(t, chromedp.Navigate(base+"/sandboxes/"+sb.ID), chromedp.WaitVisible(chromedp.CSS(`#notebook`)))
		b.do(t, chromedp.Click(chromedp.CSS(`#cell-run`)))
		b.pollOr(t, `(() => { const i = document.querySelector('.cell[data-n="1"] img.cell-img'); return i && i.complete && i.naturalWidth > 100 })()`,
			`document.querySelector('#notebook').innerText`)
		b.do(t, chromedp.SetValue(chromedp.CSS(`#cell-code`), "import pandas as pd\nanswer = 42\npd.DataFrame({'a': [1, 2], 'b': [3, 4]})"),
			chromedp.Click(chromedp.CSS(`#cell-run`)))
		b.poll(t, `!!document.querySelector('.cell[data-n="2"][data-state="done"] iframe.cell-html')`)
		if got := b.eval(t, `document.querySelector('.cell[data-n="2"] iframe.cell-html').getAttribute('sandbox')`); got != "" {
			t.Errorf("the HTML result's frame allows %q", got)
		}
		if got := b.eval(t, `document.querySelector('.cell[data-n="2"] iframe.cell-html').srcdoc`); !strings.Contains(got, "<table") {
			t.Errorf("the table's HTML: %.200q", got)
		}
		b.do(t, chromedp.SetValue(chromedp.CSS(`#cell-code`), "print(answer + 1)"), chromedp.Click(chromedp.CSS(`#cell-run`)))
		b.poll(t, `document.querySelector('.cell[data-n="3"][data-state="done"] pre[data-stream="stdout"]')?.textContent === '43\n'`)
		b.shot(t, "code-interpreter")
	})

	// The sandbox pages on a python microVM: the terminal, files, processes, Kill.
	t.Run("sandbox", func(t *testing.T) {
		requiresTerminal(t)
		sandboxFlow(t, b, "", true)
	})

	if errs := b.errors(); len(errs) > 0 {
		t.Errorf("console errors:\n%s", strings.Join(errs, "\n"))
	}
}

// empty clears a field the way a user's select-all and delete would leave it
// (chromedp's SetValue refuses "" and Clear needs a text node a textarea may lack).
func empty(sel string) chromedp.Action[chromedp.Void] {
	q, _ := json.Marshal(sel)
	return chromedp.Evaluate[chromedp.Void](`document.querySelector(` + string(q) + `).value = ""`)
}

type logLine struct {
	Seq    int64
	Stream string
	Text   string
}

func hasLine(lines []logLine, stream, text string) bool {
	for _, l := range lines {
		if l.Stream == stream && l.Text == text {
			return true
		}
	}
	return false
}

// browser is the one tab the cases share, plus what its console said.
type browser struct {
	t     *testing.T
	ctx   context.Context
	base  string
	shots string

	wait time.Duration // how long poll waits; 0 means 2 minutes

	mu   sync.Mutex
	msgs []string // console errors, warnings and exceptions
}

func (b *browser) console(ev any) {
	var msg string
	switch e := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		if e.Type != runtime.ConsoleAPICalledTypeError && e.Type != runtime.ConsoleAPICalledTypeWarning && e.Type != runtime.ConsoleAPICalledTypeAssert {
			return
		}
		var parts []string
		for _, a := range e.Args {
			if a.Value != nil {
				parts = append(parts, string(a.Value))
			} else {
				parts = append(parts, a.Description)
			}
		}
		msg = fmt.Sprintf("console.%s: %s", e.Type, strings.Join(parts, " "))
	case *runtime.EventExceptionThrown:
		msg = "exception: " + e.ExceptionDetails.Text
		if e.ExceptionDetails.Exception != nil {
			msg += " " + e.ExceptionDetails.Exception.Description
		}
	case *log.EventEntryAdded:
		// The browser logs every non-2xx fetch; the API's 4xx answers are expected
		// (the invalid form), anything else (a missing asset, a CSP violation) is not.
		if e.Entry.Level != log.EntryLevelError || (e.Entry.Source == log.EntrySourceNetwork && strings.Contains(e.Entry.URL, "/v1/")) {
			return
		}
		msg = fmt.Sprintf("browser log (%s): %s %s", e.Entry.Source, e.Entry.Text, e.Entry.URL)
	default:
		return
	}
	b.mu.Lock()
	b.msgs = append(b.msgs, msg)
	b.mu.Unlock()
}

func (b *browser) heard(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, m := range b.msgs {
		if strings.Contains(m, s) {
			b.msgs = append(b.msgs[:i], b.msgs[i+1:]...)
			return true
		}
	}
	return false
}

func (b *browser) errors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.msgs...)
}

func (b *browser) do(t *testing.T, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(b.ctx, actions...); err != nil {
		b.fail(t, err)
	}
}

// poll waits for a JavaScript predicate; the limit only bounds a hang (a Go workload
// under TCG takes ~13 s, a python one ~2–5 s).
func (b *browser) poll(t *testing.T, expr string) {
	t.Helper()
	wait := b.wait
	if wait == 0 {
		wait = 2 * time.Minute
	}
	if _, err := chromedp.Run(b.ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(wait))); err != nil {
		b.fail(t, fmt.Errorf("waiting for %s: %w", expr, err))
	}
}

// pollOr is poll that, when the wait fails, first logs what dump evaluates to.
func (b *browser) pollOr(t *testing.T, expr, dump string) {
	t.Helper()
	wait := b.wait
	if wait == 0 {
		wait = 2 * time.Minute
	}
	if _, err := chromedp.Run(b.ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(wait))); err != nil {
		var s string
		b.evalInto(t, `String(`+dump+`)`, &s)
		t.Logf("%s:\n%s", dump, s)
		b.fail(t, fmt.Errorf("waiting for %s: %w", expr, err))
	}
}

func (b *browser) eval(t *testing.T, expr string) string {
	t.Helper()
	var s string
	b.evalInto(t, expr, &s)
	return s
}

func (b *browser) evalInto(t *testing.T, expr string, v any) {
	t.Helper()
	raw, err := chromedp.Run(b.ctx, chromedp.Evaluate[[]byte](expr))
	if err == nil {
		err = json.Unmarshal(raw, v)
	}
	if err != nil {
		b.fail(t, fmt.Errorf("evaluating %s: %w", expr, err))
	}
}

// visible reports whether an element is rendered: the hidden attribute alone proves
// nothing when a stylesheet overrides it.
func (b *browser) visible(t *testing.T, sel string) bool {
	t.Helper()
	q, _ := json.Marshal(sel)
	return b.eval(t, `String(!!document.querySelector(`+string(q)+`)?.checkVisibility())`) == "true"
}

// waitDetail waits on a workload's page for a final status and returns the id.
func (b *browser) waitDetail(t *testing.T, status string) string {
	t.Helper()
	b.poll(t, `location.pathname.startsWith('/workloads/') && !location.pathname.endsWith('/new')`)
	id := strings.TrimPrefix(b.eval(t, `location.pathname`), "/workloads/")
	b.poll(t, `['completed','failed','killed'].includes(document.querySelector('#status')?.dataset.status)`)
	if got := b.eval(t, `document.querySelector('#status').dataset.status`); got != status {
		var wl map[string]any
		apiGet(t, b.base+"/v1/workloads/"+id, &wl)
		t.Fatalf("workload %s ended %s, want %s: %v", id, got, status, wl)
	}
	return id
}

func (b *browser) shot(t *testing.T, name string) {
	t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(b.shots, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Error(err)
	}
	t.Logf("screenshot %s", p)
}

// fail saves what the page looked like before failing, which is most of a diagnosis.
func (b *browser) fail(t *testing.T, err error) {
	t.Helper()
	if png, serr := chromedp.Run(b.ctx, chromedp.FullScreenshot(100)); serr == nil {
		name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
		os.WriteFile(filepath.Join(b.shots, "FAILED-"+name+".png"), png, 0o644)
	}
	t.Fatal(err)
}

// startServer runs `vulcan serve` (testenv.VulcanBin) on a free loopback port with the
// real images, returning its base URL.
func startServer(t *testing.T, images string, env ...string) string {
	t.Helper()
	bin, err := testenv.VulcanBin()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv := exec.Command(bin, "serve", "--listen", addr, "--data-dir", testenv.ShortTempDir(t), "--images-dir", images)
	srv.Dir = t.TempDir() // no stray .env
	// Fast start off: the metrics case compares boot counts read at two moments, which
	// a pool refilling in the background would move between them.
	srv.Env = append(os.Environ(), "VULCAN_MAX_CONCURRENT=2", "VULCAN_API_TOKEN=", "VULCAN_POOL=off", "VULCAN_SNAPSHOTS=false")
	srv.Env = append(srv.Env, env...)
	var logs syncBuffer
	srv.Stdout, srv.Stderr = &logs, &logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	t.Cleanup(func() {
		srv.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			srv.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	base := "http://" + addr
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("vulcan serve exited: %v\n%s", err, logs.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// artifactsDir is $VULCAN_ARTIFACTS_DIR, else artifacts/screenshots at the repository
// root (gitignored).
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("VULCAN_ARTIFACTS_DIR")
	if dir == "" {
		root, err := os.Getwd()
		if err != nil {
			t.Fatal(err)
		}
		for {
			if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
				break
			}
			parent := filepath.Dir(root)
			if parent == root {
				t.Fatal("no go.mod above the test's directory")
			}
			root = parent
		}
		dir = filepath.Join(root, "artifacts", "screenshots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func apiGet(t *testing.T, url string, v any) {
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
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// bootCount reads how many microVMs booted from the server's own /metrics.
func bootCount(t *testing.T, base string) int {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	n := 0
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "vulcan_microvm_boot_seconds_count") {
			var v int
			fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
			n += v
		}
	}
	if n == 0 {
		t.Fatalf("no boots counted in /metrics:\n%s", body)
	}
	return n
}

func writeTarGz(t *testing.T, path string, files map[string]string) {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		body := files[name]
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	if err := errors.Join(tw.Close(), gz.Close(), os.WriteFile(path, buf.Bytes(), 0o644)); err != nil {
		t.Fatal(err)
	}
}

func apiPost(t *testing.T, url string, in, v any) {
	t.Helper()
	b, _ := json.Marshal(in)
	resp, err := http.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		t.Fatalf("POST %s: %d %s", url, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
}

func apiDelete(t *testing.T, url string) {
	req, _ := http.NewRequest(http.MethodDelete, url, nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
}

// TestDashboardNodesPage: the Nodes page of a cluster node lists both nodes of a
// two-node cluster (a real nats-server), live, with this node marked; a single node's
// page says it is not in a cluster.
func TestDashboardNodesPage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers and a browser")
	}
	testenv.RequiresBinary(t, "chromium")
	images := testenv.RequiresImages(t, "python")
	nats := clustertest.Start(t)
	a := startServer(t, images, "VULCAN_NATS_URL="+nats.URL, "VULCAN_NODE_ID=dash-a")
	startServer(t, images, "VULCAN_NATS_URL="+nats.URL, "VULCAN_NODE_ID=dash-b")
	single := startServer(t, images)
	ctx := chromium.NewTab(t, 1440, 900, 2*time.Minute)
	b := &browser{t: t, ctx: ctx, base: a, shots: artifactsDir(t)}

	b.do(t, chromedp.Navigate(a+"/nodes"), chromedp.WaitVisible(chromedp.CSS(`#cluster-summary`)))
	b.poll(t, `document.querySelectorAll('#nodes tr[data-node][data-alive="true"]').length === 2`)
	if row := b.eval(t, `document.querySelector('#nodes tr[data-node="dash-a"]').innerText`); !strings.Contains(row, "this node") {
		t.Errorf("dash-a's row does not mark it as this node: %q", row)
	}
	if sum := b.eval(t, `document.querySelector('#cluster-summary').textContent`); !strings.Contains(sum, "2 live nodes") {
		t.Errorf("summary: %q", sum)
	}
	b.shot(t, "nodes")

	b.do(t, chromedp.Navigate(single+"/nodes"))
	b.poll(t, `/single node/.test(document.querySelector('#cluster-summary')?.textContent || '')`)
}
