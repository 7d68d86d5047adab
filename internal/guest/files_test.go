package guest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// writeFile writes data with fs.write as "user" and returns the written file's info.
func writeFile(t *testing.T, e *sessEnv, path string, data []byte) *protocol.FileInfo {
	t.Helper()
	info, err := writeFileAs(t, e, "", path, 0, data)
	if err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return info
}

func writeFileAs(t *testing.T, e *sessEnv, user, path string, mode uint32, data []byte) (*protocol.FileInfo, error) {
	t.Helper()
	st, _, err := e.s.Open(tctx(t), &protocol.Request{Op: protocol.OpFSWrite, Path: path, User: user, Mode: mode})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(2 * time.Minute))
	for len(data) > 0 {
		n := min(len(data), 1<<20)
		if _, err := st.Write(data[:n]); err != nil {
			return nil, err
		}
		data = data[n:]
	}
	st.CloseWrite()
	resp, err := st.Response()
	if err != nil {
		return nil, err
	}
	if resp.Error != nil {
		return nil, resp.Error
	}
	return resp.Info, nil
}

// readFile reads a file with fs.read; it checks the byte count against Info.Size.
func readFileAs(t *testing.T, e *sessEnv, user, path string, w io.Writer) (*protocol.FileInfo, error) {
	t.Helper()
	st, resp, err := e.s.Open(tctx(t), &protocol.Request{Op: protocol.OpFSRead, Path: path, User: user})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(2 * time.Minute))
	n, err := io.Copy(w, st)
	if err != nil {
		return nil, err
	}
	if n != resp.Info.Size {
		t.Fatalf("read %s: %d bytes, info says %d", path, n, resp.Info.Size)
	}
	return resp.Info, nil
}

func TestSessionFileRoundTrip(t *testing.T) {
	e := newSession(t)
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	sizes := []int{0, 1, 4095, copyChunk + 1, 1<<20 + 3, r.IntN(8 << 20), 64 << 20}
	if testing.Short() {
		sizes = sizes[:5]
	}
	for _, n := range sizes {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		sum := sha256.Sum256(data)
		path := fmt.Sprintf("dir/sub/file-%d.bin", n) // parents are made
		start := time.Now()
		info := writeFile(t, e, path, data)
		wrote := time.Since(start)
		if info.Size != int64(n) || info.Type != "file" || info.Mode != 0o644 || info.Path != filepath.Join(e.home, path) {
			t.Fatalf("write info %+v", info)
		}
		h := sha256.New()
		start = time.Now()
		if _, err := readFileAs(t, e, "", path, h); err != nil {
			t.Fatal(err)
		}
		read := time.Since(start)
		if !bytes.Equal(h.Sum(nil), sum[:]) {
			t.Fatalf("%d bytes: read back differs", n)
		}
		if n >= 1<<20 {
			t.Logf("%8d bytes: write %.0f MB/s, read %.0f MB/s", n, float64(n)/wrote.Seconds()/1e6, float64(n)/read.Seconds()/1e6)
		}
	}
	// Overwrite keeps an existing mode, and no temp file is left behind.
	os.Chmod(filepath.Join(e.home, "dir/sub/file-1.bin"), 0o751)
	if info := writeFile(t, e, "dir/sub/file-1.bin", []byte("x")); info.Mode != 0o751 || info.Size != 1 {
		t.Fatalf("overwrite %+v", info)
	}
	if info, err := writeFileAs(t, e, "", "dir/mode.txt", 0o600, []byte("y")); err != nil || info.Mode != 0o600 {
		t.Fatalf("mode: %+v %v", info, err)
	}
	ents := e.do(t, &protocol.Request{Op: protocol.OpFSList, Path: "dir/sub"}).Entries
	for _, en := range ents {
		if strings.HasPrefix(en.Name, ".vulcan-") {
			t.Fatalf("temp file left: %+v", en)
		}
	}
}

