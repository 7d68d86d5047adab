package engine_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/model"
)

// fieldOf is the field a validation error names, or "" when it is not a field error.
func fieldOf(t *testing.T, err error) string {
	t.Helper()
	if !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	var fe *model.FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("err = %v carries no field", err)
	}
	if fe.Reason == "" || !strings.HasSuffix(err.Error(), fe.Reason) {
		t.Fatalf("field error %+v does not give the message %q", fe, err)
	}
	return fe.Field
}

// Validation names the field at fault itself, in the one pass it makes.
func TestValidationReturnsTheField(t *testing.T) {
	e := newEnv(t, engine.Config{}, &backendtest.Fake{}).e
	bigEnv := map[string]string{}
	for i := range 70_000 {
		bigEnv["VAR_"+strconv.Itoa(i)] = "value"
	}
	for want, spec := range map[string]model.Spec{
		"runtime":             {Code: "x"},
		"isolation":           {Runtime: "go", Code: "x", Isolation: "container"},
		"network":             {Runtime: "go", Code: "x", Network: "all"},
		"code":                {Runtime: "go"},
		"code_archive":        {Runtime: "go", Archive: []byte("PK\x03\x04")},
		"entrypoint":          {Runtime: "go", Code: "x", Entrypoint: "../etc/passwd"},
		"input":               {Runtime: "go", Code: "x", Input: []byte("{")},
		"resources.cpus":      {Runtime: "go", Code: "x", Resources: model.Resources{CPUs: 99}},
		"resources.mem_mb":    {Runtime: "go", Code: "x", Resources: model.Resources{MemMB: 1}},
		"resources.timeout_s": {Runtime: "go", Code: "x", Resources: model.Resources{TimeoutS: -1}},
		// Of several bad names, the first in order, whatever the map's order.
		"env.A=B":       {Runtime: "go", Code: "x", Env: map[string]string{"Z-Z": "", "A=B": "c", "OK": "1"}},
		"env.NUL":       {Runtime: "go", Code: "x", Env: map[string]string{"NUL": "a\x00b"}},
		"env.HUGE":      {Runtime: "go", Code: "x", Env: map[string]string{"HUGE": strings.Repeat("x", 128<<10)}},
		"env":           {Runtime: "go", Code: "x", Env: bigEnv},
		"input ":        {Runtime: "go", Code: "x", Input: []byte(`"` + strings.Repeat("i", model.MaxSpecBytes) + `"`)},
		"code ":         {Runtime: "go", Code: strings.Repeat("#", model.MaxSpecBytes)},
		"code_archive ": {Runtime: "go", Archive: append([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255}, make([]byte, model.MaxSpecBytes)...)},
	} {
		for range 3 { // map order must not matter
			_, err := e.Validate(spec)
			if got := fieldOf(t, err); got != strings.TrimSpace(want) {
				t.Errorf("%s: field %q (%v)", want, got, err)
			}
		}
	}
}

// An environment no program could start with is refused in one pass, however many
// variables it has; the time is logged, not asserted.
func TestHugeEnvValidatedInOnePass(t *testing.T) {
	e := newEnv(t, engine.Config{}, &backendtest.Fake{}).e
	env := make(map[string]string, 1_150_000)
	for i := range 1_150_000 {
		env["E"+strconv.Itoa(i)] = ""
	}
	start := time.Now()
	_, err := e.Validate(model.Spec{Runtime: model.RuntimePython, Code: "pass", Env: env})
	t.Logf("validated %d env vars in %v", len(env), time.Since(start))
	if got := fieldOf(t, err); got != "env" || !strings.Contains(err.Error(), "the limit is 1024 KiB") {
		t.Fatalf("field %q: %v", got, err)
	}
	// Just under the limit is accepted.
	env = map[string]string{"BIG": strings.Repeat("x", 100<<10)}
	for i := range 9 {
		env["BIG"+strconv.Itoa(i)] = strings.Repeat("y", 100<<10)
	}
	if _, err := e.Validate(model.Spec{Runtime: model.RuntimePython, Code: "pass", Env: env}); err != nil {
		t.Fatalf("1000 KiB of env refused: %v", err)
	}
}
