package guest

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/vsock"
)

// Listener yields one stream per session.
type Listener interface {
	Accept() (io.ReadWriteCloser, error)
	Close() error
	String() string
}

// DefaultVsockPort is the AF_VSOCK port the agent listens on.
const DefaultVsockPort = 1024

// DefaultSerialName is the virtio-serial port name the host creates
// (QEMU: -device virtserialport,name=vulcan.agent).
const DefaultSerialName = "vulcan.agent"

// Listen opens a listener from a spec: "vsock:PORT", "serial:NAME" (or
// "serial:/dev/PATH") or "unix:PATH".
func Listen(spec string) (Listener, error) {
	kind, arg, ok := strings.Cut(spec, ":")
	if !ok || arg == "" {
		return nil, fmt.Errorf("listen %q: want vsock:PORT, serial:NAME or unix:PATH", spec)
	}
	switch kind {
	case "vsock":
		port, err := strconv.ParseUint(arg, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("listen %q: bad port: %w", spec, err)
		}
		l, err := vsock.Listen(uint32(port), nil)
		if err != nil {
			return nil, fmt.Errorf("listen %q: %w", spec, err)
		}
		return netListener{l, spec}, nil
	case "unix":
		// A socket file left by a previous run would make bind fail.
		if fi, err := os.Lstat(arg); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(arg)
		}
		l, err := net.Listen("unix", arg)
		if err != nil {
			return nil, fmt.Errorf("listen %q: %w", spec, err)
		}
		return netListener{l, spec}, nil
	case "serial":
		path, err := findSerialPort(arg, "/dev", "/sys/class/virtio-ports")
		if err != nil {
			return nil, fmt.Errorf("listen %q: %w", spec, err)
		}
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("listen %q: %w", spec, err)
		}
		return newSerialListener(f, spec), nil
	}
	return nil, fmt.Errorf("listen %q: unknown kind %q", spec, kind)
}

type netListener struct {
	l    net.Listener
	spec string
}

func (n netListener) Accept() (io.ReadWriteCloser, error) { return n.l.Accept() }
func (n netListener) Close() error                        { return n.l.Close() }
func (n netListener) String() string                      { return n.spec }

// findSerialPort resolves a virtio-serial port name to its device. udev
// would create /dev/virtio-ports/NAME, but there is no udev in the VM, so
// fall back to the name the kernel publishes in sysfs.
func findSerialPort(name, devDir, sysDir string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return name, nil
	}
	byName := filepath.Join(devDir, "virtio-ports", name)
	if _, err := os.Stat(byName); err == nil {
		return byName, nil
	}
	names, _ := filepath.Glob(filepath.Join(sysDir, "*", "name"))
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err == nil && strings.TrimSpace(string(b)) == name {
			return filepath.Join(devDir, filepath.Base(filepath.Dir(n))), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port named %q", name)
}

// serialListener turns a virtio-serial port into sessions. The port is not
// connection-oriented: it stays open for the agent's life, and a session
// ends when the host side disconnects (reads return EOF). Writing the next
// hello then blocks in the kernel until the host reconnects. There is one
// stream, so there is at most one session: Accept waits until the previous
// session is closed before handing out the next.
type serialListener struct {
	f    *os.File
	spec string
	free chan struct{} // holds a token while no session is open

	mu       sync.Mutex
	sessions int
	closed   bool
	done     chan struct{}
}

func newSerialListener(f *os.File, spec string) *serialListener {
	s := &serialListener{f: f, spec: spec, free: make(chan struct{}, 1), done: make(chan struct{})}
	s.free <- struct{}{}
	return s
}

func (s *serialListener) Accept() (io.ReadWriteCloser, error) {
	select {
	case <-s.free:
	case <-s.done:
		return nil, net.ErrClosed
	}
	s.mu.Lock()
	closed, n := s.closed, s.sessions
	s.sessions++
	s.mu.Unlock()
	if closed {
		return nil, net.ErrClosed
	}
	if n > 0 {
		// A host that disconnects immediately must not make us spin.
		time.Sleep(50 * time.Millisecond)
	}
	return &serialSession{f: s.f, free: s.free}, nil
}

func (s *serialListener) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
	s.mu.Unlock()
	return s.f.Close()
}

func (s *serialListener) String() string { return s.spec }

// serialSession keeps the port open when the session ends and lets the
// listener hand out the next one — but only once no read of this session is
// pending: a reader left blocked on the port would take the next session's
// bytes (a restored VM's wake line, for one).
type serialSession struct {
	f    *os.File
	free chan struct{}
	once sync.Once

	mu     sync.Mutex
	closed bool
	active sync.WaitGroup // reads and writes in flight
}

func (s *serialSession) begin() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.active.Add(1)
	return true
}

func (s *serialSession) Read(p []byte) (int, error) {
	if !s.begin() {
		return 0, net.ErrClosed
	}
	defer s.active.Done()
	return s.f.Read(p)
}

func (s *serialSession) Write(p []byte) (int, error) {
	if !s.begin() {
		return 0, net.ErrClosed
	}
	defer s.active.Done()
	return s.f.Write(p)
}

// Close interrupts what is in flight (the port is pollable, so deadlines work),
// waits for it, and frees the port for the next session.
func (s *serialSession) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		// A port that is not pollable takes no deadline: nothing can interrupt its
		// reads, and waiting for them would hang.
		if s.f.SetDeadline(time.Now()) == nil {
			s.active.Wait()
			_ = s.f.SetDeadline(time.Time{})
		}
		s.free <- struct{}{}
	})
	return nil
}

// DefaultListen picks the channel the VMM offers: vsock when the guest has
// it (Firecracker), else the virtio-serial port (QEMU without vhost-vsock).
func DefaultListen() string {
	if _, err := os.Stat("/dev/vsock"); err == nil {
		return "vsock:" + strconv.Itoa(DefaultVsockPort)
	}
	return "serial:" + DefaultSerialName
}
