package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vulcanhq/vulcan/internal/bench"
	"github.com/vulcanhq/vulcan/internal/config"
	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/microvm"
	"github.com/vulcanhq/vulcan/internal/microvm/qemu"
	"github.com/vulcanhq/vulcan/internal/version"
)

func benchCommand() *cobra.Command {
	var (
		only, jsonFile string
		quick          bool
		iterations     int
		sandboxes      int
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure P1–P5, S1–S3, E1, F1–F5, C1–C2 and K1–K2 against their baselines and targets, print a table and optionally JSON",
		Long: "Runs, one after another, each comparison side by side and interleaved:\n" +
			"  P1 control-plane overhead (no-op workload via the API vs a direct backend call) and rate\n" +
			"  P2 agent overhead (python3 -c pass through the agent vs directly; needs python3)\n" +
			"  P3 rootfs provisioning vs a copy of a 1 GiB image (64 MiB with --quick)\n" +
			"  P4 cold boot to agent hello vs a bare QEMU boot (needs qemu and `make images`)\n" +
			"  P5 log streaming latency and throughput, backend sink to SSE client\n" +
			"  S1 exec overhead in a running sandbox (`true` via the API vs the agent's spawn-to-exit)\n" +
			"  S2 sandbox file round trip, 1 MiB and 64 MiB (PUT+GET via the API vs dd in the guest)\n" +
			"  S3 sandbox density: idle python sandboxes up to --sandboxes (default 32, 8 with --quick),\n" +
			"     host RSS per sandbox and exec p99 across them (target N ≥ 100 at p99 ≤ 100 ms)\n" +
			"  E1 E2B SDK create → first command vs the native API (needs node and `make e2b-sdk`)\n" +
			"  F1 warm-pool acquire → first exec vs a cold boot (target p50 ≤ 20 ms)\n" +
			"  F2 snapshot restore → agent hello vs cold boot → hello (target ratio ≤ 0.1)\n" +
			"  F3 python print(1) one-shot, VM restored from the warmed snapshot vs cold\n" +
			"  F4 20 concurrent sandbox creates with snapshots vs cold (total; target 1.6 s)\n" +
			"  F5 pause and resume of a 256 MiB and a 1 GiB sandbox, 40% of RAM filled\n" +
			"  C1 runCode('1+1') in a warm code-interpreter context through E2B's port route vs the kernel's own time (target ≤ 10 ms)\n" +
			"  C2 create a code-interpreter sandbox → first result, restored from its snapshot vs cold\n" +
			"  K1 exec (K1a) and a GET (K1b, the hop alone) through a cluster node that does not own the sandbox vs through its owner (target ≤ 2 ms; needs nats-server)\n" +
			"  K2 sync no-op workloads/s through the cluster's queue with 1, 2 and 3 nodes on a stub backend (needs nats-server)\n" +
			"S1–S3, E1, F1–F5, C1–C2 and K1 boot real sandboxes (need qemu and `make images`) and stop every one after.\n" +
			"Misses are reported, not errors; the command fails only when a measurement fails.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			var ids []string
			if only != "" {
				ids = strings.Split(only, ",")
			}
			bs, err := bench.Select(ids)
			if err != nil {
				return err
			}
			stderr := cmd.ErrOrStderr()
			opts := bench.Options{
				Quick: quick, Iterations: iterations, Sandboxes: sandboxes,
				ImagesDir: cfg.ImagesDir, QEMUBin: cfg.QEMUBin,
				Logf: func(format string, args ...any) { fmt.Fprintf(stderr, format+"\n", args...) },
			}
			accel, reason := resolveAccel(cmd.Context(), cfg)
			if accel == qemu.AccelKVM || accel == qemu.AccelTCG {
				opts.Accel = accel
			}
			report := &bench.Report{
				Date: time.Now().UTC(), Version: version.Version,
				Machine: bench.DetectMachine(accel, reason),
				Quick:   quick, Iterations: iterations,
			}
			report.Results = bench.Run(cmd.Context(), opts, bs)
			if err := cmd.Context().Err(); err != nil {
				return err
			}
			if err := report.WriteTable(cmd.OutOrStdout()); err != nil {
				return err
			}
			if jsonFile != "" {
				if err := writeReport(jsonFile, report); err != nil {
					return err
				}
			}
			if n := report.Failed(); n > 0 {
				return fmt.Errorf("%d measurement(s) failed; see the table", n)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&only, "only", "", "comma-separated benchmarks to run, e.g. P1,P3 or S1,S2,S3 (default all)")
	cmd.Flags().StringVar(&jsonFile, "json", "", "also write the report as JSON to this file")
	cmd.Flags().BoolVar(&quick, "quick", false, "fewer samples and a 64 MiB P3 image (the table says so)")
	cmd.Flags().IntVar(&sandboxes, "sandboxes", 0, "S3's largest number of sandboxes (default 32, 8 with --quick)")
	cmd.Flags().IntVar(&iterations, "iterations", 0, "samples per side of every comparison (default: per benchmark)")
	config.RegisterFlags(cmd.Flags(), "data-dir", "images-dir", "qemu-bin", "qemu-accel")
	return cmd
}

// resolveAccel is how serve would run QEMU here: the configured acceleration, or the
// cached KVM probe's verdict for "auto". It names why when there is no VMM at all.
func resolveAccel(ctx context.Context, cfg *config.Config) (accel, reason string) {
	bin := cfg.QEMUBin
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	if cfg.QEMUAccel != "" && cfg.QEMUAccel != "auto" {
		return cfg.QEMUAccel, "set by VULCAN_QEMU_ACCEL"
	}
	kernel := filepath.Join(cfg.ImagesDir, images.KernelFile)
	if _, err := os.Stat(kernel); err != nil {
		return "none", "no kernel image to probe KVM with"
	}
	return qemu.ProbeAccelCached(ctx, bin, kernel, microvm.DefaultProbeCache())
}

func writeReport(path string, r *bench.Report) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := r.WriteJSON(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
