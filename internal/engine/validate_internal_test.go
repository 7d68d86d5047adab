package engine

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"strings"
	"testing"

	"github.com/vulcanhq/vulcan/internal/guest/archive"
)

// The host refuses an archive where the guest would; its limits must be the guest's.
func TestArchiveLimitsAreTheGuests(t *testing.T) {
	l := archive.DefaultLimits
	if l.MaxFiles != archiveMaxFiles || l.MaxTotalBytes != archiveMaxTotalBytes || l.MaxFileBytes != archiveMaxFileBytes ||
		l.MaxDepth != archiveMaxDepth || l.MaxPathBytes != archiveMaxPathBytes || l.MaxNameBytes != archiveMaxNameBytes {
		t.Fatalf("guest limits %+v, host files %d total %d file %d", l, archiveMaxFiles, archiveMaxTotalBytes, archiveMaxFileBytes)
	}
}

// An archive the guest would refuse for its shape (too deep, a path or name too long, a
// link target past the caps, too many implied directories) is a 400 at submission, not a
// VM booted to fail.
func TestArchiveShapeRefusedOnTheHost(t *testing.T) {
	deep := strings.Repeat("d/", 70) + "main.py"
	cases := map[string][]tarEntry{
		"deep":        {{name: deep, body: "x"}, {name: "main.py", body: "print(1)"}},
		"long name":   {{name: strings.Repeat("n", 300), body: "x"}, {name: "main.py", body: "print(1)"}},
		"deep target": {{name: "l", link: strings.Repeat("../", 70), sym: true}, {name: "main.py", body: "print(1)"}},
	}
	var many []tarEntry
	for i := range 5001 {
		many = append(many, tarEntry{name: fmt.Sprintf("a%d/b%d/f", i, i), body: ""})
	}
	cases["implied dirs"] = append(many, tarEntry{name: "main.py", body: "print(1)"})
	for name, entries := range cases {
		if err := checkArchive(makeTarGz(t, entries), "main.py"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := checkArchive(makeTarGz(t, []tarEntry{{name: strings.Repeat("d/", 60) + "x", body: ""}, {name: "main.py", body: "print(1)"}}), "main.py"); err != nil {
		t.Errorf("60 levels (under the cap): %v", err)
	}
}

type tarEntry struct {
	name, body, link string
	sym              bool
}

func makeTarGz(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if e.sym {
			h = &tar.Header{Name: e.name, Linkname: e.link, Typeflag: tar.TypeSymlink, Format: tar.FormatPAX}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}
