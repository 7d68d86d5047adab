package microvm

import (
	"context"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/model"
)

// The warm pool: per template, VMs started to agent-ready ahead of demand (restored from
// the template's snapshot when there is one, else booted) and handed out whole, once. A
// VM is never returned to the pool: whatever a workload or sandbox did to it goes with
// it. Pooled VMs have no NIC, so only VMs without a network come from the pool; a VM
// gets its identity (hostname, clock, entropy) when it is taken, not when it boots.
//
// Each template's shelf has a target between its Min and Max: a miss raises it by one, a
// minute without a take lowers it by one, and it is refilled one VM at a time in the
// background. Pooled VMs count in the capacity budget (PoolRoom): a refill waits for
// room, and when live sandboxes need the memory the pool gives idle VMs back.

// PoolSize bounds one template's warm pool; Max 0 turns it off.
type PoolSize struct {
	Min int `json:"min"`
	Max int `json:"max"`
}

// PoolStats is one shelf's state, for metrics, the API and the dashboard.
type PoolStats = backend.PoolShelf

const (
	poolDecay     = time.Minute     // a shelf untouched this long shrinks its target by one
	poolTick      = time.Second     // how often shelves check room and decay
	poolRetryWait = 5 * time.Second // after a failed refill, doubling up to poolRetryMax
	poolRetryMax  = 2 * time.Minute
	// poolHoldoff delays the refill after a take: starting the next VM competes for
	// the host's cores with the first commands of the VM just handed out, which its
	// holder is waiting for (two cores under TCG: a restore takes 0.2–0.7 s of CPU).
	poolHoldoff = 500 * time.Millisecond
)

type pool struct {
	b      *Backend
	sizes  map[model.Runtime]PoolSize
	limits model.Limits

	mu      sync.Mutex
	shelves map[shape]*shelf
	closed  bool
}

type shelf struct {
	sh      shape
	size    PoolSize
	idle    []*vm
	filling int
	target  int
	lastUse time.Time
	hits    int64
	misses  int64
	kick    chan struct{}
	holdoff time.Time // no refill starts before it (poolHoldoff after a take)
}

func newPool(b *Backend, sizes map[model.Runtime]PoolSize) *pool {
	p := &pool{b: b, sizes: map[model.Runtime]PoolSize{}, limits: b.cfg.Limits, shelves: map[shape]*shelf{}}
	for t, s := range sizes {
		if s.Max < s.Min {
			s.Max = s.Min
		}
		if s.Max > 0 {
			p.sizes[t] = s
		}
	}
	return p
}

// start opens a shelf of the default shape for every pooled template.
func (p *pool) start() {
	for t := range p.sizes {
		p.shelf(shape{template: t, cpus: p.limits.DefaultCPUs, memMB: p.limits.DefaultMemMB})
	}
}

