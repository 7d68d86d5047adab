package microvm

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCleanupStack(t *testing.T) {
	var order []string
	var c cleanupStack
	step := func(name string, err error) {
		c.add(name, func(ctx context.Context) error {
			if ctx.Err() != nil {
				t.Errorf("%s got a cancelled context", name)
			}
			order = append(order, name)
			return err
		})
	}
	step("dir", nil)
	step("cid", errors.New("boom"))
	step("vmm", nil)

	// Teardown from a cancelled request context still runs every step with live time.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran, err := c.run(ctx, time.Minute)
	if !ran {
		t.Error("first run reported it did not run")
	}
	if strings.Join(order, ",") != "vmm,cid,dir" {
		t.Errorf("order %v, want LIFO", order)
	}
	if err == nil || !strings.Contains(err.Error(), "cid: boom") {
		t.Errorf("err = %v", err)
	}
	// Exactly once: a second run repeats nothing and returns the first result.
	if ran2, err2 := c.run(context.Background(), time.Minute); err2 != err || ran2 || len(order) != 3 {
		t.Errorf("second run: %v ran=%v, order %v", err2, ran2, order)
	}
	// An acquire that lands after teardown is released at once.
	c.add("late", func(context.Context) error { order = append(order, "late"); return nil })
	if order[len(order)-1] != "late" {
		t.Errorf("late undo not run: %v", order)
	}
}

func TestCIDAllocator(t *testing.T) {
	a := newCIDAllocator(0, 5) // 0-2 are reserved by vsock
	var got []uint32
	for i := 0; i < 3; i++ {
		cid, err := a.acquire()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, cid)
	}
	if got[0] != 3 || got[1] != 4 || got[2] != 5 {
		t.Errorf("CIDs %v, want 3 4 5", got)
	}
	if _, err := a.acquire(); !errors.Is(err, ErrNoCID) {
		t.Errorf("exhausted allocator: %v", err)
	}
	a.release(4)
	a.release(4) // releasing twice is harmless
	if cid, err := a.acquire(); err != nil || cid != 4 {
		t.Errorf("reuse after release: %d %v", cid, err)
	}
	if a.used() != 3 {
		t.Errorf("used = %d", a.used())
	}
}
