package api_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/client"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/sandbox/sandboxtest"
	"github.com/vulcanhq/vulcan/internal/server/servertest"
)

// sandboxServer is the API with a sandbox service whose "VMs" are the real guest agent in
// this process (no VM boots: the VM path is tested in internal/microvm and acceptance).
func sandboxServer(t *testing.T) *testServer {
	t.Helper()
	s := servertest.New(t, servertest.Options{Fake: &backendtest.Fake{}, Launcher: sandboxtest.NewAgentLauncher(t)})
	return &testServer{Server: s.Server, st: s.Store}
}

// execNDJSON starts a process and returns its events.
func execNDJSON(t *testing.T, ts *testServer, id string, req api.ProcessRequest) []api.ProcessEvent {
	t.Helper()
	resp, body := ts.do(t, http.MethodPost, "/v1/sandboxes/"+id+"/processes", req)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("exec: %d %s", resp.StatusCode, body)
	}
	var evs []api.ProcessEvent
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 8<<20)
	for sc.Scan() {
		var ev api.ProcessEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("event %q: %v", sc.Text(), err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func stdoutOf(evs []api.ProcessEvent) (string, *api.ProcessEvent) {
	var out strings.Builder
	var exit *api.ProcessEvent
	for i, ev := range evs {
		switch ev.Type {
		case "output":
			if ev.Stream == "stdout" {
				out.WriteString(ev.Data)
				if !ev.Partial {
					out.WriteByte('\n')
				}
			}
		case "exit":
			exit = &evs[i]
		}
	}
	return out.String(), exit
}

func TestSandboxOverHTTP(t *testing.T) {
	ts := sandboxServer(t)
	resp, body := ts.do(t, http.MethodPost, "/v1/sandboxes", map[string]any{"metadata": map[string]string{"task": "t1"}, "env": map[string]string{"GREETING": "hi"}})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	sb := decode[api.Sandbox](t, body)
	if sb.State != model.SandboxRunning || sb.Metadata["task"] != "t1" || strings.Contains(string(body), `"hi"`) {
		t.Fatalf("created %s", body)
	}

	// Two execs: the second sees what the first wrote; the sandbox env reaches processes.
	evs := execNDJSON(t, ts, sb.ID, api.ProcessRequest{Cmd: "echo $GREETING > note.txt && echo written"})
	if out, exit := stdoutOf(evs); out != "written\n" || exit == nil || *exit.ExitCode != 0 || evs[0].Type != "start" || evs[0].PID == 0 {
		t.Fatalf("first exec: %+v", evs)
	}
	evs = execNDJSON(t, ts, sb.ID, api.ProcessRequest{Argv: []string{"cat", "note.txt"}})
	if out, exit := stdoutOf(evs); out != "hi\n" || *exit.ExitCode != 0 {
		t.Fatalf("second exec: %+v", evs)
	}
	evs = execNDJSON(t, ts, sb.ID, api.ProcessRequest{Cmd: "exit 7"})
	if _, exit := stdoutOf(evs); exit == nil || *exit.ExitCode != 7 {
		t.Fatalf("exit code: %+v", evs)
	}
	stdin := "line one\nline two"
	evs = execNDJSON(t, ts, sb.ID, api.ProcessRequest{Argv: []string{"cat"}, Stdin: &stdin})
	if out, _ := stdoutOf(evs); out != stdin {
		t.Fatalf("stdin echoed %q", out)
	}

	// Files: a random 3 MiB file up and down, byte for byte.
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	req, _ := http.NewRequest(http.MethodPut, ts.URL+"/v1/sandboxes/"+sb.ID+"/files?path=dir/sub/blob.bin&mode=600", bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/octet-stream")
	put, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	put.Body.Close()
	if put.StatusCode != http.StatusOK {
		t.Fatalf("put: %d", put.StatusCode)
	}
	resp, got := ts.do(t, http.MethodGet, "/v1/sandboxes/"+sb.ID+"/files?path="+url.QueryEscape("dir/sub/blob.bin"), nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) || resp.Header.Get("X-Vulcan-File-Mode") != "0600" {
		t.Fatalf("get: %d, %d bytes (want %d), mode %s", resp.StatusCode, len(got), len(data), resp.Header.Get("X-Vulcan-File-Mode"))
	}
	resp, body = ts.do(t, http.MethodGet, "/v1/sandboxes/"+sb.ID+"/fs?path=dir&depth=2", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "blob.bin") {
		t.Fatalf("list: %d %s", resp.StatusCode, body)
	}
	for path, want := range map[string]int{"missing.txt": 404, "": 400} {
		resp, body := ts.do(t, http.MethodGet, "/v1/sandboxes/"+sb.ID+"/files?path="+path, nil)
		if resp.StatusCode != want || !strings.Contains(string(body), `"error"`) {
			t.Errorf("read %q: %d %s, want %d", path, resp.StatusCode, body, want)
		}
	}

	// Listing by metadata; kill; what an ended sandbox answers.
	resp, body = ts.do(t, http.MethodGet, "/v1/sandboxes?metadata=task%3Dt1", nil)
	if l := decode[api.SandboxList](t, body); resp.StatusCode != 200 || len(l.Sandboxes) != 1 || l.Sandboxes[0].ID != sb.ID {
		t.Fatalf("list: %s", body)
	}
	resp, body = ts.do(t, http.MethodDelete, "/v1/sandboxes/"+sb.ID, nil)
	if resp.StatusCode != http.StatusOK || decode[api.Sandbox](t, body).State != model.SandboxKilled {
		t.Fatalf("kill: %d %s", resp.StatusCode, body)
	}
	for _, c := range []struct{ method, path string }{
		{http.MethodDelete, "/v1/sandboxes/" + sb.ID},
		{http.MethodGet, "/v1/sandboxes/" + sb.ID + "/fs/stat?path=note.txt"},
	} {
		if resp, body := ts.do(t, c.method, c.path, nil); resp.StatusCode != http.StatusConflict {
			t.Errorf("%s %s on a killed sandbox: %d %s", c.method, c.path, resp.StatusCode, body)
		}
	}
	if resp, _ := ts.do(t, http.MethodGet, "/v1/sandboxes/nope", nil); resp.StatusCode != 404 {
		t.Errorf("unknown sandbox: %d", resp.StatusCode)
	}
	if resp, body := ts.do(t, http.MethodPost, "/v1/sandboxes", map[string]any{"template": "cobol"}); resp.StatusCode != 400 ||
		decode[api.ErrorBody](t, body).Error.Field != "template" {
		t.Errorf("bad template: %d %s", resp.StatusCode, body)
	}
}

// The terminal over a WebSocket, as `vulcan shell` and the dashboard use it: the size
// the client asked for, keystrokes in, the screen out, a resize, the exit code.
func TestSandboxTerminal(t *testing.T) {
	ts := sandboxServer(t)
	_, body := ts.do(t, http.MethodPost, "/v1/sandboxes", map[string]any{})
	sb := decode[api.Sandbox](t, body)
	c := client.New(ts.URL, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	term, err := c.OpenTerminal(ctx, sb.ID, 100, 30, "stty size; read line; echo got:$line; stty size; exit 5")
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	var screen syncBuffer
	done := make(chan *api.PTYControl, 1)
	go func() {
		exit, err := term.Copy(ctx, &screen)
		if err != nil {
			t.Error(err)
		}
		done <- exit
	}()
	waitFor(t, &screen, "30 100")
	if err := term.Resize(ctx, 120, 40); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the resize lands before the line that prints it
	if err := term.Input(ctx, []byte("hello\r")); err != nil {
		t.Fatal(err)
	}
	exit := <-done
	if exit == nil || exit.ExitCode == nil || *exit.ExitCode != 5 {
		t.Fatalf("exit %+v; screen %q", exit, screen.String())
	}
	// Lines end with CR LF on a terminal: the relay keeps the newline the agent's
	// messages leave out (without it every line overwrote the first row).
	for _, want := range []string{"got:hello\r\n", "40 120"} {
		if !strings.Contains(screen.String(), want) {
			t.Errorf("screen lacks %q: %q", want, screen.String())
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
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

func waitFor(t *testing.T, s *syncBuffer, want string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(s.String(), want); {
		if time.Now().After(deadline) {
			t.Fatalf("no %q on the screen: %q", want, s.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A process stream cut by the sandbox's end says so in an error event; it never just
// stops as if the stream were complete.
func TestProcessStreamEndsWithErrorWhenSandboxKilled(t *testing.T) {
	ts := sandboxServer(t)
	_, body := ts.do(t, http.MethodPost, "/v1/sandboxes", map[string]any{})
	sb := decode[api.Sandbox](t, body)
	c := client.New(ts.URL, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, sb.ID, api.ProcessRequest{Cmd: "echo up; sleep 60"}, func(ev api.ProcessEvent) {
			if ev.Type == "output" {
				close(started)
			}
		})
		done <- err
	}()
	<-started
	if _, err := c.KillSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil || !strings.Contains(err.Error(), "ended before its exit") && !strings.Contains(err.Error(), "lost the process") {
		t.Fatalf("exec after the sandbox was killed: %v", err)
	}
}

// A directory watch over SSE: changes made through the API arrive as fs events with
// absolute paths (a recursive watch sees a new subdirectory's files); a missing
// directory is a 404 before any stream; killing the sandbox ends the stream with an
// error event.
func TestSandboxWatchOverSSE(t *testing.T) {
	ts := sandboxServer(t)
	_, body := ts.do(t, http.MethodPost, "/v1/sandboxes", map[string]any{})
	sb := decode[api.Sandbox](t, body)
	if resp, body := ts.do(t, http.MethodGet, "/v1/sandboxes/"+sb.ID+"/fs/watch?path=nope", nil); resp.StatusCode != 404 || !strings.Contains(string(body), `"error"`) {
		t.Fatalf("watching a missing dir: %d %s", resp.StatusCode, body)
	}
	if resp, _ := ts.do(t, http.MethodGet, "/v1/sandboxes/"+sb.ID+"/fs/watch?path=~&recursive=maybe", nil); resp.StatusCode != 400 {
		t.Fatalf("bad recursive: %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/v1/sandboxes/"+sb.ID+"/fs/watch?path=~&recursive=true", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("watch: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	// Events as they arrive (readSSE returns only at the stream's end).
	events := make(chan sseEvent, 256)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		var cur sseEvent
		for sc.Scan() {
			switch line := sc.Text(); {
			case line == "" && cur != (sseEvent{}):
				events <- cur
				cur = sseEvent{}
			case strings.HasPrefix(line, "event: "):
				cur.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				cur.data = line[6:]
			}
		}
	}()
	if r, body := ts.do(t, http.MethodPost, "/v1/sandboxes/"+sb.ID+"/fs/mkdir", map[string]any{"path": "proj/src"}); r.StatusCode != 200 {
		t.Fatalf("mkdir: %d %s", r.StatusCode, body)
	}
	evs := execNDJSON(t, ts, sb.ID, api.ProcessRequest{Cmd: "echo hi > proj/src/main.py && pwd"})
	home, _ := stdoutOf(evs)
	home = strings.TrimSpace(home)
	want := map[string]bool{home + "/proj": false, home + "/proj/src": false, home + "/proj/src/main.py": false}
	var fs []api.FSEvent
	for missing := len(want); missing > 0; {
		ev, ok := <-events
		if !ok || ev.event != "fs" {
			t.Fatalf("stream ended (%+v) before every change was reported: %+v", ev, fs)
		}
		e := decode[api.FSEvent](t, []byte(ev.data))
		fs = append(fs, e)
		if seen, ok := want[e.Path]; ok && !seen && e.Op == "create" {
			want[e.Path] = true
			missing--
		}
	}
	ts.do(t, http.MethodDelete, "/v1/sandboxes/"+sb.ID, nil)
	var ended *sseEvent
	for ev := range events {
		if ev.event == "error" {
			ended = &ev
		}
	}
	if ended == nil || !strings.Contains(ended.data, "watch_ended") {
		t.Errorf("the stream did not end with an error event after the kill: %+v", ended)
	}
}
