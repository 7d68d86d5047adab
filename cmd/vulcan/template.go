package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vulcanhq/vulcan/internal/template"
)

func templateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "template",
		Aliases: []string{"tpl"},
		Short:   "Build, list and remove sandbox templates (images from a Dockerfile, built in a microVM)",
	}
	cmd.AddCommand(templateBuildCommand(), templateListCommand(), templateRemoveCommand())
	return cmd
}

// dockerfileInContext is where a Dockerfile from outside the context travels in it.
const dockerfileInContext = ".vulcan.Dockerfile"

func templateBuildCommand() *cobra.Command {
	var (
		file, contextDir, network, startCmd, readyCmd string
		buildArgs                                     []string
		noCache, asJSON                               bool
	)
	cmd := &cobra.Command{
		Use:   "build NAME",
		Short: "Build a template from a Dockerfile and follow its log",
		Long: `Build a template from a Dockerfile (the subset in the README: FROM a Vulcan template,
RUN, COPY/ADD from the context, ENV, WORKDIR, USER, ARG, CMD, and the directives
"# vulcan:apt PACKAGES" and "# vulcan:ready COMMAND"). RUN steps execute in a build
microVM booted from the parent template; unchanged steps come from the cache.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			if file == "" {
				dir := contextDir
				if dir == "" {
					dir = "."
				}
				file = filepath.Join(dir, "Dockerfile")
			}
			if contextDir == "" {
				contextDir = filepath.Dir(file)
			}
			df, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			q := url.Values{"name": {args[0]}}
			var extra map[string][]byte
			absCtx, _ := filepath.Abs(contextDir)
			absFile, _ := filepath.Abs(file)
			if rel, err := filepath.Rel(absCtx, absFile); err == nil && !strings.HasPrefix(rel, "..") {
				q.Set("dockerfile", filepath.ToSlash(rel))
			} else {
				extra = map[string][]byte{dockerfileInContext: df}
				q.Set("dockerfile", dockerfileInContext)
			}
			if network != "" {
				q.Set("network", network)
			}
			for _, a := range buildArgs {
				q.Add("build_arg", a)
			}
			if startCmd != "" {
				q.Set("start_cmd", startCmd)
			}
			if readyCmd != "" {
				q.Set("ready_cmd", readyCmd)
			}
			if noCache {
				q.Set("no_cache", "true")
			}
			tgz, err := packDirWith(contextDir, extra)
			if err != nil {
				return fmt.Errorf("packing the context %s: %w", contextDir, err)
			}
			b, err := c.BuildTemplate(cmd.Context(), q, bytes.NewReader(tgz))
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			p := &buildProgress{w: out, total: len(b.Steps) - 1, quiet: asJSON}
			final, err := c.FollowBuild(cmd.Context(), b.ID, p.event)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				enc.Encode(final)
			}
			if final.State != template.BuildReady {
				return fmt.Errorf("build %s failed: %s", final.ID, final.Error)
			}
			if !asJSON {
				fmt.Fprintf(out, "template %s ready in %.1fs (%d steps from the cache, %d run)\n", final.Template, final.Seconds, final.Cached, final.Ran)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "", "the Dockerfile (default CONTEXT/Dockerfile)")
	f.StringVar(&contextDir, "context", "", "the build context COPY reads from (default the Dockerfile's directory)")
	f.StringVar(&network, "network", "", "the build VM's network: egress (the default), host or none")
	f.StringArrayVar(&buildArgs, "build-arg", nil, "an ARG's value, NAME=value (repeatable)")
	f.StringVar(&startCmd, "start-cmd", "", "the sandbox's start command (overrides CMD)")
	f.StringVar(&readyCmd, "ready-cmd", "", "the start command's readiness check (overrides # vulcan:ready)")
	f.BoolVar(&noCache, "no-cache", false, "run every step again")
	f.BoolVar(&asJSON, "json", false, "print the finished build as JSON instead of the log")
	return cmd
}

// buildProgress prints a build's events: each step's state with a bar, and its output.
type buildProgress struct {
	w     io.Writer
	total int
	quiet bool
}

func (p *buildProgress) event(e template.Event) {
	if p.quiet {
		return
	}
	switch e.Type {
	case "step":
		s := e.Step
		if s.Index == 0 && s.State == template.StepPending {
			return
		}
		done := s.Index
		if s.State == template.StepRunning {
			done--
		}
		const width = 20
		n := 0
		if p.total > 0 {
			n = done * width / p.total
		}
		if n < 0 {
			n = 0
		}
		bar := "[" + strings.Repeat("=", n) + strings.Repeat(" ", width-n) + "]"
		secs := ""
		if s.State == template.StepDone || s.State == template.StepFailed {
			secs = fmt.Sprintf(" %.1fs", s.Seconds)
		}
		if s.State == template.StepRunning || s.Index == 0 && s.State != template.StepDone {
			fmt.Fprintf(p.w, "%s %d/%d %s: %s\n", bar, s.Index, p.total, s.State, s.Text)
		} else {
			fmt.Fprintf(p.w, "%s %d/%d %s%s: %s\n", bar, s.Index, p.total, s.State, secs, s.Text)
		}
	case "log":
		if e.Stream == "build" {
			fmt.Fprint(p.w, "# "+e.Data)
		} else {
			fmt.Fprint(p.w, "  "+strings.ReplaceAll(strings.TrimSuffix(e.Data, "\n"), "\n", "\n  ")+"\n")
		}
	}
}

func templateListCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List templates (built-in and built here)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			l, err := c.Templates(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(l)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKIND\tFROM\tSIZE\tCREATED")
			for _, t := range l.Templates {
				kind, from, created := "built-in", "-", "-"
				if !t.Builtin && t.Template != nil {
					kind, from, created = "user", t.From, t.CreatedAt.Local().Format(time.DateTime)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d MiB\t%s\n", t.Name, kind, from, t.SizeBytes>>20, created)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func templateRemoveCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove templates (their images go once no sandbox uses them)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			for _, n := range args {
				if err := c.RemoveTemplate(cmd.Context(), n); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), n)
			}
			return nil
		},
	}
}
