//go:build linux

package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// snapshot describes a tree as text: one line per entry with its type, mode, owner,
// content hash or link, and hard-link group.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	inodes := map[uint64]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		line := fmt.Sprintf("%s %v %d:%d", rel, fi.Mode(), st.Uid, st.Gid)
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			line += " -> " + l
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			line += fmt.Sprintf(" %q", b)
			if st.Nlink > 1 {
				if first, ok := inodes[st.Ino]; ok {
					line += " = " + first
				} else {
					inodes[st.Ino] = rel
				}
			}
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func randomTree(t *testing.T, r *rand.Rand, dir string) {
	t.Helper()
	dirs := []string{""}
	var files []string
	for i := 0; i < 5+r.IntN(60); i++ {
		parent := dirs[r.IntN(len(dirs))]
		name := filepath.Join(parent, fmt.Sprintf("e%d", i))
		p := filepath.Join(dir, name)
		switch r.IntN(6) {
		case 0, 1:
			must(t, os.Mkdir(p, 0o755))
			dirs = append(dirs, name)
		case 2:
			must(t, os.Symlink([]string{"/etc/passwd", "../x", "e1", "/"}[r.IntN(4)], p))
			must(t, os.Lchown(p, r.IntN(3)*1000, r.IntN(2)))
		case 3:
			if len(files) > 0 {
				must(t, os.Link(filepath.Join(dir, files[r.IntN(len(files))]), p))
				continue
			}
			fallthrough
		default:
			b := make([]byte, r.IntN(3)*r.IntN(70000))
			for j := range b {
				b[j] = byte(r.UintN(256))
			}
			must(t, os.WriteFile(p, b, 0o644))
			must(t, os.Chown(p, r.IntN(3)*1000, r.IntN(2)*1000))
			must(t, os.Chmod(p, fs.FileMode([]int{0o600, 0o755, 0o444}[r.IntN(3)])|[]fs.FileMode{0, fs.ModeSetuid}[r.IntN(2)]))
			files = append(files, name)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("owners and whiteouts need root")
	}
}

// Property: a random tree written and applied elsewhere is the same tree (types, modes,
// owners, bytes, link targets, hard-link groups).
func TestTreeRoundTrip(t *testing.T) {
	needRoot(t)
	for seed := uint64(1); seed <= 25; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		src, dst := t.TempDir(), t.TempDir()
		randomTree(t, r, src)
		var buf bytes.Buffer
		must(t, Write(context.Background(), &buf, src, WriteOptions{}))
		if _, err := Apply(context.Background(), &buf, dst, Options{KeepOwners: true}); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if a, b := snapshot(t, src), snapshot(t, dst); a != b {
			t.Fatalf("seed %d: trees differ\nsource:\n%s\ncopy:\n%s", seed, a, b)
		}
	}
}

// A real overlayfs upper layer: what it records (new files, a removal, an opaque
// directory) applied as a diff to a copy of the lower gives the merged view.
func TestDiffMatchesOverlay(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	lower, upper, work, merged, copyDir := filepath.Join(base, "l"), filepath.Join(base, "u"), filepath.Join(base, "w"), filepath.Join(base, "m"), filepath.Join(base, "c")
	for _, d := range []string{lower, upper, work, merged, copyDir} {
		must(t, os.Mkdir(d, 0o755))
	}
	for _, d := range []string{"keep", "gone", "opq", "opq/sub"} {
		must(t, os.Mkdir(filepath.Join(lower, d), 0o755))
	}
	for _, f := range []string{"keep/a", "keep/b", "gone/x", "opq/old", "opq/sub/deep", "top"} {
		must(t, os.WriteFile(filepath.Join(lower, f), []byte("lower "+f), 0o644))
	}
	if err := unix.Mount("overlay", merged, "overlay", 0, "lowerdir="+lower+",upperdir="+upper+",workdir="+work); err != nil {
		t.Skipf("overlayfs: %v", err)
	}
	defer unix.Unmount(merged, 0)
	must(t, os.RemoveAll(filepath.Join(merged, "gone")))
	must(t, os.Remove(filepath.Join(merged, "keep/b")))
	must(t, os.WriteFile(filepath.Join(merged, "keep/a"), []byte("changed"), 0o600))
	must(t, os.WriteFile(filepath.Join(merged, "new"), []byte("new"), 0o644))
	must(t, os.RemoveAll(filepath.Join(merged, "opq")))
	must(t, os.MkdirAll(filepath.Join(merged, "opq/fresh"), 0o755))
	must(t, os.Symlink("keep/a", filepath.Join(merged, "ln")))

	// The copy starts as the lower layer.
	var lb bytes.Buffer
	must(t, Write(context.Background(), &lb, lower, WriteOptions{}))
	_, err := Apply(context.Background(), &lb, copyDir, Options{KeepOwners: true})
	must(t, err)
	var diff bytes.Buffer
	must(t, Write(context.Background(), &diff, upper, WriteOptions{Diff: true}))
	if _, err := Apply(context.Background(), &diff, copyDir, Options{KeepOwners: true, Whiteouts: true}); err != nil {
		t.Fatal(err)
	}
	if a, b := snapshot(t, merged), snapshot(t, copyDir); a != b {
		t.Fatalf("diff applied to the lower is not the merged view\nmerged:\n%s\napplied:\n%s", a, b)
	}
}

func tarOf(t *testing.T, hs ...*tar.Header) *bytes.Buffer {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range hs {
		must(t, tw.WriteHeader(h))
		if h.Size > 0 {
			tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
		}
	}
	must(t, tw.Close())
	return &b
}

// Hostile streams are refused and write nothing outside the directory.
func TestApplyRefuses(t *testing.T) {
	outside := t.TempDir()
	cases := map[string][]*tar.Header{
		"dotdot":       {{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644}},
		"device":       {{Name: "dev/sda", Typeflag: tar.TypeBlock, Mode: 0o600}},
		"hardlink out": {{Name: "l", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"}},
		"hardlink dir": {{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755}, {Name: "l", Typeflag: tar.TypeLink, Linkname: "d"}},
		"big":          {{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 2048}},
		"through symlink": {{Name: "s", Typeflag: tar.TypeSymlink, Linkname: outside},
			{Name: "s/planted", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}},
	}
	for name, hs := range cases {
		t.Run(name, func(t *testing.T) {
			dst := t.TempDir()
			_, err := Apply(context.Background(), tarOf(t, hs...), dst, Options{Whiteouts: true, Limits: Limits{MaxBytes: 1024}})
			if err == nil {
				t.Fatal("applied")
			}
			if name != "through symlink" && !errors.Is(err, ErrRefused) {
				t.Fatalf("%v is not a refusal", err)
			}
			if _, err := os.Stat(filepath.Join(outside, "planted")); err == nil {
				t.Fatal("wrote through a symlink out of the directory")
			}
		})
	}
	// Without Whiteouts a .wh. name is an ordinary file, and nothing is removed.
	dst := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dst, "x"), []byte("keep"), 0o644))
	if _, err := Apply(context.Background(), tarOf(t, &tar.Header{Name: ".wh.x", Typeflag: tar.TypeReg, Mode: 0o644}), dst, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dst, "x")); err != nil {
		t.Fatal("a .wh. file removed its sibling outside a diff")
	}
}
