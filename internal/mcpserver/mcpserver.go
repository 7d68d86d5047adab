// Package mcpserver exposes Vulcan to agents over the Model Context Protocol (the
// official Go SDK): tools to run code one-shot, create, list and kill sandboxes, run
// commands in them and read, write and list their files, and a resource template for a
// sandbox's files. Every tool goes through Vulcan's HTTP API with its client, so the
// stdio server (`vulcan mcp`, talking to a running server) and the one the server mounts
// at /mcp (over an in-memory connection to itself) are the same code with the same
// checks, auth and limits.
package mcpserver

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/client"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/version"
)

// Caps on what one tool call returns to the model: output past them is cut (and the
// result says so), files past MaxFileBytes are refused.
const (
	MaxOutputBytes = 64 << 10
	MaxFileBytes   = 1 << 20
)

type tools struct{ c *client.Client }

// New returns an MCP server whose tools act through c.
func New(c *client.Client) *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: "vulcan", Title: "Vulcan microVM sandboxes", Version: version.Version}, &mcp.ServerOptions{
		Instructions: "Vulcan runs untrusted code in microVMs. run_code runs a program once in a fresh VM. " +
			"For many steps, sandbox_create a sandbox, then sandbox_exec commands and file_* operations in it " +
			"(state persists between calls), and sandbox_kill it when done. Paths are absolute or relative to /home/user.",
	})
	t := &tools{c: c}
	mcp.AddTool(s, &mcp.Tool{Name: "run_code", Description: "Run a program once in a fresh microVM (python, node or go) and return its exit code and output."}, t.runCode)
	mcp.AddTool(s, &mcp.Tool{Name: "sandbox_create", Description: "Create a sandbox: a microVM that stays up for many commands and file operations until killed or its timeout (default 300 s)."}, t.sandboxCreate)
	mcp.AddTool(s, &mcp.Tool{Name: "sandbox_list", Description: "List live sandboxes."}, t.sandboxList)
	mcp.AddTool(s, &mcp.Tool{Name: "sandbox_kill", Description: "Kill a sandbox (its VM and everything in it)."}, t.sandboxKill)
	mcp.AddTool(s, &mcp.Tool{Name: "sandbox_pause", Description: "Pause a sandbox: its memory and disk are saved and its VM stopped; sandbox_resume brings it back with its processes and files."}, t.sandboxPause)
	mcp.AddTool(s, &mcp.Tool{Name: "sandbox_resume", Description: "Resume a paused sandbox as it was."}, t.sandboxResume)
	mcp.AddTool(s, &mcp.Tool{Name: "sandbox_exec", Description: "Run a shell command (bash -l -c) in a sandbox and return its exit code and output."}, t.sandboxExec)
	mcp.AddTool(s, &mcp.Tool{Name: "run_python", Description: "Run Python in a code-interpreter sandbox, keeping variables between calls (like a notebook cell): " +
		"returns stdout, stderr, the cell's results (text; images as PNG content) and its error. Without id it creates a code-interpreter sandbox " +
		"and returns its id: pass it to the next calls to keep the state."}, t.runPython)
	mcp.AddTool(s, &mcp.Tool{Name: "file_read", Description: "Read a text file of a sandbox (at most 1 MiB)."}, t.fileRead)
	mcp.AddTool(s, &mcp.Tool{Name: "file_write", Description: "Write a text file in a sandbox (parent directories are made)."}, t.fileWrite)
	mcp.AddTool(s, &mcp.Tool{Name: "file_list", Description: "List a directory of a sandbox."}, t.fileList)
	s.AddResourceTemplate(&mcp.ResourceTemplate{Name: "sandbox-file", Title: "A file in a sandbox",
		URITemplate: "vulcan://sandboxes/{id}/files/{+path}", Description: "The bytes of a file in a live sandbox (path from /)."}, t.readResource)
	return s
}

// capped cuts s to MaxOutputBytes on a UTF-8 boundary.
func capped(s string) (string, bool) {
	if len(s) <= MaxOutputBytes {
		return s, false
	}
	cut := MaxOutputBytes
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut], true
}

// toolErr makes an API error the tool's error result (the model sees the message).
func toolErr(err error) error {
	var ce *client.Error
	if errors.As(err, &ce) {
		return apiErr{ce}
	}
	return err
}

// apiErr shows an API error as "message (code)" and keeps it for errors.As.
type apiErr struct{ e *client.Error }

func (a apiErr) Error() string { return a.e.Message + " (" + a.e.Code + ")" }
func (a apiErr) Unwrap() error { return a.e }

