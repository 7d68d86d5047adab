package instance

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadCreatesOnceAndKeeps(t *testing.T) {
	dir := t.TempDir()
	id, created, err := Load(dir)
	if err != nil || !created {
		t.Fatalf("first load: %q created=%v err=%v", id, created, err)
	}
	if len(id) != Len || Check(id) != nil {
		t.Errorf("id %q", id)
	}
	b, _ := os.ReadFile(filepath.Join(dir, FileName))
	if string(b) != id+"\n" {
		t.Errorf("file holds %q, want %q", b, id+"\n")
	}
	again, created, err := Load(dir)
	if err != nil || created || again != id {
		t.Errorf("second load: %q created=%v err=%v, want %q", again, created, err, id)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("data dir holds %v, want the id file alone", entries)
	}
}

func TestLoadRefusesAMalformedID(t *testing.T) {
	for _, content := range []string{"", "UPPER123\n", "much-too-long-id\n", "a/b\n"} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, FileName), []byte(content), 0o600)
		if id, _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "instance id") {
			t.Errorf("%q: id %q err %v, want a refusal", content, id, err)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, FileName)); string(b) != content {
			t.Errorf("%q: file rewritten to %q", content, b)
		}
	}
}

func TestNewIsDistinctAndValid(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := New()
		if err := Check(id); err != nil || len(id) != Len {
			t.Fatalf("%q: %v", id, err)
		}
		if seen[id] {
			t.Fatalf("%q twice in 1000", id)
		}
		seen[id] = true
	}
}
