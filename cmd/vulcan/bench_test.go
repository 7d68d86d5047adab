package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// vulcan bench --only P1,P5 with tiny counts: the table and the JSON come out, with the
// machine in both. No timing is asserted.
func TestBenchCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the API stack")
	}
	file := filepath.Join(t.TempDir(), "bench.json")
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"bench", "--only", "P1,P5", "--iterations", "2", "--json", file,
		"--images-dir", t.TempDir()}, &out, &errOut)
	if err != nil {
		t.Fatalf("%v\n%s\n%s", err, out.String(), errOut.String())
	}
	table := out.String()
	for _, want := range []string{"machine: ", "RATIO OR RATE", "P1a", "P1b", "P5a", "P5b", "2 iterations"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Machine struct {
			CPUs  int    `json:"cpus"`
			Accel string `json:"accel"`
		} `json:"machine"`
		Iterations int `json:"iterations"`
		Results    []struct {
			ID      string `json:"id"`
			Verdict string `json:"verdict"`
		} `json:"results"`
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Machine.CPUs < 1 || rep.Machine.Accel == "" || rep.Iterations != 2 || len(rep.Results) != 4 {
		t.Fatalf("report %+v", rep)
	}

	if err := run(context.Background(), []string{"bench", "--only", "P9"}, &out, &errOut); err == nil {
		t.Error("--only P9 accepted")
	}
}
