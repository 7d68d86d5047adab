package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/model"
)

func sandboxCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "sandbox",
		Aliases: []string{"sb"},
		Short:   "Create, list, inspect and kill sandboxes (long-lived microVMs)",
	}
	cmd.AddCommand(sandboxCreateCommand(), sandboxListCommand(), sandboxInfoCommand(), sandboxKillCommand(), sandboxTimeoutCommand(), sandboxWatchCommand(),
		sandboxPauseCommand(), sandboxResumeCommand())
	return cmd
}

func sandboxCreateCommand() *cobra.Command {
	var (
		template, network     string
		cpus, mem, timeout    int
		env, meta             []string
		asJSON                bool
		autoPause, autoResume bool
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a sandbox and print its id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			spec := model.SandboxSpec{Template: model.Runtime(template), Network: model.NetworkPolicy(network),
				Resources: model.Resources{CPUs: cpus, MemMB: mem}, TimeoutS: timeout, AutoPause: autoPause, AutoResume: autoResume}
			if spec.Env, err = pairs(env, "--env"); err != nil {
				return err
			}
			if spec.Metadata, err = pairs(meta, "--meta"); err != nil {
				return err
			}
			sb, err := c.CreateSandbox(cmd.Context(), spec)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), sb)
			}
			fmt.Fprintln(cmd.OutOrStdout(), sb.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&template, "template", "python", "image: python, node or go")
	f.StringVar(&network, "network", "none", "network policy: none, host or egress")
	f.IntVar(&cpus, "cpus", 0, "vCPUs (default 1)")
	f.IntVar(&mem, "mem", 0, "memory in MiB (default 256)")
	f.IntVar(&timeout, "timeout", 0, "seconds until the sandbox is killed (default 300, at most 86400; extend with `vulcan sandbox timeout`)")
	f.StringArrayVar(&env, "env", nil, "KEY=VALUE for every process (repeatable)")
	f.StringArrayVar(&meta, "meta", nil, "KEY=VALUE metadata (repeatable; filter with `vulcan sandbox ls --meta`)")
	f.BoolVar(&asJSON, "json", false, "print the sandbox as JSON")
	f.BoolVar(&autoPause, "auto-pause", false, "pause at the timeout instead of being killed")
	f.BoolVar(&autoResume, "auto-resume", false, "when paused, resume at the next command or file operation")
	return cmd
}

func sandboxPauseCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "pause ID",
		Short: "Pause a sandbox: save its memory and disk, stop its VM (resume brings back its processes and files)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			sb, err := c.PauseSandbox(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s paused in %s ms\n", sb.ID, sb.VM["pause_ms"])
			return nil
		},
	}
}

func sandboxResumeCommand() *cobra.Command {
	var timeout int
	cmd := &cobra.Command{
		Use:   "resume ID",
		Short: "Resume a paused sandbox as it was",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			sb, err := c.ResumeSandbox(cmd.Context(), args[0], timeout)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s running in %s ms, expires %s\n", sb.ID, sb.VM["start_ms"], sb.ExpiresAt.Local().Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().IntVar(&timeout, "timeout", 0, "seconds it may run from now (default: its own timeout)")
	return cmd
}

func pairs(list []string, flag string) (map[string]string, error) {
	if len(list) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range list {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s %q: want KEY=VALUE", flag, kv)
		}
		m[k] = v
	}
	return m, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func sandboxListCommand() *cobra.Command {
	var (
		states, meta []string
		limit        int
		all          bool
	)
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List sandboxes, newest first (live ones unless --all or --state)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			q := url.Values{}
			switch {
			case len(states) > 0:
				q["state"] = states
			case !all:
				q.Set("state", "starting,running,stopping")
			}
			for _, m := range meta {
				q.Add("metadata", m)
			}
			if limit > 0 {
				q.Set("limit", strconv.Itoa(limit))
			}
			l, err := c.ListSandboxes(cmd.Context(), q)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tTEMPLATE\tAGE\tTIME LEFT\tMETADATA")
			for _, sb := range l.Sandboxes {
				left := "-"
				if !sb.State.Terminal() {
					left = time.Until(sb.ExpiresAt).Round(time.Second).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", sb.ID, sb.State, sb.Template,
					time.Since(sb.CreatedAt).Round(time.Second), left, metaString(sb.Metadata))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringArrayVar(&states, "state", nil, "only sandboxes in this state (repeatable)")
	cmd.Flags().StringArrayVar(&meta, "meta", nil, "only sandboxes with this KEY=VALUE metadata (repeatable)")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many (default 50)")
	cmd.Flags().BoolVar(&all, "all", false, "ended sandboxes too")
	return cmd
}

func metaString(m map[string]string) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

func sandboxInfoCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "info ID",
		Short: "Print a sandbox as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			sb, err := c.GetSandbox(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), sb)
		},
	}
}

func sandboxKillCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "kill ID",
		Short: "Kill a sandbox",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			sb, err := c.KillSandbox(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", sb.ID, sb.State)
			return nil
		},
	}
}

func sandboxTimeoutCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "timeout ID SECONDS",
		Short: "Make a sandbox end SECONDS from now",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			secs, err := strconv.Atoi(args[1])
			if err != nil {
				return fmt.Errorf("SECONDS %q is not a number", args[1])
			}
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			sb, err := c.SetSandboxTimeout(cmd.Context(), args[0], secs)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s expires %s\n", sb.ID, sb.ExpiresAt.Local().Format(time.RFC3339))
			return nil
		},
	}
}

func execCommand() *cobra.Command {
	var (
		user, cwd string
		env       []string
		timeout   int
		stdin     bool
	)
	cmd := &cobra.Command{
		Use:   "exec ID -- COMMAND [ARG...]",
		Short: "Run a command in a sandbox, streaming its output; exits with its exit code",
		Long: "Run a command in a sandbox. One word after -- is run as a shell line (bash -l -c), " +
			"several as a program and its arguments.",
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			req := api.ProcessRequest{User: user, Cwd: cwd, TimeoutS: timeout}
			if len(args) == 2 {
				req.Cmd = args[1]
			} else {
				req.Argv = args[1:]
			}
			if req.Env, err = pairs(env, "--env"); err != nil {
				return err
			}
			if stdin {
				b, err := io.ReadAll(io.LimitReader(os.Stdin, 64<<20))
				if err != nil {
					return err
				}
				s := string(b)
				req.Stdin = &s
			}
			out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
			exit, err := c.Exec(cmd.Context(), args[0], req, func(ev api.ProcessEvent) {
				if ev.Type != "output" {
					return
				}
				w := out
				if ev.Stream == "stderr" {
					w = errOut
				}
				eol := "\n"
				if ev.Partial {
					eol = ""
				}
				io.WriteString(w, ev.Data+eol)
			})
			if err != nil {
				return err
			}
			if exit.Error != "" {
				fmt.Fprintln(errOut, "vulcan:", exit.Error)
			}
			if exit.Truncated {
				fmt.Fprintln(errOut, "vulcan: output truncated")
			}
			if code := *exit.ExitCode; code != 0 {
				return exitError{code: code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&user, "user", "", `run as "user" (default) or "root"`)
	f.StringVar(&cwd, "cwd", "", "working directory (default the user's home)")
	f.StringArrayVar(&env, "env", nil, "KEY=VALUE (repeatable)")
	f.IntVar(&timeout, "timeout", 0, "kill the command after this many seconds (default: none)")
	f.BoolVar(&stdin, "stdin", false, "send this command's standard input to the command")
	return cmd
}

func cpCommand() *cobra.Command {
	var mode string
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy a file between this machine and a sandbox (one side is ID:PATH; - is stdin/stdout)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			srcID, srcPath, srcRemote := remotePath(args[0])
			dstID, dstPath, dstRemote := remotePath(args[1])
			switch {
			case srcRemote == dstRemote:
				return fmt.Errorf("exactly one of SRC and DST must be ID:PATH")
			case srcRemote:
				var w io.Writer = cmd.OutOrStdout()
				if dstPath != "-" {
					if fi, err := os.Stat(dstPath); err == nil && fi.IsDir() {
						dstPath = filepath.Join(dstPath, path.Base(srcPath))
					}
					f, err := os.Create(dstPath)
					if err != nil {
						return err
					}
					defer f.Close()
					w = f
				}
				_, err := c.ReadFile(cmd.Context(), srcID, srcPath, w)
				return err
			default:
				var r io.Reader = os.Stdin
				var m uint64 = 0
				if srcPath != "-" {
					f, err := os.Open(srcPath)
					if err != nil {
						return err
					}
					defer f.Close()
					fi, err := f.Stat()
					if err != nil {
						return err
					}
					if fi.IsDir() {
						return fmt.Errorf("%s is a directory: copy files one at a time, or a tar of it", srcPath)
					}
					r, m = f, uint64(fi.Mode().Perm())
					if strings.HasSuffix(dstPath, "/") {
						dstPath += filepath.Base(srcPath)
					}
				}
				if mode != "" {
					if m, err = strconv.ParseUint(mode, 8, 32); err != nil {
						return fmt.Errorf("--mode %q: want octal permission bits", mode)
					}
				}
				info, err := c.WriteFile(cmd.Context(), dstID, dstPath, uint32(m), r)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: %d bytes\n", info.Path, info.Size)
				return nil
			}
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "", "permission bits of an uploaded file (default: the local file's)")
	return cmd
}

// remotePath splits "ID:PATH"; a local path has no colon before its first slash.
func remotePath(s string) (id, p string, remote bool) {
	i := strings.IndexByte(s, ':')
	if i <= 0 || strings.ContainsRune(s[:i], '/') {
		return "", s, false
	}
	return s[:i], s[i+1:], true
}

func sandboxWatchCommand() *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:   "watch ID PATH",
		Short: "Print a sandbox directory's changes as they happen (op and path per line) until interrupted",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			return c.Watch(cmd.Context(), args[0], args[1], recursive, func(ev api.FSEvent) {
				fmt.Fprintf(out, "%s\t%s\n", ev.Op, ev.Path)
			})
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "watch subdirectories too (those made later included)")
	return cmd
}
