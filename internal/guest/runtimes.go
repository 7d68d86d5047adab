package guest

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"sync"
	"syscall"
	"time"
)

// runtimeSpec describes how one runtime is run and how its version is probed.
type runtimeSpec struct {
	binary     string
	versionArg []string
	entry      string // default entrypoint
}

var runtimes = map[string]runtimeSpec{
	"python": {binary: "python3", versionArg: []string{"--version"}, entry: "main.py"},
	"node":   {binary: "node", versionArg: []string{"--version"}, entry: "index.js"},
	"go":     {binary: "go", versionArg: []string{"version"}, entry: "main.go"},
}

var versionRE = regexp.MustCompile(`\d+\.\d+(\.\d+)?`)

// loadRuntimes reads the versions the image build recorded, or else asks
// each binary, in parallel and briefly: hello must not wait long.
func (a *Agent) loadRuntimes(ctx context.Context) map[string]string {
	if b, err := os.ReadFile(a.cfg.RuntimesFile); err == nil {
		var m map[string]string
		if err := json.Unmarshal(b, &m); err == nil {
			return m
		}
		a.log.Warn("ignoring unreadable runtimes file", "path", a.cfg.RuntimesFile, "err", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := make(map[string]string)
	for name, rt := range runtimes {
		wg.Go(func() {
			v := a.probe(ctx, rt)
			if v == "" {
				return
			}
			mu.Lock()
			out[name] = v
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

func (a *Agent) probe(ctx context.Context, rt runtimeSpec) string {
	bin, err := lookPath(rt.binary, defaultPath)
	if err != nil {
		return ""
	}
	r, w, err := os.Pipe()
	if err != nil {
		return ""
	}
	defer r.Close()
	env := []string{"PATH=" + defaultPath, "HOME=/", "GOTOOLCHAIN=local"}
	pid, wait, err := a.spawn.start(bin, append([]string{bin}, rt.versionArg...), &os.ProcAttr{
		Env: env, Files: []*os.File{nil, w, w}, Sys: &syscall.SysProcAttr{Setpgid: true},
	})
	w.Close()
	if err != nil {
		return ""
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			syscall.Kill(-pid, syscall.SIGKILL)
		case <-done:
		}
	}()
	buf := make([]byte, 4096)
	n, _ := readFull(r, buf)
	ws := wait()
	close(done)
	if !ws.Exited() || ws.ExitStatus() != 0 {
		return ""
	}
	return versionRE.FindString(string(buf[:n]))
}

func readFull(f *os.File, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := f.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