// shelf returns the shape's shelf, opening it (and its refill loop) when the template
// is pooled and the shape is the default one; nil otherwise.
func (p *pool) shelf(sh shape) *shelf {
	size, ok := p.sizes[sh.template]
	if !ok || sh.cpus != p.limits.DefaultCPUs || sh.memMB != p.limits.DefaultMemMB {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	s := p.shelves[sh]
	if s == nil {
		s = &shelf{sh: sh, size: size, target: size.Min, lastUse: time.Now(), kick: make(chan struct{}, 1)}
		p.shelves[sh] = s
		p.b.bg.Go(func() { p.refill(s) })
	}
	return s
}

// take hands out an idle VM of the shape, or nil (a miss, which raises the target).
func (p *pool) take(sh shape) *vm {
	s := p.shelf(sh)
	if s == nil {
		return nil
	}
	p.mu.Lock()
	s.lastUse = time.Now()
	var v *vm
	for len(s.idle) > 0 && v == nil {
		v = s.idle[0]
		s.idle = s.idle[1:]
		select {
		case <-v.machine.Done(): // died while pooled
			go v.teardown(context.Background())
			v = nil
		default:
		}
	}
	if v != nil {
		s.hits++
		s.holdoff = time.Now().Add(poolHoldoff)
	} else {
		s.misses++
		if s.target < s.size.Max {
			s.target++
		}
	}
	p.mu.Unlock()
	p.b.metrics.poolTakes.WithLabelValues(string(sh.template), map[bool]string{true: "hit", false: "miss"}[v != nil]).Inc()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return v
}

// refill keeps a shelf at its target while there is room, one VM at a time.
func (p *pool) refill(s *shelf) {
	ctx := p.b.bgCtx
	tick := time.NewTicker(poolTick)
	defer tick.Stop()
	retry := poolRetryWait // a refill that keeps failing (an image missing) backs off
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-tick.C:
		}
		p.mu.Lock()
		if time.Since(s.lastUse) > poolDecay && s.target > s.size.Min {
			s.target--
			s.lastUse = time.Now()
		}
		var evict []*vm
		for len(s.idle) > s.target {
			evict = append(evict, s.idle[len(s.idle)-1])
			s.idle = s.idle[:len(s.idle)-1]
		}
		// Live sandboxes come first: give back an idle VM when the budget is over.
		if len(s.idle) > 0 && !p.room(0, 0) {
			evict = append(evict, s.idle[len(s.idle)-1])
			s.idle = s.idle[:len(s.idle)-1]
		}
		want := len(s.idle)+s.filling < s.target && p.room(s.sh.memMB, s.sh.cpus)
		wait := time.Until(s.holdoff)
		if want && wait > 0 {
			// Let the last holder's first commands run before the next VM starts.
			p.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			select {
			case s.kick <- struct{}{}:
			default:
			}
			continue
		}
		if want {
			s.filling++
		}
		p.mu.Unlock()
		for _, v := range evict {
			_ = v.teardown(context.Background())
		}
		if !want {
			continue
		}
		start := time.Now()
		v, source, err := p.b.prepare(ctx, "pool-"+strings.ToLower(ulid.Make().String()), s.sh)
		if err == nil {
			err = p.warm(ctx, v)
		}
		p.mu.Lock()
		s.filling--
		if err == nil && !p.closed {
			s.idle = append(s.idle, v)
			v = nil
		}
		p.mu.Unlock()
		if v != nil { // failed, or the pool closed meanwhile
			_ = v.teardown(context.Background())
		}
		if err != nil {
			if ctx.Err() == nil {
				p.b.log.Warn("warm pool refill failed", "shape", s.sh, "retry_in", retry, "err", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(retry):
				}
				retry = min(2*retry, poolRetryMax)
			}
			continue
		}
		retry = poolRetryWait
		p.b.metrics.poolRefill.WithLabelValues(string(s.sh.template), source).Observe(time.Since(start).Seconds())
		select { // keep going until the target is met
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// warm runs, once, what the VM's first holder will: an identity (replaced at the take)
// and a process. A restored VM's VMM starts with nothing translated (under TCG every
// code path is translated on first use): the holder should not pay for it.
func (p *pool) warm(ctx context.Context, v *vm) error {
	if err := p.b.identify(ctx, v, v.id, nil); err != nil {
		return err
	}
	return runShell(ctx, v.session, "true")
}

// room asks the capacity budget whether the pool may hold memMB and cpus more than it
// does (0, 0: whether what it holds still fits). Callers hold p.mu.
func (p *pool) room(memMB, cpus int) bool {
	f := p.b.poolRoom()
	if f == nil {
		return true
	}
	mem, cpu := p.heldLocked()
	return f(mem+memMB, cpu+cpus)
}

func (p *pool) heldLocked() (memMB, cpus int) {
	for _, s := range p.shelves {
		n := len(s.idle) + s.filling
		memMB += n * s.sh.memMB
		cpus += n * s.sh.cpus
	}
	return memMB, cpus
}

// drain closes the pool and stops its idle VMs (refills in flight are stopped by the
// backend's background context).
func (p *pool) drain(ctx context.Context) {
	p.mu.Lock()
	p.closed = true
	var idle []*vm
	for _, s := range p.shelves {
		idle = append(idle, s.idle...)
		s.idle = nil
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, v := range idle {
		wg.Go(func() { _ = v.teardown(ctx) })
	}
	wg.Wait()
}

func (p *pool) stats() []PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]PoolStats, 0, len(p.shelves))
	for _, s := range p.shelves {
		out = append(out, PoolStats{Template: s.sh.template, CPUs: s.sh.cpus, MemMB: s.sh.memMB, Idle: len(s.idle), Filling: s.filling,
			Target: s.target, Min: s.size.Min, Max: s.size.Max, Hits: s.hits, Misses: s.misses})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Template < out[j].Template })
	return out
}
