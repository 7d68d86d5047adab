package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vulcanhq/vulcan/internal/client"
)

func lsCommand() *cobra.Command {
	var o client.ListOptions
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List workloads, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			l, err := c.List(cmd.Context(), o)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATUS\tRUNTIME\tEXIT\tDURATION\tCREATED")
			for _, w := range l.Workloads {
				exit := "-"
				if w.ExitCode != nil {
					exit = fmt.Sprint(*w.ExitCode)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", w.ID, w.Status, w.Runtime, exit,
					time.Duration(w.DurationMS)*time.Millisecond, w.CreatedAt.Local().Format(time.DateTime))
			}
			tw.Flush()
			fmt.Fprintf(cmd.OutOrStdout(), "%d of %d workloads\n", len(l.Workloads), l.Total)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Status, "status", "", "only this status")
	f.StringVar(&o.Runtime, "runtime", "", "only this runtime")
	f.StringVar(&o.Isolation, "isolation", "", "only this isolation")
	f.IntVar(&o.Limit, "limit", 20, "how many")
	f.IntVar(&o.Offset, "offset", 0, "skip this many")
	return cmd
}
