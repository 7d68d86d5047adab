package acceptance

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/model"
)

// Sandboxes end to end, in real VMs, through the CLI a user types: create → exec twice
// (the second sees a file the first wrote) → cp out and in → exit codes → kill; an idle
// sandbox's timeout kills it on time; a server killed -9 with a sandbox running finds it
// lost at its next start, and nothing of its VM is left.
func TestSandboxesEndToEnd(t *testing.T) {
	s := startServer(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	out, code := s.vulcan("sandbox", "create", "--template", "python", "--meta", "suite=acceptance")
	if code != 0 {
		t.Fatalf("sandbox create: %d %s", code, out)
	}
	id := strings.TrimSpace(out)
	if out, code := s.vulcan("exec", id, "--", "echo from-the-first > shared.txt; python3 -c 'print(6*7)'"); code != 0 || out != "42\n" {
		t.Fatalf("first exec: %d %q", code, out)
	}
	if out, code := s.vulcan("exec", id, "--", "cat", "shared.txt"); code != 0 || out != "from-the-first\n" {
		t.Fatalf("second exec does not see the first one's file: %d %q", code, out)
	}
	if _, code := s.vulcan("exec", id, "--", "exit 3"); code != 3 {
		t.Errorf("exec exit code %d, want 3", code)
	}
	local := filepath.Join(t.TempDir(), "out.txt")
	if out, code := s.vulcan("cp", id+":shared.txt", local); code != 0 {
		t.Fatalf("cp out: %d %s", code, out)
	}
	if b, _ := os.ReadFile(local); string(b) != "from-the-first\n" {
		t.Fatalf("copied out %q", b)
	}
	up := filepath.Join(t.TempDir(), "in.py")
	os.WriteFile(up, []byte("print('uploaded ran')\n"), 0o644)
	if out, code := s.vulcan("cp", up, id+":/tmp/in.py"); code != 0 {
		t.Fatalf("cp in: %d %s", code, out)
	}
	if out, code := s.vulcan("exec", id, "--", "python3", "/tmp/in.py"); code != 0 || out != "uploaded ran\n" {
		t.Fatalf("run the uploaded file: %d %q", code, out)
	}
	if out, code := s.vulcan("sandbox", "ls"); code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "suite=acceptance") {
		t.Errorf("sandbox ls: %d %s", code, out)
	}
	if out, code := s.vulcan("sandbox", "kill", id); code != 0 || !strings.Contains(out, "killed") {
		t.Fatalf("kill: %d %s", code, out)
	}
	if left := s.leftovers(); len(left) != 0 {
		t.Errorf("after kill: %v", left)
	}

	// The timeout kills an idle sandbox on time.
	sb, err := s.c.CreateSandbox(ctx, model.SandboxSpec{TimeoutS: 4})
	if err != nil {
		t.Fatal(err)
	}
	for {
		got, err := s.c.GetSandbox(ctx, sb.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.State == model.SandboxTimedOut {
			if late := got.EndedAt.Sub(sb.ExpiresAt); late < 0 || late > 5*time.Second {
				t.Errorf("ended %v after its expiry", late)
			}
			break
		}
		if time.Now().After(sb.ExpiresAt.Add(30 * time.Second)) {
			t.Fatalf("still %s 30 s after its timeout", got.State)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if left := s.leftovers(); len(left) != 0 {
		t.Errorf("after the timeout: %v", left)
	}

	// A crash with a sandbox running: lost at restart, its VM reclaimed.
	sb, err = s.c.CreateSandbox(ctx, model.SandboxSpec{})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.leftovers()) == 0 {
		t.Fatal("no VM state while a sandbox runs: the leftovers check cannot see anything")
	}
	s.crash()
	s2 := startServer(t, s.dataDir)
	got, err := s2.c.GetSandbox(ctx, sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != model.SandboxLost {
		t.Errorf("after restart: %s (%s), want lost", got.State, got.Error)
	}
	if left := s2.leftovers(); len(left) != 0 {
		t.Errorf("after restart: %v", left)
	}
}
