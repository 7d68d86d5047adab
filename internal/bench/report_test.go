package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func fixedReport() *Report {
	ms := time.Millisecond
	return &Report{
		Date:    time.Date(2026, 11, 26, 9, 0, 0, 0, time.UTC),
		Version: "v1.2.3",
		Machine: Machine{CPU: "Test CPU", CPUs: 2, MemoryBytes: 4 << 30, Kernel: "Linux 6.1.0", Accel: "tcg",
			AccelReason: "no /dev/kvm", Go: "go1.26.0"},
		Quick: true,
		Results: []Result{
			Row{"P1a", "control-plane overhead", "no-op via API vs direct"}.Compare(Overhead,
				sample("direct call", 0), sample("via API", 300*time.Microsecond), AtMost(0.001)),
			Row{"P1b", "control-plane rate", ""}.Rate(4000, 2*time.Second, "workloads/s", AtLeast(2000)),
			Row{"P2", "agent overhead", ""}.Compare(Ratio, sample("direct", 10*ms), sample("via agent", 11*ms), AtMost(1.05)),
			Row{"P4", "boot vs bare VMM", ""}.Skipped("qemu-system-x86_64 not found"),
			Row{"P5", "log streaming", ""}.Failed(errors.New("client saw 3 of 4 lines")),
		},
	}
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	if err := fixedReport().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	want := `vulcan v1.2.3 bench (quick), 2026-11-26 09:00 UTC
machine: Test CPU, 2 CPUs, 4.0 GiB RAM, Linux 6.1.0, accel tcg (no /dev/kvm), go1.26.0

ID   MEASURES                BASELINE        VULCAN            RATIO OR RATE      TARGET               VERDICT
P1a  control-plane overhead  0s direct call  300µs via API     +300µs             ≤ 1.00ms             pass
P1b  control-plane rate      —               —                 2,000 workloads/s  ≥ 2,000 workloads/s  pass
P2   agent overhead          10.0ms direct   11.0ms via agent  1.10×              ≤ 1.05×              miss
P4   boot vs bare VMM        —               —                 —                  —                    skip
P5   log streaming           —               —                 —                  —                    error

P1a: no-op via API vs direct
P4: qemu-system-x86_64 not found
P5: client saw 3 of 4 lines
`
	if got := b.String(); got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
}

func TestWriteJSON(t *testing.T) {
	var b bytes.Buffer
	if err := fixedReport().WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `"op": "<="`) {
		t.Errorf("targets should read as <= and >=:\n%s", b.String())
	}
	// The shape trackers rely on.
	var got struct {
		Date    time.Time `json:"date"`
		Version string    `json:"vulcan_version"`
		Machine map[string]any
		Quick   bool
		Results []map[string]any
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got.Version != "v1.2.3" || !got.Quick || got.Machine["cpu"] != "Test CPU" || got.Machine["cpus"] != 2.0 ||
		got.Machine["memory_bytes"] != float64(4<<30) || got.Machine["accel"] != "tcg" || got.Machine["kernel"] != "Linux 6.1.0" {
		t.Errorf("header %+v", got)
	}
	if len(got.Results) != 5 {
		t.Fatalf("%d results", len(got.Results))
	}
	p2 := got.Results[2]
	base, _ := p2["baseline"].(map[string]any)
	vul, _ := p2["vulcan"].(map[string]any)
	if p2["id"] != "P2" || p2["kind"] != "ratio" || p2["unit"] != "x" || p2["verdict"] != "miss" ||
		base["median_seconds"] != 0.01 || base["label"] != "direct" || vul["samples"] != 5.0 ||
		p2["target"].(map[string]any)["value"] != 1.05 {
		t.Errorf("P2 %+v", p2)
	}
	if d := p2["value"].(float64) - 1.1; d > 1e-9 || d < -1e-9 {
		t.Errorf("P2 value %v", p2["value"])
	}
	if _, ok := got.Results[1]["baseline"]; ok {
		t.Errorf("a rate has no baseline: %+v", got.Results[1])
	}
	if got.Results[3]["verdict"] != "skip" || got.Results[3]["note"] != "qemu-system-x86_64 not found" {
		t.Errorf("skip %+v", got.Results[3])
	}
}

func TestSelect(t *testing.T) {
	all, err := Select(nil)
	if err != nil || len(all) != 18 {
		t.Fatalf("all: %d %v", len(all), err)
	}
	bs, err := Select([]string{"p3", " P1"})
	if err != nil || len(bs) != 2 || bs[0].ID != "P3" || bs[1].ID != "P1" {
		t.Fatalf("selected %v %v", bs, err)
	}
	if bs, err := Select([]string{"S1", "s2", "S3"}); err != nil || len(bs) != 3 || bs[2].ID != "S3" {
		t.Fatalf("selected %v %v", bs, err)
	}
	if _, err := Select([]string{"P9"}); err == nil {
		t.Error("P9 accepted")
	}
}

func TestOptionsSamples(t *testing.T) {
	if n := (Options{}).n(500, 100); n != 500 {
		t.Error(n)
	}
	if n := (Options{Quick: true}).n(500, 100); n != 100 {
		t.Error(n)
	}
	if n := (Options{Quick: true, Iterations: 3}).n(500, 100); n != 3 {
		t.Error(n)
	}
}

// Without QEMU or images, S1–S3, E1, F1–F5, C1–C2 and K1a–K1b are skip rows that say why, and boot
// nothing.
func TestSandboxBenchmarksSkip(t *testing.T) {
	for _, o := range []Options{
		{QEMUBin: "/nonexistent/qemu", ImagesDir: t.TempDir()},
		{QEMUBin: "/bin/true", ImagesDir: t.TempDir()},
	} {
		rs := Run(context.Background(), o, All[5:len(All)-1]) // K2 runs without VMs
		ids := []string{"S1", "S2a", "S2b", "S3", "E1", "F1", "F2", "F3", "F4", "F5a", "F5b", "F5c", "F5d", "C1", "C2", "K1a", "K1b"}
		if len(rs) != len(ids) {
			t.Fatalf("results %+v", rs)
		}
		for i, id := range ids {
			if rs[i].ID != id || rs[i].Verdict != Skip || rs[i].Note == "" {
				t.Errorf("row %d: %+v", i, rs[i])
			}
		}
	}
}

func TestCountCells(t *testing.T) {
	r := Result{Kind: Count, Value: 8, Unit: "sandboxes", Target: AtLeast(100)}.judged()
	if r.Verdict != Miss || r.FormatValue() != "8 sandboxes" || r.FormatTarget() != "≥ 100 sandboxes" {
		t.Errorf("%+v %q %q", r, r.FormatValue(), r.FormatTarget())
	}
}
