package archive

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The workload owns what it was given, directories its paths only implied
// and symlinks included.
func TestExtractOwner(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("chown needs root")
	}
	_, dir := workDir(t)
	a := build(t, file("a/b/f", "x"), sym("a/l", "b/f"), hard("a/h", "a/b/f"))
	if err := Extract(context.Background(), bytes.NewReader(a), dir, DefaultLimits, Owner{UID: 4242, GID: 4343}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "a/b", "a/b/f", "a/l", "a/h"} {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 4242 || st.Gid != 4343 {
			t.Errorf("%s is owned by %d:%d, want 4242:4343", name, st.Uid, st.Gid)
		}
	}
}
