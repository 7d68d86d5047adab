// Package archive extracts a workload's tar.gz into its work dir.
//
// The archive comes from a user, so extraction is refused rather than
// repaired when an entry could reach outside the work dir or the archive is
// larger than the limits. Every write goes through an os.Root opened on the
// work dir, so even a link sequence that passes the lexical checks cannot
// make the agent (which may be root) write outside it.
package archive

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

// ErrRefused is wrapped by every error caused by the archive's content
// (as opposed to an I/O failure of the work dir).
var ErrRefused = errors.New("archive refused")

// Limits bound what one archive may expand to.
type Limits struct {
	MaxFiles      int   // entries of any kind
	MaxTotalBytes int64 // sum of regular file sizes
	MaxFileBytes  int64 // one regular file
}

// DefaultLimits suit a workload in a VM with a tmpfs-backed work dir.
var DefaultLimits = Limits{
	MaxFiles:      10_000,
	MaxTotalBytes: 256 << 20,
	MaxFileBytes:  128 << 20,
}

// Owner, when UID >= 0, is given to everything extracted.
type Owner struct{ UID, GID int }

// NoOwner leaves extracted files owned by the extracting process.
var NoOwner = Owner{-1, -1}

// headerSlack bounds decompressed bytes that are not file content (tar
// headers, padding, PAX records), so that a gzip stream that expands to
// endless non-file data is stopped too.
const headerSlack = 32 << 20

// Extract unpacks the tar.gz stream r into dir, which must exist.
func Extract(r io.Reader, dir string, lim Limits, owner Owner) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return refuse("not a gzip stream: %v", err)
	}
	defer zr.Close()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()

	budget := &limitedReader{r: zr, n: lim.MaxTotalBytes + headerSlack}
	tr := tar.NewReader(budget)
	var files int
	var total int64
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if budget.exceeded {
				return refuse("expands to more than %d bytes", lim.MaxTotalBytes)
			}
			return refuse("corrupt tar: %v", err)
		}
		files++
		if files > lim.MaxFiles {
			return refuse("more than %d entries", lim.MaxFiles)
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue // the work dir itself
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = mkdir(root, name, hdr.Mode)
		case tar.TypeReg, tar.TypeRegA:
			if hdr.Size < 0 || hdr.Size > lim.MaxFileBytes {
				return refuse("entry %q is %d bytes, max %d", name, hdr.Size, lim.MaxFileBytes)
			}
			total += hdr.Size
			if total > lim.MaxTotalBytes {
				return refuse("expands to more than %d bytes", lim.MaxTotalBytes)
			}
			err = writeFile(root, name, hdr.Mode, tr, hdr.Size)
		case tar.TypeSymlink:
			err = symlink(root, name, hdr.Linkname)
		case tar.TypeLink:
			err = hardlink(root, name, hdr.Linkname)
		case tar.TypeChar, tar.TypeBlock:
			return refuse("entry %q is a device file", name)
		case tar.TypeFifo:
			return refuse("entry %q is a fifo", name)
		default:
			return refuse("entry %q has unsupported type %q", name, hdr.Typeflag)
		}
		if err != nil {
			if budget.exceeded {
				return refuse("expands to more than %d bytes", lim.MaxTotalBytes)
			}
			if errors.Is(err, ErrRefused) {
				return err
			}
			// Including os.Root's "path escapes from parent": a link chain
			// that fooled the lexical checks.
			return refuse("entry %q: %v", name, err)
		}
		if owner.UID >= 0 {
			if err := root.Lchown(name, owner.UID, owner.GID); err != nil {
				return fmt.Errorf("chown %q: %w", name, err)
			}
		}
	}
}

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// cleanName returns the entry's path relative to the work dir, refusing
// absolute paths and any ".." component (even one that would cancel out:
// an archive that needs it is not one we want).
func cleanName(name string) (string, error) {
	if name == "" {
		return "", refuse("entry with an empty name")
	}
	if strings.ContainsRune(name, 0) {
		return "", refuse("entry name contains NUL")
	}
	if strings.HasPrefix(name, "/") || strings.Contains(name, `\`) {
		return "", refuse("entry %q has an absolute path", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", refuse("entry %q contains '..'", name)
		}
	}
	return path.Clean(name), nil
}

// insideTarget reports whether target, resolved lexically from the
// directory holding name, stays inside the work dir.
func insideTarget(name, target string) bool {
	if target == "" || path.IsAbs(target) {
		return false
	}
	p := path.Join(path.Dir(name), target)
	return p != ".." && !strings.HasPrefix(p, "../")
}

func mkdir(root *os.Root, name string, mode int64) error {
	if err := root.MkdirAll(name, 0o755); err != nil {
		return fmt.Errorf("mkdir %q: %w", name, err)
	}
	return root.Chmod(name, dirMode(mode))
}

// Modes keep the permission bits only (no setuid, setgid or sticky) and
// always let the owner, who runs the workload, read and write.
func fileMode(m int64) fs.FileMode { return fs.FileMode(m)&0o777 | 0o600 }
func dirMode(m int64) fs.FileMode  { return fs.FileMode(m)&0o777 | 0o700 }

func parent(root *os.Root, name string) error {
	if d := path.Dir(name); d != "." {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("mkdir %q: %w", d, err)
		}
	}
	return nil
}

// replace removes a previous entry of the same name so that a later entry
// never writes through an earlier symlink.
func replace(root *os.Root, name string) error {
	if err := parent(root, name); err != nil {
		return err
	}
	if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return refuse("entry %q replaces a non-empty directory", name)
	}
	return nil
}

func writeFile(root *os.Root, name string, mode int64, r io.Reader, size int64) error {
	if err := replace(root, name); err != nil {
		return err
	}
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode(mode))
	if err != nil {
		return fmt.Errorf("create %q: %w", name, err)
	}
	_, err = io.CopyN(f, r, size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q: %w", name, err)
	}
	// Chmod after create: the umask must not decide what the user gets.
	return root.Chmod(name, fileMode(mode))
}

func symlink(root *os.Root, name, target string) error {
	if !insideTarget(name, target) {
		return refuse("symlink %q points outside the work dir (%q)", name, target)
	}
	if err := replace(root, name); err != nil {
		return err
	}
	return root.Symlink(target, name)
}

func hardlink(root *os.Root, name, target string) error {
	// A hard link's target is a path from the archive root, not from the
	// link's directory.
	if target == "" || path.IsAbs(target) {
		return refuse("hard link %q points outside the work dir (%q)", name, target)
	}
	if t := path.Clean(target); t == ".." || strings.HasPrefix(t, "../") {
		return refuse("hard link %q points outside the work dir (%q)", name, target)
	}
	if err := replace(root, name); err != nil {
		return err
	}
	if err := root.Link(path.Clean(target), name); err != nil {
		return refuse("hard link %q to %q: %v", name, target, err)
	}
	return nil
}

// limitedReader is io.LimitedReader that remembers it hit the limit, so the
// caller can say "too big" instead of "unexpected EOF".
type limitedReader struct {
	r        io.Reader
	n        int64
	exceeded bool
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		l.exceeded = true
		return 0, errors.New("decompressed size limit reached")
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}
