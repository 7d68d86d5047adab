package guest

import (
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// File operations. Each runs its system calls through asUser, so that as "user" the
// kernel judges every path (symlinks included) exactly as it would for uid 1000: a
// symlink out of the home leads only where that user could go anyway. As root the VM
// is the boundary and everything is allowed. Bulk bytes are streamed in copyChunk
// pieces, never buffered whole.

const copyChunk = 256 << 10

// writeTempPrefix names the temporary file an fs.write fills before renaming it into
// place; watches do not report it (the rename shows as the file's create).
const writeTempPrefix = ".vulcan-write-"

func (a *Agent) fileOp(req *protocol.Request, st net.Conn) *protocol.OpError {
	u, e := a.sessionUser(req.User)
	if e != nil {
		return e
	}
	raw := req.Path
	if raw == "" && (req.Op == protocol.OpFSList || req.Op == protocol.OpFSStat) {
		raw = "~"
	}
	p, e := resolvePath(u.home, raw)
	if e != nil {
		return e
	}
	switch req.Op {
	case protocol.OpFSRead:
		return fsRead(u, p, st)
	case protocol.OpFSWrite:
		return fsWrite(u, p, req.Mode, st)
	case protocol.OpFSList:
		return fsList(u, p, req.Depth, st)
	case protocol.OpFSStat:
		var info protocol.FileInfo
		if err := asUser(u, func() error {
			fi, err := os.Lstat(p)
			if err == nil {
				info = fileInfo(p, fi)
			}
			return err
		}); err != nil {
			return fsError(err)
		}
		return respond(st, &protocol.Response{Info: &info})
	case protocol.OpFSMkdir:
		return fsMkdir(u, p, req.Mode, st)
	case protocol.OpFSMove:
		to, e := resolvePath(u.home, req.To)
		if e != nil {
			return e
		}
		return fsMove(u, p, to, st)
	case protocol.OpFSRemove:
		if p == "/" {
			return opErr(protocol.ErrCodeInvalid, "refusing to remove /")
		}
		if err := asUser(u, func() error {
			if _, err := os.Lstat(p); err != nil {
				return err
			}
			return os.RemoveAll(p)
		}); err != nil {
			return fsError(err)
		}
		return respond(st, &protocol.Response{})
	}
	return opErr(protocol.ErrCodeUnsupported, "unknown operation %.64q", req.Op)
}

// fileInfo describes p from its (l)stat; a symlink's target is read when it is one
// (on the caller's thread, so as the caller's user).
func fileInfo(p string, fi fs.FileInfo) protocol.FileInfo {
	info := protocol.FileInfo{
		Name: filepath.Base(p), Path: p, Size: fi.Size(),
		Mode: uint32(fi.Mode().Perm()), ModTime: fi.ModTime().UnixMilli(),
	}
	switch m := fi.Mode(); {
	case m.IsRegular():
		info.Type = "file"
	case m.IsDir():
		info.Type = "dir"
	case m&fs.ModeSymlink != 0:
		info.Type = "symlink"
		info.Target, _ = os.Readlink(p)
	default:
		info.Type = "other"
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		info.Owner = ownerName(st.Uid)
	}
	return info
}

func fsRead(u sessUser, p string, st net.Conn) *protocol.OpError {
	var f *os.File
	var info protocol.FileInfo
	err := asUser(u, func() error {
		// O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
		var err error
		if f, err = os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0); err != nil {
			return err
		}
		fi, err := f.Stat()
		switch {
		case err != nil:
		case fi.IsDir():
			err = &fs.PathError{Op: "read", Path: p, Err: syscall.EISDIR}
		case !fi.Mode().IsRegular():
			err = opErr(protocol.ErrCodeInvalid, "read %s: not a regular file", p)
		default:
			info = fileInfo(p, fi)
			return nil
		}
		f.Close()
		return err
	})
	if err != nil {
		return fsError(err)
	}
	defer f.Close()
	if e := respond(st, &protocol.Response{Info: &info}); e != nil {
		return e
	}
	// Exactly the size announced: a file growing meanwhile is cut there, one shrinking
	// ends short (the host sees fewer bytes than Info.Size).
	buf := make([]byte, copyChunk)
	r := io.LimitReader(f, info.Size)
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			st.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
			if _, err := st.Write(buf[:n]); err != nil {
				return &protocol.OpError{Message: err.Error()}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			// Nothing can be said on the stream any more; closing it short is the signal.
			return &protocol.OpError{Message: rerr.Error()}
		}
	}
}