func TestSessionFileOps(t *testing.T) {
	e := newSession(t)
	writeFile(t, e, "a/b/c.txt", []byte("hello"))
	writeFile(t, e, "a/z.txt", []byte("zz"))
	writeFile(t, e, "/"+filepath.Join(e.home, "top.txt"), []byte("abs")) // absolute path

	// list: depth 1 is the dir's own entries; deeper walks, sorted by path.
	names := func(ents []protocol.FileInfo) string {
		var s []string
		for _, en := range ents {
			rel, _ := filepath.Rel(e.home, en.Path)
			s = append(s, rel+":"+en.Type)
		}
		return strings.Join(s, " ")
	}
	if got := names(e.do(t, &protocol.Request{Op: protocol.OpFSList, Path: "a"}).Entries); got != "a/b:dir a/z.txt:file" {
		t.Fatalf("depth 1: %s", got)
	}
	if got := names(e.do(t, &protocol.Request{Op: protocol.OpFSList, Path: "a", Depth: 3}).Entries); got != "a/b:dir a/b/c.txt:file a/z.txt:file" {
		t.Fatalf("depth 3: %s", got)
	}
	if got := names(e.do(t, &protocol.Request{Op: protocol.OpFSList}).Entries); got != "a:dir top.txt:file" {
		t.Fatalf("home: %s", got)
	}

	st := e.do(t, &protocol.Request{Op: protocol.OpFSStat, Path: "a/b/c.txt"}).Info
	if st.Size != 5 || st.Type != "file" || st.Name != "c.txt" || st.ModTime <= 0 || st.Owner == "" {
		t.Fatalf("stat %+v", st)
	}
	if os.Geteuid() == 0 {
		if fi, _ := os.Stat(filepath.Join(e.home, "a/b/c.txt")); fi.Sys().(*syscall.Stat_t).Uid != testUID {
			t.Fatal("a file written as user is not owned by uid 1000")
		}
	}

	// mkdir makes parents; an existing dir is fine; an existing file is not.
	if info := e.do(t, &protocol.Request{Op: protocol.OpFSMkdir, Path: "m/n/o", Mode: 0o700}).Info; info.Type != "dir" || info.Mode != 0o700 {
		t.Fatalf("mkdir %+v", info)
	}
	e.do(t, &protocol.Request{Op: protocol.OpFSMkdir, Path: "m/n/o"})
	e.wantCode(t, &protocol.Request{Op: protocol.OpFSMkdir, Path: "top.txt"}, protocol.ErrCodeExists)

	// move a file and a directory.
	if info := e.do(t, &protocol.Request{Op: protocol.OpFSMove, Path: "top.txt", To: "m/top2.txt"}).Info; info.Path != filepath.Join(e.home, "m/top2.txt") || info.Size != 3 {
		t.Fatalf("move %+v", info)
	}
	e.do(t, &protocol.Request{Op: protocol.OpFSMove, Path: "a", To: "m/a"})
	var b bytes.Buffer
	if _, err := readFileAs(t, e, "", "m/a/b/c.txt", &b); err != nil || b.String() != "hello" {
		t.Fatalf("after move: %q %v", b.String(), err)
	}

	// remove is recursive; a missing path is not_found.
	e.do(t, &protocol.Request{Op: protocol.OpFSRemove, Path: "m"})
	e.wantCode(t, &protocol.Request{Op: protocol.OpFSStat, Path: "m"}, protocol.ErrCodeNotFound)
	e.wantCode(t, &protocol.Request{Op: protocol.OpFSRemove, Path: "m"}, protocol.ErrCodeNotFound)

	// Errors.
	writeFile(t, e, "f.txt", []byte("f"))
	e.do(t, &protocol.Request{Op: protocol.OpFSMkdir, Path: "d"})
	for _, c := range []struct {
		req  *protocol.Request
		code string
	}{
		{&protocol.Request{Op: protocol.OpFSRead, Path: "nope.txt"}, protocol.ErrCodeNotFound},
		{&protocol.Request{Op: protocol.OpFSRead, Path: "d"}, protocol.ErrCodeIsDir},
		{&protocol.Request{Op: protocol.OpFSRead, Path: "/dev/null"}, protocol.ErrCodeInvalid},
		{&protocol.Request{Op: protocol.OpFSList, Path: "f.txt"}, protocol.ErrCodeNotDir},
		{&protocol.Request{Op: protocol.OpFSList, Path: "nope"}, protocol.ErrCodeNotFound},
		{&protocol.Request{Op: protocol.OpFSList, Path: "d", Depth: -1}, protocol.ErrCodeInvalid},
		{&protocol.Request{Op: protocol.OpFSWrite, Path: "d"}, protocol.ErrCodeIsDir},
		{&protocol.Request{Op: protocol.OpFSWrite, Path: "f.txt/x"}, protocol.ErrCodeNotDir},
		{&protocol.Request{Op: protocol.OpFSMove, Path: "nope", To: "x"}, protocol.ErrCodeNotFound},
		{&protocol.Request{Op: protocol.OpFSMove, Path: "d", To: "d/inside"}, protocol.ErrCodeInvalid},
		{&protocol.Request{Op: protocol.OpFSMove, Path: "f.txt"}, protocol.ErrCodeInvalid},
		{&protocol.Request{Op: protocol.OpFSRead}, protocol.ErrCodeInvalid},
		{&protocol.Request{Op: protocol.OpFSStat, Path: "x", User: "nobody"}, protocol.ErrCodeInvalid},
	} {
		e.wantCode(t, c.req, c.code)
	}
}

