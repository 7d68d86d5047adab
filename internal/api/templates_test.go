package api_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/sandbox/sandboxtest"
	"github.com/vulcanhq/vulcan/internal/server/servertest"
)

// templateServer has a template registry but no images: every build is refused before
// it could start a VM, which is what these tests look at (builds on real VMs are in
// acceptance).
func templateServer(t *testing.T) *servertest.Stack {
	return servertest.New(t, servertest.Options{Fake: &backendtest.Fake{}, Launcher: sandboxtest.NewAgentLauncher(t),
		Templates: true, TemplateImages: t.TempDir()})
}

func tgz(t *testing.T, hs ...*tar.Header) []byte {
	var b bytes.Buffer
	gz := gzip.NewWriter(&b)
	tw := tar.NewWriter(gz)
	for _, h := range hs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write(bytes.Repeat([]byte("x"), int(min(h.Size, 1<<20))))
		}
	}
	tw.Close()
	gz.Close()
	return b.Bytes()
}

func post(t *testing.T, url, ctype string, body []byte) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(url, ctype, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%d: not JSON: %q", resp.StatusCode, raw)
	}
	return resp.StatusCode, m
}

// Every bad build request is a 4xx with a JSON error saying what is wrong, and nothing
// is registered or left in the registry's work dir.
func TestTemplateBuildRefusals(t *testing.T) {
	s := templateServer(t)
	jsonBody := func(v any) []byte { b, _ := json.Marshal(v); return b }
	df := func(name, src string) []byte {
		return tgz(t, &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(src))})
	}
	cases := []struct {
		name, ctype, query string
		body               []byte
		status             int
		want               string
	}{
		{"bad line", "application/json", "", jsonBody(map[string]string{"name": "x", "dockerfile": "FROM python\nRUN true\nVOLUME /data\n"}), 400, "line 3"},
		{"COPY without a context", "application/json", "", jsonBody(map[string]string{"name": "x", "dockerfile": "FROM nosuch\nCOPY a /a\n"}), 400, "needs a build context"},
		{"no FROM", "application/json", "", jsonBody(map[string]string{"name": "x", "dockerfile": "RUN true"}), 400, "before FROM"},
		{"unknown parent", "application/json", "", jsonBody(map[string]string{"name": "x", "dockerfile": "FROM nosuch\n"}), 400, "no such template"},
		{"missing image", "application/json", "", jsonBody(map[string]string{"name": "x", "dockerfile": "FROM python\n"}), 400, "no python image"},
		{"builtin name", "application/json", "", jsonBody(map[string]string{"name": "python", "dockerfile": "FROM python\n"}), 400, "not base, go, node or python"},
		{"bad name", "application/json", "", jsonBody(map[string]string{"name": "My Template", "dockerfile": "FROM python\n"}), 400, "lowercase"},
		{"no name", "application/json", "", jsonBody(map[string]string{"dockerfile": "FROM python\n"}), 400, "name is required"},
		{"unknown field", "application/json", "", []byte(`{"name":"x","dockerfile":"FROM python","frobnicate":1}`), 400, "frobnicate"},
		{"bad network", "application/json", "", jsonBody(map[string]string{"name": "x", "dockerfile": "FROM python\n", "network": "wide"}), 400, "network"},
		{"huge dockerfile", "application/json", "", jsonBody(map[string]string{"name": "x", "dockerfile": "FROM python\n" + strings.Repeat("# pad\n", 50000)}), 400, "at most"},
		{"not gzip", "application/octet-stream", "name=x", []byte("this is not a tar.gz"), 400, "tar.gz"},
		{"escaping entry", "application/octet-stream", "name=x", tgz(t, &tar.Header{Name: "../../etc/evil", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}), 400, "tar.gz"},
		{"bomb", "application/octet-stream", "name=x", tgz(t, &tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: 2 << 30}), 400, "tar.gz"},
		{"no Dockerfile in the context", "application/octet-stream", "name=x", tgz(t, &tar.Header{Name: "app.py", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3}), 400, "no Dockerfile"},
		{"bad build arg", "application/octet-stream", "name=x&build_arg=novalue", df("Dockerfile", "FROM python\n"), 400, "NAME=value"},
		{"wrong media type", "text/plain", "name=x", []byte("FROM python"), 415, "JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			url := s.URL + "/v1/templates"
			if c.query != "" {
				url += "?" + c.query
			}
			code, m := post(t, url, c.ctype, c.body)
			e, _ := m["error"].(map[string]any)
			if code != c.status || e == nil || !strings.Contains(e["message"].(string), c.want) {
				t.Fatalf("%d %v, want %d with %q", code, m, c.status, c.want)
			}
		})
	}
	resp, _ := http.Get(s.URL + "/v1/templates")
	var l struct {
		Templates []map[string]any `json:"templates"`
	}
	json.NewDecoder(resp.Body).Decode(&l)
	resp.Body.Close()
	if len(l.Templates) != 0 {
		t.Errorf("refused builds registered templates: %v", l.Templates)
	}
	if work, _ := os.ReadDir(filepath.Join(s.TemplateDir, "work")); len(work) != 0 {
		t.Errorf("refused builds left work files: %v", work)
	}
	for path, want := range map[string]int{"/v1/templates/nosuch": 404, "/v1/builds/nosuch": 404, "/v1/builds/nosuch/events": 404} {
		resp, _ := http.Get(s.URL + path)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	for name, want := range map[string]int{"nosuch": 404, "python": 409} {
		req, _ := http.NewRequest(http.MethodDelete, s.URL+"/v1/templates/"+name, nil)
		resp, _ := http.DefaultClient.Do(req)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("DELETE %s: %d, want %d", name, resp.StatusCode, want)
		}
	}
}
