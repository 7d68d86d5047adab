package engine_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
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

// entry is one tar entry for tarGz.
type entry struct {
	name string
	typ  byte
	body string // a link's target for links
}

func tarGz(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644}
		switch e.typ {
		case tar.TypeReg:
			h.Size = int64(len(e.body))
		case tar.TypeSymlink, tar.TypeLink:
			h.Linkname = e.body
		case tar.TypeDir:
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	if err := errors.Join(tw.Close(), gz.Close()); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// An entrypoint must name a file: ".", "..", absolute paths, directories are refused at
// submission, not after a VM booted for them.
func TestEntrypointMustNameAFile(t *testing.T) {
	e := newEnv(t, engine.Config{}, &backendtest.Fake{}).e
	for _, bad := range []string{".", "./", "..", "../x.py", "a/../../x.py", "/x", "/", "a/", "a//b.py", "a/./b.py", "a/.", "x\\y.py", "x\x00.py"} {
		_, err := e.Validate(model.Spec{Runtime: model.RuntimePython, Code: "pass", Entrypoint: bad})
		if got := fieldOf(t, err); got != "entrypoint" {
			t.Errorf("%q: field %q (%v)", bad, got, err)
		}
	}
	for in, want := range map[string]string{"": "main.py", "main.py": "main.py", "./app/run.py": "app/run.py", "a.b/c..py": "a.b/c..py"} {
		spec, err := e.Validate(model.Spec{Runtime: model.RuntimePython, Code: "pass", Entrypoint: in})
		if err != nil || spec.Entrypoint != want {
			t.Errorf("%q: %q, %v; want %q", in, spec.Entrypoint, err, want)
		}
	}
}

// An archive must be a readable tar.gz with the entrypoint as a regular file in it; the
// headers are read on the host, nothing is extracted.
func TestArchiveMustHoldTheEntrypoint(t *testing.T) {
	e := newEnv(t, engine.Config{}, &backendtest.Fake{}).e
	file := func(name string) entry { return entry{name, tar.TypeReg, "print(1)\n"} }
	notTar := func() []byte {
		var b bytes.Buffer
		gz := gzip.NewWriter(&b)
		gz.Write([]byte(strings.Repeat("this is not a tar archive\n", 100)))
		gz.Close()
		return b.Bytes()
	}()
	truncated := tarGz(t, file("main.py"), file("other.py"))
	truncated = truncated[:len(truncated)/2]
	many := make([]entry, 10_001)
	for i := range many {
		many[i] = entry{"d" + strconv.Itoa(i), tar.TypeDir, ""}
	}
	many[0] = file("main.py")
	for name, tc := range map[string]struct {
		archive []byte
		entry   string
		field   string // "" when accepted
	}{
		"file":               {tarGz(t, file("main.py")), "", ""},
		"dot slash names":    {tarGz(t, entry{"./", tar.TypeDir, ""}, file("./app/run.py")), "app/run.py", ""},
		"hard link":          {tarGz(t, file("real.py"), entry{"main.py", tar.TypeLink, "real.py"}), "", ""},
		"missing":            {tarGz(t, file("other.py")), "", "entrypoint"},
		"empty archive":      {tarGz(t), "", "entrypoint"},
		"directory":          {tarGz(t, entry{"main.py", tar.TypeDir, ""}, file("main.py/x")), "", "entrypoint"},
		"symlink":            {tarGz(t, file("real.py"), entry{"main.py", tar.TypeSymlink, "real.py"}), "", "entrypoint"},
		"replaced by a dir":  {tarGz(t, file("main.py"), entry{"main.py", tar.TypeDir, ""}), "", "entrypoint"},
		"link to nothing":    {tarGz(t, entry{"main.py", tar.TypeLink, "nope.py"}), "", "entrypoint"},
		"not gzip":           {[]byte("PK\x03\x04"), "", "code_archive"},
		"gzip of not tar":    {notTar, "", "code_archive"},
		"truncated":          {truncated, "", "code_archive"},
		"dot dot entry":      {tarGz(t, file("main.py"), file("../evil.py")), "", "code_archive"},
		"absolute entry":     {tarGz(t, file("main.py"), file("/etc/evil")), "", "code_archive"},
		"fifo":               {tarGz(t, file("main.py"), entry{"p", tar.TypeFifo, ""}), "", "code_archive"},
		"too many entries":   {tarGz(t, many...), "", "code_archive"},
		"file over the size": {hugeFile(t, 128<<20+1), "", "code_archive"},
	} {
		spec, err := e.Validate(model.Spec{Runtime: model.RuntimePython, Archive: tc.archive, Entrypoint: tc.entry})
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%s: refused: %v", name, err)
		case tc.field == "" && spec.Entrypoint == "":
			t.Errorf("%s: no entrypoint", name)
		case tc.field != "" && err == nil:
			t.Errorf("%s: accepted", name)
		case tc.field != "":
			if got := fieldOf(t, err); got != tc.field {
				t.Errorf("%s: field %q, want %q (%v)", name, got, tc.field, err)
			}
		}
	}
}

// hugeFile is a tar.gz whose main.py claims size bytes of zeros: a few KiB compressed.
func hugeFile(t *testing.T, size int64) []byte {
	var buf bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	tw := tar.NewWriter(gz)
	tw.WriteHeader(&tar.Header{Name: "main.py", Typeflag: tar.TypeReg, Mode: 0o644, Size: size})
	zeros := make([]byte, 1<<20)
	for n := size; n > 0; n -= int64(len(zeros)) {
		tw.Write(zeros[:min(n, int64(len(zeros)))])
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

// A gzip bomb costs the host a bounded read, stopped where the guest would stop: here by
// entries that claim more than the guest extracts, and by headers that are all padding
// (1 MiB PAX comments), which no size field adds up.
func TestArchiveScanIsBounded(t *testing.T) {
	e := newEnv(t, engine.Config{}, &backendtest.Fake{}).e
	bomb := func(big bool) []byte {
		var buf bytes.Buffer
		gz, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		tw := tar.NewWriter(gz)
		tw.WriteHeader(&tar.Header{Name: "main.py", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1})
		tw.Write([]byte("x"))
		for i := range 300 {
			h := &tar.Header{Name: "pad/" + strconv.Itoa(i), Typeflag: tar.TypeReg, Mode: 0o644, Format: tar.FormatPAX}
			if big {
				h.Size = 1 << 20
			} else {
				h.PAXRecords = map[string]string{"comment": strings.Repeat("x", 1000<<10)}
			}
			tw.WriteHeader(h)
			tw.Write(make([]byte, h.Size))
		}
		tw.Close()
		gz.Close()
		return buf.Bytes()
	}
	for _, big := range []bool{true, false} {
		archive := bomb(big)
		start := time.Now()
		_, err := e.Validate(model.Spec{Runtime: model.RuntimePython, Archive: archive})
		t.Logf("%d KiB archive expanding to 300 MiB refused in %v", len(archive)>>10, time.Since(start))
		if got := fieldOf(t, err); got != "code_archive" || !strings.Contains(err.Error(), "expands to more than 256 MiB") {
			t.Fatalf("field %q: %v", got, err)
		}
	}
}
