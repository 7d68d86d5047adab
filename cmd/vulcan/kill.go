package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func killCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "kill ID",
		Short: "Kill a pending or running workload",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			w, err := c.Kill(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", w.ID, w.Status)
			return nil
		},
	}
}
