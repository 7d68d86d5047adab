package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/vulcanhq/vulcan/internal/config"
	"github.com/vulcanhq/vulcan/internal/doctor"
	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/microvm/qemu"
)

func doctorCommand() *cobra.Command {
	var asJSON, noProbe bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check what the microVM backend needs on this host and how to fix what is missing",
		Long: "Checks /dev/kvm (with a KVM test boot), firecracker, qemu-system-x86_64, the kernel, each\n" +
			"runtime image and its agent's protocol, netns/nft support, CNI plugins and the state dir.\n" +
			"Exits non-zero when the microvm backend cannot run.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			opts := doctor.Options{
				ImagesDir:      cfg.ImagesDir,
				StateDir:       vmStateDir(cfg),
				FirecrackerBin: cfg.FirecrackerBin,
				QEMUBin:        cfg.QEMUBin,
				CNIBinDir:      cniBinDir(cfg),
			}
			if !noProbe {
				qemuBin := cfg.QEMUBin
				if qemuBin == "" {
					qemuBin = "qemu-system-x86_64"
				}
				kernel := filepath.Join(cfg.ImagesDir, images.KernelFile)
				opts.ProbeKVM = func(ctx context.Context) (bool, string) {
					accel, reason := qemu.ProbeAccel(ctx, qemuBin, kernel)
					return accel == qemu.AccelKVM, reason
				}
			}
			report := doctor.Run(cmd.Context(), opts)
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(report); err != nil {
					return err
				}
			} else {
				report.Print(cmd.OutOrStdout())
			}
			if !report.MicroVM {
				return exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().BoolVar(&noProbe, "no-probe", false, "skip the KVM test boot")
	config.RegisterFlags(cmd.Flags(), "data-dir", "images-dir", "firecracker-bin", "qemu-bin", "cni-bin-dir")
	return cmd
}

func downloadCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "download",
		Short: "Download the pinned Firecracker release and its CI guest kernel (needs internet)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			dir := filepath.Join(cfg.ImagesDir, "firecracker-"+images.FirecrackerVersion)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			for _, a := range images.Pinned() {
				sum, err := images.Download(cmd.Context(), images.HTTPClient(), a, dir)
				if err != nil {
					return err
				}
				pin := "pinned"
				if a.SHA256 == "" {
					pin = "verified against the release's published checksum; pin it in internal/images/download.go"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s  %s (%s)\n", sum, filepath.Join(dir, a.Name), pin)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "set VULCAN_FIRECRACKER_BIN=%s\n", filepath.Join(dir, "firecracker"))
			return nil
		},
	}
	config.RegisterFlags(cmd.Flags(), "data-dir", "images-dir")
	return cmd
}
