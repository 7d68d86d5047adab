package layer

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// WriteOptions say what Write walks.
type WriteOptions struct {
	// Diff reads dir as an overlayfs upper layer: whiteouts (0:0 character devices) and
	// opaque directories become OCI whiteout entries.
	Diff bool
	// OneFileSystem writes the directories other file systems are mounted on but not
	// what they hold (/proc, /sys, /dev, /run: a tree is the root file system only).
	OneFileSystem bool
}

// Write writes the tree at dir to w as a tar stream, entries named relative to dir, in
// lexical order (so a directory comes before what it holds). Regular files with several
// names are written once, then as hard links.
func Write(ctx context.Context, w io.Writer, dir string, o WriteOptions) error {
	tw := tar.NewWriter(w)
	var rootDev uint64
	if fi, err := os.Lstat(dir); err != nil {
		return err
	} else if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		rootDev = st.Dev
	}
	type ino struct{ dev, ino uint64 }
	links := map[ino]string{}
	var walk func(rel string) error
	walk = func(rel string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		full := filepath.Join(dir, rel)
		f, err := os.Open(full)
		if err != nil {
			return err
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return err
		}
		sort.Strings(names)
		for _, n := range names {
			name := path.Join(rel, n)
			p := filepath.Join(dir, name)
			fi, err := os.Lstat(p)
			if err != nil {
				return err
			}
			st, _ := fi.Sys().(*syscall.Stat_t)
			if o.Diff && fi.Mode()&fs.ModeCharDevice != 0 && st != nil && st.Rdev == 0 {
				if err := writeEmpty(tw, path.Join(rel, WhiteoutPrefix+n), fi); err != nil {
					return err
				}
				continue
			}
			link := ""
			if fi.Mode()&fs.ModeSymlink != 0 {
				if link, err = os.Readlink(p); err != nil {
					return err
				}
			}
			h, err := tar.FileInfoHeader(fi, link)
			if err != nil {
				// Sockets have no tar form: a tree does not carry them.
				continue
			}
			h.Name = name
			h.Uname, h.Gname = "", ""
			h.Format = tar.FormatPAX
			h.AccessTime, h.ChangeTime = time.Time{}, time.Time{}
			if st != nil {
				h.Uid, h.Gid = int(st.Uid), int(st.Gid)
			}
			if fi.IsDir() {
				h.Name += "/"
			}
			if fi.Mode().IsRegular() && st != nil && st.Nlink > 1 {
				k := ino{st.Dev, st.Ino}
				if first, ok := links[k]; ok {
					h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
				} else {
					links[k] = name
				}
			}
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			switch {
			case h.Typeflag == tar.TypeReg:
				if err := copyFile(tw, p, h.Size); err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
			case fi.IsDir():
				if o.Diff && opaque(p) {
					if err := writeEmpty(tw, path.Join(name, OpaqueMarker), fi); err != nil {
						return err
					}
				}
				if o.OneFileSystem && st != nil && st.Dev != rootDev {
					continue
				}
				if err := walk(name); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(""); err != nil {
		return err
	}
	return tw.Close()
}

// opaque reports whether an upper-layer directory hides its lower ones.
func opaque(p string) bool {
	buf := make([]byte, 8)
	for _, attr := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
		if n, err := unix.Lgetxattr(p, attr, buf); err == nil && n == 1 && buf[0] == 'y' {
			return true
		}
	}
	return false
}

func writeEmpty(tw *tar.Writer, name string, fi fs.FileInfo) error {
	return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: fi.ModTime(), Format: tar.FormatPAX})
}

// copyFile writes exactly size bytes of p: a file that grew is cut, one that shrank is
// padded, so the stream stays well formed while the tree changes under it.
func copyFile(w io.Writer, p string, size int64) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, size))
	if err != nil {
		return err
	}
	if n < size {
		_, err = io.CopyN(w, zeros{}, size-n)
	}
	return err
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
