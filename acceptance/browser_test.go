package acceptance

import (
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/vulcanhq/vulcan/internal/testenv/browser"
)

// AC8: in the browser, a user submits code, watches it run (status running, its first
// line live), and sees the logs and the result.
func TestAC8Browser(t *testing.T) {
	s := sharedServer(t)
	ctx := browser.NewTab(t, 1280, 900, 5*time.Minute)

	code := "import time\nprint('first line', flush=True)\ntime.sleep(3)\nprint('second line')\n"
	run := func(actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatal(err)
		}
	}
	eval := func(expr string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return v
	}
	run(chromedp.Navigate(s.url+"/workloads/new"), chromedp.WaitVisible(chromedp.CSS(`#code`)),
		chromedp.SetValue(chromedp.CSS(`#code`), code), chromedp.Click(chromedp.CSS(`#submit`)))

	// Watch it run: the page shows running with the first line before the second exists.
	run(chromedp.Poll[chromedp.Void](`document.querySelector('#status')?.dataset.status === 'running' &&
		[...document.querySelectorAll('#log li .text')].some(e => e.textContent === 'first line')`,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(3*time.Minute)))
	early := eval(`[...document.querySelectorAll('#log li .text')].map(e => e.textContent).join('|')`)
	if strings.Contains(early, "second line") {
		t.Errorf("the live view already had the second line while running: %q", early)
	}

	// The result: completed, exit 0, both lines in order on the page.
	run(chromedp.Poll[chromedp.Void](`document.querySelector('#status')?.dataset.status === 'completed' &&
		document.querySelector('#log')?.dataset.complete === 'true'`,
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(3*time.Minute)))
	lines := eval(`[...document.querySelectorAll('#log li[data-stream=stdout] .text')].map(e => e.textContent).join('|')`)
	exit := eval(`document.querySelector('#facts [data-k=exit]').textContent`)
	if lines != "first line|second line" || exit != "0" {
		t.Errorf("page shows stdout %q exit %q", lines, exit)
	}
}
