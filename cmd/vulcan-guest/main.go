// Command vulcan-guest is the agent inside every Vulcan microVM. It runs as
// PID 1 (init=/usr/local/bin/vulcan-guest), prepares the VM, tells the host
// it is ready and runs the workloads the host sends. Outside PID 1 it runs
// as an ordinary process, which is how the tests use it. See
// internal/guest for flags and kernel arguments.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/vulcanhq/vulcan/internal/guest"
	"github.com/vulcanhq/vulcan/internal/protocol"
	"github.com/vulcanhq/vulcan/internal/version"
)

func main() {
	pid1 := guest.IsInit()
	err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr, pid1)
	if pid1 {
		// PID 1 must never exit: the kernel would panic instead of letting
		// the VMM exit cleanly.
		if err != nil && !errors.Is(err, guest.ErrPowerOff) {
			fmt.Fprintln(os.Stderr, "vulcan-guest:", err)
		}
		guest.PowerOff(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	}
	if err != nil && !errors.Is(err, guest.ErrPowerOff) {
		fmt.Fprintln(os.Stderr, "vulcan-guest:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, pid1 bool) error {
	fs := flag.NewFlagSet("vulcan-guest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		listen      = fs.String("listen", "", "vsock:PORT | serial:NAME | unix:PATH (default: vulcan.listen= kernel arg, else vsock:1024 when /dev/vsock exists, else serial:vulcan.agent)")
		oneshot     = fs.Bool("oneshot", false, "power off after the first workload's exit has been sent (default true as PID 1, see vulcan.oneshot=)")
		uid         = fs.Int("uid", 1000, "uid that runs user code when the agent is root")
		gid         = fs.Int("gid", 1000, "gid that runs user code when the agent is root")
		workRoot    = fs.String("work-root", "", "directory for per-workload work dirs (default $TMPDIR or /tmp)")
		runtimes    = fs.String("runtimes-file", "/etc/vulcan/runtimes.json", "runtime versions written by the image build")
		goCache     = fs.String("gocache", "/var/cache/go-build", "GOCACHE for go workloads when writable by --uid")
		outputLimit = fs.Int64("output-limit", 1<<20, "default output cap in bytes")
		verbose     = fs.Bool("v", false, "debug logging")
		showVersion = fs.Bool("version", false, "print the version and exit")
		parked      = fs.String("parked", "", "start parked on this nonce, as an agent saved after sys.quiesce is when restored (for VMM simulators, which cannot restore a process)")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		// The image build records this line in the manifest; doctor reads the protocol from it.
		fmt.Fprintf(stdout, "vulcan-guest %s protocol %d\n", version.Version, protocol.Version)
		return nil
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	cfg := guest.Config{
		AgentVersion: version.Version,
		Oneshot:      *oneshot,
		UID:          *uid,
		GID:          *gid,
		WorkRoot:     *workRoot,
		RuntimesFile: *runtimes,
		GoCache:      *goCache,
		OutputLimit:  *outputLimit,
		Logger:       log,
		Reap:         pid1,
	}
	// The console (stderr) gets the line a host waits for before it saves a parked VM.
	cfg.Console = stderr
	cfg.ParkedNonce = *parked
	if pid1 {
		cfg.ApplyIdentity = guest.ApplyIdentity
		var k guest.KernelArgs
		var err error
		ctx, k, err = guest.Init(ctx, log)
		if err != nil {
			return fmt.Errorf("init: %w", err)
		}
		// Flags (from an init= wrapper) win over kernel arguments.
		if !set["listen"] {
			*listen = k.Listen
		}
		if !set["oneshot"] {
			cfg.Oneshot = k.Oneshot
		}
	}
	if *listen == "" {
		*listen = guest.DefaultListen()
	}
	l, err := guest.Listen(*listen)
	if err != nil {
		return err
	}
	log.Info("vulcan-guest ready", "version", version.Version, "listen", l.String(), "pid1", pid1, "oneshot", cfg.Oneshot)
	return guest.New(cfg).Serve(ctx, l)
}
