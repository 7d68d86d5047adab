package e2b

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"connectrpc.com/connect"
	"github.com/oklog/ulid/v2"

	"github.com/vulcanhq/vulcan/internal/e2b/envd/filesystem"
	"github.com/vulcanhq/vulcan/internal/protocol"
	"github.com/vulcanhq/vulcan/internal/sandbox"
)

// Polled watchers (CreateWatcher, GetWatcherEvents, RemoveWatcher), which E2B's
// synchronous Python client uses instead of a stream: a watch whose events wait here
// until fetched. Bounded: watchers per sandbox, events held per watcher (past it the
// watcher fails and says so on the next fetch, rather than dropping events quietly).

const (
	maxPolledWatchers = 16
	maxHeldEvents     = 10000
)

type polled struct {
	ws      *watchers
	id      string
	sandbox string
	root    string
	wt      *sandbox.Watch
	mu      sync.Mutex
	events  []*filesystem.FilesystemEvent
	err     error // set when the watch ended
}

type watchers struct {
	mu   sync.Mutex
	byID map[string]*polled
}

func newWatchers() *watchers { return &watchers{byID: map[string]*polled{}} }

func (ws *watchers) create(svc *sandbox.Service, c call, path string, recursive bool) (string, error) {
	ws.mu.Lock()
	n := 0
	for _, p := range ws.byID {
		if p.sandbox == c.id {
			n++
		}
	}
	ws.mu.Unlock()
	if n >= maxPolledWatchers {
		return "", connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("at most %d watchers per sandbox", maxPolledWatchers))
	}
	// The watch outlives this request: it ends with RemoveWatcher or the sandbox.
	wt, info, err := svc.Watch(context.Background(), c.id, path, c.user, recursive)
	if err != nil {
		return "", err
	}
	id := ulid.Make().String()
	p := &polled{ws: ws, id: id, sandbox: c.id, root: info.Path, wt: wt}
	ws.mu.Lock()
	ws.byID[id] = p
	ws.mu.Unlock()
	go p.run()
	return id, nil
}

func (p *polled) run() {
	for {
		ev, err := p.wt.Next()
		if err != nil {
			// The sandbox ended (or the watcher was removed): nothing is left to fetch.
			p.ws.mu.Lock()
			delete(p.ws.byID, p.id)
			p.ws.mu.Unlock()
			p.wt.Close()
			return
		}
		p.mu.Lock()
		switch {
		case ev.Op == protocol.FSError:
			p.err = errors.New(ev.Error)
		case len(p.events) >= maxHeldEvents:
			p.err = fmt.Errorf("more than %d events were not fetched; the watcher stopped", maxHeldEvents)
		default:
			p.events = append(p.events, &filesystem.FilesystemEvent{Name: relName(p.root, ev.Path), Type: eventType(ev.Op)})
		}
		stop := p.err != nil
		p.mu.Unlock()
		if stop {
			p.wt.Close()
			return
		}
	}
}

func (ws *watchers) get(sandboxID, id string) (*polled, error) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	p := ws.byID[id]
	if p == nil || p.sandbox != sandboxID {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher %q not found", id))
	}
	return p, nil
}

// take returns the events held and clears them; a failed watcher reports its error
// once its events have been taken.
func (ws *watchers) take(sandboxID, id string) ([]*filesystem.FilesystemEvent, error) {
	p, err := ws.get(sandboxID, id)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	evs := p.events
	p.events = nil
	if len(evs) == 0 && p.err != nil {
		ws.remove(sandboxID, id)
		return nil, connect.NewError(connect.CodeAborted, p.err)
	}
	return evs, nil
}

func (ws *watchers) remove(sandboxID, id string) error {
	p, err := ws.get(sandboxID, id)
	if err != nil {
		return err
	}
	ws.mu.Lock()
	delete(ws.byID, id)
	ws.mu.Unlock()
	p.wt.Close()
	return nil
}
