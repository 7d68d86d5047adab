package engine

import (
	"context"

	"github.com/vulcanhq/vulcan/internal/model"
)

// followBatch bounds how many lines one Next returns, so a slow follower of a long log
// gets it in pieces rather than one huge allocation.
const followBatch = 512

// A Follower reads a workload's log from a sequence number on, first what exists, then
// lines as they arrive, and finally the workload's terminal state.
type Follower struct {
	e     *Engine
	id    string
	after int64
	t     *task // nil once the workload is (or was, when Follow was called) persisted as ended
}

// Follow starts reading the log of workload id after seq after (0: from the start).
func (e *Engine) Follow(ctx context.Context, id string, after int64) (*Follower, error) {
	t := e.lookup(id)
	if t == nil {
		if _, err := e.st.Get(ctx, id); err != nil {
			return nil, err
		}
	}
	return &Follower{e: e, id: id, after: max(after, 0), t: t}, nil
}

// Next blocks until there are lines past the last one returned, or the workload has
// ended with no lines left. In the second case it returns the final workload and no lines;
// the follower is then finished. It returns ctx's error if ctx ends first.
func (f *Follower) Next(ctx context.Context) ([]model.LogLine, *model.Workload, error) {
	for f.t != nil {
		lines, changed, final := f.t.linesAfter(f.after, followBatch)
		if len(lines) > 0 {
			f.after = lines[len(lines)-1].Seq
			return lines, nil, nil
		}
		if final != nil {
			w := *final
			return nil, &w, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
	// The workload ended before Follow was called, so the store holds the whole log.
	lines, err := f.e.st.Logs(ctx, f.id, f.after, followBatch)
	if err != nil {
		return nil, nil, err
	}
	if len(lines) > 0 {
		f.after = lines[len(lines)-1].Seq
		return lines, nil, nil
	}
	w, err := f.e.st.Get(ctx, f.id)
	if err != nil {
		return nil, nil, err
	}
	return nil, w, nil
}

// Seq is the sequence number of the last line returned.
func (f *Follower) Seq() int64 { return f.after }
