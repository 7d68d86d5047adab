package acceptance

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vulcanhq/vulcan/internal/e2b/e2btest"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// TestE2BSDKOnRealVMs: the official E2B SDK, both pinned versions, against a real
// `vulcan serve` booting real VMs — 2.51 on the base template, 2.50 on python — with
// only E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set.
//
// The server runs with fast start on (a warm pool of base VMs, snapshots), as served by
// default, and the SDK's script also pauses and resumes (connect) its sandbox.
func TestE2BSDKOnRealVMs(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node is not installed")
	}
	s := startServer(t, "", "VULCAN_POOL=base=1:2", "VULCAN_SNAPSHOTS=true")
	// A user template, which the SDK names by its templateID.
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"Dockerfile": "FROM python\nENV TPL_ENV=from-the-template\nRUN echo made-by-a-dockerfile > /etc/template-marker\n"})
	if _, out, code := buildTemplate(t, s, "e2b-tpl", dir); code != 0 {
		t.Fatalf("template build: %d %s", code, out)
	}
	// Fast start covers user templates: after the first cold start of its shape, its
	// snapshot is built, and the next sandbox from it is restored.
	first, code := s.vulcan("sandbox", "create", "--template", "e2b-tpl")
	if code != 0 {
		t.Fatalf("create from the template: %d %s", code, first)
	}
	s.vulcan("sandbox", "kill", strings.TrimSpace(first))
	deadline := time.Now().Add(3 * time.Minute)
	for s.metric("vulcan_snapshot_builds_total", `template="e2b-tpl"`, `outcome="built"`) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no snapshot of the user template was built")
		}
		time.Sleep(200 * time.Millisecond)
	}
	again, code := s.vulcan("sandbox", "create", "--template", "e2b-tpl", "--json")
	if code != 0 || !strings.Contains(again, `"start": "snapshot"`) {
		t.Errorf("the second sandbox from the template was not restored from its snapshot: %d %s", code, again)
	}
	var sb struct{ ID string }
	json.Unmarshal([]byte(again), &sb)
	if out, code := s.vulcan("exec", sb.ID, "--", "cat /etc/template-marker"); code != 0 || out != "made-by-a-dockerfile\n" {
		t.Errorf("the restored sandbox: %d %q", code, out)
	}
	s.vulcan("sandbox", "kill", sb.ID)
	for i, m := range e2btest.SDKModules {
		template := []string{"base", "python"}[i%2]
		t.Run(m+"/"+template, func(t *testing.T) {
			e2btest.RunSDK(t, m, s.url, "any-key", template, "VULCAN_CAN_PAUSE=1", "USER_TEMPLATE=e2b-tpl")
		})
	}
	if left := s.leftovers(); len(left) > 0 {
		t.Errorf("left behind after the SDK's sandboxes were killed: %v", left)
	}
}

