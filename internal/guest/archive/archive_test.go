package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type entry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func sym(name, target string) entry  { return entry{name: name, link: target, typ: tar.TypeSymlink} }
func hard(name, target string) entry { return entry{name: name, link: target, typ: tar.TypeLink} }
func dir(name string) entry          { return entry{name: name, typ: tar.TypeDir} }
func file(name, body string) entry   { return entry{name: name, body: body} }

// buildTar writes entries as an uncompressed tar; build gzips it.
func buildTar(t testing.TB, entries ...entry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
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
	return buf.Bytes()
}

func build(t testing.TB, entries ...entry) []byte { return gz(buildTar(t, entries...)) }

func gz(b []byte) []byte {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// workDir makes parent/work and returns both: whatever lands in parent
// besides work escaped.
func workDir(t testing.TB) (parent, dir string) {
	parent = t.TempDir()
	dir = filepath.Join(parent, "work")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return parent, dir
}

// assertContained checks, with the kernel's view of the tree rather than the
// package's, that no symlink under dir leads outside it: one that resolves
// must resolve inside, and one that dangles must not let a create through it
// land outside. It also checks that parent holds nothing but dir and the
// names in keep.
func assertContained(t testing.TB, parent, dir string, keep ...string) {
	t.Helper()
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	inside := func(p string) bool { return p == real || strings.HasPrefix(p, real+"/") }
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink == 0 {
			return nil
		}
		target, err := os.Readlink(p)
		if err != nil {
			t.Errorf("readlink %s: %v", p, err)
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if filepath.IsAbs(target) {
			t.Errorf("symlink %s -> %s is absolute", rel, target)
			return nil
		}
		if r, err := filepath.EvalSymlinks(p); err == nil {
			if !inside(r) {
				t.Errorf("symlink %s -> %s resolves outside the work dir, to %s", rel, target, r)
			}
			return nil
		}
		// Dangling: O_CREAT through it would make the last component of
		// the target in the directory the rest of it resolves to.
		// (filepath.Dir would clean the target: "s/../x" is not "x" when
		// s is a link.)
		i := strings.LastIndexByte(target, '/')
		if base := target[i+1:]; base != ".." && base != "." {
			if r, err := filepath.EvalSymlinks(filepath.Dir(p) + "/" + target[:i+1]); err == nil && !inside(r) {
				t.Errorf("dangling symlink %s -> %s would create outside the work dir, in %s", rel, target, r)
			}
		}
		return nil
	})
	ents, _ := os.ReadDir(parent)
	for _, e := range ents {
		if e.Name() != filepath.Base(dir) && !contains(keep, e.Name()) {
			t.Errorf("extraction wrote %q next to the work dir", e.Name())
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestExtractGood(t *testing.T) {
	dir := t.TempDir()
	a := build(t,
		entry{name: "./", typ: tar.TypeDir},
		entry{name: "pkg/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "pkg/util.py", body: "X = 1\n"},
		entry{name: "src/app/main.py", body: "import sys\n", mode: 0o4755},
		sym("link", "pkg/util.py"),
		sym("src/up", "../pkg"),
		hard("hard", "pkg/util.py"),
		entry{name: "pkg/util.py", body: "X = 2\n"}, // later entry wins
	)
	if err := Extract(context.Background(), bytes.NewReader(a), dir, DefaultLimits, NoOwner); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "link")); string(b) != "X = 2\n" {
		t.Errorf("link reads %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "hard")); string(b) != "X = 1\n" {
		t.Errorf("hard link reads %q (it keeps the file it was made to)", b)
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
		{"symlink absolute", build(t, sym("l", "/etc"))},
		{"symlink escape", build(t, sym("a/l", "../../etc"))},
		{"symlink then write through it", build(t,
			sym("l", "."),
			sym("l2", "l/.."),
			entry{name: "l2/escaped", body: "x"})},
		{"hardlink absolute", build(t, hard("h", "/etc/shadow"))},
		{"hardlink escape", build(t, hard("h", "../outside"))},
		{"char device", build(t, entry{name: "null", typ: tar.TypeChar})},
		{"block device", build(t, entry{name: "sda", typ: tar.TypeBlock})},
		{"fifo", build(t, entry{name: "p", typ: tar.TypeFifo})},
		{"too many files", build(t, many...)},
		{"too many implied directories", build(t, file("a/b/c/d/e/f", "x"))},
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
			parent, dir := workDir(t)
			err := Extract(context.Background(), bytes.NewReader(tc.archive), dir, small, NoOwner)
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("got %v, want ErrRefused", err)
			}
			t.Log(err)
			assertContained(t, parent, dir)
		})
	}
}

