package cleanup

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestStackRunsLIFOOnceAndJoinsErrors(t *testing.T) {
	var order []string
	var s Stack
	add := func(name string, err error) {
		s.Add(name, func(ctx context.Context) error {
			if ctx.Err() != nil {
				t.Errorf("%s got a cancelled context", name)
			}
			order = append(order, name)
			return err
		})
	}
	add("dir", nil)
	add("cid", errors.New("boom"))
	add("vmm", nil)

	// Teardown from a cancelled request context still runs every step with live time.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran, err := s.Run(ctx, time.Minute)
	if !ran || strings.Join(order, ",") != "vmm,cid,dir" {
		t.Fatalf("ran=%v order %v, want LIFO", ran, order)
	}
	if err == nil || !strings.Contains(err.Error(), "cid: boom") {
		t.Errorf("err = %v", err)
	}
	if ran2, err2 := s.Run(context.Background(), time.Minute); err2 != err || ran2 || len(order) != 3 {
		t.Errorf("second run: %v ran=%v, order %v", err2, ran2, order)
	}
	s.Add("late", func(context.Context) error { order = append(order, "late"); return nil })
	if order[len(order)-1] != "late" {
		t.Errorf("late undo not run: %v", order)
	}
}

// The caller's deadline bounds teardown. Before the cleanup package existed the stack
// wrapped ctx in WithoutCancel, which also dropped the deadline, so the engine's 15 s
// teardown bound never applied and a hard-coded 30 s did.
func TestRunKeepsCallerDeadline(t *testing.T) {
	want := time.Now().Add(1500 * time.Millisecond)
	ctx, cancel := context.WithDeadline(context.Background(), want)
	defer cancel()
	var got time.Time
	var had bool
	var s Stack
	s.Add("observe", func(ctx context.Context) error {
		got, had = ctx.Deadline()
		return nil
	})
	if _, err := s.Run(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	if !had || !got.Equal(want) {
		t.Fatalf("step deadline %v (set %v), want the caller's %v", got, had, want)
	}
}

func TestRunFallbackWithoutDeadline(t *testing.T) {
	var s Stack
	var left time.Duration
	s.Add("observe", func(ctx context.Context) error {
		dl, ok := ctx.Deadline()
		if !ok {
			t.Error("no deadline: teardown would be unbounded")
		}
		left = time.Until(dl)
		return nil
	})
	s.Run(context.Background(), 7*time.Second)
	if left <= 6*time.Second || left > 7*time.Second {
		t.Fatalf("deadline %v away, want the 7s fallback", left)
	}
}

// A step blocked on its context returns when the caller's deadline passes, and the
// steps after it still run.
func TestRunExpiredDeadlineStillRunsEveryStep(t *testing.T) {
	var s Stack
	var ran []string
	s.Add("first", func(context.Context) error { ran = append(ran, "first"); return nil })
	s.Add("stuck", func(ctx context.Context) error {
		<-ctx.Done()
		ran = append(ran, "stuck")
		return ctx.Err()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := s.Run(ctx, time.Hour)
	if !errors.Is(err, context.DeadlineExceeded) || strings.Join(ran, ",") != "stuck,first" {
		t.Fatalf("err %v, ran %v", err, ran)
	}
}