// TestMCPOnRealVMs: the official Go SDK's MCP client against the server's /mcp, running
// code and a sandbox's commands and files in real VMs.
func TestMCPOnRealVMs(t *testing.T) {
	s := startServer(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "acceptance", Version: "1"}, nil)
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: s.url + "/mcp", MaxRetries: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	call := func(tool string, args map[string]any) (map[string]any, string) {
		t.Helper()
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		var text strings.Builder
		for _, c := range res.Content {
			if tc, ok := c.(*mcp.TextContent); ok {
				text.WriteString(tc.Text)
			}
		}
		if res.IsError {
			t.Fatalf("%s %v: tool error %s", tool, args, text.String())
		}
		var out map[string]any
		b, _ := json.Marshal(res.StructuredContent)
		json.Unmarshal(b, &out)
		return out, text.String()
	}
	out, _ := call("run_code", map[string]any{"runtime": "python", "code": "import sys; print(6*7); print('e', file=sys.stderr)"})
	if out["exit_code"] != 0.0 || out["stdout"] != "42\n" || out["stderr"] != "e\n" {
		t.Errorf("run_code: %v", out)
	}
	out, _ = call("sandbox_create", map[string]any{"template": "python"})
	id, _ := out["id"].(string)
	call("file_write", map[string]any{"id": id, "path": "calc.py", "content": "print(sum(range(10)))\n"})
	if out, _ := call("sandbox_exec", map[string]any{"id": id, "cmd": "python3 calc.py > out.txt; cat out.txt; id -un"}); out["stdout"] != "45\nuser\n" {
		t.Errorf("sandbox_exec: %v", out)
	}
	if out, _ := call("file_read", map[string]any{"id": id, "path": "out.txt"}); out["content"] != "45\n" {
		t.Errorf("file_read: %v", out)
	}
	// Pause and resume through the tools: the file is still there.
	if out, _ := call("sandbox_pause", map[string]any{"id": id}); out["state"] != "paused" {
		t.Errorf("sandbox_pause: %v", out)
	}
	if out, _ := call("sandbox_resume", map[string]any{"id": id}); out["state"] != "running" {
		t.Errorf("sandbox_resume: %v", out)
	}
	if out, _ := call("file_read", map[string]any{"id": id, "path": "out.txt"}); out["content"] != "45\n" {
		t.Errorf("file_read after a pause and resume: %v", out)
	}
	if out, _ := call("sandbox_kill", map[string]any{"id": id}); out["state"] != "killed" {
		t.Errorf("sandbox_kill: %v", out)
	}
	// run_python keeps its state between calls in the code-interpreter sandbox it made.
	if _, err := os.Stat(filepath.Join(testenv.ImagesDir(), "rootfs-code-interpreter.ext4")); err == nil {
		out, _ := call("run_python", map[string]any{"code": "x = 6 * 7\nx"})
		py, _ := out["id"].(string)
		if res, _ := out["results"].([]any); py == "" || len(res) != 1 || res[0] != "42" {
			t.Errorf("run_python: %v", out)
		}
		if out, _ := call("run_python", map[string]any{"id": py, "code": "print(x + 1)\n1 / 0"}); out["stdout"] != "43\n" ||
			!strings.Contains(fmt.Sprint(out["error"]), "ZeroDivisionError") {
			t.Errorf("run_python's second cell: %v", out)
		}
		call("sandbox_kill", map[string]any{"id": py})
	}
	if left := s.leftovers(); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestCodeInterpreterSDK: the official @e2b/code-interpreter SDK against a real server:
// its default template (code-interpreter-v1, Vulcan's code-interpreter) with the
// interpreter service on port 49999 reached over the agent channel — state between
// cells, a matplotlib PNG, a pandas table, errors, a timeout that interrupts the cell
// and keeps the kernel, separate contexts, JavaScript.
func TestCodeInterpreterSDK(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node is not installed")
	}
	testenv.RequiresImages(t, "code-interpreter")
	s := startServer(t, "")
	times := e2btest.RunCodeInterpreterSDK(t, s.url, "any-key")
	// The CLI: one cell, then a REPL session that keeps its variable, and a raising cell.
	id, code := s.vulcan("sandbox", "create", "--template", "code-interpreter")
	if code != 0 {
		t.Fatalf("create: %d %s", code, id)
	}
	id = strings.TrimSpace(id)
	if out, code := s.vulcan("code", id, "-c", "y = 20\nprint(y + 1)\ny * 2"); code != 0 || out != "21\n40\n" {
		t.Errorf("vulcan code -c: %d %q", code, out)
	}
	repl := s.command("--server", s.url, "code", id)
	repl.Env = s.env
	repl.Stdin = strings.NewReader("for i in range(2):\n    print(i)\n\ny + 1\n")
	if out, err := repl.CombinedOutput(); err != nil || !strings.Contains(string(out), "0\n1\n") || !strings.Contains(string(out), "21\n") {
		t.Errorf("vulcan code (REPL): %v %q", err, out)
	}
	if out, code := s.vulcan("code", id, "-c", "1/0"); code != 1 || !strings.Contains(out, "ZeroDivisionError") {
		t.Errorf("vulcan code with an exception: %d %q", code, out)
	}
	s.vulcan("sandbox", "kill", id)
	t.Logf("C1 runCode('1+1') p50 through the SDK: %.1f ms; create → first result: %.0f ms", times["runcode-p50"], times["create-to-first-result"])
	if left := s.leftovers(); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}
