// Command fcsim is a test-only Firecracker simulator: it lets the Firecracker driver's
// whole path (SDK config, API calls, start, hybrid vsock, stop) run on hosts without
// KVM or a firecracker binary. It is built by the tests and never ships.
//
// Invoked as the SDK invokes firecracker (--api-sock PATH, --id ID), it serves on the
// API socket the subset of Firecracker's HTTP API the SDK calls, with the validation
// the real API applies (400 and a fault_message otherwise). On InstanceStart it runs
// the real guest agent as a host process — the "guest" — in new PID and UTS namespaces
// when root (so the guest powering off takes every process in it along, as a VM's
// would), with RLIMIT_DATA at the VM's memory size, listening on a unix socket that
// the configured vsock uds_path reaches through the hybrid-vsock CONNECT handshake.
//
// What a simulator cannot show: the guest's vCPU count and MemTotal are the host's.
//
// The agent is $VULCAN_FCSIM_AGENT, else vulcan-guest next to this binary; extra agent
// flags come from $VULCAN_FCSIM_AGENT_ARGS (space-separated).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == initArg {
		os.Exit(guestInit(os.Args[2:]))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "fcsim:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("fcsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	apiSock := fs.String("api-sock", "/run/firecracker.socket", "API socket path")
	id := fs.String("id", "anonymous-instance", "instance id")
	// Accepted for compatibility with the SDK's and jailer's command lines.
	fs.Bool("no-seccomp", false, "ignored")
	fs.String("seccomp-filter", "", "ignored")
	fs.String("start-time-us", "", "ignored")
	fs.String("start-time-cpu-us", "", "ignored")
	fs.String("parent-cpu-time-us", "", "ignored")
	fs.String("level", "", "ignored")
	showVersion := fs.Bool("version", false, "print the version")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Fprintln(os.Stdout, "Firecracker v1.0.0-fcsim")
		return nil
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("fcsim", *id)

	// Like Firecracker, refuse to start on an existing socket path.
	ln, err := net.Listen("unix", *apiSock)
	if err != nil {
		return fmt.Errorf("failed to open the API socket: %w", err)
	}
	defer os.Remove(*apiSock)

	vm := newVM(*id, filepath.Dir(*apiSock), log)
	defer vm.powerOff()
	srv := &http.Server{Handler: vm, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	select {
	case <-ctx.Done():
		log.Info("signal; shutting down")
	case <-vm.exit:
		log.Info("guest powered off", "reason", vm.exitReason())
	}
	return nil
}