// requireRoot skips tests of the user/root distinction when the tests cannot make it.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: as another user the agent cannot act as uid 1000 or as root")
	}
}

// TestSessionFilePermissions: as "user" a file operation gets exactly uid 1000's
// rights, although the agent is root; as "root" everything is allowed.
func TestSessionFilePermissions(t *testing.T) {
	requireRoot(t)
	e := newSession(t)
	secret := filepath.Join(e.home, "secret.txt")
	os.WriteFile(secret, []byte("root only"), 0o600) // root-owned, in the user's home
	rootDir := filepath.Join(e.home, "rootdir")
	os.Mkdir(rootDir, 0o755)
	groupFile := filepath.Join(e.home, "group0.txt") // readable by gid 0 only: no supplementary groups leak
	os.WriteFile(groupFile, []byte("g"), 0o640)

	var b bytes.Buffer
	for _, c := range []struct {
		name string
		err  func() error
	}{
		{"read 0600 root file", func() error { _, err := readFileAs(t, e, "", "secret.txt", &b); return err }},
		{"read 0640 root:root file", func() error { _, err := readFileAs(t, e, "", "group0.txt", &b); return err }},
		{"write into root dir", func() error { _, err := writeFileAs(t, e, "", "rootdir/x", 0, []byte("x")); return err }},
		{"overwrite root file", func() error { _, err := writeFileAs(t, e, "", "/etc/vulcan-test-nope", 0, []byte("x")); return err }},
		{"mkdir in root dir", func() error {
			_, err := e.s.Do(tctx(t), &protocol.Request{Op: protocol.OpFSMkdir, Path: "rootdir/sub"})
			return err
		}},
		{"remove root file from root dir", func() error {
			os.WriteFile(filepath.Join(rootDir, "keep"), nil, 0o644)
			_, err := e.s.Do(tctx(t), &protocol.Request{Op: protocol.OpFSRemove, Path: "rootdir/keep"})
			return err
		}},
		{"list /root", func() error {
			_, err := e.s.Do(tctx(t), &protocol.Request{Op: protocol.OpFSList, Path: "/root"})
			return err
		}},
		{"move root file out of root dir", func() error {
			_, err := e.s.Do(tctx(t), &protocol.Request{Op: protocol.OpFSMove, Path: "rootdir/keep", To: "stolen"})
			return err
		}},
	} {
		var oe *protocol.OpError
		if err := c.err(); !errors.As(err, &oe) || oe.Code != protocol.ErrCodePermission {
			t.Errorf("%s as user: %v, want permission", c.name, err)
		}
	}
	// The same as root works (root's relative paths are under /root).
	b.Reset()
	if _, err := readFileAs(t, e, "root", secret, &b); err != nil || b.String() != "root only" {
		t.Fatalf("root read: %q %v", b.String(), err)
	}
	if _, err := writeFileAs(t, e, "root", filepath.Join(rootDir, "x"), 0, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(rootDir, "x")); fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatal("root's file is not root's")
	}
	// root overwriting the user's file keeps its owner.
	writeFile(t, e, "mine.txt", []byte("1"))
	if _, err := writeFileAs(t, e, "root", filepath.Join(e.home, "mine.txt"), 0, []byte("2")); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(e.home, "mine.txt")); fi.Sys().(*syscall.Stat_t).Uid != testUID {
		t.Fatal("root's overwrite took the file from its owner")
	}
	// The agent's own threads keep root: a root op after many user ops still works.
	for range 20 {
		readFileAs(t, e, "", "secret.txt", io.Discard)
	}
	if _, err := readFileAs(t, e, "root", secret, io.Discard); err != nil {
		t.Fatalf("root after user ops: %v", err)
	}
}

