package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func shellCommand() *cobra.Command {
	var cmdLine string
	cmd := &cobra.Command{
		Use:   "shell ID",
		Short: "Open an interactive terminal in a sandbox (a login shell, or --cmd)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			in := int(os.Stdin.Fd())
			cols, rows := 80, 24
			isTerm := term.IsTerminal(in)
			if isTerm {
				if w, h, err := term.GetSize(in); err == nil && w > 0 && h > 0 {
					cols, rows = w, h
				}
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			t, err := c.OpenTerminal(ctx, args[0], cols, rows, cmdLine)
			if err != nil {
				return err
			}
			defer t.Close()
			if isTerm {
				// Raw mode: every key goes to the sandbox (Ctrl-C included) until it exits.
				old, err := term.MakeRaw(in)
				if err != nil {
					return err
				}
				defer term.Restore(in, old)
				winch := make(chan os.Signal, 1)
				signal.Notify(winch, syscall.SIGWINCH)
				defer signal.Stop(winch)
				go func() {
					for range winch {
						if w, h, err := term.GetSize(in); err == nil && w > 0 && h > 0 {
							t.Resize(ctx, w, h)
						}
					}
				}()
			}
			go func() {
				buf := make([]byte, 32<<10)
				for {
					n, err := os.Stdin.Read(buf)
					if n > 0 && t.Input(ctx, buf[:n]) != nil {
						return
					}
					if err != nil {
						return // stdin closed: the terminal stays until the process exits
					}
				}
			}()
			exit, err := t.Copy(ctx, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			if exit.ExitCode != nil && *exit.ExitCode != 0 {
				return exitError{code: *exit.ExitCode}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&cmdLine, "cmd", "", "run this shell line instead of a login shell")
	return cmd
}
