package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

type entry struct {
	name, body, link string
	typ              byte
	mode             int64
	size             int64 // overrides len(body) in the header when set
}

func build(t testing.TB, entries ...entry) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.body != "" {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func TestExtractGood(t *testing.T) {
	dir := t.TempDir()
	a := build(t,
		entry{name: "./", typ: tar.TypeDir},
		entry{name: "pkg/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "pkg/util.py", body: "X = 1\n"},
		entry{name: "src/app/main.py", body: "import sys\n", mode: 0o4755},
		entry{name: "link", typ: tar.TypeSymlink, link: "pkg/util.py"},
		entry{name: "src/up", typ: tar.TypeSymlink, link: "../pkg"},
		entry{name: "hard", typ: tar.TypeLink, link: "pkg/util.py"},
		entry{name: "pkg/util.py", body: "X = 2\n"}, // later entry wins
	)
	if err := Extract(bytes.NewReader(a), dir, DefaultLimits, NoOwner); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "link")); string(b) != "X = 2\n" {
		t.Errorf("link reads %q", b)
	}
	fi, err := os.Stat(filepath.Join(dir, "src/app/main.py"))
	if err != nil || fi.Mode().Perm() != 0o755 || fi.Mode()&os.ModeSetuid != 0 {
		t.Errorf("main.py: %v %v (setuid must be dropped)", fi.Mode(), err)
	}
	if _, err := os.Stat(filepath.Join(dir, "src/up/util.py")); err != nil {
		t.Errorf("relative symlink inside the dir: %v", err)
	}
}

func TestExtractRefuses(t *testing.T) {
	small := Limits{MaxFiles: 5, MaxTotalBytes: 1 << 20, MaxFileBytes: 512 << 10}
	many := make([]entry, 6)
	for i := range many {
		many[i] = entry{name: fmt.Sprintf("f%d", i), body: "x"}
	}
	cases := []struct {
		name    string
		archive []byte
	}{
		{"absolute path", build(t, entry{name: "/etc/passwd", body: "root::0:0::/:/bin/sh\n"})},
		{"dot dot", build(t, entry{name: "a/../../evil", body: "x"})},
		{"dot dot dir", build(t, entry{name: "../", typ: tar.TypeDir})},
		{"symlink absolute", build(t, entry{name: "l", typ: tar.TypeSymlink, link: "/etc"})},
		{"symlink escape", build(t, entry{name: "a/l", typ: tar.TypeSymlink, link: "../../etc"})},
		{"symlink then write through it", build(t,
			entry{name: "l", typ: tar.TypeSymlink, link: "."},
			entry{name: "l2", typ: tar.TypeSymlink, link: "l/.."},
			entry{name: "l2/escaped", body: "x"})},
		{"hardlink absolute", build(t, entry{name: "h", typ: tar.TypeLink, link: "/etc/shadow"})},
		{"hardlink escape", build(t, entry{name: "h", typ: tar.TypeLink, link: "../outside"})},
		{"char device", build(t, entry{name: "null", typ: tar.TypeChar})},
		{"block device", build(t, entry{name: "sda", typ: tar.TypeBlock})},
		{"fifo", build(t, entry{name: "p", typ: tar.TypeFifo})},
		{"too many files", build(t, many...)},
		{"file too big", build(t, entry{name: "big", body: string(make([]byte, 600<<10))})},
		{"total too big", build(t,
			entry{name: "a", body: string(make([]byte, 400<<10))},
			entry{name: "b", body: string(make([]byte, 400<<10))},
			entry{name: "c", body: string(make([]byte, 400<<10))})},
		{"not gzip", []byte("PK\x03\x04 a zip")},
		{"corrupt tar", gz([]byte("this is not a tar header, not at all"))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			dir := filepath.Join(parent, "work")
			os.Mkdir(dir, 0o755)
			err := Extract(bytes.NewReader(tc.archive), dir, small, NoOwner)
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("got %v, want ErrRefused", err)
			}
			t.Log(err)
			if ents, _ := os.ReadDir(parent); len(ents) != 1 {
				t.Fatalf("something was written next to the work dir: %v", ents)
			}
		})
	}
}

// A gzip bomb: a few KiB that expand to far more than the limit.
func TestExtractBomb(t *testing.T) {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	tw := tar.NewWriter(zw)
	const size = 1 << 30
	tw.WriteHeader(&tar.Header{Name: "bomb", Typeflag: tar.TypeReg, Size: size, Mode: 0o644})
	zeros := make([]byte, 1<<20)
	for range size / len(zeros) {
		tw.Write(zeros)
	}
	tw.Close()
	zw.Close()
	t.Logf("bomb: %d bytes compressed, %d expanded", buf.Len(), size)
	err := Extract(&buf, t.TempDir(), DefaultLimits, NoOwner)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("got %v, want ErrRefused", err)
	}
	t.Log(err)
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}
