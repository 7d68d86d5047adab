package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/model"
)

// The code interpreter (C1–C2), over the wire @e2b/code-interpreter speaks: E2B's create,
// then POST /execute with E2b-Sandbox-Id and E2b-Sandbox-Port: 49999.

var (
	rowC1 = Row{"C1", "runCode('1+1') in a warm context", "POST /execute through E2B's port route (the requests @e2b/code-interpreter makes) to end_of_execution vs the kernel's own time for the cell (its duration_us), p50s"}
	rowC2 = Row{"C2", "create code-interpreter → first result", "E2B create of the code-interpreter template (1 vCPU, 1 GiB) → the result of runCode('1+1'): restored from the template's snapshot vs booted cold, p50s"}
)

// CellOverheadMax is C1's target: what the route adds to a cell, p50.
const CellOverheadMax = 10 * time.Millisecond

var interpreterShape = model.Resources{CPUs: 1, MemMB: 1024}

type e2bSandbox struct {
	SandboxID       string `json:"sandboxID"`
	EnvdAccessToken string `json:"envdAccessToken"`
}

func e2bCreate(ctx context.Context, base string, memMB int) (*e2bSandbox, error) {
	body, _ := json.Marshal(map[string]any{"templateID": "code-interpreter-v1", "timeout": 600, "memoryMB": memMB, "cpuCount": 1})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/sandboxes", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", "bench")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		return nil, fmt.Errorf("E2B create: %d %s", resp.StatusCode, b.String())
	}
	var sb e2bSandbox
	return &sb, json.NewDecoder(resp.Body).Decode(&sb)
}

func e2bKill(base, id string) {
	req, _ := http.NewRequest(http.MethodDelete, base+"/sandboxes/"+id, nil)
	req.Header.Set("X-API-Key", "bench")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
}

// runCell runs code as the SDK does and returns its main result's text and the kernel's
// own time for the cell.
func runCell(ctx context.Context, base string, sb *e2bSandbox, code string) (string, time.Duration, error) {
	body, _ := json.Marshal(map[string]any{"code": code})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/execute", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("E2b-Sandbox-Id", sb.SandboxID)
	req.Header.Set("E2b-Sandbox-Port", "49999")
	req.Header.Set("X-Access-Token", sb.EnvdAccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("execute: %s", resp.Status)
	}
	text := ""
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var ev struct {
			Type       string `json:"type"`
			Text       string `json:"text"`
			Main       bool   `json:"is_main_result"`
			DurationUS int64  `json:"duration_us"`
			Name       string `json:"name"`
			Value      string `json:"value"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		switch ev.Type {
		case "result":
			if ev.Main {
				text = ev.Text
			}
		case "error":
			return "", 0, fmt.Errorf("the cell raised %s: %s", ev.Name, ev.Value)
		case "end_of_execution":
			// Read the answer to its end, as the SDK does, so the connection is reused.
			io.Copy(io.Discard, resp.Body)
			return text, time.Duration(ev.DurationUS) * time.Microsecond, nil
		}
	}
	return "", 0, fmt.Errorf("the answer ended before end_of_execution: %v", sc.Err())
}

func interpreterPrereq(o Options) string {
	if why := sandboxPrereq(o); why != "" {
		return why
	}
	if _, err := os.Stat(filepath.Join(o.ImagesDir, images.RootFSFile(model.RuntimeCodeInterpreter))); err != nil {
		return "no code-interpreter image; run `make images`"
	}
	return ""
}

// CellOverhead is C1.
func CellOverhead(ctx context.Context, o Options) (_ Result, err error) {
	if why := interpreterPrereq(o); why != "" {
		return rowC1.Skipped(why), nil
	}
	s, err := startSandboxStack(ctx, o, 2)
	if err != nil {
		return Result{}, err
	}
	defer s.Close()
	sb, err := e2bCreate(ctx, s.URL, interpreterShape.MemMB)
	if err != nil {
		return Result{}, err
	}
	defer e2bKill(s.URL, sb.SandboxID)
	n := o.n(50, 10)
	var round, kernel []time.Duration
	for i := -3; i < n; i++ { // three to warm the context up
		t0 := time.Now()
		text, k, err := runCell(ctx, s.URL, sb, "1+1")
		d := time.Since(t0)
		if err != nil {
			return Result{}, err
		}
		if text != "2" {
			return Result{}, fmt.Errorf("1+1 gave %q", text)
		}
		if i >= 0 {
			round, kernel = append(round, d), append(kernel, k)
		}
	}
	r := rowC1.Compare(Overhead, NewSample("kernel", kernel), NewSample("through the route", round), AtMost(CellOverheadMax.Seconds()))
	r.Note = fmt.Sprintf("%d cells after 3 to warm up; the SDK's own p50 is in acceptance/TestCodeInterpreterSDK's log", n)
	return r, nil
}

// FirstResult is C2.
func FirstResult(ctx context.Context, o Options) (_ Result, err error) {
	if why := interpreterPrereq(o); why != "" {
		return rowC2.Skipped(why), nil
	}
	s, err := startSandboxStack(ctx, o, 2, fastStart{snapshots: true})
	if err != nil {
		return Result{}, err
	}
	defer s.Close()
	if _, err := s.vms.BuildSnapshot(ctx, model.RuntimeCodeInterpreter, interpreterShape); err != nil {
		return Result{}, err
	}
	n := o.n(5, 2)
	var restored, cold []time.Duration
	first := func(memMB int) (time.Duration, error) {
		t0 := time.Now()
		sb, err := e2bCreate(ctx, s.URL, memMB)
		if err != nil {
			return 0, err
		}
		defer e2bKill(s.URL, sb.SandboxID)
		if _, _, err := runCell(ctx, s.URL, sb, "1+1"); err != nil {
			return 0, err
		}
		return time.Since(t0), nil
	}
	for i := range n {
		d, err := first(interpreterShape.MemMB)
		if err != nil {
			return Result{}, err
		}
		restored = append(restored, d)
		// A shape of its own boots cold (its snapshot would only be built after).
		if d, err = first(interpreterShape.MemMB + 4*(i+1)); err != nil {
			return Result{}, err
		}
		cold = append(cold, d)
	}
	r := rowC2.Compare(Ratio, NewSample("cold boot", cold), NewSample("restored", restored), AtMost(0.5))
	r.Note = fmt.Sprintf("%d each; the interpreter service starts after the restore (the snapshot holds the VM, not a warm kernel)", n)
	return r, nil
}
