// Package layer moves file system trees and the changes made to them as tar streams: a
// template build exports what each step changed in its build VM (a diff, the overlay's
// upper layer) and, at the end, the whole root (a tree) that becomes the template's image.
//
// Diffs follow the OCI image layer conventions: a removed path X is an empty file
// `.wh.X` beside it, and a directory whose lower contents are hidden (an overlayfs
// opaque directory) carries `.wh..wh..opq`, written right after the directory itself.
//
// Apply writes a stream into a directory through an os.Root, so no entry, however named,
// and no symlink, however it points, reaches outside it. The stream may come from a
// hostile guest: every size is capped, device nodes are refused (a tree has no business
// carrying them: /dev is the guest kernel's), and names with `..` or NULs are refused.
package layer

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"
)

// Whiteout names (OCI image spec, "Representing Changes").
const (
	WhiteoutPrefix = ".wh."
	OpaqueMarker   = ".wh..wh..opq"
)

// ErrRefused wraps every error caused by the stream's content (as opposed to an I/O
// failure of the destination or a cancelled context).
var ErrRefused = errors.New("layer refused")

// Limits bound what one stream may write. Zero fields take DefaultLimits'.
type Limits struct {
	MaxEntries   int
	MaxBytes     int64 // sum of regular file sizes
	MaxPathBytes int
}

// DefaultLimits suit a template: a few GiB, a few hundred thousand files.
var DefaultLimits = Limits{MaxEntries: 1_000_000, MaxBytes: 16 << 30, MaxPathBytes: 4095}

func (l Limits) filled() Limits {
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultLimits.MaxEntries
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultLimits.MaxBytes
	}
	if l.MaxPathBytes <= 0 {
		l.MaxPathBytes = DefaultLimits.MaxPathBytes
	}
	return l
}

// Options say how Apply reads the stream.
type Options struct {
	Limits Limits
	// Whiteouts applies `.wh.` entries as removals (a diff); otherwise such names are
	// ordinary files (a tree, or a user's COPY).
	Whiteouts bool
	// Owner, when set, owns every entry (COPY --chown); otherwise the stream's owners do.
	Owner *Owner
	// KeepOwners false (with Owner nil) leaves every entry owned by the writer: for an
	// unprivileged caller, whose chown would fail.
	KeepOwners bool
}

// Owner is a numeric owner.
type Owner struct{ UID, GID int }

// Stats is what Apply wrote.
type Stats struct {
	Entries int
	Bytes   int64
	Removed int
	Skipped int // sockets and the like, which a tree cannot carry
}

