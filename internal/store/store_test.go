package store_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/store"
)

func open(t *testing.T, path string) *store.Store {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "vulcan.db")
	}
	s, err := store.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var clock = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func newWorkload(id string, rt model.Runtime) *model.Workload {
	return &model.Workload{
		ID:     id,
		Status: model.StatusPending,
		Spec: model.Spec{Runtime: rt, Isolation: model.IsolationMicroVM, Code: "print(1)",
			Env: map[string]string{"A": "b"}, Resources: model.Resources{CPUs: 1, MemMB: 256, TimeoutS: 5}},
		CreatedAt: clock,
		Metadata:  map[string]string{},
	}
}

func TestMigrationsAreIdempotent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	ctx := context.Background()
	s := open(t, path)
	if err := s.Create(ctx, newWorkload("01A", model.RuntimePython)); err != nil {
		t.Fatal(err)
	}
	v1, err := s.SchemaVersion(ctx)
	if err != nil || v1 < 1 {
		t.Fatalf("schema version %d, %v", v1, err)
	}
	s.Close()
	s2 := open(t, path)
	v2, _ := s2.SchemaVersion(ctx)
	if v2 != v1 {
		t.Fatalf("reopen changed schema version %d → %d", v1, v2)
	}
	if _, err := s2.Get(ctx, "01A"); err != nil {
		t.Fatalf("workload lost across reopen: %v", err)
	}
}

func TestCreateGetRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := open(t, "")
	w := newWorkload("01B", model.RuntimeNode)
	w.Spec.Archive = []byte{0x1f, 0x8b, 1, 2, 3}
	w.Spec.Code = ""
	w.Spec.Input = []byte(`{"x":1}`)
	if err := s.Create(ctx, w); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "01B")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != model.StatusPending || got.Spec.Runtime != model.RuntimeNode || got.Spec.Env["A"] != "b" ||
		string(got.Spec.Input) != `{"x":1}` || !got.CreatedAt.Equal(clock) || got.ExitCode != nil || got.StartedAt != nil {
		t.Fatalf("round trip mismatch: %+v", got)
	}
	if got.Spec.Archive != nil {
		t.Fatal("Get should not load the archive")
	}
	arch, err := s.Archive(ctx, "01B")
	if err != nil || string(arch) != string(w.Spec.Archive) {
		t.Fatalf("archive = %v, %v", arch, err)
	}
	if _, err := s.Get(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing workload: got %v, want ErrNotFound", err)
	}
}

func TestUpdateEnforcesTransitions(t *testing.T) {
	ctx := context.Background()
	s := open(t, "")
	w := newWorkload("01C", model.RuntimeGo)
	if err := s.Create(ctx, w); err != nil {
		t.Fatal(err)
	}
	// pending → completed skips running: forbidden.
	w.Status = model.StatusCompleted
	if err := s.Update(ctx, w, nil); !errors.Is(err, store.ErrTransition) {
		t.Fatalf("pending→completed: got %v, want ErrTransition", err)
	}
	started := clock.Add(time.Second)
	w.Status, w.StartedAt, w.Backend = model.StatusRunning, &started, "microvm"
	if err := s.Update(ctx, w, nil); err != nil {
		t.Fatal(err)
	}
	finished := started.Add(1500 * time.Millisecond)
	code := 3
	w.Status, w.FinishedAt, w.ExitCode = model.StatusFailed, &finished, &code
	w.Output, w.Stdout, w.Metadata = "hi\n", "hi\n", map[string]string{"vm_id": "vm-1"}
	lines := []model.LogLine{{Seq: 1, Stream: model.Stdout, Text: "hi", Time: started}}
	if err := s.Update(ctx, w, lines); err != nil {
		t.Fatal(err)
	}
	// Terminal workloads are frozen, even to the same status.
	w.Status = model.StatusKilled
	if err := s.Update(ctx, w, nil); !errors.Is(err, store.ErrTransition) {
		t.Fatalf("failed→killed: got %v, want ErrTransition", err)
	}
	w.Status = model.StatusFailed
	if err := s.Update(ctx, w, nil); !errors.Is(err, store.ErrTransition) {
		t.Fatalf("failed→failed: got %v, want ErrTransition", err)
	}
	got, _ := s.Get(ctx, "01C")
	if got.Status != model.StatusFailed || *got.ExitCode != 3 || got.Metadata["vm_id"] != "vm-1" ||
		got.DurationMS() != 1500 || got.QueueMS() != 1000 || got.Output != "hi\n" {
		t.Fatalf("stored %+v", got)
	}
	logs, _ := s.Logs(ctx, "01C", 0, 0)
	if len(logs) != 1 || logs[0].Text != "hi" {
		t.Fatalf("logs written with the final update: %+v", logs)
	}
	missing := newWorkload("nope", model.RuntimeGo)
	missing.Status = model.StatusRunning
	if err := s.Update(ctx, missing, nil); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("update of missing workload: %v", err)
	}
}

