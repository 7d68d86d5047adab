// Command vulcan is the Vulcan server (`vulcan serve`) and its command-line client.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vulcanhq/vulcan/internal/client"
	"github.com/vulcanhq/vulcan/internal/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var exit exitError
	switch {
	case errors.As(err, &exit):
		os.Exit(exit.code)
	case err != nil:
		fmt.Fprintln(os.Stderr, "vulcan:", err)
		os.Exit(1)
	}
}

// exitError makes vulcan exit with a code and no message of its own (the workload's exit
// code, after its output has been printed).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// run is main without the process: tests call it with their own args and writers.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	root := &cobra.Command{
		Use:           "vulcan",
		Short:         "Run Go, Node and Python code inside microVMs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().String("server", "", "URL of the Vulcan API ($VULCAN_SERVER, default http://127.0.0.1:8080)")
	root.PersistentFlags().String("token", "", "API bearer token ($VULCAN_API_TOKEN)")
	root.AddCommand(mcpCommand(), serveCommand(), runCommand(), statusCommand(), logsCommand(), lsCommand(), killCommand(),
		backendsCommand(), versionCommand(), doctorCommand(), downloadCommand(), benchCommand(),
		sandboxCommand(), execCommand(), cpCommand(), shellCommand(), templateCommand(), codeCommand(), clusterCommand())
	return root.ExecuteContext(ctx)
}

// loadConfig applies the precedence rules to cmd's flags.
func loadConfig(cmd *cobra.Command) (*config.Config, error) {
	return config.Load(cmd.Flags(), os.LookupEnv)
}

// newClient builds an API client from the --server/--token flags and the environment.
func newClient(cmd *cobra.Command) (*client.Client, error) {
	cfg, err := loadConfig(cmd)
	if err != nil {
		return nil, err
	}
	return client.New(cfg.Server, cfg.APIToken), nil
}
