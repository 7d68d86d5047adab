package main

import (
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	"github.com/vulcanhq/vulcan/internal/mcpserver"
)

func mcpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "mcp",
		Short: "Serve Vulcan's MCP tools on stdin/stdout, for an agent to launch (talks to the running server)",
		Long: "Serve the Model Context Protocol on stdin/stdout: tools to run code, create and kill sandboxes,\n" +
			"run commands in them and read, write and list their files. It acts through the running server\n" +
			"(--server / VULCAN_SERVER, --token / VULCAN_API_TOKEN); the server itself serves the same tools at /mcp.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			return mcpserver.New(c).Run(cmd.Context(), &mcp.StdioTransport{})
		},
	}
}
