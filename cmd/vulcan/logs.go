package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/vulcanhq/vulcan/internal/model"
)

func logsCommand() *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs [-f] ID",
		Short: "Print a workload's log (with -f, follow it until the workload ends)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if follow {
				_, err := c.Follow(cmd.Context(), args[0], func(l model.LogLine) { printLine(out, l) })
				return err
			}
			lines, err := c.Logs(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			for _, l := range lines {
				printLine(out, l)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "stream new lines until the workload ends")
	return cmd
}

func printLine(out io.Writer, l model.LogLine) {
	fmt.Fprintf(out, "%s %-6s %s\n", l.Time.Local().Format("15:04:05.000"), l.Stream, l.Text)
}
