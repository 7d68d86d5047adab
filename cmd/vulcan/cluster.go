package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vulcanhq/vulcan/internal/api"
)

func clusterCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "The cluster the server is a node of"}
	var asJSON bool
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the cluster's nodes (capacity, load, sandboxes), its queue and its records",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			st, err := c.ClusterStatus(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printCluster(cmd.OutOrStdout(), st)
			return nil
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print the API's JSON")
	cmd.AddCommand(status)
	return cmd
}

func printCluster(out io.Writer, st *api.ClusterStatus) {
	conn := "connected"
	if !st.Connected {
		conn = "NOT connected to NATS"
	}
	live := 0
	for _, n := range st.Nodes {
		if n.Alive {
			live++
		}
	}
	fmt.Fprintf(out, "cluster: %d live nodes of %d announced; this node %s (%s); %d workloads queued\n\n", live, len(st.Nodes), st.Self, conn, st.QueueDepth)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tURL\tSLOTS FREE\tSANDBOXES\tMEM FREE\tVCPU FREE\tTEMPLATES\tUP\tVERSION")
	for _, n := range st.Nodes {
		state := "alive"
		if !n.Alive {
			state = "lapsing"
		}
		name := n.ID
		if n.Self {
			name += " *"
		}
		sandboxes := "-"
		if n.CanSandbox {
			sandboxes = fmt.Sprintf("%d/%d", n.Sandboxes, n.MaxSandboxes)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%d/%d MiB\t%d/%d\t%s\t%s\t%s\n", name, state, n.URL, n.SlotsFree, n.Slots, sandboxes,
			n.MemFreeMB, n.MemBudgetMB, n.CPUFree, n.CPUBudget, strings.Join(n.Templates, ","),
			time.Since(n.StartedAt).Round(time.Second), n.Version)
	}
	tw.Flush()
	fmt.Fprintf(out, "\nworkloads: %s\nsandboxes: %s\n", counts(st.Workloads), counts(st.Sandboxes))
}

func counts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%d %s", m[k], k))
	}
	return strings.Join(parts, ", ")
}