// Each of these left a symlink that leads outside the work dir (checks on
// the link's own target, read from the link's name, all passed), or a hard
// link that was really a symlink. Now the archive is refused and no such
// link is left.
func TestExtractRefusesEscapingLinks(t *testing.T) {
	cases := []struct {
		name    string
		entries []entry
	}{
		{"a link's target read through a directory link", []entry{
			sym("x", "."), sym("x/y/b", "../../etc")}},
		{"up from a link to the work dir", []entry{
			sym("l", "."), sym("l2", "l/..")}},
		{"made harmful by a later link", []entry{
			sym("a", "b/.."), sym("b", ".")}},
		{"chain of three", []entry{
			sym("a", "b/passwd"), sym("b", "c/../etc"), sym("c", ".")}},
		{"up through a link deeper down", []entry{
			dir("d1/d2/"), sym("d1/d2/up", "../.."), sym("d1/d2/up2", "up/..")}},
		{"a dangling link completed by a later entry", []entry{
			sym("a", "b/../../x"), dir("b/")}},
		{"a later link replaces the directory an earlier one climbs from", []entry{
			dir("d/"), sym("a", "d/.."), sym("d", ".")}},
		{"hard link to a symlink that escapes from the link's directory", []entry{
			sym("a/l", "../x"), hard("h", "a/l")}},
		{"hard link to a harmless symlink", []entry{
			file("f", "x"), sym("l", "f"), hard("h", "l")}},
		{"hard link to a directory", []entry{
			dir("d/"), hard("h", "d")}},
		{"hard link to nothing", []entry{
			hard("h", "missing")}},
		{"symlink loop", []entry{
			sym("a", "b"), sym("b", "a")}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			parent, dir := workDir(t)
			os.WriteFile(filepath.Join(parent, "x"), []byte("outside"), 0o644)
			os.Mkdir(filepath.Join(parent, "etc"), 0o755)
			err := Extract(context.Background(), bytes.NewReader(build(t, tc.entries...)), dir, DefaultLimits, NoOwner)
			if !errors.Is(err, ErrRefused) {
				t.Errorf("got %v, want ErrRefused", err)
			}
			t.Log(err)
			assertContained(t, parent, dir, "x", "etc")
		})
	}
}

// Links are judged on where they lead, not on their text: these stay inside
// though a lexical reading of some of them leaves the dir.
func TestExtractResolvesLinksInside(t *testing.T) {
	parent, dir := workDir(t)
	a := build(t,
		file("d/e/f.txt", "deep"),
		file("top.txt", "top"),
		sym("s", "d/e"),
		sym("climb", "s/../../top.txt"), // s/.. is d, not the work dir
		sym("d/e/back", "../../s/f.txt"),
		sym("via", "d/e/back"),
		sym("later", "n/file"), // dangling until n is made
		file("n/file", "made after its link"),
	)
	if err := Extract(context.Background(), bytes.NewReader(a), dir, DefaultLimits, NoOwner); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"climb": "top", "via": "deep", "later": "made after its link", "s/f.txt": "deep"} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); string(b) != want {
			t.Errorf("%s reads %q, %v; want %q", name, b, err, want)
		}
	}
	assertContained(t, parent, dir)
}

func TestExtractRefusesEntryUnderSymlink(t *testing.T) {
	// Tar never writes an entry below one of its symlinks; refusing it keeps
	// every extracted name its real place, and writes never follow a link.
	for _, e := range [][]entry{
		{dir("d/"), sym("l", "d"), file("l/f", "x")},
		{dir("d/"), sym("l", "d"), dir("l/sub/")},
		{file("f", "x"), file("f/g", "y")},
	} {
		_, dir := workDir(t)
		err := Extract(context.Background(), bytes.NewReader(build(t, e...)), dir, DefaultLimits, NoOwner)
		if !errors.Is(err, ErrRefused) {
			t.Errorf("%v: got %v, want ErrRefused", e, err)
		}
	}
}

