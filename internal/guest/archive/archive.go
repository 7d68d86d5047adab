// Package archive extracts a workload's tar.gz into its work dir.
//
// The archive comes from a user and the agent may be root, so extraction is
// refused rather than repaired when an entry could reach outside the work
// dir or the archive expands past the limits. Three rules keep that easy to
// check:
//
//   - Every write goes through an os.Root opened on the work dir.
//   - An entry's path is made of real directories only: an entry under a
//     symlink is refused (tar itself never writes one). So the name of
//     everything extracted is its real place in the tree, and the tree's
//     depth is bounded by the limit on names.
//   - Symlinks are made last, once the whole archive is known, and only if
//     each one, resolved through the others as the kernel would, stays
//     inside the work dir. A link cannot be judged when it is read: a later
//     entry may change where it leads (a -> b/.. is harmless until b -> .).
//
// A hard link must name a regular file extracted before it. A hard link to a
// symlink would be a copy of that symlink in another directory, where its
// relative target means something else.
package archive

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

// ErrRefused is wrapped by every error caused by the archive's content
// (as opposed to an I/O failure of the work dir or a cancelled context).
var ErrRefused = errors.New("archive refused")

// Limits bound what one archive may expand to. A zero field takes its value
// from DefaultLimits.
type Limits struct {
	MaxFiles      int   // entries of any kind, counting directories an entry's path implies
	MaxTotalBytes int64 // sum of regular file sizes
	MaxFileBytes  int64 // one regular file
	MaxDepth      int   // components in an entry's path or a link's target
	MaxPathBytes  int   // bytes in an entry's path or a link's target
	MaxNameBytes  int   // bytes in one component
}

// DefaultLimits suit a workload in a VM with a small work dir. The path
// length is Linux's PATH_MAX less its NUL, the longest path open(2) and
// symlink(2) accept, so the workload can use every name it is given; the
// name length is NAME_MAX; no source tree nests 64 directories deep.
var DefaultLimits = Limits{
	MaxFiles:      10_000,
	MaxTotalBytes: 256 << 20,
	MaxFileBytes:  128 << 20,
	MaxDepth:      64,
	MaxPathBytes:  4095,
	MaxNameBytes:  255,
}

func (l Limits) orDefaults() Limits {
	d := DefaultLimits
	if l.MaxFiles == 0 {
		l.MaxFiles = d.MaxFiles
	}
	if l.MaxTotalBytes == 0 {
		l.MaxTotalBytes = d.MaxTotalBytes
	}
	if l.MaxFileBytes == 0 {
		l.MaxFileBytes = d.MaxFileBytes
	}
	if l.MaxDepth == 0 {
		l.MaxDepth = d.MaxDepth
	}
	if l.MaxPathBytes == 0 {
		l.MaxPathBytes = d.MaxPathBytes
	}
	if l.MaxNameBytes == 0 {
		l.MaxNameBytes = d.MaxNameBytes
	}
	return l
}

// Owner, when UID >= 0, is given to everything extracted.
type Owner struct{ UID, GID int }

// NoOwner leaves extracted files owned by the extracting process.
var NoOwner = Owner{-1, -1}

// headerSlack bounds decompressed bytes that are not file content (tar
// headers, padding, PAX records), so that a gzip stream that expands to
// endless non-file data is stopped too.
const headerSlack = 32 << 20

// Extract unpacks the tar.gz stream r into dir, which must exist and be
// empty. It stops with ctx's error when ctx is done, checking between
// entries and while it reads. On any error dir holds a partial tree (never
// an escaping symlink) that the caller should remove.
func Extract(ctx context.Context, r io.Reader, dir string, lim Limits, owner Owner) error {
	if ctx.Err() != nil {
		return stopped(ctx)
	}
	lim = lim.orDefaults()
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
	// The tree model below is exact only if it starts from nothing.
	if err := isEmpty(root); err != nil {
		return fmt.Errorf("extract into %s: %w", dir, err)
	}

	x := &extractor{ctx: ctx, root: root, lim: lim, owner: owner, tree: map[string]*node{}}
	budget := &budgetReader{ctx: ctx, r: zr, n: lim.MaxTotalBytes + headerSlack}
	err = x.entries(tar.NewReader(budget), budget)
	if err == nil {
		err = x.symlinks()
	}
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return stopped(ctx) // whatever failed, cancellation is why
	case errors.Is(err, ErrRefused):
		return err
	default:
		return fmt.Errorf("extract archive: %w", err)
	}
}

func stopped(ctx context.Context) error {
	return fmt.Errorf("archive extraction stopped: %w", ctx.Err())
}

