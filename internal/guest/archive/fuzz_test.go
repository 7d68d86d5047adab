package archive

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzExtract feeds arbitrary bytes (seeded with good and hostile archives) to the
// extractor. Whatever the input, it must not panic, must refuse or succeed cleanly, and
// must never write outside its directory.
func FuzzExtract(f *testing.F) {
	f.Add(build(f, entry{name: "a/main.py", body: "print(1)\n"}, entry{name: "a/b/c.txt", body: "x"}))
	f.Add(build(f, entry{name: "../escape", body: "x"}))
	f.Add(build(f, entry{name: "/abs", body: "x"}))
	f.Add(build(f, entry{name: "link", link: "../../etc/passwd", typ: tar.TypeSymlink}))
	f.Add(build(f, entry{name: "hard", link: "/etc/passwd", typ: tar.TypeLink}))
	f.Add(build(f, entry{name: "dev", typ: tar.TypeChar}))
	f.Add([]byte("not gzip at all"))
	f.Add([]byte{0x1f, 0x8b, 0x08, 0x00})
	lim := Limits{MaxFiles: 64, MaxFileBytes: 1 << 20, MaxTotalBytes: 4 << 20}
	f.Fuzz(func(t *testing.T, data []byte) {
		root := t.TempDir()
		dir := filepath.Join(root, "work")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		sentinel := filepath.Join(root, "outside")
		os.WriteFile(sentinel, []byte("untouched"), 0o644)
		err := Extract(bytes.NewReader(data), dir, lim, NoOwner)
		if err != nil && !errors.Is(err, ErrRefused) && !strings.Contains(err.Error(), "archive") {
			t.Fatalf("error without context: %v", err)
		}
		entries, _ := os.ReadDir(root)
		for _, e := range entries {
			if e.Name() != "work" && e.Name() != "outside" {
				t.Fatalf("extraction wrote %q outside its directory", e.Name())
			}
		}
		if b, _ := os.ReadFile(sentinel); string(b) != "untouched" {
			t.Fatal("extraction modified a file outside its directory")
		}
	})
}