// fsWrite writes to a temporary file in the target's directory (parents created) and
// renames it over the target, so readers see the old file or the new one, never half
// of it. Writing through a symlink writes its target. With mode 0 an existing file
// keeps its mode (else 0644); as root an existing file also keeps its owner.
func fsWrite(u sessUser, p string, mode uint32, st net.Conn) *protocol.OpError {
	mode &= 0o777
	var tmp *os.File
	target := p
	uid, gid := -1, -1
	err := asUser(u, func() error {
		if t, err := filepath.EvalSymlinks(p); err == nil {
			target = t
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		fi, err := os.Stat(target)
		switch {
		case err == nil && fi.IsDir():
			return &fs.PathError{Op: "write", Path: p, Err: syscall.EISDIR}
		case err == nil:
			if mode == 0 {
				mode = uint32(fi.Mode().Perm())
			}
			if s, ok := fi.Sys().(*syscall.Stat_t); ok && !u.drop && os.Geteuid() == 0 {
				uid, gid = int(s.Uid), int(s.Gid)
			}
		case !errors.Is(err, fs.ErrNotExist):
			return err
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		tmp, err = os.CreateTemp(filepath.Dir(target), writeTempPrefix+"*")
		return err
	})
	if err != nil {
		return fsError(err)
	}
	if mode == 0 {
		mode = 0o644
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			asUser(u, func() error { return os.Remove(tmp.Name()) })
		}
	}()
	if e := respond(st, &protocol.Response{}); e != nil {
		return e
	}
	buf := make([]byte, copyChunk)
	for {
		st.SetReadDeadline(time.Now().Add(streamIdleTimeout))
		n, rerr := st.Read(buf)
		if n > 0 {
			if _, err := tmp.Write(buf[:n]); err != nil {
				return fsError(err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return &protocol.OpError{Message: "reading the file's bytes: " + rerr.Error()}
		}
	}
	// The temp file is ours (fd): fchmod/fchown need no path walk.
	if err := tmp.Chmod(os.FileMode(mode)); err != nil {
		return fsError(err)
	}
	if uid >= 0 {
		tmp.Chown(uid, gid)
	}
	if err := tmp.Close(); err != nil {
		return fsError(err)
	}
	var info protocol.FileInfo
	if err := asUser(u, func() error {
		if err := os.Rename(tmp.Name(), target); err != nil {
			return err
		}
		committed = true
		fi, err := os.Stat(p)
		if err == nil {
			info = fileInfo(p, fi)
		}
		return err
	}); err != nil {
		return fsError(err)
	}
	return respond(st, &protocol.Response{Info: &info})
}

// fsList lists a directory to depth levels (1: its own entries), sorted by path.
// Symlinks are listed, not followed; a subdirectory the user cannot read is listed
// without its entries.
func fsList(u sessUser, root string, depth int, st net.Conn) *protocol.OpError {
	if depth < 0 {
		return opErr(protocol.ErrCodeInvalid, "negative depth")
	}
	depth = min(max(depth, 1), maxListDepth)
	var entries []protocol.FileInfo
	tooMany := opErr(protocol.ErrCodeTooLarge, "more than %d entries under %s; list with a smaller depth", maxListEntries, root)
	var walk func(dir string, d int, top bool) error
	walk = func(dir string, d int, top bool) error {
		ents, err := os.ReadDir(dir)
		if err != nil {
			if top {
				return err
			}
			return nil
		}
		for _, de := range ents {
			fi, err := de.Info()
			if err != nil {
				continue // gone meanwhile
			}
			full := filepath.Join(dir, de.Name())
			entries = append(entries, fileInfo(full, fi))
			if len(entries) > maxListEntries {
				return tooMany
			}
			if de.IsDir() && d > 1 {
				if err := walk(full, d-1, false); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := asUser(u, func() error {
		fi, err := os.Stat(root)
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return &fs.PathError{Op: "list", Path: root, Err: syscall.ENOTDIR}
		}
		return walk(root, depth, true)
	}); err != nil {
		return fsError(err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Path < entries[j].Path })
	resp := &protocol.Response{Entries: entries}
	if b, err := json.Marshal(resp); err != nil || len(b) > protocol.SessionFrameSize-1024 {
		return opErr(protocol.ErrCodeTooLarge, "the listing of %s (%d entries) does not fit one response; list with a smaller depth", root, len(entries))
	}
	return respond(st, resp)
}

func fsMkdir(u sessUser, p string, mode uint32, st net.Conn) *protocol.OpError {
	mode &= 0o777
	if mode == 0 {
		mode = 0o755
	}
	var info protocol.FileInfo
	if err := asUser(u, func() error {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return &fs.PathError{Op: "mkdir", Path: p, Err: syscall.EEXIST}
		}
		if err := os.MkdirAll(p, os.FileMode(mode)); err != nil {
			return err
		}
		fi, err := os.Stat(p)
		if err == nil {
			info = fileInfo(p, fi)
		}
		return err
	}); err != nil {
		return fsError(err)
	}
	return respond(st, &protocol.Response{Info: &info})
}

// fsMove renames; across file systems (/tmp may be one of its own) a regular file is
// copied and the original removed.
func fsMove(u sessUser, from, to string, st net.Conn) *protocol.OpError {
	var info protocol.FileInfo
	if err := asUser(u, func() error {
		fi, err := os.Lstat(from)
		if err != nil {
			return err
		}
		err = os.Rename(from, to)
		if errors.Is(err, syscall.EXDEV) && fi.Mode().IsRegular() {
			err = copyAcross(from, to, fi.Mode().Perm())
		}
		if err != nil {
			return err
		}
		if fi, err = os.Lstat(to); err == nil {
			info = fileInfo(to, fi)
		}
		return err
	}); err != nil {
		return fsError(err)
	}
	return respond(st, &protocol.Response{Info: &info})
}

// copyAcross moves a regular file to another file system: copy to a temporary file
// beside to, rename it into place, remove from.
func copyAcross(from, to string, mode fs.FileMode) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	tmp, err := os.CreateTemp(filepath.Dir(to), ".vulcan-move-*")
	if err != nil {
		return err
	}
	_, err = io.CopyBuffer(tmp, src, make([]byte, copyChunk))
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), to)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Remove(from)
}