func TestExtractShapeLimits(t *testing.T) {
	deep := func(n int) string { return strings.Repeat("d/", n-1) + "f" }
	long := func(n int) string { return strings.Repeat("a", n) }
	cases := []struct {
		name    string
		entries []entry
		ok      bool
	}{
		{"64 levels", []entry{file(deep(64), "x")}, true},
		{"65 levels", []entry{file(deep(65), "x")}, false},
		{"65 levels of directories", []entry{dir(strings.Repeat("d/", 65))}, false},
		{"name of 255 bytes", []entry{file(long(255), "x")}, true},
		{"name of 256 bytes", []entry{file(long(256), "x")}, false},
		{"path of 4095 bytes", []entry{file(strings.Repeat(long(127)+"/", 31)+long(127), "x")}, true},
		{"path of 4096 bytes", []entry{file(strings.Repeat(long(127)+"/", 31)+long(128), "x")}, false},
		{"link target of 4095 bytes", []entry{sym("l", strings.Repeat(long(127)+"/", 31)+long(127))}, true},
		{"link target 65 levels deep", []entry{sym("l", strings.Repeat("d/", 64)+"f")}, false},
		{"link target of 4096 bytes", []entry{sym("l", strings.Repeat(long(127)+"/", 31)+long(128))}, false},
		{"hard link target 65 levels deep", []entry{hard("h", deep(65))}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, dir := workDir(t)
			err := Extract(context.Background(), bytes.NewReader(build(t, tc.entries...)), dir, DefaultLimits, NoOwner)
			if tc.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.ok && !errors.Is(err, ErrRefused) {
				t.Fatalf("got %v, want ErrRefused", err)
			}
			t.Log(err)
		})
	}
}

// A few hundred bytes that name a directory 20,000 levels deep: it took 51 s
// to extract, then could not be removed ("too many open files").
func TestExtractDeepDirectoryBomb(t *testing.T) {
	a := build(t, dir(strings.Repeat("a/", 20_000)))
	t.Logf("bomb: %d bytes", len(a))
	_, dir := workDir(t)
	start := time.Now()
	err := Extract(context.Background(), bytes.NewReader(a), dir, DefaultLimits, NoOwner)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("got %v, want ErrRefused", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refusing took %v", d)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("made %d entries before refusing", len(ents))
	}
	t.Log(err)
}

// cancelAfter cancels once n bytes have been read through it.
type cancelAfter struct {
	r      io.Reader
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.n -= n; c.n <= 0 {
		c.cancel()
	}
	return n, err
}

func TestExtractStopsWhenCancelled(t *testing.T) {
	t.Run("before it starts", func(t *testing.T) {
		_, dir := workDir(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := Extract(ctx, bytes.NewReader(build(t, file("f", "x"))), dir, DefaultLimits, NoOwner)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("extracted %d entries", len(ents))
		}
	})
	t.Run("during a large file", func(t *testing.T) {
		const size = 100 << 20
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		tw := tar.NewWriter(zw)
		tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Size: size, Mode: 0o644})
		tw.Write(make([]byte, size))
		tw.Close()
		zw.Close()
		_, dir := workDir(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		r := &cancelAfter{r: &buf, n: buf.Len() / 10, cancel: cancel}
		err := Extract(ctx, r, dir, DefaultLimits, NoOwner)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		fi, err := os.Stat(filepath.Join(dir, "big"))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() >= size/2 {
			t.Errorf("wrote %d of %d bytes after the context was cancelled at a tenth", fi.Size(), size)
		}
		t.Logf("stopped after %d of %d bytes", fi.Size(), size)
	})
	t.Run("between entries", func(t *testing.T) {
		ents := make([]entry, 2000)
		for i := range ents {
			ents[i] = file(fmt.Sprintf("f%04d", i), strings.Repeat("x", 1000+i))
		}
		a := build(t, ents...)
		_, dir := workDir(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		err := Extract(ctx, &cancelAfter{r: bytes.NewReader(a), n: len(a) / 4, cancel: cancel}, dir, DefaultLimits, NoOwner)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		if got, _ := os.ReadDir(dir); len(got) >= len(ents) {
			t.Errorf("extracted all %d entries", len(got))
		}
	})
	t.Run("deadline", func(t *testing.T) {
		_, dir := workDir(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
		defer cancel()
		time.Sleep(time.Millisecond)
		err := Extract(ctx, bytes.NewReader(build(t, file("f", "x"))), dir, DefaultLimits, NoOwner)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want context.DeadlineExceeded", err)
		}
	})
}

func TestExtractWantsEmptyDir(t *testing.T) {
	_, dir := workDir(t)
	os.WriteFile(filepath.Join(dir, "there"), nil, 0o644)
	err := Extract(context.Background(), bytes.NewReader(build(t, file("f", "x"))), dir, DefaultLimits, NoOwner)
	if err == nil || errors.Is(err, ErrRefused) {
		t.Fatalf("got %v, want an error about the directory", err)
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
	err := Extract(context.Background(), &buf, t.TempDir(), DefaultLimits, NoOwner)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("got %v, want ErrRefused", err)
	}
	t.Log(err)
}
