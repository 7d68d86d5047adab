package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/model"
)

func TestSandboxLifecycleAndList(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now().UTC()
	mk := func(i int, meta map[string]string) *model.Sandbox {
		sb := &model.Sandbox{ID: fmt.Sprintf("01SB%04d", i), State: model.SandboxStarting, CreatedAt: now,
			ExpiresAt: now.Add(time.Minute), Spec: model.SandboxSpec{Template: model.RuntimePython,
				Env: map[string]string{"SECRET": "x"}, Metadata: meta}}
		if err := s.CreateSandbox(ctx, sb); err != nil {
			t.Fatal(err)
		}
		return sb
	}
	for i := range 7 {
		mk(i, map[string]string{"team": []string{"a", "b"}[i%2], "n": fmt.Sprint(i)})
	}
	sb, err := s.GetSandbox(ctx, "01SB0003")
	if err != nil || sb.Spec.Env != nil || sb.Spec.Metadata["team"] != "b" || sb.State != model.SandboxStarting {
		t.Fatalf("get: %+v %v (env must not be stored)", sb, err)
	}
	sb.State, sb.VM = model.SandboxRunning, map[string]string{"vm_id": "v"}
	if err := s.UpdateSandbox(ctx, sb); err != nil {
		t.Fatal(err)
	}
	sb.State = model.SandboxKilled // running → killed skips stopping
	if err := s.UpdateSandbox(ctx, sb); !errors.Is(err, ErrTransition) {
		t.Fatalf("running → killed: %v", err)
	}
	if _, err := s.GetSandbox(ctx, "nope"); !errors.Is(err, ErrSandboxNotFound) {
		t.Fatal(err)
	}

	// Cursor pages, newest first, with filters.
	var got []string
	after := ""
	for {
		page, more, err := s.ListSandboxes(ctx, SandboxFilter{Metadata: map[string]string{"team": "a"}, Limit: 2, After: after})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range page {
			got = append(got, p.ID)
		}
		if !more {
			break
		}
		after = page[len(page)-1].ID
	}
	if fmt.Sprint(got) != "[01SB0006 01SB0004 01SB0002 01SB0000]" {
		t.Fatalf("team=a pages: %v", got)
	}
	running, _, _ := s.ListSandboxes(ctx, SandboxFilter{States: []model.SandboxState{model.SandboxRunning}})
	if len(running) != 1 || running[0].ID != "01SB0003" {
		t.Fatalf("running: %v", running)
	}
	none, _, _ := s.ListSandboxes(ctx, SandboxFilter{Metadata: map[string]string{"team": "a", "n": "3"}})
	if len(none) != 0 {
		t.Fatalf("two pairs must both match: %v", none)
	}

	n, err := s.ReconcileSandboxes(ctx, "server restarted", now)
	if err != nil || n != 7 {
		t.Fatalf("reconcile: %d %v", n, err)
	}
	if sb, _ := s.GetSandbox(ctx, "01SB0003"); sb.State != model.SandboxLost || sb.EndedAt == nil {
		t.Fatalf("after reconcile: %+v", sb)
	}
	counts, _ := s.SandboxCounts(ctx)
	if counts[model.SandboxLost] != 7 {
		t.Fatalf("counts %v", counts)
	}
}
