package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/client"
)

func codeCommand() *cobra.Command {
	var (
		code, file, language, contextID string
		timeout                         int
	)
	cmd := &cobra.Command{
		Use:   "code ID",
		Short: "Run code in a sandbox's code interpreter (a REPL without -c or --file)",
		Long: `Run cells in the code interpreter of a sandbox made from the code-interpreter template:
variables persist between cells. With -c or --file one cell runs and the command exits
1 if it raised. Without them it is a REPL: a cell ends at an empty line (or at once when
its first line is complete); Ctrl-D quits.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
			run := func(src string) (bool, error) {
				failed := false
				err := c.RunCode(cmd.Context(), args[0], api.CodeRequest{Code: src, Language: language, ContextID: contextID, TimeoutS: timeout},
					func(e client.CodeEvent) { failed = printCodeEvent(out, errOut, e) || failed })
				return failed, err
			}
			if file != "" {
				b, err := os.ReadFile(file)
				if err != nil {
					return err
				}
				code = string(b)
			}
			if code != "" {
				failed, err := run(code)
				if err != nil {
					return err
				}
				if failed {
					return exitError{code: 1}
				}
				return nil
			}
			return codeREPL(cmd.InOrStdin(), out, run)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&code, "code", "c", "", "one cell to run")
	f.StringVar(&file, "file", "", "a file to run as one cell")
	f.StringVar(&language, "language", "", "python (the default) or javascript")
	f.StringVar(&contextID, "context", "", "a context id (POST /v1/sandboxes/ID/ports/49999/contexts)")
	f.IntVar(&timeout, "timeout", 0, "interrupt a cell after this many seconds (its variables stay)")
	return cmd
}

// printCodeEvent prints one event; it reports whether it was an error.
func printCodeEvent(out, errOut io.Writer, e client.CodeEvent) bool {
	switch e.Type {
	case "stdout":
		fmt.Fprint(out, e.Text)
	case "stderr":
		fmt.Fprint(errOut, e.Text)
	case "result":
		switch {
		case e.PNG != "":
			fmt.Fprintf(out, "[image/png, %d bytes base64] %s\n", len(e.PNG), e.Text)
		case e.Text != "":
			fmt.Fprintln(out, e.Text)
		}
	case "error":
		if e.Traceback != "" {
			fmt.Fprint(errOut, e.Traceback)
			if !strings.HasSuffix(e.Traceback, "\n") {
				fmt.Fprintln(errOut)
			}
		} else {
			fmt.Fprintf(errOut, "%s: %s\n", e.Name, e.Value)
		}
		return true
	}
	return false
}

func codeREPL(in io.Reader, out io.Writer, run func(string) (bool, error)) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(nil, 16<<20)
	var cell []string
	prompt := func() {
		if len(cell) == 0 {
			fmt.Fprint(out, ">>> ")
		} else {
			fmt.Fprint(out, "... ")
		}
	}
	prompt()
	for sc.Scan() {
		line := sc.Text()
		if len(cell) == 0 && strings.TrimSpace(line) == "" {
			prompt()
			continue
		}
		// A block (a line ending in ':' or '\', or inside one) ends at an empty line.
		if len(cell) > 0 && strings.TrimSpace(line) != "" || strings.HasSuffix(strings.TrimSpace(line), ":") || strings.HasSuffix(line, "\\") {
			cell = append(cell, line)
			prompt()
			continue
		}
		if line != "" {
			cell = append(cell, line)
		}
		if _, err := run(strings.Join(cell, "\n")); err != nil {
			return err
		}
		cell = nil
		prompt()
	}
	fmt.Fprintln(out)
	return sc.Err()
}
