package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// QMP: QEMU's machine protocol (docs/interop/qmp-spec), one JSON object per line over the
// monitor chardev, which QEMU connects to a socket the driver listens on (like the agent
// channel). Commands run one at a time; asynchronous events in between are skipped.

// maxQMPLine caps one QMP message: QEMU runs in a cell and is read as untrusted.
const maxQMPLine = 1 << 20

type qmp struct {
	mu   sync.Mutex
	conn net.Conn
	r    *bufio.Scanner
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string          `json:"event"`
	QMP   json.RawMessage `json:"QMP"`
}

// newQMP reads the greeting on conn and leaves capabilities negotiation mode.
func newQMP(ctx context.Context, conn net.Conn) (*qmp, error) {
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 0, 4096), maxQMPLine)
	q := &qmp{conn: conn, r: sc}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	var greet qmpReply
	if err := q.read(&greet); err != nil {
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	if greet.QMP == nil {
		return nil, errors.New("qmp: no greeting")
	}
	if _, err := q.exec(ctx, "qmp_capabilities", nil); err != nil {
		return nil, err
	}
	return q, nil
}

func (q *qmp) read(v *qmpReply) error {
	if !q.r.Scan() {
		if err := q.r.Err(); err != nil {
			return err
		}
		return errors.New("qmp: connection closed")
	}
	*v = qmpReply{}
	return json.Unmarshal(q.r.Bytes(), v)
}

// exec runs one command and returns its "return" value.
func (q *qmp) exec(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { q.conn.SetDeadline(time.Now()) })
	defer func() {
		if stop() {
			q.conn.SetDeadline(time.Time{})
		}
	}()
	msg := map[string]any{"execute": cmd}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, errors.Join(err, ctx.Err()))
	}
	for {
		var r qmpReply
		if err := q.read(&r); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, errors.Join(err, ctx.Err()))
		}
		switch {
		case r.Event != "":
			continue
		case r.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, r.Error.Class, r.Error.Desc)
		case r.Return != nil:
			return r.Return, nil
		}
	}
}

func (q *qmp) close() error { return q.conn.Close() }

// migrationSetup sets what every save and restore of Vulcan's uses, on both ends:
// x-ignore-shared leaves RAM that is a shared memory file (a snapshot's) out of the
// stream; the bandwidth cap (128 MiB/s by default) would make a pause crawl, and with
// the VM stopped first there is no downtime to bound.
func (q *qmp) migrationSetup(ctx context.Context) error {
	if _, err := q.exec(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}},
	}); err != nil {
		return err
	}
	_, err := q.exec(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(64) << 30})
	return err
}

// waitMigration polls query-migrate until it completes or fails.
func (q *qmp) waitMigration(ctx context.Context) error {
	for {
		raw, err := q.exec(ctx, "query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Errorf("query-migrate: %w", err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}
