package guest

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// ErrPowerOff is returned by Serve when the VM should power off: the host
// sent shutdown, or the single workload of a oneshot agent has finished.
var ErrPowerOff = errors.New("power off requested")

// Config is the agent's configuration; zero values mean the defaults below.
type Config struct {
	AgentVersion string
	// Oneshot: power off once the first exec's exit has been sent.
	Oneshot bool
	// UID and GID run user code when the agent is root (the command sets
	// 1000:1000). Negative UID keeps root, for debugging only.
	UID, GID int
	// WorkRoot holds one fresh work dir per exec (default os.TempDir()).
	WorkRoot string
	// RuntimesFile is read for hello's runtime versions (default
	// /etc/vulcan/runtimes.json); when absent the binaries are asked.
	RuntimesFile string
	// GoCache is used as GOCACHE when writable by the user (default
	// /var/cache/go-build, prewarmed in the image).
	GoCache string
	// OutputLimit is the default for Exec.OutputLimit (1 MiB).
	OutputLimit int64
	// MaxLine is the longest output line sent as one message (64 KiB).
	MaxLine int
	// UserHome is the home of the session user "user" (default /home/user when it
	// exists, else the workload user's home from /etc/passwd, else WorkRoot).
	UserHome string
	Logger   *slog.Logger
	// Reap makes the agent reap every child, orphans included, and own
	// every wait: set it when the agent is PID 1.
	Reap bool
	// Console, when set, gets the line the host waits for before it saves a parked VM
	// (the VM's console; os.Stderr as PID 1).
	Console io.Writer
	// ParkedNonce starts the agent parked, waiting for the wake line of this nonce
	// (park.go): what a simulator starts in place of a restored agent.
	ParkedNonce string
	// ApplyIdentity applies sys.identity (ApplyIdentity when PID 1); nil: the agent
	// refuses it as unsupported (it is a host process in tests).
	ApplyIdentity func(*protocol.Identity) error
}

func (c *Config) setDefaults() {
	if c.AgentVersion == "" {
		c.AgentVersion = "dev"
	}
	if c.WorkRoot == "" {
		c.WorkRoot = os.TempDir()
	}
	if c.RuntimesFile == "" {
		c.RuntimesFile = "/etc/vulcan/runtimes.json"
	}
	if c.GoCache == "" {
		c.GoCache = "/var/cache/go-build"
	}
	if c.OutputLimit <= 0 {
		c.OutputLimit = 1 << 20
	}
	if c.MaxLine <= 0 {
		c.MaxLine = 64 << 10
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Agent serves sessions: each stream gets a hello and then runs execs.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	spawn spawner

	runtimesOnce sync.Once
	runtimes     map[string]string

	homeOnce sync.Once
	home     string

	sess *sessions // sandbox sessions' processes and state (session.go)

	parkMu        sync.Mutex
	parkNonce     string // set by sys.quiesce until the wake line comes (park.go)
	parkAnnounced bool
}

// New returns an agent. Call it once per process: as PID 1 it installs
// the SIGCHLD reaper.
func New(cfg Config) *Agent {
	cfg.setDefaults()
	a := &Agent{cfg: cfg, log: cfg.Logger, spawn: directSpawner{}, sess: newSessions()}
	if nonceRE.MatchString(cfg.ParkedNonce) {
		a.parkNonce, a.parkAnnounced = cfg.ParkedNonce, true
	}
	if cfg.Reap {
		a.spawn = startReaper()
	}
	return a
}

// Runtimes returns the runtime versions announced in hello, probing them on
// first use.
func (a *Agent) Runtimes(ctx context.Context) map[string]string {
	a.runtimesOnce.Do(func() { a.runtimes = a.loadRuntimes(ctx) })
	return a.runtimes
}

// Serve accepts sessions until ctx is done, the listener fails, or the VM
// should power off (ErrPowerOff). It closes l on return.
func (a *Agent) Serve(ctx context.Context, l Listener) error {
	a.Runtimes(ctx) // probe before the first hello, not during it
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() { <-ctx.Done(); l.Close() }()

	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		rw, err := l.Accept()
		if err != nil {
			if cause := context.Cause(ctx); cause != nil {
				if errors.Is(cause, ErrPowerOff) {
					return ErrPowerOff
				}
				return ctx.Err()
			}
			return err
		}
		wg.Go(func() {
			powerOff := a.session(ctx, rw)
			rw.Close()
			// A quiesced session is over and its stream closed (a serial port's reads
			// have returned): only now may the host save the VM.
			a.announcePark()
			if powerOff {
				cancel(ErrPowerOff)
			}
		})
	}
}

