package api_test

import (
	"encoding/base64"
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
	for body, want := range map[string]string{
		`{"code":"x"}`:                                             "runtime",
		`{"runtime":"cobol","code":"x"}`:                           "runtime",
		`{"runtime":"go","code":"x","isolation":"gvisor"}`:         "isolation",
		`{"runtime":"go"}`:                                         "code",
		`{"runtime":"go","code_archive":"` + notGzip + `"}`:        "code_archive",
		`{"runtime":"go","code_archive":"!!!notbase64"}`:           "code_archive",
		`{"runtime":"go","code":"x","entrypoint":"../x.go"}`:       "entrypoint",
		`{"runtime":"go","code":"x","resources":{"cpus":64}}`:      "resources.cpus",
		`{"runtime":"go","code":"x","resources":{"cpus":"2"}}`:     "resources.cpus",
		`{"runtime":"go","code":"x","resources":{"mem_mb":1}}`:     "resources.mem_mb",
		`{"runtime":"go","code":"x","resources":{"timeout_s":-1}}`: "resources.timeout_s",
		`{"runtime":"go","code":"x","network":"lan"}`:              "network",
		`{"runtime":"go","code":"x","env":{"OK":"1","1BAD":"2"}}`:  "env.1BAD",
		`{"runtime":"go","code":"x","env":{"A":"x\u0000y"}}`:       "env.A",
	} {
		resp, data := ts.do(t, "POST", "/v1/workloads/async", body)
		e := decode[api.ErrorBody](t, data)
		if resp.StatusCode != 400 || e.Error.Field != want || e.Error.Code != "invalid_request" || e.Error.Message == "" {
			t.Errorf("%s: %d %s, want field %q", body, resp.StatusCode, data, want)
		}
	}
	// Failures that are not about one field carry none.
	for _, body := range []string{`{"runtime":`, `{"runtime":"go","code":"x","timeout":5}`} {
		_, data := ts.do(t, "POST", "/v1/workloads", body)
		if e := decode[api.ErrorBody](t, data); e.Error.Field != "" {
			t.Errorf("%s: field %q in %s", body, e.Error.Field, data)
		}
	}
}
