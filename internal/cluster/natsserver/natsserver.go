// Package natsserver runs a nats-server with JetStream on loopback as a child process,
// for the cluster's tests (clustertest) and benchmarks (K1, K2): the binary from
// VULCAN_NATS_SERVER or PATH (scripts/install-deps.sh --test installs it).
package natsserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
)

// ErrNotFound says there is no nats-server binary, and how to get one.
var ErrNotFound = errors.New("nats-server not found (set VULCAN_NATS_SERVER, or run scripts/install-deps.sh --test)")

// Find returns the nats-server binary.
func Find() (string, error) {
	if bin := os.Getenv("VULCAN_NATS_SERVER"); bin != "" {
		return bin, nil
	}
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p, nil
	}
	return "", ErrNotFound
}

// FreePort is a loopback TCP port free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Server is a running nats-server.
type Server struct {
	URL string
	cmd *exec.Cmd
}

// Options are Start's optional settings.
type Options struct {
	Log string // the log file (default: none)
	// NetNS, when set, runs the server inside that network namespace (nsenter), where
	// Dial must reach it.
	NetNS string
	Dial  func(ctx context.Context, network, addr string) (net.Conn, error)
	// Config, when set, is a server configuration file (-c: TLS, accounts) and Client
	// the options a client needs to reach that server (credentials, TLS).
	Config string
	Client []nats.Option
}

// dialer adapts a dial function to the NATS client's.
type dialer func(ctx context.Context, network, addr string) (net.Conn, error)

func (d dialer) Dial(network, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return d(ctx, network, addr)
}

// Start runs bin on 127.0.0.1:port with JetStream storing in dir and waits until it
// answers JetStream requests.
func Start(ctx context.Context, bin, dir string, port int, o Options) (*Server, error) {
	args := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", dir}
	if o.Log != "" {
		args = append(args, "-l", o.Log)
	}
	if o.Config != "" {
		args = append(args, "-c", o.Config)
	}
	s := &Server{URL: fmt.Sprintf("nats://127.0.0.1:%d", port), cmd: exec.Command(bin, args...)}
	if o.NetNS != "" {
		s.cmd = exec.Command("nsenter", append([]string{"--net=" + o.NetNS, "--", bin}, args...)...)
	}
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	opts := append([]nats.Option{nats.Timeout(time.Second)}, o.Client...)
	if o.Dial != nil {
		opts = append(opts, nats.SetCustomDialer(dialer(o.Dial)))
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		nc, err := nats.Connect(s.URL, opts...)
		if err == nil {
			_, err = nc.JetStream()
			nc.Close()
			if err == nil {
				return s, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.Stop()
			return nil, fmt.Errorf("nats-server did not come up at %s: %w", s.URL, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the server: SIGINT, then SIGKILL after 10 s. Its data stays in its dir.
// Idempotent.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}
