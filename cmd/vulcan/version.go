package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vulcanhq/vulcan/internal/version"
)

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print vulcan's version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "vulcan", version.Version)
		},
	}
}
