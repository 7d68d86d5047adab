// Package sandboxtest runs sandboxes without VMs for tests: each "VM" is the real guest
// agent (internal/guest) serving a session on a unix socket in this process, with this
// machine's programs. Only tests import it.
package sandboxtest

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/guest"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
	"github.com/vulcanhq/vulcan/internal/sandbox"
)

// AgentLauncher launches in-process agents. As root, processes run as uid/gid 1000 (as in
// a VM) with Home as the user's home; otherwise as the test's own user.
type AgentLauncher struct {
	T    testing.TB
	Base string // a 0755 dir the agents' work dirs and homes live in

	// BeforeResume, when set, runs at the start of each Resume.
	BeforeResume func(ctx context.Context, id string) error

	mu       sync.Mutex
	Launched []*Agent
}

// NewAgentLauncher makes a launcher with its own base dir.
func NewAgentLauncher(t testing.TB) *AgentLauncher {
	base, err := os.MkdirTemp("", "vulcan-sbx-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(base, 0o755)
	t.Cleanup(func() { os.RemoveAll(base) })
	return &AgentLauncher{T: t, Base: base}
}

// Agent is one launched agent: a sandbox.Machine.
type Agent struct {
	Home   string
	sess   *protocol.Session
	cancel context.CancelFunc
	served chan error
	once   sync.Once
	done   chan struct{}
}

var (
	_ sandbox.Machine  = (*Agent)(nil)
	_ sandbox.Pauser   = (*Agent)(nil)
	_ sandbox.Resumer  = (*AgentLauncher)(nil)
	_ sandbox.Launcher = (*AgentLauncher)(nil)
)

// Launch implements sandbox.Launcher.
func (l *AgentLauncher) Launch(ctx context.Context, id string, spec model.SandboxSpec) (sandbox.Machine, error) {
	return l.launch("")
}

// Resume implements sandbox.Resumer: a fresh agent whose home holds what the paused
// one's had (a "saved VM" here is its home's files; processes do not come back).
// BeforeResume, when set, runs first and can hold or refuse the resume.
func (l *AgentLauncher) Resume(ctx context.Context, id string, spec model.SandboxSpec, dir string) (sandbox.Machine, error) {
	if l.BeforeResume != nil {
		if err := l.BeforeResume(ctx, id); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "paused.json")); err != nil {
		return nil, fmt.Errorf("no saved sandbox in %s: %w", dir, err)
	}
	return l.launch(filepath.Join(dir, "state"))
}

// launch starts an agent; saved, when set, is a tar of the home to start with.
func (l *AgentLauncher) launch(saved string) (sandbox.Machine, error) {
	dir, err := os.MkdirTemp(l.Base, "vm-")
	if err != nil {
		return nil, err
	}
	os.Chmod(dir, 0o755)
	home := filepath.Join(dir, "home")
	work := filepath.Join(dir, "work")
	for _, d := range []string{home, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
		if os.Geteuid() == 0 {
			os.Chown(d, 1000, 1000)
		}
	}
	if saved != "" {
		if err := untarHome(saved, home); err != nil {
			return nil, fmt.Errorf("restore the saved home: %w", err)
		}
	}
	sock := filepath.Join(dir, "agent.sock")
	ln, err := guest.Listen("unix:" + sock)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithCancel(context.Background())
	a := &Agent{Home: home, cancel: cancel, served: make(chan error, 1), done: make(chan struct{})}
	ag := guest.New(guest.Config{WorkRoot: work, UID: 1000, GID: 1000, UserHome: home,
		RuntimesFile: filepath.Join(dir, "no-runtimes.json")})
	go func() { a.served <- ag.Serve(actx, ln) }()
	var conn net.Conn
	for deadline := time.Now().Add(5 * time.Second); ; {
		if conn, err = net.Dial("unix", sock); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		cancel()
		return nil, err
	}
	m, err := protocol.ReadMessage(conn)
	if err != nil || m.Type != protocol.TypeHello {
		cancel()
		conn.Close()
		return nil, fmt.Errorf("agent hello: %v", err)
	}
	if a.sess, err = protocol.StartSession(conn, m.Hello); err != nil {
		cancel()
		return nil, err
	}
	go func() {
		<-a.sess.Done()
		a.once.Do(func() { close(a.done) })
	}()
	l.mu.Lock()
	l.Launched = append(l.Launched, a)
	l.mu.Unlock()
	return a, nil
}

// Session implements sandbox.Machine.
func (a *Agent) Session() *protocol.Session { return a.sess }

// Metadata implements sandbox.Machine.
func (a *Agent) Metadata() map[string]string {
	return map[string]string{"vm_id": "in-process", "vmm": "none"}
}

// Done implements sandbox.Machine.
func (a *Agent) Done() <-chan struct{} { return a.done }

// Stop implements sandbox.Machine: the agent stops and its processes are killed.
func (a *Agent) Stop(ctx context.Context) error {
	a.sess.Close()
	a.cancel()
	select {
	case <-a.served:
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(10 * time.Second):
		return fmt.Errorf("agent did not stop")
	}
	return nil
}

// Pause implements sandbox.Pauser: the home's files go to dir as a tar ("state") with a
// manifest ("paused.json"), the names a microVM's saved VM has, and the agent stops.
func (a *Agent) Pause(ctx context.Context, dir string) error {
	if err := tarHome(a.Home, filepath.Join(dir, "state")); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "paused.json"), []byte(`{"saved":"home"}`), 0o600); err != nil {
		return err
	}
	return a.Stop(ctx)
}

func tarHome(home, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(home, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == home {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if !info.Mode().IsRegular() && !info.IsDir() {
			return nil // only files and dirs are kept
		}
		rel, _ := filepath.Rel(home, p)
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.IsDir() {
			return nil
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

func untarHome(path, home string) error {
	root, err := os.OpenRoot(home)
	if err != nil {
		return err
	}
	defer root.Close()
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		mode := os.FileMode(hdr.Mode).Perm()
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = root.Mkdir(hdr.Name, mode)
		case tar.TypeReg:
			var w *os.File
			if w, err = root.OpenFile(hdr.Name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode); err == nil {
				_, err = io.Copy(w, tr)
				w.Close()
			}
		default:
			continue
		}
		if err != nil {
			return err
		}
		if os.Geteuid() == 0 {
			_ = root.Lchown(hdr.Name, 1000, 1000)
		}
	}
}
