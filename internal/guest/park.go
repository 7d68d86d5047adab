package guest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"regexp"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// Parking (protocol.OpQuiesce): before the host saves the VM, the agent leaves its
// session and waits, silent on its channel, for the host's wake line. What it was doing
// for processes goes on; only the connection is let go. A restored copy of the VM then
// meets its new host cleanly: the host writes the wake line, the agent greets it.

var nonceRE = regexp.MustCompile(`^[0-9a-f]{16,64}$`)

// quiesce answers sys.quiesce and ends the session it came on (end cancels it).
func (a *Agent) quiesce(req *protocol.Request, st net.Conn, end func()) {
	if !nonceRE.MatchString(req.Nonce) {
		protocol.Fail(st, protocol.ErrCodeInvalid, "nonce must be 16 to 64 lower-case hex digits")
		return
	}
	a.parkMu.Lock()
	a.parkNonce, a.parkAnnounced = req.Nonce, false
	a.parkMu.Unlock()
	if err := respond(st, &protocol.Response{}); err != nil {
		a.log.Warn("quiesce: response", "err", err.Message)
	}
	st.Close()
	end()
}

// parked returns the nonce to wait for, "" when not parked.
func (a *Agent) parked() string {
	a.parkMu.Lock()
	defer a.parkMu.Unlock()
	return a.parkNonce
}

// announcePark says on the console, once, that the agent is parked: the host waits for
// the line before it saves the VM.
func (a *Agent) announcePark() {
	a.parkMu.Lock()
	defer a.parkMu.Unlock()
	if a.parkNonce != "" && !a.parkAnnounced {
		a.parkAnnounced = true
		if a.cfg.Console != nil {
			fmt.Fprintf(a.cfg.Console, "\n%s%s\n", protocol.ParkedMarker, a.parkNonce)
		}
	}
}

func (a *Agent) unpark(nonce string) {
	a.parkMu.Lock()
	if a.parkNonce == nonce {
		a.parkNonce = ""
	}
	a.parkMu.Unlock()
}

// maxWakeGarbage bounds what is skipped before the wake line: an old host's frames in
// flight are a few KiB.
const maxWakeGarbage = 64 << 20

// waitWake reads r until the wake line for nonce has gone by. The host sends nothing
// after it until the agent's hello, so nothing past the line is read.
func waitWake(ctx context.Context, r io.Reader, nonce string) error {
	want := protocol.WakeLine(nonce)
	window := make([]byte, 0, 2*len(want))
	one := make([]byte, 1)
	var skipped int64
	for ctx.Err() == nil {
		// One byte at a time: the line is short and comes once per restore, and reading
		// more could swallow what follows it.
		if _, err := io.ReadFull(r, one); err != nil {
			return err
		}
		window = append(window, one[0])
		if bytes.HasSuffix(window, want) {
			return nil
		}
		if len(window) == cap(window) {
			window = append(window[:0], window[len(window)-len(want)+1:]...)
		}
		if skipped++; skipped > maxWakeGarbage {
			return fmt.Errorf("no wake line in %d bytes", skipped)
		}
	}
	return ctx.Err()
}
