// Package acceptance proves Vulcan end to end the way a user meets it: a real `vulcan
// serve` process, real VMs booted from the built kernel and images, the HTTP API and the
// CLI. Each test is named after the acceptance criterion it proves.
package acceptance

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// One server serves AC1-AC7 and AC9; its counters are checked last.
var (
	sharedOnce sync.Once
	shared     *server
)

func sharedServer(t *testing.T) *server {
	t.Helper()
	requireVMs(t)
	sharedOnce.Do(func() {
		// The shared server outlives the first test that asked for it.
		st := &sharedT{T: t}
		shared = startServer(st, "", "VULCAN_MAX_CONCURRENT=3")
	})
	if shared == nil {
		t.Fatal("shared server did not start")
	}
	shared.t = t
	return shared
}

// sharedT defers the shared server's cleanups to TestMain's end.
type sharedT struct{ *testing.T }

var sharedCleanups []func()

func (s *sharedT) Cleanup(f func()) { sharedCleanups = append(sharedCleanups, f) }

func TestMain(m *testing.M) {
	code := m.Run()
	for i := len(sharedCleanups) - 1; i >= 0; i-- {
		sharedCleanups[i]()
	}
	os.Exit(code)
}

func spec(rt model.Runtime, code string, mut ...func(*model.Spec)) model.Spec {
	s := model.Spec{Runtime: rt, Isolation: model.IsolationAuto, Code: code,
		Resources: model.Resources{TimeoutS: 120}}
	for _, m := range mut {
		m(&s)
	}
	return s
}

func mustRun(t *testing.T, s *server, sp model.Spec) *api.Workload {
	t.Helper()
	w, err := s.c.Run(ctxFor(t, 5*time.Minute), sp)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return w
}

func exitCode(w *api.Workload) int {
	if w.ExitCode == nil {
		return -1
	}
	return *w.ExitCode
}

