// Package browser starts Debian's headless Chromium for tests, with the flags that work on
// a machine without internet: no background networking, no component updates, no sync.
package browser

import (
	"context"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/vulcanhq/vulcan/internal/testenv"
)

// NewTab returns a chromedp context for one tab of a fresh headless Chromium (its own
// profile dir) of the given window size, bounded by timeout; it closes with the test.
func NewTab(t testing.TB, width, height int, timeout time.Duration) context.Context {
	t.Helper()
	chromium := testenv.RequiresBinary(t, "chromium")
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(width, height),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true))
	ctx, cancelTab := chromedp.NewContext(alloc)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	t.Cleanup(func() {
		cancel()
		cancelTab()
		cancelAlloc()
	})
	return ctx
}
