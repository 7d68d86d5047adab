package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func backendsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "backends",
		Short: "List the server's backends and why any is unavailable",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			b, err := c.Backends(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tAVAILABLE\tDETAILS")
			for _, s := range b.Backends {
				detail := s.Reason
				if s.Available && s.Capabilities != nil {
					detail = fmt.Sprintf("runtimes %v, up to %d vCPUs / %d MiB", s.Capabilities.Runtimes, s.Capabilities.MaxCPUs, s.Capabilities.MaxMemMB)
				}
				avail := "no"
				if s.Available {
					avail = "yes"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, avail, detail)
			}
			return tw.Flush()
		},
	}
}
