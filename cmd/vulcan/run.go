package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vulcanhq/vulcan/internal/model"
)

func runCommand() *cobra.Command {
	var (
		runtime, file, code, dir, entrypoint, input, network string
		env                                                  []string
		cpus, mem, timeout                                   int
		async                                                bool
	)
	cmd := &cobra.Command{
		Use:   "run (--file F | --code SRC | --dir D) [flags]",
		Short: "Run code and print its output live; exit with its exit code",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			spec := model.Spec{Runtime: model.Runtime(runtime), Entrypoint: entrypoint, Network: model.NetworkPolicy(network),
				Resources: model.Resources{CPUs: cpus, MemMB: mem, TimeoutS: timeout}}
			sources := 0
			for _, s := range []string{file, code, dir} {
				if s != "" {
					sources++
				}
			}
			if sources != 1 {
				return errors.New("give exactly one of --file, --code or --dir")
			}
			switch {
			case file != "":
				b, err := os.ReadFile(file)
				if err != nil {
					return err
				}
				spec.Code = string(b)
				if spec.Runtime == "" {
					spec.Runtime = runtimeFromExt(file)
				}
			case code != "":
				spec.Code = code
			case dir != "":
				b, err := packDir(dir)
				if err != nil {
					return fmt.Errorf("packing %s: %w", dir, err)
				}
				spec.Archive = b
			}
			if spec.Runtime == "" {
				return errors.New("--runtime is required (go, node or python)")
			}
			if input != "" {
				var b []byte
				var err error
				if input == "-" {
					b, err = io.ReadAll(cmd.InOrStdin())
				} else {
					b, err = os.ReadFile(input)
				}
				if err != nil {
					return fmt.Errorf("reading input: %w", err)
				}
				// A JSON string reaches the program's stdin as exactly these bytes.
				spec.Input, _ = json.Marshal(string(b))
			}
			for _, kv := range env {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--env %q: want KEY=VALUE", kv)
				}
				if spec.Env == nil {
					spec.Env = map[string]string{}
				}
				spec.Env[k] = v
			}
			c, err := newClient(cmd)
			if err != nil {
				return err
			}
			w, err := c.Submit(cmd.Context(), spec)
			if err != nil {
				return err
			}
			if async {
				fmt.Fprintln(cmd.OutOrStdout(), w.ID)
				return nil
			}
			out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
			// The program's bytes as it wrote them: a partial line has no newline after it.
			final, err := c.Follow(cmd.Context(), w.ID, func(l model.LogLine) {
				eol := "\n"
				if l.Partial {
					eol = ""
				}
				switch l.Stream {
				case model.Stdout:
					io.WriteString(out, l.Text+eol)
				case model.Stderr:
					io.WriteString(errOut, l.Text+eol)
				default:
					fmt.Fprintln(errOut, "vulcan:", l.Text)
				}
			})
			if err != nil {
				return fmt.Errorf("workload %s: %w", w.ID, err)
			}
			switch {
			case final.Status == model.StatusCompleted:
				return nil
			case final.ExitCode != nil && *final.ExitCode > 0 && *final.ExitCode < 256:
				return exitError{*final.ExitCode}
			}
			return fmt.Errorf("workload %s %s: %s", final.ID, final.Status, final.Error)
		},
	}
	f := cmd.Flags()
	f.StringVar(&runtime, "runtime", "", "go, node or python (default: from --file's extension)")
	f.StringVar(&file, "file", "", "run this source file")
	f.StringVar(&code, "code", "", "run this source text")
	f.StringVar(&dir, "dir", "", "run this project directory (sent as tar.gz)")
	f.StringVar(&entrypoint, "entrypoint", "", "file to run inside the code (default main.go, index.js or main.py)")
	f.StringVar(&input, "input", "", "file whose contents the program reads on stdin (- for this stdin)")
	f.StringArrayVar(&env, "env", nil, "environment variable KEY=VALUE (repeatable)")
	f.IntVar(&cpus, "cpus", 0, "vCPUs (default 1)")
	f.IntVar(&mem, "mem", 0, "memory in MiB (default 256)")
	f.IntVar(&timeout, "timeout", 0, "timeout in seconds (default 60)")
	f.StringVar(&network, "network", "", "none, host or egress (default none)")
	f.BoolVar(&async, "async", false, "print the workload id and return at once")
	return cmd
}

func runtimeFromExt(path string) model.Runtime {
	switch filepath.Ext(path) {
	case ".go":
		return model.RuntimeGo
	case ".js", ".mjs", ".cjs":
		return model.RuntimeNode
	case ".py":
		return model.RuntimePython
	}
	return ""
}

// packDir makes a tar.gz of the regular files and directories under dir, with paths
// relative to it. Version-control metadata is left out.
func packDir(dir string) ([]byte, error) { return packDirWith(dir, nil) }

// packDirWith is packDir with more files (name → bytes) added at the end.
func packDirWith(dir string, extra map[string][]byte) ([]byte, error) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == ".hg") {
			return filepath.SkipDir
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if !info.Mode().IsRegular() && !info.IsDir() {
			return nil // symlinks, sockets: nothing a guest should follow
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.IsDir() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return nil, err
	}
	for name, b := range extra {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
