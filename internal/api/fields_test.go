package api_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"regexp"
	"testing"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/engine"
)

// The dashboard shows a 400's message next to the field it names; every validation
// failure the engine knows should name one.
func TestValidationErrorsNameTheField(t *testing.T) {
	ts := newServer(t, engine.Config{}, &backendtest.Fake{}, "")
	notGzip := base64.StdEncoding.EncodeToString([]byte("plain text"))
	pyArchive := base64.StdEncoding.EncodeToString(tarGz(t, "app/run.py"))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("not a tar archive, though gzip-compressed"))
	zw.Close()
	gzipNotTar := base64.StdEncoding.EncodeToString(gz.Bytes())
	for body, want := range map[string]string{
		`{"code":"x"}`:                                                               "runtime",
		`{"runtime":"cobol","code":"x"}`:                                             "runtime",
		`{"runtime":"go","code":"x","isolation":"gvisor"}`:                           "isolation",
		`{"runtime":"go"}`:                                                           "code",
		`{"runtime":"go","code_archive":"` + notGzip + `"}`:                          "code_archive",
		`{"runtime":"go","code_archive":"!!!notbase64"}`:                             "code_archive",
		`{"runtime":"go","code":"x","entrypoint":"../x.go"}`:                         "entrypoint",
		`{"runtime":"go","code":"x","resources":{"cpus":64}}`:                        "resources.cpus",
		`{"runtime":"go","code":"x","resources":{"cpus":"2"}}`:                       "resources.cpus",
		`{"runtime":"go","code":"x","resources":{"mem_mb":1}}`:                       "resources.mem_mb",
		`{"runtime":"go","code":"x","resources":{"timeout_s":-1}}`:                   "resources.timeout_s",
		`{"runtime":"go","code":"x","network":"lan"}`:                                "network",
		`{"runtime":"go","code":"x","env":{"OK":"1","1BAD":"2"}}`:                    "env.1BAD",
		`{"runtime":"go","code":"x","env":{"A":"x\u0000y"}}`:                         "env.A",
		`{"runtime":"go","code":"x","entrypoint":"."}`:                               "entrypoint",
		`{"runtime":"go","code":"x","entrypoint":"a/"}`:                              "entrypoint",
		`{"runtime":"go","code":"x","entrypoint":"/x"}`:                              "entrypoint",
		`{"runtime":"go","code":"x","entrypoint":".."}`:                              "entrypoint",
		`{"runtime":"go","code":"x","entrypoint":""}`:                                "entrypoint",
		`{"runtime":"python","code_archive":"` + pyArchive + `"}`:                    "entrypoint",
		`{"runtime":"python","code_archive":"` + pyArchive + `","entrypoint":"app"}`: "entrypoint",
		`{"runtime":"go","code_archive":"` + gzipNotTar + `"}`:                       "code_archive",
	} {
		resp, data := ts.do(t, "POST", "/v1/workloads/async", body)
		e := decode[api.ErrorBody](t, data)
		if resp.StatusCode != 400 || e.Error.Field != want || e.Error.Code != "invalid_request" || e.Error.Message == "" {
			t.Errorf("%s: %d %s, want field %q", body, resp.StatusCode, data, want)
		}
	}
	// Failures that are not about one field carry none.
	// An archive holding its entrypoint passes.
	if resp, data := ts.do(t, "POST", "/v1/workloads", `{"runtime":"python","code_archive":"`+pyArchive+`","entrypoint":"./app/run.py"}`); resp.StatusCode != 200 {
		t.Errorf("archive with its entrypoint: %d %s", resp.StatusCode, data)
	}
	for _, body := range []string{`{"runtime":`, `{"runtime":"go","code":"x","timeout":5}`} {
		_, data := ts.do(t, "POST", "/v1/workloads", body)
		if e := decode[api.ErrorBody](t, data); e.Error.Field != "" {
			t.Errorf("%s: field %q in %s", body, e.Error.Field, data)
		}
	}
}

// Decoding errors speak JSON, not Go: no type names, no struct paths.
func TestDecodeErrorsDoNotLeakGoTypes(t *testing.T) {
	ts := newServer(t, engine.Config{}, &backendtest.Fake{}, "")
	goWords := regexp.MustCompile(`model\.|Go (struct|value)|\bint\b|uint8|map\[|\bSpec\b|unmarshal`)
	for body, field := range map[string]string{
		`[]`:                              "",
		`"x"`:                             "",
		`42`:                              "",
		`{"runtime":5,"code":"x"}`:        "runtime",
		`{"runtime":"go","resources":[]}`: "resources",
		`{"runtime":"go","resources":{"cpus":1.5}}`:   "resources.cpus",
		`{"runtime":"go","resources":{"cpus":1e400}}`: "resources.cpus",
		`{"runtime":"go","env":{"A":1}}`:              "env",
		`{"runtime":"go","env":[]}`:                   "env",
		`{"runtime":"go","code_archive":5}`:           "code_archive",
		`{"runtime":"go","code":"x","entrypoint":5}`:  "entrypoint",
		`{"runtime":"go","code":"x","entrypoint":""}`: "entrypoint",
		`{"runtime":"go","code":"x","bogus":1}`:       "",
		`{"runtime":"go","code":"x"`:                  "",
		`{"runtime":}`:                                "",
	} {
		resp, data := ts.do(t, "POST", "/v1/workloads", body)
		e := decode[api.ErrorBody](t, data)
		if resp.StatusCode != 400 || e.Error.Code != "invalid_request" || e.Error.Field != field || goWords.MatchString(e.Error.Message) {
			t.Errorf("%s: %d %s, want field %q and no Go in the message", body, resp.StatusCode, data, field)
		}
	}
}

// tarGz is a tar.gz of one-line files.
func tarGz(t testing.TB, names ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, n := range names {
		tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: 9})
		tw.Write([]byte("print(1)\n"))
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}