func TestLogsBatchedAndPaged(t *testing.T) {
	ctx := context.Background()
	s := open(t, "")
	if err := s.Create(ctx, newWorkload("01D", model.RuntimePython)); err != nil {
		t.Fatal(err)
	}
	// More than one INSERT batch's worth, in two appends.
	var lines []model.LogLine
	for i := 1; i <= 1234; i++ {
		lines = append(lines, model.LogLine{Seq: int64(i), Stream: model.Stdout, Text: fmt.Sprint("line ", i), Time: clock})
	}
	if err := s.AppendLogs(ctx, "01D", lines[:700]); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendLogs(ctx, "01D", lines[700:]); err != nil {
		t.Fatal(err)
	}
	// A duplicate sequence number is a bug in the caller; the store must not hide it.
	if err := s.AppendLogs(ctx, "01D", lines[:1]); err == nil {
		t.Fatal("duplicate seq accepted")
	}
	all, err := s.Logs(ctx, "01D", 0, 0)
	if err != nil || len(all) != 1234 {
		t.Fatalf("got %d lines, %v", len(all), err)
	}
	for i, l := range all {
		if l.Seq != int64(i+1) {
			t.Fatalf("line %d has seq %d", i, l.Seq)
		}
	}
	page, _ := s.Logs(ctx, "01D", 1000, 10)
	if len(page) != 10 || page[0].Seq != 1001 || page[0].Text != "line 1001" {
		t.Fatalf("page after 1000: %+v", page[:1])
	}
}

func TestListFiltersAndPaginates(t *testing.T) {
	ctx := context.Background()
	s := open(t, "")
	rts := []model.Runtime{model.RuntimePython, model.RuntimeGo, model.RuntimePython, model.RuntimeNode, model.RuntimePython}
	for i, rt := range rts {
		w := newWorkload(fmt.Sprintf("01E%d", i), rt)
		if err := s.Create(ctx, w); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			w.Status = model.StatusKilled
			if err := s.Update(ctx, w, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	ws, total, err := s.List(ctx, store.Filter{Runtime: model.RuntimePython, Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	if total != 3 || len(ws) != 2 || ws[0].ID != "01E4" || ws[1].ID != "01E2" {
		t.Fatalf("python page 1: total=%d ids=%v", total, ids(ws))
	}
	ws, total, _ = s.List(ctx, store.Filter{Runtime: model.RuntimePython, Limit: 2, Offset: 2})
	if total != 3 || len(ws) != 1 || ws[0].ID != "01E0" {
		t.Fatalf("python page 2: total=%d ids=%v", total, ids(ws))
	}
	ws, total, _ = s.List(ctx, store.Filter{Status: model.StatusPending, Isolation: model.IsolationMicroVM})
	if total != 2 || len(ws) != 2 || ws[0].ID != "01E3" {
		t.Fatalf("pending: total=%d ids=%v", total, ids(ws))
	}
	ws, total, _ = s.List(ctx, store.Filter{Isolation: model.IsolationAuto})
	if total != 0 || ws == nil || len(ws) != 0 {
		t.Fatalf("no match must be an empty, non-nil page: %v %d", ws, total)
	}
}

func ids(ws []*model.Workload) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.ID)
	}
	return out
}

func TestStats(t *testing.T) {
	ctx := context.Background()
	s := open(t, "")
	for i, d := range []time.Duration{100, 200, 300, 400} {
		w := newWorkload(fmt.Sprint("01F", i), model.Runtimes[i%3])
		if err := s.Create(ctx, w); err != nil {
			t.Fatal(err)
		}
		start, end := clock.Add(10*time.Millisecond), clock.Add(10*time.Millisecond+d*time.Millisecond)
		w.Status, w.StartedAt = model.StatusRunning, &start
		if err := s.Update(ctx, w, nil); err != nil {
			t.Fatal(err)
		}
		w.Status, w.FinishedAt = model.StatusCompleted, &end
		if err := s.Update(ctx, w, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Create(ctx, newWorkload("01F9", model.RuntimeGo)); err != nil {
		t.Fatal(err)
	}
	st, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := st.Durations
	if st.Total != 5 || st.ByStatus[model.StatusCompleted] != 4 || st.ByStatus[model.StatusPending] != 1 ||
		st.ByRuntime[model.RuntimeGo] != 3 || d.Count != 4 || d.AvgMS != 250 || d.MaxMS != 400 || d.P50MS != 200 ||
		d.P95MS != 300 || d.AvgQueueMS != 10 {
		t.Fatalf("stats %+v", st)
	}
}

func TestReconcileFailsUnfinishedWorkloads(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db")
	s := open(t, path)
	for i, st := range []model.Status{model.StatusPending, model.StatusRunning, model.StatusCompleted} {
		w := newWorkload(fmt.Sprint("01G", i), model.RuntimeGo)
		if err := s.Create(ctx, w); err != nil {
			t.Fatal(err)
		}
		if st != model.StatusPending {
			w.Status = model.StatusRunning
			s.Update(ctx, w, nil)
		}
		if st == model.StatusCompleted {
			w.Status = model.StatusCompleted
			s.Update(ctx, w, nil)
		}
	}
	s.Close() // as if the process died here
	s = open(t, path)
	n, err := s.Reconcile(ctx, "server restarted", clock)
	if err != nil || n != 2 {
		t.Fatalf("reconciled %d, %v", n, err)
	}
	for id, want := range map[string]model.Status{"01G0": model.StatusFailed, "01G1": model.StatusFailed, "01G2": model.StatusCompleted} {
		w, _ := s.Get(ctx, id)
		if w.Status != want || (want == model.StatusFailed && (w.Error != "server restarted" || w.FinishedAt == nil)) {
			t.Fatalf("%s: %s %q", id, w.Status, w.Error)
		}
	}
}
