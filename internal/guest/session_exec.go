package guest

import (
	"context"
	"io"
	"net"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// sessionExec runs a one-shot workload on a session stream: the same execute as an exec
// message, its output and exit as events. The host half-closing the stream (EOF on our
// read side) cancels it.
func (a *Agent) sessionExec(ctx context.Context, req *protocol.Request, st net.Conn) *protocol.OpError {
	ex := req.Exec
	if ex == nil {
		return opErr(protocol.ErrCodeInvalid, "exec without a workload")
	}
	if err := respond(st, &protocol.Response{}); err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		// Nothing more is sent by the host on this stream: EOF (or an error) means stop.
		io.Copy(io.Discard, st)
		cancel(errCancelled)
	}()
	send := func(m *protocol.Message) error {
		return protocol.SendEvent(st, &protocol.Event{Output: m.Output})
	}
	exit := a.execute(ctx, ex, send)
	if err := protocol.SendEvent(st, &protocol.Event{Exit: exit}); err != nil {
		a.log.Warn("send exit", "id", ex.ID, "err", err)
	}
	return nil
}