type readResult struct {
	m   *protocol.Message
	err error
}

// session serves one stream and reports whether the VM should power off.
func (a *Agent) session(ctx context.Context, rw io.ReadWriter) (powerOff bool) {
	agentCtx := ctx // processes started in a sandbox session outlive the connection
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wmu sync.Mutex
	send := func(m *protocol.Message) error {
		wmu.Lock()
		defer wmu.Unlock()
		return protocol.WriteMessage(rw, m)
	}
	if nonce := a.parked(); nonce != "" {
		if err := waitWake(ctx, rw, nonce); err != nil {
			return false // the host went away (or never came): the next stream waits again
		}
		a.unpark(nonce)
		a.log.Info("woken after a restore")
	}
	if err := send(&protocol.Message{Type: protocol.TypeHello, Hello: &protocol.Hello{
		AgentVersion:    a.cfg.AgentVersion,
		ProtocolVersion: protocol.Version,
		Runtimes:        a.Runtimes(ctx),
		UptimeSeconds:   uptime(),
		Session:         true,
	}}); err != nil {
		a.log.Warn("send hello", "err", err)
		return false
	}

	// br belongs to the reader goroutine until it has handed over a TypeSession
	// message: it reads nothing after that, so the yamux bytes that follow (some may
	// already sit in br's buffer) go to the session, which reads through br.
	br := bufio.NewReaderSize(rw, 64<<10)
	msgs := make(chan readResult)
	go func() {
		for {
			m, err := protocol.ReadMessage(br)
			select {
			case msgs <- readResult{m, err}:
			case <-ctx.Done():
				return
			}
			if err != nil || m.Type == protocol.TypeSession {
				return
			}
		}
	}()

	// One exec at a time per session; cur is nil when idle.
	type job struct {
		cancel context.CancelCauseFunc
		done   chan struct{}
	}
	var cur *job
	var finished <-chan struct{} // cur.done, nil when idle
	execReceived := false        // a oneshot VM is spent once it has taken its exec
	stop := func(cause error) {
		if cur != nil {
			cur.cancel(cause)
			<-cur.done
		}
	}
	for {
		select {
		case r := <-msgs:
			if r.err != nil {
				if !errors.Is(r.err, io.EOF) && !errors.Is(r.err, net.ErrClosed) {
					a.log.Warn("session ended", "err", r.err)
				}
				// The host is gone: nobody will read the result. A oneshot VM whose exec
				// arrived powers off however the session ended — the host may close the
				// stream the moment it has the exit, before this loop saw the job finish.
				stop(errCancelled)
				return a.cfg.Oneshot && execReceived
			}
			switch r.m.Type {
			case protocol.TypeExec:
				if cur != nil {
					a.log.Warn("exec while another is running; ignored", "id", r.m.Exec.ID)
					continue
				}
				execReceived = true
				execCtx, cancelExec := context.WithCancelCause(ctx)
				cur = &job{cancel: cancelExec, done: make(chan struct{})}
				finished = cur.done
				go func(ex *protocol.Exec, done chan struct{}) {
					defer close(done)
					exit := a.execute(execCtx, ex, send)
					if err := send(&protocol.Message{Type: protocol.TypeExit, Exit: exit}); err != nil {
						a.log.Warn("send exit", "id", ex.ID, "err", err)
					}
				}(r.m.Exec, cur.done)
			case protocol.TypeCancel:
				if cur != nil {
					cur.cancel(errCancelled)
				}
			case protocol.TypeShutdown:
				stop(errCancelled)
				return true
			case protocol.TypeSession:
				// From here on the connection carries yamux; an exec still writing
				// frames on it would corrupt the session.
				stop(errCancelled)
				a.serveSession(agentCtx, ctx, sessionConn{Reader: br, Writer: rw, rw: rw})
				return a.cfg.Oneshot && execReceived
			default:
				a.log.Warn("unexpected message from host", "type", r.m.Type)
			}
		case <-finished:
			cur.cancel(nil)
			cur, finished = nil, nil
			if a.cfg.Oneshot {
				return true
			}
		case <-ctx.Done():
			stop(errCancelled)
			return false
		}
	}
}

// uptime reads the seconds since the kernel started.
func uptime() float64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	f, _, _ := strings.Cut(string(b), " ")
	v, _ := strconv.ParseFloat(f, 64)
	return v
}
