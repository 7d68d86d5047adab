package main

import (
	"strings"
	"testing"

	"github.com/vulcanhq/vulcan/internal/testenv"
)

// TestRunInMicroVM is the promise end to end: `vulcan serve` with the built images
// and `vulcan run` printing what the code printed from inside a booted VM, for every
// runtime, with the program's exit code as the CLI's.
func TestRunInMicroVM(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	testenv.RequiresBinary(t, "qemu-system-x86_64")
	imgs := testenv.RequiresImages(t, "python", "node", "go")
	srv := startServe(t, "--images-dir", imgs, "--max-concurrent", "2")

	cases := []struct {
		runtime, code string
		want          string
		exit          int
	}{
		{"python", "print(42)", "42", 0},
		{"node", "console.log(42)", "42", 0},
		{"go", "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(42) }\n", "42", 0},
		{"python", "import sys\nprint('bye')\nsys.exit(7)", "bye", 7},
	}
	for _, c := range cases {
		t.Run(c.runtime, func(t *testing.T) {
			out, code := srv.vulcan(t, "run", "--runtime", c.runtime, "--code", c.code)
			if code != c.exit || strings.TrimSpace(out) != c.want {
				t.Fatalf("vulcan run: exit %d, output %q; want exit %d, output %q", code, out, c.exit, c.want)
			}
		})
	}
	out, code := srv.vulcan(t, "ls")
	if code != 0 || !strings.Contains(out, "4 of 4 workloads") {
		t.Fatalf("ls: %q", out)
	}
}
