package microvm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/model"
)

// The output-integrity property, in real VMs: whatever a program writes reaches the sink,
// byte for byte and in order per stream, up to the output cap; past it the result says
// truncated and what arrived is a prefix. Each case is a random program: a random number
// of writes (1–50,000) of random lengths (0–100 KiB, most short), to stdout or stderr at
// random, with or without a newline each (so the last bytes may lack one), ending with a
// normal exit, sys.exit or os._exit right after the last write.
//
// VULCAN_INTEGRITY_CASES sets the number of random cases (default 4 per driver, after the
// fixed reproduction of 10,000 printed lines, which used to store ~1,860).

// integrityProgram writes what its stdin lists, with os.write (no buffering to lose), and
// ends as told.
const integrityProgram = `import json, os, sys
spec = json.load(sys.stdin)
for i, (fd, n, nl) in enumerate(spec["w"]):
    b = bytes([33 + (i * 7) % 90]) * n + (b"\n" if nl else b"")
    while b:
        b = b[os.write(fd, b):]
end = spec["end"]
if end == "_exit":
    os._exit(0)
if end == "sys.exit":
    sys.exit(0)
`

type write struct {
	FD      int  // 1 stdout, 2 stderr
	N       int  // bytes before the optional newline
	Newline bool // followed by a newline
}

func (w write) MarshalJSON() ([]byte, error) {
	nl := 0
	if w.Newline {
		nl = 1
	}
	return []byte(fmt.Sprintf("[%d,%d,%d]", w.FD, w.N, nl)), nil
}

type integrityCase struct {
	name   string
	writes []write
	end    string
}

// expected is what each stream should carry: the same bytes the program writes.
func (c integrityCase) expected() (stdout, stderr []byte) {
	for i, w := range c.writes {
		b := bytes.Repeat([]byte{byte(33 + (i*7)%90)}, w.N)
		if w.Newline {
			b = append(b, '\n')
		}
		if w.FD == 1 {
			stdout = append(stdout, b...)
		} else {
			stderr = append(stderr, b...)
		}
	}
	return stdout, stderr
}

func randomCase(r *rand.Rand, i int) integrityCase {
	// Log-uniform count, so small and large programs both appear.
	count := int(math.Exp(r.Float64() * math.Log(50_000)))
	count = max(1, min(count, 50_000))
	ws := make([]write, count)
	for j := range ws {
		var n int
		switch p := r.Float64(); {
		case p < 0.90:
			n = r.IntN(81)
		case p < 0.99:
			n = r.IntN(4 << 10)
		default:
			n = r.IntN(100<<10 + 1)
		}
		ws[j] = write{FD: 1 + r.IntN(2), N: n, Newline: r.Float64() < 0.95}
	}
	ws[len(ws)-1].Newline = r.IntN(2) == 0
	ends := []string{"return", "sys.exit", "_exit"}
	return integrityCase{name: fmt.Sprintf("random%d", i), writes: ws, end: ends[r.IntN(len(ends))]}
}

