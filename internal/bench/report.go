package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// Options size and locate the benchmarks. The zero value runs the full measurements.
type Options struct {
	// Quick uses fewer samples and a smaller P3 image; results say so in their note.
	Quick bool
	// Iterations is the number of samples per side of every comparison; 0 keeps each
	// benchmark's default (smaller with Quick).
	Iterations int
	// ImageSize is P3's image in bytes; 0: 1 GiB (64 MiB with Quick).
	ImageSize int64
	// TempDir holds P2's agent, P3's image and P1/P5's database; "" is os.TempDir(). P2's
	// workload user (uid 1000 under root) must be able to traverse it.
	TempDir string
	// ImagesDir, QEMUBin and Accel ("kvm" or "tcg"; "" is tcg) are for P4 and S1–S3.
	ImagesDir string
	QEMUBin   string
	Accel     string
	// Sandboxes is S3's largest N; 0: 32 (8 with Quick).
	Sandboxes int
	// Logf, when set, receives progress lines.
	Logf func(format string, args ...any)
}

// n is a benchmark's sample count: Iterations when set, else full or quick.
func (o Options) n(full, quick int) int {
	switch {
	case o.Iterations > 0:
		return o.Iterations
	case o.Quick:
		return quick
	}
	return full
}

func (o Options) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}

func (o Options) tempDir() string {
	if o.TempDir != "" {
		return o.TempDir
	}
	return os.TempDir()
}

// Benchmark is one of P1–P5, S1–S3, E1, F1–F5, C1–C2.
type Benchmark struct {
	ID    string // "P1"
	Title string
	Run   func(ctx context.Context, o Options) ([]Result, error)
}

func one(f func(context.Context, Options) (Result, error)) func(context.Context, Options) ([]Result, error) {
	return func(ctx context.Context, o Options) ([]Result, error) {
		r, err := f(ctx, o)
		return []Result{r}, err
	}
}

// All lists the benchmarks in the order they run.
var All = []Benchmark{
	{"P1", "control-plane overhead and rate", ControlPlane},
	{"P2", "agent overhead", one(AgentOverhead)},
	{"P3", "rootfs provisioning vs copy", one(RootfsProvisioning)},
	{"P4", "boot to hello vs bare VMM", one(BootToHello)},
	{"P5", "log streaming latency and throughput", LogStreaming},
	{"S1", "sandbox exec overhead", one(SandboxExec)},
	{"S2", "sandbox file round trip", SandboxFiles},
	{"S3", "sandbox density", one(Density)},
	{"E1", "E2B SDK create → first command", one(E2BCreate)},
	{"F1", "warm-pool acquire → first exec", one(WarmPoolAcquire)},
	{"F2", "snapshot restore vs cold boot", one(SnapshotRestore)},
	{"F3", "python print(1) one-shot, restored vs cold", one(OneShotRestore)},
	{"F4", "20 concurrent sandbox creates", one(ConcurrentCreates)},
	{"F5", "pause and resume, 256 MiB and 1 GiB", PauseResume},
	{"C1", "runCode('1+1') through the E2B route vs the kernel's time", one(CellOverhead)},
	{"C2", "create code-interpreter → first result, restored vs cold", one(FirstResult)},
	{"K1", "exec and a call through a non-owner node vs the owner", ClusterExec},
	{"K2", "no-op workloads/s with 1, 2, 3 nodes", ClusterScaling},
}

// Select returns the benchmarks whose IDs are in only (all when only is empty).
func Select(only []string) ([]Benchmark, error) {
	if len(only) == 0 {
		return All, nil
	}
	var out []Benchmark
	for _, id := range only {
		id = strings.ToUpper(strings.TrimSpace(id))
		found := false
		for _, b := range All {
			if b.ID == id {
				out = append(out, b)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown benchmark %q (have P1–P5, S1–S3, E1, F1–F5, C1–C2, K1–K2)", id)
		}
	}
	return out, nil
}

// Report is one run of the benchmarks: the table and the JSON.
type Report struct {
	Date       time.Time `json:"date"`
	Version    string    `json:"vulcan_version"`
	Machine    Machine   `json:"machine"`
	Quick      bool      `json:"quick"`
	Iterations int       `json:"iterations,omitempty"`
	Results    []Result  `json:"results"`
}

// Run runs bs one after another. A benchmark that fails becomes an error row and the
// others still run; only ctx ending stops the run.
func Run(ctx context.Context, o Options, bs []Benchmark) []Result {
	var out []Result
	for _, b := range bs {
		if ctx.Err() != nil {
			break
		}
		o.logf("%s: %s…", b.ID, b.Title)
		start := time.Now()
		rs, err := b.Run(ctx, o)
		out = append(out, rs...)
		if err != nil {
			out = append(out, Row{ID: b.ID, Title: b.Title}.Failed(err))
		}
		o.logf("%s: done in %s", b.ID, time.Since(start).Round(time.Millisecond))
	}
	return out
}

// Failed counts the error rows.
func (r *Report) Failed() int {
	n := 0
	for _, res := range r.Results {
		if res.Verdict == Error {
			n++
		}
	}
	return n
}

// WriteTable prints the machine, the table and the rows' notes.
func (r *Report) WriteTable(w io.Writer) error {
	m := r.Machine
	mode := "full"
	if r.Quick {
		mode = "quick"
	}
	if r.Iterations > 0 {
		mode += fmt.Sprintf(", %d iterations", r.Iterations)
	}
	fmt.Fprintf(w, "vulcan %s bench (%s), %s\n", r.Version, mode, r.Date.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "machine: %s\n\n", m)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tMEASURES\tBASELINE\tVULCAN\tRATIO OR RATE\tTARGET\tVERDICT")
	for _, res := range r.Results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", res.ID, res.Title, res.Baseline.cell(), res.Vulcan.cell(),
			res.FormatValue(), res.FormatTarget(), res.Verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	first := true
	for _, res := range r.Results {
		if res.Measures == "" && res.Note == "" {
			continue
		}
		if first {
			fmt.Fprintln(w)
			first = false
		}
		text := res.Measures
		if res.Note != "" {
			if text != "" {
				text += "; "
			}
			text += res.Note
		}
		if _, err := fmt.Fprintf(w, "%s: %s\n", res.ID, text); err != nil {
			return err
		}
	}
	return nil
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // "<=" stays readable
	return enc.Encode(r)
}