// AC1: the microVM backend registers and answers for microvm and auto, with capabilities.
func TestAC1BackendRegistersWithCapabilities(t *testing.T) {
	s := sharedServer(t)
	bs, err := s.c.Backends(ctxFor(t, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, b := range bs.Backends {
		if b.Name != "microvm" {
			continue
		}
		found = true
		if !b.Available || b.Capabilities == nil {
			t.Fatalf("microvm not available: %+v", b)
		}
		for _, rt := range model.Runtimes {
			if !slices.Contains(b.Capabilities.Runtimes, rt) {
				t.Errorf("runtime %s missing from capabilities %v", rt, b.Capabilities.Runtimes)
			}
		}
		if b.Capabilities.MaxCPUs < 1 || b.Capabilities.MaxMemMB < 128 {
			t.Errorf("limits: %+v", b.Capabilities)
		}
	}
	if !found {
		t.Fatalf("no microvm backend in %+v", bs)
	}
	for _, iso := range []model.Isolation{model.IsolationMicroVM, model.IsolationAuto} {
		w := mustRun(t, s, spec(model.RuntimePython, "print('hi')", func(sp *model.Spec) { sp.Isolation = iso }))
		if w.Status != model.StatusCompleted || w.Backend != "microvm" || w.Metadata["vmm"] == "" {
			t.Errorf("isolation %s: status %s backend %q metadata %v error %q", iso, w.Status, w.Backend, w.Metadata, w.Error)
		}
		// A run with VULCAN_VMM set (the Firecracker pass) must really use that VMM.
		if want := os.Getenv("VULCAN_VMM"); want != "" && want != "auto" && w.Metadata["vmm"] != want {
			t.Errorf("isolation %s ran on %q, VULCAN_VMM=%s", iso, w.Metadata["vmm"], want)
		}
	}
}

// AC2: VMs boot from the built kernel and images, boot time recorded.
func TestAC2BootsBuiltKernelAndImages(t *testing.T) {
	s := sharedServer(t)
	set := images.Load(testenv.ImagesDir())
	w := mustRun(t, s, spec(model.RuntimePython, "import platform; print(platform.release())"))
	if w.Status != model.StatusCompleted {
		t.Fatalf("status %s error %q", w.Status, w.Error)
	}
	md := w.Metadata
	if got := strings.TrimSpace(w.Stdout); got != set.Kernel.Manifest.Version || md["kernel_version"] != got {
		t.Errorf("guest runs kernel %q, metadata says %q, built kernel is %q", got, md["kernel_version"], set.Kernel.Manifest.Version)
	}
	if ms, err := strconv.Atoi(md["boot_ms"]); err != nil || ms <= 0 {
		t.Errorf("boot_ms = %q", md["boot_ms"])
	}
	py := set.RootFS[model.RuntimePython].Manifest
	if md["image_runtime"] != "python "+py.RuntimeVersion || !strings.HasPrefix(py.SHA256, md["image_sha256"]) {
		t.Errorf("image metadata %v does not match the built image %+v", md, py)
	}
	for _, k := range []string{"vm_id", "vmm", "accel", "cid"} {
		if md[k] == "" {
			t.Errorf("metadata %s missing", k)
		}
	}
}

// AC4: code goes in over the agent channel; output and exit codes come back.
func TestAC4OutputAndExitCodes(t *testing.T) {
	s := sharedServer(t)
	ok := mustRun(t, s, spec(model.RuntimePython, "import sys\nprint('out line')\nprint('err line', file=sys.stderr)\n"))
	if ok.Status != model.StatusCompleted || exitCode(ok) != 0 || ok.Stdout != "out line\n" || ok.Stderr != "err line\n" {
		t.Errorf("exit 0 case: status %s exit %d stdout %q stderr %q", ok.Status, exitCode(ok), ok.Stdout, ok.Stderr)
	}
	bad := mustRun(t, s, spec(model.RuntimeNode, "console.log(JSON.stringify(require('fs').readFileSync(0,'utf8'))); process.exit(42)",
		func(sp *model.Spec) { sp.Input = json.RawMessage(`{"n":1}`) }))
	if bad.Status != model.StatusFailed || exitCode(bad) != 42 || strings.TrimSpace(bad.Stdout) != `"{\"n\":1}"` {
		t.Errorf("non-zero case: status %s exit %d stdout %q error %q", bad.Status, exitCode(bad), bad.Stdout, bad.Error)
	}
	// The CLI gives the program's exit code as its own.
	if out, code := s.vulcan("run", "--runtime", "python", "--code", "print('cli'); raise SystemExit(5)"); code != 5 || strings.TrimSpace(out) != "cli" {
		t.Errorf("vulcan run: exit %d output %q", code, out)
	}

	// Nothing lost on the way to the store: 10,000 printed lines (this stored ~1,860 and
	// said completed before the agent drained to EOF), a last line without a newline, and
	// a line longer than one agent message — the stored stdout, the stored log and what
	// `vulcan run` prints are the bytes written.
	code := "import sys\nfor i in range(10000): print(i)\nsys.stdout.write('x' * 70000 + '\\n')\nsys.stdout.write('tail without newline')\n"
	var want strings.Builder
	for i := range 10000 {
		fmt.Fprintf(&want, "%d\n", i)
	}
	want.WriteString(strings.Repeat("x", 70000) + "\n" + "tail without newline")
	many := mustRun(t, s, spec(model.RuntimePython, code))
	if many.Status != model.StatusCompleted || many.Truncated || many.Stdout != want.String() {
		t.Errorf("10,000 lines: status %s truncated %v, stdout %d bytes, want %d", many.Status, many.Truncated, len(many.Stdout), want.Len())
	}
	lines, err := s.c.Logs(ctxFor(t, time.Minute), many.ID)
	if err != nil {
		t.Fatal(err)
	}
	var stored strings.Builder
	for _, l := range lines {
		if l.Stream == model.Stdout {
			stored.WriteString(l.Text)
			if !l.Partial {
				stored.WriteByte('\n')
			}
		}
	}
	if stored.String() != want.String() {
		t.Errorf("stored log: %d bytes, want %d", stored.Len(), want.Len())
	}
	if out, code := s.vulcan("run", "--runtime", "python", "--code", "import sys; sys.stdout.write('a\\nb')"); code != 0 || out != "a\nb" {
		t.Errorf("vulcan run without a final newline: exit %d output %q", code, out)
	}
}

// AC5: Go, Node and Python workloads, inline and as archives.
func TestAC5RuntimesInlineAndArchive(t *testing.T) {
	s := sharedServer(t)
	cases := []struct {
		rt      model.Runtime
		inline  string
		archive map[string]string
		entry   string
	}{
		{model.RuntimePython, "print(6*7)",
			map[string]string{"app/main.py": "from helper import v\nprint(v)\n", "app/helper.py": "v = 6*7\n"}, "app/main.py"},
		{model.RuntimeNode, "console.log(6*7)",
			map[string]string{"src/index.js": "console.log(require('./lib').v)\n", "src/lib.js": "module.exports = {v: 6*7}\n"}, "src/index.js"},
		{model.RuntimeGo, "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(6 * 7) }\n",
			map[string]string{"go.mod": "module demo\n\ngo 1.26\n", "main.go": "package main\n\nimport (\n\t\"fmt\"\n\t\"demo/calc\"\n)\n\nfunc main() { fmt.Println(calc.V()) }\n", "calc/calc.go": "package calc\n\nfunc V() int { return 6 * 7 }\n"}, ""},
	}
	var wg sync.WaitGroup
	for _, c := range cases {
		for _, kind := range []string{"inline", "archive"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sp := spec(c.rt, c.inline)
				if kind == "archive" {
					sp = spec(c.rt, "", func(sp *model.Spec) { sp.Archive = tarGz(t, c.archive); sp.Entrypoint = c.entry })
				}
				w, err := s.c.Run(ctxFor(t, 5*time.Minute), sp)
				if err != nil {
					t.Errorf("%s %s: %v", c.rt, kind, err)
					return
				}
				if w.Status != model.StatusCompleted || strings.TrimSpace(w.Stdout) != "42" {
					t.Errorf("%s %s: status %s stdout %q stderr %q error %q", c.rt, kind, w.Status, w.Stdout, w.Stderr, w.Error)
				}
			}()
		}
	}
	wg.Wait()
}

// AC6: vCPUs and memory as asked, seen from inside the guest; a 3 s timeout stops a 30 s
// sleep.
func TestAC6Limits(t *testing.T) {
	s := sharedServer(t)
	w := mustRun(t, s, spec(model.RuntimePython,
		"import os\nprint(os.cpu_count())\nprint(open('/proc/meminfo').readline().split()[1])\n",
		func(sp *model.Spec) { sp.Resources.CPUs = 2; sp.Resources.MemMB = 512 }))
	lines := strings.Fields(w.Stdout)
	if w.Status != model.StatusCompleted || len(lines) != 2 {
		t.Fatalf("status %s stdout %q error %q", w.Status, w.Stdout, w.Error)
	}
	if lines[0] != "2" {
		t.Errorf("guest sees %s vCPUs, want 2", lines[0])
	}
	if kb, _ := strconv.Atoi(lines[1]); kb < 400*1024 || kb > 512*1024 {
		t.Errorf("guest MemTotal %s kB, want a little under 512 MiB", lines[1])
	}

	start := time.Now()
	slow := mustRun(t, s, spec(model.RuntimePython, "import time\nprint('start', flush=True)\ntime.sleep(30)\nprint('never')\n",
		func(sp *model.Spec) { sp.Resources.TimeoutS = 3 }))
	if slow.Status != model.StatusFailed || !strings.Contains(slow.Error, "timed out") || strings.Contains(slow.Stdout, "never") {
		t.Errorf("timeout: status %s error %q stdout %q", slow.Status, slow.Error, slow.Stdout)
	}
	// A functional check, not a performance one: the workload did not sleep its 30 s.
	if took := time.Since(start); took >= 30*time.Second {
		t.Errorf("a 3 s timeout let a 30 s sleep finish (%v)", took)
	}
}

// AC7: after success, failure, timeout and kill, nothing of the VM remains.
func TestAC7NothingLeftBehind(t *testing.T) {
	s := sharedServer(t)
	ctx := ctxFor(t, 5*time.Minute)
	check := func(what string) {
		t.Helper()
		// Teardown completes before the workload is reported terminal; allow the VMM's
		// process exit to be observed.
		var left []string
		for range 50 {
			if left = s.leftovers(); len(left) == 0 {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("after %s: left behind %v", what, left)
	}
	mustRun(t, s, spec(model.RuntimePython, "print('ok')"))
	check("success")
	mustRun(t, s, spec(model.RuntimePython, "raise SystemExit(3)"))
	check("failure")
	mustRun(t, s, spec(model.RuntimePython, "import time; time.sleep(60)", func(sp *model.Spec) { sp.Resources.TimeoutS = 2 }))
	check("timeout")

	w, err := s.c.Submit(ctx, spec(model.RuntimePython, "import time\nprint('running', flush=True)\ntime.sleep(60)\n"))
	if err != nil {
		t.Fatal(err)
	}
	// Kill once it is really running in its VM (its first line arrived).
	got := make(chan struct{})
	var once sync.Once
	go s.c.Follow(ctx, w.ID, func(model.LogLine) { once.Do(func() { close(got) }) })
	select {
	case <-got:
	case <-ctx.Done():
		t.Fatal("workload never printed")
	}
	if _, err := s.c.Kill(ctx, w.ID); err != nil {
		t.Fatal(err)
	}
	final := waitTerminal(t, s, w.ID)
	if final.Status != model.StatusKilled {
		t.Errorf("killed workload ended %s", final.Status)
	}
	check("kill")
}

func waitTerminal(t *testing.T, s *server, id string) *api.Workload {
	t.Helper()
	ctx := ctxFor(t, 5*time.Minute)
	for {
		w, err := s.c.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if w.Status.Terminal() {
			return w
		}
		select {
		case <-ctx.Done():
			t.Fatalf("workload %s still %s", id, w.Status)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// AC9: /metrics shows boot time observations, active VMs back to 0, workloads_total by
// runtime and outcome. Runs after the others on the shared server (Go runs tests in
// source order).
func TestAC9Metrics(t *testing.T) {
	s := sharedServer(t)
	mustRun(t, s, spec(model.RuntimePython, "print(1)"))
	if n := s.metric("vulcan_microvm_boot_seconds_count"); n < 1 {
		t.Errorf("boot_seconds_count = %v", n)
	}
	if n := s.metric("vulcan_microvm_active_vms"); n != 0 {
		t.Errorf("active_vms = %v after every workload ended", n)
	}
	for _, c := range []struct{ rt, outcome string }{{"python", "completed"}, {"python", "failed"}, {"python", "timeout"}, {"node", "failed"}, {"go", "completed"}} {
		if n := s.metric("vulcan_microvm_workloads_total", `runtime="`+c.rt+`"`, `outcome="`+c.outcome+`"`); n < 1 {
			t.Errorf("workloads_total{runtime=%s,outcome=%s} = %v", c.rt, c.outcome, n)
		}
	}
	if n := s.metric("vulcan_microvm_agent_roundtrip_seconds_count"); n < 1 {
		t.Errorf("agent_roundtrip_seconds_count = %v", n)
	}
}

func tarGz(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		body := files[name]
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}
