package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

func cases(t *testing.T, n int) int {
	if testing.Short() {
		return n / 10
	}
	return n
}

// Random archives from a small alphabet, so that names collide, links chain
// through each other, climb with "..", replace one another and dangle. Whatever
// comes out, the extractor must refuse or succeed without any other error
// (an I/O error would mean its model of the tree and the disk disagree), must
// leave no link that leads outside, and on success must leave what the last
// entry of each name said.
func TestExtractRandomLinks(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	comp := func() string { return []string{"a", "b", "c"}[rng.IntN(3)] }
	name := func() string {
		parts := make([]string, 1+rng.IntN(3))
		for i := range parts {
			parts[i] = comp()
		}
		return strings.Join(parts, "/")
	}
	target := func() string {
		parts := make([]string, 1+rng.IntN(5))
		for i := range parts {
			switch r := rng.IntN(10); {
			case r < 3:
				parts[i] = ".."
			case r < 4:
				parts[i] = "."
			case r < 5:
				parts[i] = "outside"
			default:
				parts[i] = comp()
			}
		}
		return strings.Join(parts, "/")
	}
	n := cases(t, 2000)
	var ok, refused, links int
	for i := range n {
		entries := make([]entry, 1+rng.IntN(8))
		for j := range entries {
			switch r := rng.IntN(10); {
			case r < 2:
				entries[j] = dir(name() + "/")
			case r < 4:
				entries[j] = file(name(), fmt.Sprint(j))
			case r < 9:
				entries[j] = sym(name(), target())
			default:
				entries[j] = hard(name(), name())
			}
		}
		parent, dir := workDir(t)
		os.WriteFile(filepath.Join(parent, "outside"), []byte("untouched"), 0o644)
		err := Extract(context.Background(), bytes.NewReader(build(t, entries...)), dir, DefaultLimits, NoOwner)
		switch {
		case err == nil:
			ok++
			links += checkLastWins(t, dir, entries)
		case errors.Is(err, ErrRefused):
			refused++
		default:
			t.Errorf("case %d: %v\n%v", i, err, entries)
		}
		assertContained(t, parent, dir, "outside")
		if t.Failed() {
			t.Fatalf("case %d: %v (err %v)", i, entries, err)
		}
		os.RemoveAll(parent)
	}
	t.Logf("%d archives: %d extracted (%d links made), %d refused", n, ok, links, refused)
	if ok == 0 || refused == 0 || links == 0 {
		t.Errorf("the generator is too tame or too wild: %d extracted, %d links, %d refused", ok, links, refused)
	}
}

// checkLastWins checks that dir holds, for every name, what its last entry
// made, and returns how many symlinks that is.
func checkLastWins(t *testing.T, dir string, entries []entry) (links int) {
	t.Helper()
	last := map[string]entry{}
	for _, e := range entries {
		last[path.Clean(e.name)] = e
	}
	for name, e := range last {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		switch e.typ {
		case tar.TypeDir:
			if !fi.IsDir() {
				t.Errorf("%s is %v, want a directory", name, fi.Mode())
			}
		case tar.TypeSymlink:
			if got, _ := os.Readlink(filepath.Join(dir, name)); got != e.link {
				t.Errorf("%s -> %q, want -> %q", name, got, e.link)
			}
			links++
		default:
			if !fi.Mode().IsRegular() {
				t.Errorf("%s is %v, want a regular file", name, fi.Mode())
			}
		}
	}
	return links
}

// Trees whose links all lead, by construction, to something inside: a real
// entry or an earlier link, reached with as many ".." as it takes, or through
// an earlier link to a directory. None may be refused, and every link must
// reach what it was made for.
func TestExtractRandomSafeTrees(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	n := cases(t, 500)
	var total, totalLinks int
	for i := range n {
		type made struct {
			name, dest string // dest: the real entry a link leads to
			dir        bool
		}
		dirs := []string{"."}
		var all []made
		var entries []entry
		fresh := func() string {
			return path.Join(dirs[rng.IntN(len(dirs))], fmt.Sprintf("n%d", len(entries)))
		}
		for range 5 + rng.IntN(40) {
			switch r := rng.IntN(10); {
			case r < 3 || len(all) == 0:
				d := fresh()
				entries = append(entries, dir(d+"/"))
				dirs = append(dirs, d)
				all = append(all, made{d, d, true})
			case r < 6:
				f := fresh()
				entries = append(entries, file(f, f))
				all = append(all, made{f, f, false})
			case r < 9:
				to := all[rng.IntN(len(all))]
				l := fresh()
				rel, _ := filepath.Rel(path.Dir(l), to.name)
				dest := to.dest
				if to.dir && to.name != to.dest {
					// Through a link to a directory, to something in it.
					var in []made
					for _, m := range all {
						if m.name != to.dest && strings.HasPrefix(m.name, to.dest+"/") && !strings.Contains(m.name[len(to.dest)+1:], "/") {
							in = append(in, m)
						}
					}
					if len(in) > 0 {
						m := in[rng.IntN(len(in))]
						rel += "/" + path.Base(m.name)
						to, dest = m, m.dest
					}
				}
				entries = append(entries, sym(l, rel))
				all = append(all, made{l, dest, to.dir})
			default:
				var files []made
				for _, m := range all {
					if !m.dir && m.name == m.dest {
						files = append(files, m)
					}
				}
				if len(files) > 0 {
					f := files[rng.IntN(len(files))]
					h := fresh()
					entries = append(entries, hard(h, f.name))
					all = append(all, made{h, f.name, false})
				}
			}
		}
		parent, dir := workDir(t)
		if err := Extract(context.Background(), bytes.NewReader(build(t, entries...)), dir, DefaultLimits, NoOwner); err != nil {
			t.Fatalf("case %d refused: %v\n%v", i, err, entries)
		}
		for _, m := range all {
			got, err1 := os.Stat(filepath.Join(dir, m.name))
			want, err2 := os.Stat(filepath.Join(dir, m.dest))
			if err1 != nil || err2 != nil || !os.SameFile(got, want) {
				t.Errorf("case %d: %s does not reach %s (%v, %v)\n%v", i, m.name, m.dest, err1, err2, entries)
			}
			if m.name != m.dest && m.dir == (got != nil && !got.IsDir()) {
				t.Errorf("case %d: %s reaches the wrong kind of thing", i, m.name)
			}
		}
		assertContained(t, parent, dir)
		if t.Failed() {
			t.FailNow()
		}
		total += len(entries)
		for _, e := range entries {
			if e.typ == tar.TypeSymlink {
				totalLinks++
			}
		}
		os.RemoveAll(parent)
	}
	t.Logf("%d trees, %d entries, %d links: all extracted, every link reaches its target", n, total, totalLinks)
}
