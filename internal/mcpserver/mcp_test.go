package mcpserver_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/sandbox/sandboxtest"
	"github.com/vulcanhq/vulcan/internal/server/servertest"
)

// server is Vulcan's API with /mcp mounted, over sandboxes whose "VMs" are the real
// guest agent in this process and workloads on the fake backend.
func server(t *testing.T, token string) string {
	t.Helper()
	s := servertest.New(t, servertest.Options{Fake: &backendtest.Fake{}, Launcher: sandboxtest.NewAgentLauncher(t),
		API: func(o *api.Options) { o.Token = token }})
	return s.Server.URL
}

type bearer struct {
	token string
	rt    http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.rt.RoundTrip(r)
}

func call(t *testing.T, cs *mcp.ClientSession, tool string, args map[string]any) (map[string]any, bool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
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
	var out map[string]any
	if res.StructuredContent != nil {
		b, _ := json.Marshal(res.StructuredContent)
		json.Unmarshal(b, &out)
	}
	return out, res.IsError, text.String()
}

// exercise runs the tools an agent uses, in order, through a real MCP client session.
func exercise(t *testing.T, cs *mcp.ClientSession) {
	ctx := context.Background()
	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, tl := range tools.Tools {
		names[tl.Name] = true
	}
	for _, want := range []string{"run_code", "sandbox_create", "sandbox_list", "sandbox_kill", "sandbox_pause", "sandbox_resume", "sandbox_exec", "file_read", "file_write", "file_list"} {
		if !names[want] {
			t.Errorf("tool %s missing (have %v)", want, names)
		}
	}

	out, isErr, text := call(t, cs, "sandbox_create", map[string]any{"metadata": map[string]string{"by": "mcp"}})
	id, _ := out["id"].(string)
	if isErr || id == "" || out["state"] != "running" {
		t.Fatalf("sandbox_create: %v %v %s", out, isErr, text)
	}
	if out, isErr, text := call(t, cs, "sandbox_exec", map[string]any{"id": id, "cmd": "echo state > kept.txt; echo hi; echo err >&2; exit 3"}); isErr ||
		out["exit_code"] != 3.0 || out["stdout"] != "hi\n" || out["stderr"] != "err\n" {
		t.Errorf("sandbox_exec: %v %v %s", out, isErr, text)
	}
	if out, isErr, text := call(t, cs, "file_read", map[string]any{"id": id, "path": "kept.txt"}); isErr || out["content"] != "state\n" {
		t.Errorf("file_read sees the exec's file: %v %v %s", out, isErr, text)
	}
	if _, isErr, text := call(t, cs, "file_write", map[string]any{"id": id, "path": "dir/note.md", "content": "# note\n"}); isErr {
		t.Errorf("file_write: %s", text)
	}
	if out, isErr, text := call(t, cs, "file_list", map[string]any{"id": id, "path": "dir"}); isErr || !strings.Contains(text+toJSON(out), "note.md") {
		t.Errorf("file_list: %v %v %s", out, isErr, text)
	}
	// The resource form of the same file.
	ls, _, _ := call(t, cs, "file_list", map[string]any{"id": id, "path": "dir"})
	entries, _ := ls["entries"].([]any)
	if len(entries) == 1 {
		p := entries[0].(map[string]any)["path"].(string)
		res, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "vulcan://sandboxes/" + id + "/files" + p})
		if err != nil || len(res.Contents) != 1 || res.Contents[0].Text != "# note\n" {
			t.Errorf("resource %s: %+v %v", p, res, err)
		}
	} else {
		t.Errorf("file_list entries %v", ls)
	}
	// Clear errors, as tool errors the model can read.
	for _, c := range []struct {
		tool string
		args map[string]any
		want string
	}{
		{"file_read", map[string]any{"id": id, "path": "missing.txt"}, "not_found"},
		{"sandbox_exec", map[string]any{"id": "nope", "cmd": "true"}, "not_found"},
		{"run_code", map[string]any{"runtime": "cobol", "code": "x"}, "runtime"},
		{"sandbox_create", map[string]any{"template": "cobol"}, "template"},
	} {
		if _, isErr, text := call(t, cs, c.tool, c.args); !isErr || !strings.Contains(text, c.want) {
			t.Errorf("%s %v: error %v %q, want one mentioning %q", c.tool, c.args, isErr, text, c.want)
		}
	}
	if out, isErr, text := call(t, cs, "sandbox_list", nil); isErr || !strings.Contains(toJSON(out), id) {
		t.Errorf("sandbox_list: %v %s", out, text)
	}
	if out, isErr, text := call(t, cs, "sandbox_kill", map[string]any{"id": id}); isErr || out["state"] != "killed" {
		t.Errorf("sandbox_kill: %v %v %s", out, isErr, text)
	}
	if out, isErr, text := call(t, cs, "run_code", map[string]any{"runtime": "python", "code": "print(1)"}); isErr || out["status"] == "" {
		t.Errorf("run_code: %v %v %s", out, isErr, text)
	}
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestMCPOverStreamableHTTP: the official Go SDK's client against /mcp, with the token.
func TestMCPOverStreamableHTTP(t *testing.T) {
	url := server(t, "tok")
	c := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
	// Without the token: refused.
	if _, err := c.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: url + "/mcp", MaxRetries: -1}, nil); err == nil {
		t.Fatal("connected to /mcp without the token")
	}
	cs, err := c.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: url + "/mcp", MaxRetries: -1,
		HTTPClient: &http.Client{Transport: bearer{"tok", http.DefaultTransport}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	exercise(t, cs)
}

// TestMCPOverStdio: `vulcan mcp` launched by the client, as an agent's host launches it,
// talking to a running server (needs the built binary: VULCAN_BIN_DIR, as make test sets).
func TestMCPOverStdio(t *testing.T) {
	bin := os.Getenv("VULCAN_BIN_DIR")
	if bin == "" {
		t.Skip("VULCAN_BIN_DIR is not set (make test sets it)")
	}
	url := server(t, "tok")
	cmd := exec.Command(filepath.Join(bin, "vulcan"), "mcp", "--server", url)
	cmd.Env = append(os.Environ(), "VULCAN_API_TOKEN=tok")
	c := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
	cs, err := c.Connect(context.Background(), &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	exercise(t, cs)
}