func runOutputIntegrity(t *testing.T, h *harness) {
	cases := []integrityCase{{name: "ten_thousand_lines", end: "return"}}
	for i := range 10_000 {
		cases[0].writes = append(cases[0].writes, write{FD: 1, N: len(strconv.Itoa(i)), Newline: true})
	}
	n := 4
	if v, err := strconv.Atoi(os.Getenv("VULCAN_INTEGRITY_CASES")); err == nil && v >= 0 {
		n = v
	}
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("VULCAN_INTEGRITY_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("integrity seed %d (VULCAN_INTEGRITY_SEED reruns it)", seed)
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	for i := range n {
		cases = append(cases, randomCase(r, i))
	}
	var compared int64
	for _, c := range cases {
		t.Run("output_integrity_"+c.name, func(t *testing.T) {
			compared += checkIntegrityCase(t, h, c)
		})
	}
	t.Logf("output integrity: %d cases, %d bytes compared", len(cases), compared)

	t.Run("escaped_grandchild_holding_the_pipe", func(t *testing.T) {
		// The program leaves a process in a new session (outside its process group, so the
		// group kill misses it) that keeps stdout open for a minute. The run must end after
		// a bounded drain, keep what the program wrote, and say output was cut.
		code := "import subprocess, sys\n" +
			"subprocess.Popen(['python3', '-c', 'import time; time.sleep(60)'], start_new_session=True)\n" +
			"print('before exit', flush=True)\n"
		start := time.Now()
		res, rec, err := h.run(t, context.Background(), h.job(model.RuntimePython, code))
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("err %v exit %d stderr %q", err, res.ExitCode, rec.text(model.Stderr))
		}
		if got := string(rec.bytes(model.Stdout)); got != "before exit\n" {
			t.Errorf("stdout %q", got)
		}
		if !res.Truncated || res.TruncatedReason == "" {
			t.Errorf("truncated=%v reason %q: the cut drain must be reported", res.Truncated, res.TruncatedReason)
		}
		t.Logf("run with an escaped writer ended in %v", time.Since(start).Round(time.Millisecond))
	})

	t.Run("escaped_grandchild_writing_forever", func(t *testing.T) {
		code := "import subprocess\n" +
			"subprocess.Popen(['python3', '-c', 'import sys\\nwhile True: sys.stdout.write(\"x\" * 100 + \"\\\\n\")'], start_new_session=True)\n" +
			"print('parent done', flush=True)\n"
		job := h.job(model.RuntimePython, code)
		job.OutputLimit = 64 << 20 // the drain bound must end it, not the cap
		res, rec, err := h.run(t, context.Background(), job)
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("err %v exit %d", err, res.ExitCode)
		}
		if !res.Truncated || res.TruncatedReason == "" {
			t.Errorf("truncated=%v reason %q", res.Truncated, res.TruncatedReason)
		}
		if !bytes.Contains(rec.bytes(model.Stdout), []byte("parent done\n")) {
			t.Error("the program's own line is missing")
		}
	})
}

// checkIntegrityCase runs c and compares what arrived with what was written; it returns
// the number of bytes compared.
func checkIntegrityCase(t *testing.T, h *harness, c integrityCase) int64 {
	t.Helper()
	input, err := json.Marshal(map[string]any{"w": c.writes, "end": c.end})
	if err != nil {
		t.Fatal(err)
	}
	job := h.job(model.RuntimePython, integrityProgram, func(s *model.Spec) {
		s.Input = input
		s.Resources.TimeoutS = 600
	})
	job.LineLimit = 100_000
	wantOut, wantErr := c.expected()
	start := time.Now()
	res, rec, err := h.run(t, context.Background(), job)
	if err != nil || res.ExitCode != 0 || res.Error != "" {
		t.Fatalf("err %v exit %d error %q stderr %.300q", err, res.ExitCode, res.Error, rec.bytes(model.Stderr))
	}
	gotOut, gotErr := rec.bytes(model.Stdout), rec.bytes(model.Stderr)
	total := len(wantOut) + len(wantErr)
	t.Logf("%s: %d writes, %d bytes written (%d stdout, %d stderr), %d received, truncated=%v, end=%s, %v",
		c.name, len(c.writes), total, len(wantOut), len(wantErr), len(gotOut)+len(gotErr), res.Truncated, c.end,
		time.Since(start).Round(time.Millisecond))
	switch {
	case total <= job.OutputLimit:
		if res.Truncated {
			t.Errorf("truncated with %d bytes written under the %d-byte cap", total, job.OutputLimit)
		}
		assertSame(t, "stdout", gotOut, wantOut)
		assertSame(t, "stderr", gotErr, wantErr)
	default:
		if !res.Truncated {
			t.Errorf("%d bytes written over the %d-byte cap, not reported truncated", total, job.OutputLimit)
		}
		assertPrefix(t, "stdout", gotOut, wantOut)
		assertPrefix(t, "stderr", gotErr, wantErr)
		if got := len(gotOut) + len(gotErr); got > job.OutputLimit {
			t.Errorf("%d bytes kept, over the %d-byte cap", got, job.OutputLimit)
		}
	}
	return int64(len(gotOut) + len(gotErr))
}

func assertSame(t *testing.T, name string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Errorf("%s: %d bytes received, %d written; first difference at byte %d", name, len(got), len(want), firstDiff(got, want))
	}
}

func assertPrefix(t *testing.T, name string, got, want []byte) {
	t.Helper()
	if !bytes.HasPrefix(want, got) {
		t.Errorf("%s: the %d bytes received are not a prefix of the %d written; first difference at byte %d", name, len(got), len(want), firstDiff(got, want))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
