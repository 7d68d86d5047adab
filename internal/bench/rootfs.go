package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/vulcanhq/vulcan/internal/microvm"
)

var rowP3 = Row{"P3", "rootfs provisioning vs copy", "a VM's root filesystem as the backend provisions it (state dir + the shared read-only image + a 2 GiB sparse ext4 scratch disk for its writes) vs a private copy of the image (fsynced), medians"}

// RootfsMinSpeedup is P3's target.
const RootfsMinSpeedup = 100.0

// RootfsProvisioning is P3. The image is random data, not a sparse file: a sparse copy
// would flatter the copy.
func RootfsProvisioning(ctx context.Context, o Options) (Result, error) {
	size := o.ImageSize
	if size <= 0 {
		size = 1 << 30
		if o.Quick {
			size = 64 << 20
		}
	}
	dir, err := os.MkdirTemp(o.tempDir(), "vulcan-bench-p3-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(dir)
	base := filepath.Join(dir, "base.ext4")
	o.logf("P3: writing a %s image to %s", formatBytes(size), dir)
	if err := writeRandom(base, size); err != nil {
		return Result{}, err
	}

	shared := func() error {
		vmDir := filepath.Join(dir, "vm-shared")
		if err := os.MkdirAll(vmDir, 0o750); err != nil {
			return err
		}
		// The backend only checks the image is there; the VMM opens it read-only. The
		// guest's writes go to a scratch disk made as the backend makes it.
		if _, err := os.Stat(base); err != nil {
			return err
		}
		if err := microvm.CreateScratch(ctx, filepath.Join(vmDir, "scratch.ext4"), 2048); err != nil {
			return err
		}
		return os.RemoveAll(vmDir)
	}
	copied := func() error {
		dst := filepath.Join(dir, "vm-copy.ext4")
		defer os.Remove(dst)
		return copyFile(dst, base)
	}
	n := o.n(5, 3)
	sh, cp := make([]time.Duration, n), make([]time.Duration, n)
	for i := range n {
		if err := ctx.Err(); err != nil {
			return Result{}, err
		}
		t0 := time.Now()
		if err := shared(); err != nil {
			return Result{}, err
		}
		t1 := time.Now()
		if err := copied(); err != nil {
			return Result{}, err
		}
		sh[i], cp[i] = t1.Sub(t0), time.Since(t1)
	}
	r := rowP3.Compare(Speedup, NewSample("copy", cp), NewSample("shared", sh), AtLeast(RootfsMinSpeedup))
	r.Note = "image " + formatBytes(size)
	if size != 1<<30 {
		r.Note += " (the target is stated for 1 GiB)"
	}
	return r, nil
}

func writeRandom(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func formatBytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}
