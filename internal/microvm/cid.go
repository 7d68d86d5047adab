package microvm

import (
	"errors"
	"sync"
)

// ErrNoCID is returned when every guest CID in the allocator's range is in use.
var ErrNoCID = errors.New("no free vsock CID")

// cidAllocator hands out vsock context IDs, unique among running VMs and reused after
// release. CIDs 0-2 are reserved by vsock (hypervisor, local, host).
type cidAllocator struct {
	mu    sync.Mutex
	first uint32
	last  uint32
	next  uint32
	inUse map[uint32]bool
}

func newCIDAllocator(first, last uint32) *cidAllocator {
	if first < 3 {
		first = 3
	}
	return &cidAllocator{first: first, last: last, next: first, inUse: map[uint32]bool{}}
}

// acquire returns the next free CID, scanning round-robin so a just-released CID is not
// handed straight back to a new VM while stale host connections might still point at it.
func (a *cidAllocator) acquire() (uint32, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := a.last - a.first + 1
	for i := uint32(0); i < n; i++ {
		cid := a.first + (a.next-a.first+i)%n
		if !a.inUse[cid] {
			a.inUse[cid] = true
			a.next = cid + 1
			if a.next > a.last {
				a.next = a.first
			}
			return cid, nil
		}
	}
	return 0, ErrNoCID
}

// release frees a CID; releasing a free CID is a no-op.
func (a *cidAllocator) release(cid uint32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.inUse, cid)
}

func (a *cidAllocator) used() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.inUse)
}