type RunCodeIn struct {
	Runtime  string `json:"runtime" jsonschema:"python, node or go"`
	Code     string `json:"code" jsonschema:"the program's source"`
	Stdin    string `json:"stdin,omitempty" jsonschema:"text the program reads on standard input"`
	TimeoutS int    `json:"timeout_s,omitempty" jsonschema:"seconds before the program is killed (default the server's)"`
}

type RunOut struct {
	ExitCode  int    `json:"exit_code"`
	Stdout    string `json:"stdout"`
	Stderr    string `json:"stderr"`
	Truncated bool   `json:"truncated,omitempty"`
	Error     string `json:"error,omitempty"`
	Status    string `json:"status,omitempty"`
}

func (t *tools) runCode(ctx context.Context, _ *mcp.CallToolRequest, in RunCodeIn) (*mcp.CallToolResult, RunOut, error) {
	rt := model.Runtime(in.Runtime)
	if !rt.Valid() {
		return nil, RunOut{}, fmt.Errorf("runtime %q: want python, node or go", in.Runtime)
	}
	spec := model.Spec{Runtime: rt, Code: in.Code, Resources: model.Resources{TimeoutS: in.TimeoutS}}
	if in.Stdin != "" {
		spec.Input, _ = json.Marshal(in.Stdin)
	}
	w, err := t.c.Run(ctx, spec)
	if err != nil {
		return nil, RunOut{}, toolErr(err)
	}
	out := RunOut{Status: string(w.Status), Error: w.Error}
	if w.ExitCode != nil {
		out.ExitCode = *w.ExitCode
	}
	var c1, c2 bool
	out.Stdout, c1 = capped(w.Stdout)
	out.Stderr, c2 = capped(w.Stderr)
	out.Truncated = c1 || c2 || w.Truncated
	return nil, out, nil
}