// TestSessionSymlinks: a symlink in the home leads only where uid 1000 could go.
func TestSessionSymlinks(t *testing.T) {
	requireRoot(t)
	e := newSession(t)
	outside, _ := os.MkdirTemp(shared.base, "outside-")
	os.Chmod(outside, 0o755)
	private := filepath.Join(outside, "private")
	os.Mkdir(private, 0o700)
	os.WriteFile(filepath.Join(private, "key"), []byte("k"), 0o644)
	os.WriteFile(filepath.Join(outside, "shadow"), []byte("s"), 0o600)
	os.WriteFile(filepath.Join(outside, "public"), []byte("p"), 0o644)
	for name, target := range map[string]string{
		"to-shadow": filepath.Join(outside, "shadow"), "to-private": private,
		"to-public": filepath.Join(outside, "public"), "to-outside": outside,
	} {
		os.Symlink(target, filepath.Join(e.home, name))
		os.Lchown(filepath.Join(e.home, name), testUID, testGID)
	}
	perm := func(name string, err error) {
		t.Helper()
		var oe *protocol.OpError
		if !errors.As(err, &oe) || oe.Code != protocol.ErrCodePermission {
			t.Errorf("%s: %v, want permission", name, err)
		}
	}
	_, err := readFileAs(t, e, "", "to-shadow", io.Discard)
	perm("read through a link to a 0600 root file", err)
	_, err = readFileAs(t, e, "", "to-private/key", io.Discard)
	perm("read through a link into a 0700 root dir", err)
	_, err = e.s.Do(tctx(t), &protocol.Request{Op: protocol.OpFSList, Path: "to-private"})
	perm("list through a link to a 0700 root dir", err)
	_, err = writeFileAs(t, e, "", "to-shadow", 0, []byte("pwned"))
	perm("write through a link to a root file", err)
	_, err = writeFileAs(t, e, "", "to-outside/new", 0, []byte("x"))
	perm("write through a link into a root dir", err)
	_, err = e.s.Do(tctx(t), &protocol.Request{Op: protocol.OpFSRemove, Path: "to-outside/public"})
	perm("remove through a link in a root dir", err)
	if b, _ := os.ReadFile(filepath.Join(outside, "shadow")); string(b) != "s" {
		t.Fatal("the root file changed")
	}
	// What uid 1000 may read anyway stays readable through a link.
	var b bytes.Buffer
	if _, err := readFileAs(t, e, "", "to-public", &b); err != nil || b.String() != "p" {
		t.Fatalf("public through a link: %q %v", b.String(), err)
	}
	// stat does not follow; remove removes the link, not its target.
	if info := e.do(t, &protocol.Request{Op: protocol.OpFSStat, Path: "to-public"}).Info; info.Type != "symlink" || info.Target != filepath.Join(outside, "public") {
		t.Fatalf("stat link %+v", info)
	}
	e.do(t, &protocol.Request{Op: protocol.OpFSRemove, Path: "to-outside"})
	if _, err := os.Stat(filepath.Join(outside, "public")); err != nil {
		t.Fatal("removing a link removed its target's contents")
	}
	// Listing does not descend through links.
	os.Symlink(e.home, filepath.Join(e.home, "loop"))
	e.do(t, &protocol.Request{Op: protocol.OpFSList, Depth: 10})
	// As root the VM is the boundary: the link is followed.
	if _, err := readFileAs(t, e, "root", filepath.Join(e.home, "to-shadow"), io.Discard); err != nil {
		t.Fatalf("root through a link: %v", err)
	}
}

func FuzzResolvePath(f *testing.F) {
	for _, s := range []string{"", "a", "/a/../b", "~", "~/x", "../../etc/passwd", "a\x00b", "//x//y/", strings.Repeat("a/", 3000)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		got, e := resolvePath("/home/user", p)
		if e != nil {
			if e.Code != protocol.ErrCodeInvalid {
				t.Fatalf("%q: code %s", p, e.Code)
			}
			return
		}
		if !filepath.IsAbs(got) || filepath.Clean(got) != got || strings.IndexByte(got, 0) >= 0 {
			t.Fatalf("%q → %q", p, got)
		}
		if !strings.HasPrefix(p, "/") && !strings.HasPrefix(got, "/home") && !strings.Contains(p, "..") && got != "/" {
			t.Fatalf("relative %q left the home: %q", p, got)
		}
	})
}
