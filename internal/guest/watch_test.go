package guest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

func (e *sessEnv) watch(t *testing.T, path string, recursive bool) *protocol.Stream {
	t.Helper()
	st, resp, err := e.s.Open(tctx(t), &protocol.Request{Op: protocol.OpFSWatch, Path: path, Recursive: recursive})
	if err != nil {
		t.Fatalf("watch %s: %v", path, err)
	}
	if resp.Info == nil || resp.Info.Type != "dir" {
		t.Fatalf("watch %s: info %+v", path, resp.Info)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// events reads FS events until want(ev) has been true for every path in paths, or
// the deadline; it returns every event read.
func readFS(t *testing.T, st *protocol.Stream, until func([]protocol.FSEvent) bool) []protocol.FSEvent {
	t.Helper()
	st.SetReadDeadline(time.Now().Add(20 * time.Second))
	defer st.SetReadDeadline(time.Time{})
	var got []protocol.FSEvent
	for !until(got) {
		ev, err := st.Event()
		if err != nil {
			t.Fatalf("watch: %v after %d events (%+v)", err, len(got), got)
		}
		if ev.FS == nil {
			t.Fatalf("watch: a non-FS event %+v", ev)
		}
		got = append(got, *ev.FS)
	}
	return got
}

func seen(evs []protocol.FSEvent, op, path string) bool {
	for _, ev := range evs {
		if ev.Op == op && ev.Path == path {
			return true
		}
	}
	return false
}

// TestSessionWatchRecursiveProperty makes random trees under a recursive watch —
// directories nested several deep made after the watch began, files written in them,
// some renamed and removed — and checks that every change the test made was reported
// with its absolute path, in directories that did not exist when the watch started.
func TestSessionWatchRecursiveProperty(t *testing.T) {
	e := newSession(t)
	for round := range 3 {
		rng := rand.New(rand.NewPCG(uint64(round), 7))
		root := filepath.Join(e.home, fmt.Sprintf("w%d", round))
		e.do(t, &protocol.Request{Op: protocol.OpFSMkdir, Path: root})
		st := e.watch(t, root, true)

		type change struct{ op, path string }
		var want []change
		var all []protocol.FSEvent // every event read so far
		wait := func(cs []change) {
			more := readFS(t, st, func(evs []protocol.FSEvent) bool {
				for _, c := range cs {
					if !seen(all, c.op, c.path) && !seen(evs, c.op, c.path) {
						return false
					}
				}
				return true
			})
			all = append(all, more...)
		}
		dirs := []string{root}
		for i := range 20 + rng.IntN(30) {
			parent := dirs[rng.IntN(len(dirs))]
			switch rng.IntN(4) {
			case 0: // a new directory; later changes may land in it
				d := filepath.Join(parent, fmt.Sprintf("d%d", i))
				e.do(t, &protocol.Request{Op: protocol.OpFSMkdir, Path: d})
				want = append(want, change{protocol.FSCreate, d})
				dirs = append(dirs, d)
				// The agent adds the new directory when it sees its create event; a file
				// made in it before that is not seen by inotify. Wait for the event, as a
				// client watching a tree it is building would.
				wait([]change{{protocol.FSCreate, d}})
			case 1, 2:
				f := filepath.Join(parent, fmt.Sprintf("f%d.txt", i))
				writeFile(t, e, f, make([]byte, rng.IntN(5000)))
				want = append(want, change{protocol.FSCreate, f}) // fs.write renames a temp file in: a create
			case 3:
				f := filepath.Join(parent, fmt.Sprintf("g%d", i))
				writeFile(t, e, f, []byte("x"))
				to := f + ".moved"
				e.do(t, &protocol.Request{Op: protocol.OpFSMove, Path: f, To: to})
				e.do(t, &protocol.Request{Op: protocol.OpFSRemove, Path: to})
				want = append(want, change{protocol.FSRename, f}, change{protocol.FSCreate, to}, change{protocol.FSRemove, to})
			}
		}
		wait(want)
		for _, ev := range all {
			if ev.Op == protocol.FSError || !filepath.IsAbs(ev.Path) {
				t.Fatalf("round %d: unexpected event %+v", round, ev)
			}
		}
		st.Close()
	}
}

func TestSessionWatchEdges(t *testing.T) {
	e := newSession(t)
	dir := filepath.Join(e.home, "edges")
	e.do(t, &protocol.Request{Op: protocol.OpFSMkdir, Path: dir + "/sub"})
	writeFile(t, e, dir+"/file", []byte("x"))

	// Not a directory, missing: clean errors before any event.
	e.wantCode(t, &protocol.Request{Op: protocol.OpFSWatch, Path: dir + "/file"}, protocol.ErrCodeNotDir)
	e.wantCode(t, &protocol.Request{Op: protocol.OpFSWatch, Path: dir + "/nope"}, protocol.ErrCodeNotFound)

	// A flat watch sees its own entries, not its subdirectories'.
	st := e.watch(t, "edges", false)
	writeFile(t, e, dir+"/sub/deep", []byte("x"))
	writeFile(t, e, dir+"/top", []byte("x"))
	got := readFS(t, st, func(evs []protocol.FSEvent) bool { return seen(evs, protocol.FSCreate, dir+"/top") })
	if seen(got, protocol.FSCreate, dir+"/sub/deep") {
		t.Fatalf("a flat watch reported a subdirectory's change: %+v", got)
	}

	// Removing the watched directory reports it and ends the watch with an error.
	e.do(t, &protocol.Request{Op: protocol.OpFSRemove, Path: dir})
	got = readFS(t, st, func(evs []protocol.FSEvent) bool {
		return len(evs) > 0 && evs[len(evs)-1].Op == protocol.FSError
	})
	if last := got[len(got)-1]; last.Error == "" {
		t.Fatalf("the ending event gives no reason: %+v", last)
	}

	// Closing the host's side releases the watch: the agent's count returns to zero.
	st2 := e.watch(t, "~", false)
	st2.Close()
	deadline := time.Now().Add(10 * time.Second)
	for activeWatches.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d watches still held after their streams closed", activeWatches.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSessionWatchAsUser(t *testing.T) {
	requireRoot(t)
	e := newSession(t)
	private := filepath.Join(shared.base, "private-watch")
	if err := os.MkdirAll(private, 0o700); err != nil {
		t.Fatal(err)
	}
	_, _, err := e.s.Open(tctx(t), &protocol.Request{Op: protocol.OpFSWatch, Path: private})
	var oe *protocol.OpError
	if !errors.As(err, &oe) || oe.Code != protocol.ErrCodePermission {
		t.Fatalf("user watching a root-only directory: %v, want permission", err)
	}
	// Root may.
	st, _, err := e.s.Open(tctx(t), &protocol.Request{Op: protocol.OpFSWatch, Path: private, User: "root"})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
}
