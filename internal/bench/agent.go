package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vulcanhq/vulcan/internal/guest"
	"github.com/vulcanhq/vulcan/internal/protocol"
)

var rowP2 = Row{"P2", "agent overhead", "`python3 -c pass` through the guest agent over a unix socket (new connection, hello, exec, exit) vs run directly, medians"}

// AgentMaxRatio is P2's target.
const AgentMaxRatio = 1.05

// agentPATH is the fixed PATH the agent runs workloads with (internal/guest), so the
// direct run finds the same python3 the agent does.
const agentPATH = "/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// agentUID and agentGID are who the agent runs user code as when it is root (the
// command sets 1000:1000); the direct run switches to them too.
const agentUID, agentGID = 1000, 1000

// AgentOverhead is P2: the agent runs in this process, listening on a unix socket, and
// each sample pairs a direct run with one through the agent.
func AgentOverhead(ctx context.Context, o Options) (_ Result, err error) {
	python := findIn("python3", agentPATH)
	if python == "" {
		return rowP2.Skipped("python3 is not on the agent's PATH " + agentPATH), nil
	}
	dir, err := os.MkdirTemp(o.tempDir(), "vulcan-bench-p2-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(dir)
	// The work dirs are made by root and used by uid 1000: the path must be traversable.
	work := filepath.Join(dir, "work")
	if err := errors.Join(os.Chmod(dir, 0o755), os.Mkdir(work, 0o755)); err != nil {
		return Result{}, err
	}
	sock := filepath.Join(dir, "agent.sock")
	l, err := guest.Listen("unix:" + sock)
	if err != nil {
		return Result{}, err
	}
	agent := guest.New(guest.Config{
		WorkRoot: work, UID: agentUID, GID: agentGID,
		RuntimesFile: filepath.Join(dir, "none.json"), // ask the binaries, as without an image
		Logger:       slog.New(slog.DiscardHandler),
	})
	serveCtx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- agent.Serve(serveCtx, l) }()
	defer func() {
		stop()
		<-served
	}()

	direct := func() error {
		cmd := exec.CommandContext(ctx, python, "-c", "pass")
		cmd.Env = []string{"PATH=" + agentPATH, "LANG=C.UTF-8", "HOME=" + os.TempDir()}
		if os.Geteuid() == 0 { // as the agent would run it
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true,
				Credential: &syscall.Credential{Uid: agentUID, Gid: agentGID, Groups: []uint32{}}}
		}
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("direct python3: %w", err)
		}
		return nil
	}
	viaAgent := func() error {
		nc, err := net.Dial("unix", sock)
		if err != nil {
			return err
		}
		c := protocol.NewConn(nc)
		defer c.Close()
		if _, err := c.ReadHello(ctx); err != nil {
			return fmt.Errorf("agent hello: %w", err)
		}
		exit, err := c.Run(ctx, &protocol.Exec{Runtime: "python", Code: "pass"}, nil)
		if err != nil {
			return fmt.Errorf("agent exec: %w", err)
		}
		if exit.Code != 0 || exit.Error != "" {
			return fmt.Errorf("agent exec: exit %d %s", exit.Code, exit.Error)
		}
		return nil
	}
	// Warm both (page cache, the agent's runtime lookup) before timing.
	if err := errors.Join(direct(), viaAgent()); err != nil {
		return Result{}, err
	}
	n := o.n(40, 10)
	d, a := make([]time.Duration, n), make([]time.Duration, n)
	for i := range n {
		t0 := time.Now()
		if err := direct(); err != nil {
			return Result{}, err
		}
		t1 := time.Now()
		if err := viaAgent(); err != nil {
			return Result{}, err
		}
		d[i], a[i] = t1.Sub(t0), time.Since(t1)
	}
	return rowP2.Compare(Ratio, NewSample("direct", d), NewSample("via agent", a), AtMost(AgentMaxRatio)), nil
}

// findIn looks name up in a PATH-style list, "" when it is not there.
func findIn(name, pathList string) string {
	for _, dir := range filepath.SplitList(pathList) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}