func refused(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// cleanName checks a tar entry's name and returns it relative to the root, "" for the
// root itself.
func cleanName(name string, max int) (string, error) {
	if len(name) > max {
		return "", refused("entry name of %d bytes (at most %d)", len(name), max)
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", refused("entry name with a NUL byte")
	}
	n := strings.TrimPrefix(name, "./")
	n = strings.Trim(n, "/")
	if n == "" || n == "." {
		return "", nil
	}
	for _, c := range strings.Split(n, "/") {
		if c == ".." {
			return "", refused("entry %q has a .. component", name)
		}
	}
	return path.Clean(n), nil
}

// Apply writes the tar stream r into dir. What it wrote before an error stays: callers
// write into a scratch directory they discard on failure.
func Apply(ctx context.Context, r io.Reader, dir string, o Options) (Stats, error) {
	var st Stats
	lim := o.Limits.filled()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return st, err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	type dirTime struct {
		name string
		t    time.Time
	}
	var dirTimes []dirTime
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, refused("reading the stream: %v", err)
		}
		st.Entries++
		if st.Entries > lim.MaxEntries {
			return st, refused("more than %d entries", lim.MaxEntries)
		}
		name, err := cleanName(h.Name, lim.MaxPathBytes)
		if err != nil {
			return st, err
		}
		base := path.Base(name)
		if o.Whiteouts && name != "" && strings.HasPrefix(base, WhiteoutPrefix) {
			parent := path.Dir(name)
			if base == OpaqueMarker {
				n, err := clearDir(root, parent)
				if err != nil {
					return st, err
				}
				st.Removed += n
				continue
			}
			target := path.Join(parent, strings.TrimPrefix(base, WhiteoutPrefix))
			if target == parent || strings.HasPrefix(path.Base(target), WhiteoutPrefix) {
				return st, refused("whiteout %q names nothing", h.Name)
			}
			if err := root.RemoveAll(target); err != nil {
				return st, err
			}
			st.Removed++
			continue
		}
		if name == "" {
			if h.Typeflag == tar.TypeDir {
				if err := setMeta(root, ".", h, o, false); err != nil {
					return st, err
				}
			}
			continue
		}
		if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
			return st, fmt.Errorf("%s: %w", name, err)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if fi, err := root.Lstat(name); err == nil && !fi.IsDir() {
				if err := root.Remove(name); err != nil {
					return st, err
				}
			}
			if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return st, err
			}
			if err := setMeta(root, name, h, o, false); err != nil {
				return st, err
			}
			dirTimes = append(dirTimes, dirTime{name, h.ModTime})
		case tar.TypeReg, tar.TypeRegA:
			if h.Size < 0 || st.Bytes+h.Size > lim.MaxBytes {
				return st, refused("more than %d bytes of files", lim.MaxBytes)
			}
			if err := replace(root, name); err != nil {
				return st, err
			}
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return st, err
			}
			n, err := io.Copy(f, io.LimitReader(tr, h.Size))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			st.Bytes += n
			if err != nil {
				return st, fmt.Errorf("%s: %w", name, err)
			}
			if n != h.Size {
				return st, refused("%s: stream ended inside the file", name)
			}
			if err := setMeta(root, name, h, o, false); err != nil {
				return st, err
			}
		case tar.TypeSymlink:
			if len(h.Linkname) > lim.MaxPathBytes || h.Linkname == "" || strings.IndexByte(h.Linkname, 0) >= 0 {
				return st, refused("%s: bad symlink target", name)
			}
			if err := replace(root, name); err != nil {
				return st, err
			}
			if err := root.Symlink(h.Linkname, name); err != nil {
				return st, err
			}
			if err := setMeta(root, name, h, o, true); err != nil {
				return st, err
			}
		case tar.TypeLink:
			target, err := cleanName(h.Linkname, lim.MaxPathBytes)
			if err != nil || target == "" {
				return st, refused("%s: bad hard link target %q", name, h.Linkname)
			}
			fi, err := root.Lstat(target)
			if err != nil || !fi.Mode().IsRegular() {
				return st, refused("%s: hard link to %q, which is not a file written before it", name, h.Linkname)
			}
			if err := replace(root, name); err != nil {
				return st, err
			}
			if err := root.Link(target, name); err != nil {
				return st, err
			}
		case tar.TypeChar, tar.TypeBlock:
			return st, refused("%s: device nodes are not carried", name)
		default:
			// FIFOs and the like: os.Root cannot make them and a template does not need them.
			st.Skipped++
		}
	}
	// Directory times last: writing into a directory moves its mtime.
	for i := len(dirTimes) - 1; i >= 0; i-- {
		_ = root.Chtimes(dirTimes[i].name, dirTimes[i].t, dirTimes[i].t)
	}
	return st, nil
}

// replace clears the way for a non-directory entry: whatever is at name goes.
func replace(root *os.Root, name string) error {
	if _, err := root.Lstat(name); err == nil {
		return root.RemoveAll(name)
	}
	return nil
}

// clearDir removes what dir holds (an opaque directory hides the lower layers' entries).
func clearDir(root *os.Root, dir string) (int, error) {
	if dir == "." || dir == "" {
		dir = "."
	}
	f, err := root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return 0, err
	}
	for _, n := range names {
		if err := root.RemoveAll(path.Join(dir, n)); err != nil {
			return 0, err
		}
	}
	return len(names), nil
}

// setMeta gives an entry its owner, mode and time. A symlink has no mode of its own.
func setMeta(root *os.Root, name string, h *tar.Header, o Options, symlink bool) error {
	switch {
	case o.Owner != nil:
		if err := root.Lchown(name, o.Owner.UID, o.Owner.GID); err != nil {
			return err
		}
	case o.KeepOwners:
		if err := root.Lchown(name, h.Uid, h.Gid); err != nil {
			return err
		}
	}
	if symlink {
		return nil
	}
	// Chmod after chown: chown clears setuid bits.
	if err := root.Chmod(name, fs.FileMode(h.Mode&0o777)|modeBits(h.Mode)); err != nil {
		return err
	}
	if h.Typeflag != tar.TypeDir {
		_ = root.Chtimes(name, h.ModTime, h.ModTime)
	}
	return nil
}

// modeBits maps tar's setuid, setgid and sticky bits to Go's.
func modeBits(m int64) fs.FileMode {
	var out fs.FileMode
	if m&0o4000 != 0 {
		out |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= fs.ModeSticky
	}
	return out
}
