package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzExtract feeds the extractor arbitrary input, seeded with good and hostile archives.
// Whatever the input, it must not panic, must refuse or succeed cleanly, must never
// write outside its directory and must never leave a symlink that leads outside it.
//
// An input that starts with gzip's magic is extracted as it is, for the decoders. Any
// other input is a script of entries (see script), for the path and link logic: a
// mutated deflate stream mostly fails its checksum, and a mutated tar is kilobytes of
// padding that take the fuzzer minutes to minimise.
func FuzzExtract(f *testing.F) {
	for _, s := range []string{
		"f a/main.py\nf a/b/c.txt",
		"f ../escape",
		"f /abs",
		"l link ../../etc/passwd",
		"h hard /etc/passwd",
		"c dev",
		"l x .\nl x/y/b ../../outside",
		"l l .\nl l2 l/..",
		"l a b/..\nl b .",
		"l a b/outside\nl b c/..\nl c .",
		"d d\nl a d/..\nl d .",
		"l a/l ../outside\nh h a/l",
		"f d/e/f\nl s d/e\nl up s/../../outside",
		"l a b/../../outside\nd b",
		"l a b\nl b a",
		"f f\nl l f\nh h l\nf l",
		"d " + strings.Repeat("a/", 100),
	} {
		f.Add([]byte(s))
	}
	f.Add(build(f, file("a/main.py", "print(1)\n"), sym("l", "a/main.py")))
	f.Add(build(f, sym("l", "."), sym("l2", "l/..")))
	f.Add([]byte{0x1f, 0x8b, 0x08, 0x00})
	lim := Limits{MaxFiles: 64, MaxFileBytes: 1 << 20, MaxTotalBytes: 4 << 20}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !bytes.HasPrefix(data, []byte{0x1f, 0x8b}) {
			var ok bool
			if data, ok = script(data); !ok {
				return
			}
		}
		parent, dir := workDir(t)
		sentinel := filepath.Join(parent, "outside")
		os.WriteFile(sentinel, []byte("untouched"), 0o644)
		err := Extract(context.Background(), bytes.NewReader(data), dir, lim, NoOwner)
		if err != nil && !errors.Is(err, ErrRefused) {
			// Not the archive's fault: the extractor's model of the tree
			// and the disk disagree.
			t.Fatalf("error that is not a refusal: %v", err)
		}
		assertContained(t, parent, dir, "outside")
		if b, _ := os.ReadFile(sentinel); string(b) != "untouched" {
			t.Fatal("extraction modified a file outside its directory")
		}
	})
}

// script makes an archive of one entry a line, "<type> <name>[ <link>]": type d
// (directory), f (a file holding its name), l (symlink) or h (hard link); any other
// byte is used as the tar type flag. ok is false for a header tar will not write.
func script(data []byte) (archive []byte, ok bool) {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.NoCompression)
	tw := tar.NewWriter(zw)
	for _, line := range strings.Split(string(data), "\n") {
		if len(line) < 3 {
			continue
		}
		name, link, _ := strings.Cut(line[2:], " ")
		h := &tar.Header{Name: name, Linkname: link, Mode: 0o644, Typeflag: line[0]}
		switch line[0] {
		case 'd':
			h.Typeflag = tar.TypeDir
		case 'f':
			h.Typeflag, h.Size = tar.TypeReg, int64(len(name))
		case 'l':
			h.Typeflag = tar.TypeSymlink
		case 'h':
			h.Typeflag = tar.TypeLink
		}
		if tw.WriteHeader(h) != nil {
			return nil, false
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(name))
		}
	}
	tw.Close()
	zw.Close()
	return buf.Bytes(), true
}
