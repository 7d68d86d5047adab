package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vulcanhq/vulcan/internal/api"
)

func statusCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status ID",
		Short: "Show a workload",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			w, err := c.Get(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(w)
			}
			printWorkload(cmd.OutOrStdout(), w)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON")
	return cmd
}

func printWorkload(out io.Writer, w *api.Workload) {
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(out, "%-11s %s\n", k+":", v)
		}
	}
	row("id", w.ID)
	row("status", string(w.Status))
	row("runtime", string(w.Runtime))
	row("isolation", string(w.Isolation))
	if w.ExitCode != nil {
		row("exit code", fmt.Sprint(*w.ExitCode))
	}
	row("error", w.Error)
	row("created", w.CreatedAt.Local().Format(time.DateTime))
	if w.FinishedAt != nil {
		row("duration", (time.Duration(w.DurationMS) * time.Millisecond).String())
		row("queued", (time.Duration(w.QueueMS) * time.Millisecond).String())
	}
	for k, v := range w.Metadata {
		row(k, v)
	}
	if w.Output != "" {
		fmt.Fprintln(out, "output:")
		for _, l := range strings.Split(strings.TrimSuffix(w.Output, "\n"), "\n") {
			fmt.Fprintln(out, "  "+l)
		}
		if w.Truncated {
			fmt.Fprintln(out, "  (truncated)")
		}
	}
}
