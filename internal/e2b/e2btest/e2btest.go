// Package e2btest runs the official E2B SDK (npm, pinned by ../testdata/sdk) against a
// Vulcan server: internal/e2b's tests over in-process sandboxes, acceptance's over real
// VMs.
package e2btest

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sdkDir is where scripts/e2b-sdk.sh installed the pinned SDK ($VULCAN_E2B_SDK, as
// make test sets it, or the script's default cache dir); the test's script is copied
// next to its node_modules so that node resolves "e2b" there.
func SDKDir(t *testing.T) string {
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
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@e2b", "code-interpreter", "package.json")); err != nil {
		t.Fatalf("the E2B SDK in %s predates the lock file's @e2b/code-interpreter: run make e2b-sdk", dir)
	}
	_, self, _, _ := runtime.Caller(0)
	for _, name := range []string{"sdk_test.mjs", "ci_test.mjs"} {
		script, err := os.ReadFile(filepath.Join(filepath.Dir(self), "..", "testdata", "sdk", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), script, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// RunCodeInterpreterSDK runs @e2b/code-interpreter's script against url, fails t with
// each check that failed, and returns its "time NAME MS" lines as a map.
func RunCodeInterpreterSDK(t *testing.T, url, key string, env ...string) map[string]float64 {
	t.Helper()
	dir := SDKDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "ci_test.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "E2B_API_URL="+url, "E2B_SANDBOX_URL="+url, "E2B_API_KEY="+key, "E2B_DOMAIN=vulcan.invalid")
	cmd.Env = append(cmd.Env, env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	oks := 0
	times := map[string]float64{}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		line := sc.Text()
		switch f := strings.Fields(line); {
		case strings.HasPrefix(line, "ok "):
			oks++
		case strings.HasPrefix(line, "FAIL "):
			t.Error(line)
		case len(f) == 3 && f[0] == "time":
			v, _ := strconv.ParseFloat(f[2], 64)
			times[f[1]] = v
		}
	}
	if err != nil || oks < 9 {
		t.Fatalf("the code interpreter SDK's script: %v, %d checks passed; output:\n%s", err, oks, out.String())
	}
	t.Logf("%d checks passed through @e2b/code-interpreter; times (ms): %v", oks, times)
	return times
}

// SDKModules are the pinned SDK versions: 2.51 creates with POST /v2/sandboxes, 2.50
// with POST /sandboxes.
var SDKModules = []string{"e2b", "e2b-2.50"}

// RunSDK runs the official SDK's script (module: one of SDKModules) against url and
// fails t with each check that failed.
func RunSDK(t *testing.T, module, url, key, template string, env ...string) {
	t.Helper()
	dir := SDKDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "sdk_test.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "E2B_API_URL="+url, "E2B_SANDBOX_URL="+url, "E2B_API_KEY="+key, "TEMPLATE="+template, "E2B_MODULE="+module,
		"E2B_DOMAIN=vulcan.invalid") // nothing may leave loopback: a URL the SDK built itself would not resolve
	cmd.Env = append(cmd.Env, env...)
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
