package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// Directory watches (fs.watch): inotify through fsnotify. Watches are added as the
// requesting user (asUser), so a user sees changes only in directories it may read.
// A recursive watch adds every subdirectory, and those made later as they appear; its
// directories are capped, and passing the cap ends the watch with an error rather than
// silently missing events. What was made inside a new directory before its watch was
// added (mkdir -p a/b/c, a tar unpacking) is reported as created when the agent walks
// it, so a path may be reported created twice but is never missed.

const (
	maxWatches     = 64   // fs.watch streams at once
	maxWatchDirs   = 4096 // directories under one recursive watch
	watchEventSize = 1024 // fsnotify's buffer of events not yet taken
)

var activeWatches atomic.Int32

func (a *Agent) fsWatch(ctx context.Context, req *protocol.Request, st net.Conn) *protocol.OpError {
	u, e := a.sessionUser(req.User)
	if e != nil {
		return e
	}
	root, e := resolvePath(u.home, req.Path)
	if e != nil {
		return e
	}
	if activeWatches.Add(1) > maxWatches {
		activeWatches.Add(-1)
		return opErr(protocol.ErrCodeTooLarge, "at most %d watches at once", maxWatches)
	}
	defer activeWatches.Add(-1)

	var info protocol.FileInfo
	if err := asUser(u, func() error {
		fi, err := os.Stat(root)
		if err == nil {
			info = fileInfo(root, fi)
			if !fi.IsDir() {
				return &protocol.OpError{Code: protocol.ErrCodeNotDir, Message: "watch " + root + ": not a directory"}
			}
		}
		return err
	}); err != nil {
		return fsError(err)
	}
	w, err := fsnotify.NewBufferedWatcher(watchEventSize)
	if err != nil {
		return opErr(protocol.ErrCodeInternal, "watch %s: %v", root, err)
	}
	defer w.Close()
	ws := &watchSet{u: u, w: w, recursive: req.Recursive, dirs: map[string]bool{}}
	if err := ws.add(root); err != nil {
		return fsError(err)
	}
	if e := respond(st, &protocol.Response{Info: &info}); e != nil {
		return e
	}

	// The host ends the watch by closing its side; the session ending ends it too.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		io.Copy(io.Discard, st)
		cancel()
	}()
	send := func(ev *protocol.FSEvent) bool {
		st.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		return protocol.SendEvent(st, &protocol.Event{FS: ev}) == nil
	}
	fail := func(format string, args ...any) *protocol.OpError {
		send(&protocol.FSEvent{Op: protocol.FSError, Error: fmt.Sprintf(format, args...)})
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				return fail("watch %s: the kernel's event queue overflowed; events were lost, watch again", root)
			}
			return fail("watch %s: %v", root, err)
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			op := fsOp(ev.Op)
			if op == "" || strings.HasPrefix(filepath.Base(ev.Name), writeTempPrefix) {
				continue
			}
			if op == protocol.FSCreate && ws.recursive {
				found, err := ws.addTree(ev.Name)
				if !send(&protocol.FSEvent{Op: op, Path: ev.Name}) {
					return nil
				}
				for _, p := range found {
					if !send(&protocol.FSEvent{Op: protocol.FSCreate, Path: p}) {
						return nil
					}
				}
				if err != nil {
					return fail("watch %s: %v", root, err)
				}
				continue
			}
			if (op == protocol.FSRemove || op == protocol.FSRename) && ws.dirs[ev.Name] {
				delete(ws.dirs, ev.Name) // inotify dropped it; a moved dir is re-added if it lands inside
			}
			if !send(&protocol.FSEvent{Op: op, Path: ev.Name}) {
				return nil
			}
			if (op == protocol.FSRemove || op == protocol.FSRename) && ev.Name == root {
				return fail("watch %s: the directory was removed or moved", root)
			}
		}
	}
}

// fsOp names an fsnotify op; "" for ops not reported.
func fsOp(op fsnotify.Op) string {
	switch {
	case op.Has(fsnotify.Create):
		return protocol.FSCreate
	case op.Has(fsnotify.Write):
		return protocol.FSWrite
	case op.Has(fsnotify.Remove):
		return protocol.FSRemove
	case op.Has(fsnotify.Rename):
		return protocol.FSRename
	case op.Has(fsnotify.Chmod):
		return protocol.FSChmod
	}
	return ""
}

// watchSet is the directories one watch has added.
type watchSet struct {
	u         sessUser
	w         *fsnotify.Watcher
	recursive bool
	dirs      map[string]bool
}

var errTooManyDirs = &protocol.OpError{Code: protocol.ErrCodeTooLarge,
	Message: fmt.Sprintf("a recursive watch covers at most %d directories", maxWatchDirs)}

// add watches root, and with recursive every directory under it.
func (ws *watchSet) add(root string) error {
	if !ws.recursive {
		ws.dirs[root] = true
		return asUser(ws.u, func() error { return ws.w.Add(root) })
	}
	_, err := ws.addTree(root)
	return err
}

// addTree watches dir and the directories under it (not following symlinks), and
// returns the paths it found under dir. A path that is no longer there, or not a
// directory, is fine: it went away before we looked.
func (ws *watchSet) addTree(dir string) ([]string, error) {
	var found []string
	err := asUser(ws.u, func() error {
		return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if p == dir || errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return nil // unreadable subtrees are the user's to see or not
			}
			if p != dir && len(found) < maxWatchDirs && !strings.HasPrefix(d.Name(), writeTempPrefix) {
				found = append(found, p)
			}
			if !d.IsDir() || ws.dirs[p] {
				return nil
			}
			if len(ws.dirs) >= maxWatchDirs {
				return errTooManyDirs
			}
			if err := ws.w.Add(p); err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				if p == dir && len(ws.dirs) == 0 {
					return err
				}
				return filepath.SkipDir
			}
			ws.dirs[p] = true
			return nil
		})
	})
	return found, err
}