type SandboxCreateIn struct {
	Template string            `json:"template,omitempty" jsonschema:"base, python, node or go (default python)"`
	TimeoutS int               `json:"timeout_s,omitempty" jsonschema:"seconds the sandbox lives (default 300)"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Env      map[string]string `json:"env,omitempty" jsonschema:"environment of every command"`
}

type SandboxOut struct {
	ID        string            `json:"id"`
	State     string            `json:"state"`
	Template  string            `json:"template"`
	ExpiresAt time.Time         `json:"expires_at"`
	Metadata  map[string]string `json:"metadata,omitempty"`
}

func sandboxOut(sb *api.Sandbox) SandboxOut {
	return SandboxOut{ID: sb.ID, State: string(sb.State), Template: string(sb.Template), ExpiresAt: sb.ExpiresAt, Metadata: sb.Metadata}
}

func (t *tools) sandboxCreate(ctx context.Context, _ *mcp.CallToolRequest, in SandboxCreateIn) (*mcp.CallToolResult, SandboxOut, error) {
	sb, err := t.c.CreateSandbox(ctx, model.SandboxSpec{Template: model.Runtime(in.Template), TimeoutS: in.TimeoutS, Metadata: in.Metadata, Env: in.Env})
	if err != nil {
		return nil, SandboxOut{}, toolErr(err)
	}
	if sb.State != model.SandboxRunning {
		return nil, SandboxOut{}, fmt.Errorf("sandbox %s did not start: %s", sb.ID, sb.Error)
	}
	return nil, sandboxOut(sb), nil
}

type SandboxListOut struct {
	Sandboxes []SandboxOut `json:"sandboxes"`
}

func (t *tools) sandboxList(ctx context.Context, _ *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, SandboxListOut, error) {
	l, err := t.c.ListSandboxes(ctx, url.Values{"state": {"starting,running"}, "limit": {"1000"}})
	if err != nil {
		return nil, SandboxListOut{}, toolErr(err)
	}
	out := SandboxListOut{Sandboxes: []SandboxOut{}}
	for i := range l.Sandboxes {
		out.Sandboxes = append(out.Sandboxes, sandboxOut(&l.Sandboxes[i]))
	}
	return nil, out, nil
}

type IDIn struct {
	ID string `json:"id" jsonschema:"the sandbox's id"`
}

func (t *tools) sandboxKill(ctx context.Context, _ *mcp.CallToolRequest, in IDIn) (*mcp.CallToolResult, SandboxOut, error) {
	sb, err := t.c.KillSandbox(ctx, in.ID)
	if err != nil {
		return nil, SandboxOut{}, toolErr(err)
	}
	return nil, sandboxOut(sb), nil
}

func (t *tools) sandboxPause(ctx context.Context, _ *mcp.CallToolRequest, in IDIn) (*mcp.CallToolResult, SandboxOut, error) {
	sb, err := t.c.PauseSandbox(ctx, in.ID)
	if err != nil {
		return nil, SandboxOut{}, toolErr(err)
	}
	return nil, sandboxOut(sb), nil
}

func (t *tools) sandboxResume(ctx context.Context, _ *mcp.CallToolRequest, in IDIn) (*mcp.CallToolResult, SandboxOut, error) {
	sb, err := t.c.ResumeSandbox(ctx, in.ID, 0)
	if err != nil {
		return nil, SandboxOut{}, toolErr(err)
	}
	return nil, sandboxOut(sb), nil
}

type ExecIn struct {
	ID       string            `json:"id" jsonschema:"the sandbox's id"`
	Cmd      string            `json:"cmd" jsonschema:"a shell command line"`
	Cwd      string            `json:"cwd,omitempty"`
	Env      map[string]string `json:"env,omitempty"`
	User     string            `json:"user,omitempty" jsonschema:"user (default) or root"`
	Stdin    string            `json:"stdin,omitempty"`
	TimeoutS int               `json:"timeout_s,omitempty" jsonschema:"seconds before the command is killed (default none)"`
}

func (t *tools) sandboxExec(ctx context.Context, _ *mcp.CallToolRequest, in ExecIn) (*mcp.CallToolResult, RunOut, error) {
	req := api.ProcessRequest{Cmd: in.Cmd, Cwd: in.Cwd, Env: in.Env, User: in.User, TimeoutS: in.TimeoutS}
	if in.Stdin != "" {
		req.Stdin = &in.Stdin
	}
	var stdout, stderr bytes.Buffer
	exit, err := t.c.Exec(ctx, in.ID, req, func(ev api.ProcessEvent) {
		if ev.Type != "output" {
			return
		}
		b := &stdout
		if ev.Stream == "stderr" {
			b = &stderr
		}
		if b.Len() <= MaxOutputBytes {
			b.WriteString(ev.Data)
			if !ev.Partial {
				b.WriteByte('\n')
			}
		}
	})
	if err != nil {
		return nil, RunOut{}, toolErr(err)
	}
	out := RunOut{Error: exit.Error}
	if exit.ExitCode != nil {
		out.ExitCode = *exit.ExitCode
	}
	var c1, c2 bool
	out.Stdout, c1 = capped(stdout.String())
	out.Stderr, c2 = capped(stderr.String())
	out.Truncated = c1 || c2 || exit.Truncated
	return nil, out, nil
}

type PathIn struct {
	ID   string `json:"id" jsonschema:"the sandbox's id"`
	Path string `json:"path" jsonschema:"absolute, or relative to /home/user"`
}

type FileOut struct {
	Path    string `json:"path"`
	Content string `json:"content"`
}

func (t *tools) read(ctx context.Context, id, path string) ([]byte, error) {
	info, err := t.c.Stat(ctx, id, path)
	if err != nil {
		return nil, toolErr(err)
	}
	if info.Type != "file" {
		return nil, fmt.Errorf("%s is a %s, not a file", info.Path, info.Type)
	}
	if info.Size > MaxFileBytes {
		return nil, fmt.Errorf("%s has %d bytes; at most %d are read through MCP (use the HTTP API's /files for large files)", info.Path, info.Size, MaxFileBytes)
	}
	var b bytes.Buffer
	if _, err := t.c.ReadFile(ctx, id, info.Path, &b); err != nil {
		return nil, toolErr(err)
	}
	return b.Bytes(), nil
}

func (t *tools) fileRead(ctx context.Context, _ *mcp.CallToolRequest, in PathIn) (*mcp.CallToolResult, FileOut, error) {
	b, err := t.read(ctx, in.ID, in.Path)
	if err != nil {
		return nil, FileOut{}, err
	}
	if !utf8.Valid(b) {
		return nil, FileOut{}, fmt.Errorf("%s is not UTF-8 text (read it as a resource for its bytes)", in.Path)
	}
	return nil, FileOut{Path: in.Path, Content: string(b)}, nil
}

type WriteIn struct {
	ID      string `json:"id" jsonschema:"the sandbox's id"`
	Path    string `json:"path" jsonschema:"absolute, or relative to /home/user"`
	Content string `json:"content"`
}

type WriteOut struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

func (t *tools) fileWrite(ctx context.Context, _ *mcp.CallToolRequest, in WriteIn) (*mcp.CallToolResult, WriteOut, error) {
	if len(in.Content) > MaxFileBytes {
		return nil, WriteOut{}, fmt.Errorf("at most %d bytes are written through MCP", MaxFileBytes)
	}
	info, err := t.c.WriteFile(ctx, in.ID, in.Path, 0, strings.NewReader(in.Content))
	if err != nil {
		return nil, WriteOut{}, toolErr(err)
	}
	return nil, WriteOut{Path: info.Path, Size: info.Size}, nil
}

type ListIn struct {
	ID    string `json:"id" jsonschema:"the sandbox's id"`
	Path  string `json:"path,omitempty" jsonschema:"a directory (default the home)"`
	Depth int    `json:"depth,omitempty" jsonschema:"1 (default) lists the directory's own entries"`
}

type Entry struct {
	Path string `json:"path"`
	Type string `json:"type"`
	Size int64  `json:"size"`
}

type ListOut struct {
	Entries []Entry `json:"entries"`
}

func (t *tools) fileList(ctx context.Context, _ *mcp.CallToolRequest, in ListIn) (*mcp.CallToolResult, ListOut, error) {
	if in.Path == "" {
		in.Path = "~"
	}
	if in.Depth <= 0 {
		in.Depth = 1
	}
	list, err := t.c.ListDir(ctx, in.ID, in.Path, in.Depth)
	if err != nil {
		return nil, ListOut{}, toolErr(err)
	}
	out := ListOut{Entries: []Entry{}}
	for _, e := range list {
		out.Entries = append(out.Entries, Entry{Path: e.Path, Type: e.Type, Size: e.Size})
	}
	return nil, out, nil
}

// readResource serves vulcan://sandboxes/{id}/files/{+path}.
func (t *tools) readResource(ctx context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
	uri := req.Params.URI
	rest, ok := strings.CutPrefix(uri, "vulcan://sandboxes/")
	id, path, ok2 := strings.Cut(rest, "/files/")
	if !ok || !ok2 || id == "" || path == "" {
		return nil, mcp.ResourceNotFoundError(uri)
	}
	if p, err := url.PathUnescape(path); err == nil {
		path = p
	}
	b, err := t.read(ctx, id, "/"+strings.TrimPrefix(path, "/"))
	if err != nil {
		var ce *client.Error
		if errors.As(err, &ce) && ce.Status == 404 {
			return nil, mcp.ResourceNotFoundError(uri)
		}
		return nil, err
	}
	c := &mcp.ResourceContents{URI: uri}
	if utf8.Valid(b) {
		c.MIMEType, c.Text = "text/plain", string(b)
	} else {
		c.MIMEType, c.Blob = "application/octet-stream", b
	}
	return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{c}}, nil
}

type PythonIn struct {
	ID       string `json:"id,omitempty" jsonschema:"a code-interpreter sandbox's id; empty: a new one is created"`
	Code     string `json:"code" jsonschema:"the cell's Python code; its last expression is its result"`
	TimeoutS int    `json:"timeout_s,omitempty" jsonschema:"interrupt the cell after this many seconds (its variables stay)"`
}

type PythonOut struct {
	ID      string   `json:"id" jsonschema:"the sandbox the cell ran in: pass it to the next run_python"`
	Stdout  string   `json:"stdout"`
	Stderr  string   `json:"stderr"`
	Results []string `json:"results,omitempty" jsonschema:"the text of each result (images come as image content)"`
	Error   string   `json:"error,omitempty" jsonschema:"the exception: name, value and traceback"`
}

func (t *tools) runPython(ctx context.Context, _ *mcp.CallToolRequest, in PythonIn) (*mcp.CallToolResult, PythonOut, error) {
	out := PythonOut{ID: in.ID}
	if out.ID == "" {
		sb, err := t.c.CreateSandbox(ctx, model.SandboxSpec{Template: model.RuntimeCodeInterpreter, TimeoutS: 3600})
		if err != nil {
			return nil, out, toolErr(err)
		}
		out.ID = sb.ID
	}
	var stdout, stderr strings.Builder
	var images []mcp.Content
	err := t.c.RunCode(ctx, out.ID, api.CodeRequest{Code: in.Code, TimeoutS: in.TimeoutS}, func(e client.CodeEvent) {
		switch e.Type {
		case "stdout":
			if stdout.Len() <= MaxOutputBytes {
				stdout.WriteString(e.Text)
			}
		case "stderr":
			if stderr.Len() <= MaxOutputBytes {
				stderr.WriteString(e.Text)
			}
		case "result":
			if e.Text != "" {
				out.Results = append(out.Results, e.Text)
			}
			if e.PNG != "" {
				if b, err := base64.StdEncoding.DecodeString(e.PNG); err == nil {
					images = append(images, &mcp.ImageContent{Data: b, MIMEType: "image/png"})
				}
			}
		case "error":
			out.Error = strings.TrimSpace(e.Name + ": " + e.Value + "\n" + e.Traceback)
		}
	})
	if err != nil {
		return nil, out, toolErr(err)
	}
	out.Stdout, _ = capped(stdout.String())
	out.Stderr, _ = capped(stderr.String())
	if len(images) == 0 {
		return nil, out, nil
	}
	text, _ := json.Marshal(out)
	return &mcp.CallToolResult{Content: append([]mcp.Content{&mcp.TextContent{Text: string(text)}}, images...)}, out, nil
}