// refuse cuts long names: the limits let an archive carry names far longer
// than anyone wants to read in an error.
func refuse(format string, args ...any) error {
	for i, a := range args {
		if s, ok := a.(string); ok && len(s) > 100 {
			args[i] = s[:100] + "..."
		}
	}
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

func isEmpty(root *os.Root) error {
	f, err := root.Open(".")
	if err != nil {
		return err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if len(names) > 0 {
		return errors.New("directory is not empty")
	}
	if err != nil && err != io.EOF {
		return err
	}
	return nil
}

type kind uint8

const (
	dirNode kind = iota + 1
	fileNode
	linkNode
)

// node is what extraction has put at one path. Symlinks exist only here
// until the whole archive has been read.
type node struct {
	kind     kind
	target   string // linkNode
	children int    // dirNode: nodes directly inside it, so a "non-empty" check sees pending links too
}

type pendingLink struct {
	name string
	n    *node // made only if the tree still holds this node at name
}

type extractor struct {
	ctx   context.Context
	root  *os.Root
	lim   Limits
	owner Owner
	tree  map[string]*node // by clean relative path; the work dir itself is not in it
	links []pendingLink
	count int
}

func (x *extractor) entries(tr *tar.Reader, budget *budgetReader) error {
	var total int64
	for {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if budget.exceeded {
				return refuse("expands to more than %d bytes", x.lim.MaxTotalBytes)
			}
			return refuse("corrupt tar: %v", err)
		}
		if err := x.add(); err != nil {
			return err
		}
		name, err := x.cleanName("entry", hdr.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue // the work dir itself
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = x.mkdir(name, hdr.Mode)
		case tar.TypeReg, tar.TypeRegA:
			if hdr.Size < 0 || hdr.Size > x.lim.MaxFileBytes {
				return refuse("entry %q is %d bytes, max %d", name, hdr.Size, x.lim.MaxFileBytes)
			}
			total += hdr.Size
			if total > x.lim.MaxTotalBytes {
				return refuse("expands to more than %d bytes", x.lim.MaxTotalBytes)
			}
			err = x.writeFile(name, hdr.Mode, tr, hdr.Size)
		case tar.TypeSymlink:
			err = x.symlink(name, hdr.Linkname)
		case tar.TypeLink:
			err = x.hardlink(name, hdr.Linkname)
		case tar.TypeChar, tar.TypeBlock:
			return refuse("entry %q is a device file", name)
		case tar.TypeFifo:
			return refuse("entry %q is a fifo", name)
		default:
			return refuse("entry %q has unsupported type %q", name, hdr.Typeflag)
		}
		if err != nil {
			if budget.exceeded {
				return refuse("expands to more than %d bytes", x.lim.MaxTotalBytes)
			}
			return err
		}
		if hdr.Typeflag != tar.TypeSymlink {
			if err := x.chown(name); err != nil {
				return err
			}
		}
	}
}

// add counts one more thing made in the work dir.
func (x *extractor) add() error {
	x.count++
	if x.count > x.lim.MaxFiles {
		return refuse("more than %d entries (counting the directories their paths imply)", x.lim.MaxFiles)
	}
	return nil
}

func (x *extractor) chown(name string) error {
	if x.owner.UID < 0 {
		return nil
	}
	if err := x.root.Lchown(name, x.owner.UID, x.owner.GID); err != nil {
		return fmt.Errorf("chown %q: %w", name, err)
	}
	return nil
}

// cleanName returns a path from the archive (what names it in errors)
// relative to the work dir, refusing absolute paths and any ".." component
// (even one that would cancel out: an archive that needs it is not one we
// want).
func (x *extractor) cleanName(what, name string) (string, error) {
	if name == "" {
		return "", refuse("%s is empty", what)
	}
	if len(name) > x.lim.MaxPathBytes {
		return "", refuse("%s %q: path is %d bytes, max %d", what, name, len(name), x.lim.MaxPathBytes)
	}
	if strings.ContainsRune(name, 0) {
		return "", refuse("%s contains NUL", what)
	}
	if strings.HasPrefix(name, "/") || strings.Contains(name, `\`) {
		return "", refuse("%s %q is an absolute path", what, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", refuse("%s %q contains '..'", what, name)
		}
	}
	name = path.Clean(name)
	if err := x.checkShape(what, name); err != nil {
		return "", err
	}
	return name, nil
}

// checkShape applies the depth and name-length limits to a path.
func (x *extractor) checkShape(what, p string) error {
	depth := 0
	for _, part := range strings.Split(p, "/") {
		if part == "" || part == "." {
			continue
		}
		if len(part) > x.lim.MaxNameBytes {
			return refuse("%s %q: a component is %d bytes, max %d", what, p, len(part), x.lim.MaxNameBytes)
		}
		depth++
	}
	if depth > x.lim.MaxDepth {
		return refuse("%s %q: %d levels deep, max %d", what, p, depth, x.lim.MaxDepth)
	}
	return nil
}

func parentOf(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[:i]
	}
	return ""
}

func (x *extractor) put(name string, n *node) {
	if x.tree[name] == nil {
		if p := x.tree[parentOf(name)]; p != nil {
			p.children++
		}
	}
	x.tree[name] = n
}

func (x *extractor) drop(name string) {
	if x.tree[name] == nil {
		return
	}
	if p := x.tree[parentOf(name)]; p != nil {
		p.children--
	}
	delete(x.tree, name)
}

// parents makes the directories name's path implies, refusing a path that
// passes through a symlink or a file.
func (x *extractor) parents(name string) error {
	for i := 0; i < len(name); i++ {
		if name[i] != '/' {
			continue
		}
		p := name[:i]
		switch n := x.tree[p]; {
		case n == nil:
			if err := x.add(); err != nil {
				return err
			}
			if err := x.root.Mkdir(p, 0o755); err != nil {
				return fmt.Errorf("mkdir %q: %w", p, err)
			}
			x.put(p, &node{kind: dirNode})
			if err := x.chown(p); err != nil {
				return err
			}
		case n.kind == linkNode:
			return refuse("entry %q is under symlink %q", name, p)
		case n.kind == fileNode:
			return refuse("entry %q is under %q, which is a file", name, p)
		}
	}
	return nil
}

// replace removes what an earlier entry put at name: the later entry wins,
// and never writes through what was there.
func (x *extractor) replace(name string) error {
	n := x.tree[name]
	switch {
	case n == nil:
		return nil
	case n.kind == dirNode && n.children > 0:
		return refuse("entry %q replaces a non-empty directory", name)
	case n.kind != linkNode: // a pending link is not on disk yet
		if err := x.root.Remove(name); err != nil {
			return fmt.Errorf("replace %q: %w", name, err)
		}
	}
	x.drop(name)
	return nil
}

func (x *extractor) mkdir(name string, mode int64) error {
	if err := x.parents(name); err != nil {
		return err
	}
	if n := x.tree[name]; n == nil || n.kind != dirNode {
		if err := x.replace(name); err != nil {
			return err
		}
		if err := x.root.Mkdir(name, 0o755); err != nil {
			return fmt.Errorf("mkdir %q: %w", name, err)
		}
		x.put(name, &node{kind: dirNode})
	}
	return x.root.Chmod(name, dirMode(mode))
}

// Modes keep the permission bits only (no setuid, setgid or sticky) and
// always let the owner, who runs the workload, read and write.
func fileMode(m int64) fs.FileMode { return fs.FileMode(m)&0o777 | 0o600 }
func dirMode(m int64) fs.FileMode  { return fs.FileMode(m)&0o777 | 0o700 }

func (x *extractor) writeFile(name string, mode int64, r io.Reader, size int64) error {
	if err := x.parents(name); err != nil {
		return err
	}
	if err := x.replace(name); err != nil {
		return err
	}
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode(mode))
	if err != nil {
		return fmt.Errorf("create %q: %w", name, err)
	}
	x.put(name, &node{kind: fileNode})
	src := &sourceReader{r: r}
	_, err = io.CopyN(f, src, size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil && src.failed {
		return refuse("entry %q is cut short: %v", name, err)
	}
	if err != nil {
		return fmt.Errorf("write %q: %w", name, err)
	}
	// Chmod after create: the umask must not decide what the user gets.
	return x.root.Chmod(name, fileMode(mode))
}

// symlink records a link; symlinks() judges and makes it.
func (x *extractor) symlink(name, target string) error {
	switch {
	case target == "":
		return refuse("symlink %q has an empty target", name)
	case path.IsAbs(target):
		return refuse("symlink %q points outside the work dir (%q)", name, target)
	case strings.ContainsRune(target, 0):
		return refuse("symlink %q: target contains NUL", name)
	case len(target) > x.lim.MaxPathBytes:
		return refuse("symlink %q: target is %d bytes, max %d", name, len(target), x.lim.MaxPathBytes)
	}
	if err := x.checkShape(fmt.Sprintf("symlink %q: target", name), target); err != nil {
		return err
	}
	if err := x.parents(name); err != nil {
		return err
	}
	if err := x.replace(name); err != nil {
		return err
	}
	n := &node{kind: linkNode, target: target}
	x.put(name, n)
	x.links = append(x.links, pendingLink{name, n})
	return nil
}

func (x *extractor) hardlink(name, linkname string) error {
	// A hard link's target is a path from the archive root, not from the
	// link's directory.
	target, err := x.cleanName(fmt.Sprintf("hard link %q: target", name), linkname)
	if err != nil {
		return err
	}
	switch n := x.tree[target]; {
	case target == name:
		return refuse("hard link %q points to itself", name)
	case n == nil:
		return refuse("hard link %q: target %q is not a file extracted before it", name, target)
	case n.kind == linkNode:
		return refuse("hard link %q: target %q is a symlink (only regular files can be hard-linked)", name, target)
	case n.kind == dirNode:
		return refuse("hard link %q: target %q is a directory (only regular files can be hard-linked)", name, target)
	}
	if err := x.parents(name); err != nil {
		return err
	}
	if err := x.replace(name); err != nil {
		return err
	}
	if err := x.root.Link(target, name); err != nil {
		return fmt.Errorf("hard link %q to %q: %w", name, target, err)
	}
	x.put(name, &node{kind: fileNode})
	return nil
}

// symlinks judges every link the archive left, against the final tree,
// and makes them only if none leads outside the work dir.
func (x *extractor) symlinks() error {
	r := resolver{tree: x.tree, done: map[string]string{}, busy: map[string]bool{}}
	for _, l := range x.links {
		if x.tree[l.name] != l.n {
			continue // replaced by a later entry
		}
		if err := x.ctx.Err(); err != nil {
			return err
		}
		if _, err := r.link(l.name); err != nil {
			return x.explain(l.name, err)
		}
	}
	for _, l := range x.links {
		if x.tree[l.name] != l.n {
			continue
		}
		if err := x.ctx.Err(); err != nil {
			return err
		}
		if err := x.root.Symlink(l.n.target, l.name); err != nil {
			return fmt.Errorf("symlink %q: %w", l.name, err)
		}
		if err := x.chown(l.name); err != nil {
			return err
		}
	}
	return nil
}

func (x *extractor) explain(name string, err error) error {
	var e *resolveError
	if !errors.As(err, &e) {
		return err
	}
	msg := "leads outside the work dir"
	if e.loop {
		msg = "is part of a symlink loop"
	}
	if e.at == name {
		return refuse("symlink %q -> %q %s", name, x.tree[name].target, msg)
	}
	return refuse("symlink %q -> %q %s, through symlink %q -> %q", name, x.tree[name].target, msg, e.at, x.tree[e.at].target)
}

// resolveError names the link whose target stepped out of the work dir,
// or the link met again while it was being resolved.
type resolveError struct {
	at   string
	loop bool
}

func (e *resolveError) Error() string {
	return "symlink " + e.at + " does not resolve inside the work dir"
}

// resolver follows links the way the kernel does: a target is read from
// the directory holding its link, and ".." leaves the real directory
// reached so far. Every name in the tree is a real path, so a link's
// destination does not depend on the path that reached it and is worked
// out once. A component that does not exist is taken as a directory that
// might be made later, so what follows it is judged lexically.
type resolver struct {
	tree map[string]*node
	done map[string]string // link -> where it leads ("" is the work dir)
	busy map[string]bool   // links being resolved, to see a loop
}

func (r *resolver) link(name string) (string, error) {
	if p, ok := r.done[name]; ok {
		return p, nil
	}
	if r.busy[name] {
		return "", &resolveError{at: name, loop: true}
	}
	r.busy[name] = true
	defer delete(r.busy, name)
	p, err := r.walk(parentOf(name), name)
	if err != nil {
		return "", err
	}
	r.done[name] = p
	return p, nil
}

func (r *resolver) walk(cur, link string) (string, error) {
	for _, c := range strings.Split(r.tree[link].target, "/") {
		switch c {
		case "", ".":
		case "..":
			if cur == "" {
				return "", &resolveError{at: link}
			}
			cur = parentOf(cur)
		default:
			next := c
			if cur != "" {
				next = cur + "/" + c
			}
			if n := r.tree[next]; n != nil && n.kind == linkNode {
				p, err := r.link(next)
				if err != nil {
					return "", err
				}
				next = p
			}
			cur = next
		}
	}
	return cur, nil
}

// sourceReader tells a copy that failed reading the archive (its fault)
// from one that failed writing the file.
type sourceReader struct {
	r      io.Reader
	failed bool
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil {
		s.failed = true
	}
	return n, err
}

// budgetReader is io.LimitedReader that remembers it hit the limit, so the
// caller can say "too big" instead of "unexpected EOF", and that stops when
// ctx is done: every byte of the archive, file or header, passes here.
type budgetReader struct {
	ctx      context.Context
	r        io.Reader
	n        int64
	exceeded bool
}

func (l *budgetReader) Read(p []byte) (int, error) {
	if err := l.ctx.Err(); err != nil {
		return 0, err
	}
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
