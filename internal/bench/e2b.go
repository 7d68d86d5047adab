package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/vulcanhq/vulcan/internal/api"
)

var rowE1 = Row{"E1", "E2B SDK create → first command", "Sandbox.create('python') → commands.run('true') through the official JS SDK (e2b 2.51.0, node) vs the same through Vulcan's native API (POST /v1/sandboxes, then a process), same server, p50s; each sandbox killed after"}

// E2BMaxRatio is E1's target: the compatibility layer adds nothing noticeable.
const E2BMaxRatio = 1.2

// e1Script times create → run('true') through the SDK, n times, and prints the times in
// milliseconds as a JSON array.
const e1Script = `import { Sandbox } from 'e2b'
const n = Number(process.env.E1_N), out = []
for (let i = 0; i < n; i++) {
  const t0 = performance.now()
  const sbx = await Sandbox.create('python', { timeoutMs: 600_000 })
  await sbx.commands.run('true')
  out.push(performance.now() - t0)
  await sbx.kill()
}
console.log(JSON.stringify(out))
`

// e2bSDKDir is where scripts/e2b-sdk.sh installs the SDK (make e2b-sdk), or "".
func e2bSDKDir() string {
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
		return ""
	}
	return dir
}

// E2BCreate is E1.
func E2BCreate(ctx context.Context, o Options) (Result, error) {
	if why := sandboxPrereq(o); why != "" {
		return rowE1.Skipped(why), nil
	}
	sdk := e2bSDKDir()
	if _, err := exec.LookPath("node"); err != nil || sdk == "" {
		return rowE1.Skipped("needs node and the E2B SDK: make e2b-sdk"), nil
	}
	s, err := startSandboxStack(ctx, o, 2)
	if err != nil {
		return Result{}, err
	}
	defer s.Close()
	n := o.n(20, 5)
	native := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		sb, err := createSandbox(ctx, s)
		if err != nil {
			return Result{}, err
		}
		ev, err := s.c.Exec(ctx, sb.ID, api.ProcessRequest{Argv: []string{"true"}}, nil)
		native = append(native, time.Since(t0))
		if kerr := s.stopAll(ctx, []string{sb.ID}); err == nil {
			err = kerr
		}
		if err != nil {
			return Result{}, err
		}
		if ev.ExitCode == nil || *ev.ExitCode != 0 {
			return Result{}, fmt.Errorf("true: exit %+v", ev)
		}
	}
	script := filepath.Join(sdk, "e1-bench.mjs")
	if err := os.WriteFile(script, []byte(e1Script), 0o644); err != nil {
		return Result{}, err
	}
	cmd := exec.CommandContext(ctx, "node", script)
	cmd.Dir = sdk
	cmd.Env = append(os.Environ(), "E2B_API_URL="+s.URL, "E2B_SANDBOX_URL="+s.URL, "E2B_API_KEY=bench",
		"E2B_DOMAIN=vulcan.invalid", fmt.Sprintf("E1_N=%d", n))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return Result{}, fmt.Errorf("the SDK's run: %v: %s", err, stderr.String())
	}
	var ms []float64
	if err := json.Unmarshal(bytes.TrimSpace(out), &ms); err != nil || len(ms) != n {
		return Result{}, fmt.Errorf("the SDK's run printed %q (%v)", out, err)
	}
	viaSDK := make([]time.Duration, n)
	for i, v := range ms {
		viaSDK[i] = time.Duration(v * float64(time.Millisecond))
	}
	r := rowE1.Compare(Ratio, NewSample("native API", native), NewSample("E2B SDK", viaSDK), AtMost(E2BMaxRatio))
	r.Note = fmt.Sprintf("%d each; p95 native %s, SDK %s", n,
		formatSeconds(Percentile(native, 95).Seconds()), formatSeconds(Percentile(viaSDK, 95).Seconds()))
	return r, nil
}
