package microvm

import (
	"errors"
	"testing"
)

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
