package e2b_test

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// The wire as the SDKs' Connect JSON clients (JS and Python) read it, pinned byte for
// byte: envelopes (flag byte, big-endian length, JSON), a start event first, base64
// bytes, an end-stream frame (flag 0x02) that carries errors with HTTP 200; unary
// answers' JSON names and enum names.

type envdClient struct {
	t         *testing.T
	url       string
	id, token string
}

func newEnvd(t *testing.T) *envdClient {
	s := e2bServer(t, "")
	req, _ := http.NewRequest("POST", s.Server.URL+"/v2/sandboxes", strings.NewReader(`{"templateID":"python"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", "any")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sb struct{ SandboxID, EnvdAccessToken, EnvdVersion string }
	json.NewDecoder(resp.Body).Decode(&sb)
	if resp.StatusCode != 201 || sb.EnvdVersion == "" {
		t.Fatalf("create: %d %+v", resp.StatusCode, sb)
	}
	return &envdClient{t: t, url: s.Server.URL, id: sb.SandboxID, token: sb.EnvdAccessToken}
}

func (c *envdClient) post(path, ctype string, body []byte) *http.Response {
	req, _ := http.NewRequest("POST", c.url+path, bytes.NewReader(body))
	req.Header.Set("Content-Type", ctype)
	req.Header.Set("Connect-Protocol-Version", "1")
	req.Header.Set("E2b-Sandbox-Id", c.id)
	req.Header.Set("E2b-Sandbox-Port", "49983")
	req.Header.Set("X-Access-Token", c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	return resp
}

func envelope(flags byte, msg string) []byte {
	b := make([]byte, 5+len(msg))
	b[0] = flags
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	copy(b[5:], msg)
	return b
}

type frame struct {
	flags byte
	data  string
}

func readFrames(t *testing.T, r io.Reader) []frame {
	var out []frame
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if err != io.EOF {
				t.Fatalf("frame header: %v", err)
			}
			return out
		}
		msg := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
		if _, err := io.ReadFull(r, msg); err != nil {
			t.Fatal(err)
		}
		out = append(out, frame{hdr[0], string(msg)})
	}
}

func TestConnectStreamingWire(t *testing.T) {
	c := newEnvd(t)
	resp := c.post("/process.Process/Start", "application/connect+json",
		envelope(0, `{"process":{"cmd":"/bin/sh","args":["-c","printf 'a\\001b'; echo; echo err >&2; exit 4"]},"stdin":false}`))
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/connect+json" {
		t.Fatalf("Start: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	frames := readFrames(t, resp.Body)
	if len(frames) < 3 {
		t.Fatalf("frames %+v", frames)
	}
	if f := frames[0]; f.flags != 0 || !strings.HasPrefix(f.data, `{"event":{"start":{"pid":`) {
		t.Fatalf("first frame %+v, want the start event", f)
	}
	last := frames[len(frames)-1]
	if last.flags != 2 || last.data != "{}" {
		t.Fatalf("last frame %+v, want the end-stream frame {}", last)
	}
	var stdout, stderr []byte
	var end map[string]any
	for _, f := range frames[1 : len(frames)-1] {
		var ev struct {
			Event struct {
				Data *struct{ Stdout, Stderr string } `json:"data"`
				End  map[string]any                   `json:"end"`
			} `json:"event"`
		}
		if err := json.Unmarshal([]byte(f.data), &ev); err != nil || f.flags != 0 {
			t.Fatalf("frame %+v: %v", f, err)
		}
		if d := ev.Event.Data; d != nil {
			o, _ := base64.StdEncoding.DecodeString(d.Stdout)
			e, _ := base64.StdEncoding.DecodeString(d.Stderr)
			stdout, stderr = append(stdout, o...), append(stderr, e...)
		}
		if ev.Event.End != nil {
			end = ev.Event.End
		}
	}
	if string(stdout) != "a\x01b\n" || string(stderr) != "err\n" {
		t.Errorf("stdout %q stderr %q", stdout, stderr)
	}
	if end["exitCode"] != 4.0 || end["exited"] != true || end["status"] != "exit status 4" {
		t.Errorf("end %v", end)
	}

	// An error after the stream began travels in the end-stream frame, with HTTP 200.
	resp = c.post("/process.Process/Start", "application/connect+json", envelope(0, `{"process":{"cmd":""}}`))
	frames = readFrames(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(frames) != 1 || frames[0].flags != 2 || !strings.Contains(frames[0].data, `"code":"invalid_argument"`) {
		t.Errorf("bad Start: %d %+v", resp.StatusCode, frames)
	}
	resp = c.post("/process.Process/Connect", "application/connect+json", envelope(0, `{"process":{"pid":999999}}`))
	frames = readFrames(t, resp.Body)
	resp.Body.Close()
	if len(frames) != 1 || frames[0].flags != 2 || !strings.Contains(frames[0].data, `"code":"not_found"`) {
		t.Errorf("Connect to no process: %d %+v", resp.StatusCode, frames)
	}
}

func TestConnectUnaryWire(t *testing.T) {
	c := newEnvd(t)
	resp := c.post("/filesystem.Filesystem/MakeDir", "application/json", []byte(`{"path":"wire/d"}`))
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("MakeDir: %d", resp.StatusCode)
	}
	resp = c.post("/filesystem.Filesystem/MakeDir", "application/json", []byte(`{"path":"wire/d"}`))
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 409 || !strings.Contains(string(b), `"code":"already_exists"`) {
		t.Errorf("MakeDir again: %d %s", resp.StatusCode, b)
	}
	resp = c.post("/filesystem.Filesystem/ListDir", "application/json", []byte(`{"path":"wire","depth":1}`))
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	var list struct {
		Entries []map[string]any `json:"entries"`
	}
	json.Unmarshal(b, &list)
	if resp.StatusCode != 200 || len(list.Entries) != 1 {
		t.Fatalf("ListDir: %d %s", resp.StatusCode, b)
	}
	e := list.Entries[0]
	if e["name"] != "d" || e["type"] != "FILE_TYPE_DIRECTORY" || !strings.HasSuffix(e["path"].(string), "/wire/d") || e["permissions"] != "drwxr-xr-x" || e["modifiedTime"] == nil {
		t.Errorf("entry %v", e)
	}
	resp = c.post("/filesystem.Filesystem/Stat", "application/json", []byte(`{"path":"wire/none"}`))
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 404 || !strings.Contains(string(b), `"code":"not_found"`) {
		t.Errorf("Stat missing: %d %s", resp.StatusCode, b)
	}
	resp = c.post("/process.Process/SendSignal", "application/json", []byte(`{"process":{"pid":1},"signal":"SIGNAL_UNSPECIFIED"}`))
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), `"code":"invalid_argument"`) {
		t.Errorf("bad signal: %d %s", resp.StatusCode, b)
	}
	// Python's client checks exact statuses of the control plane.
	for _, p := range []struct {
		method, path string
		status       int
	}{
		{"POST", "/sandboxes/" + c.id + "/timeout", 204},
		{"GET", "/sandboxes/" + c.id, 200},
		{"POST", "/sandboxes/" + c.id + "/connect", 200},
		{"GET", "/sandboxes/" + c.id + "/metrics", 200},
		{"DELETE", "/sandboxes/" + c.id, 204},
	} {
		req, _ := http.NewRequest(p.method, c.url+p.path, strings.NewReader(`{"timeout":60}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-API-Key", "any")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != p.status || (p.status == 204 && len(b) != 0) {
			t.Errorf("%s %s: %d %q, want %d", p.method, p.path, resp.StatusCode, b, p.status)
		}
	}
}
