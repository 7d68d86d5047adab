package guest

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// netDial serves net.dial: a TCP connection to the guest's own loopback, spliced onto the
// stream. Either side's end (or the session's) ends both; the host's half-close is passed
// on as a half-close, so request/response protocols finish cleanly.
func (a *Agent) netDial(ctx context.Context, req *protocol.Request, st net.Conn) *protocol.OpError {
	if req.Port < 1 || req.Port > 65535 {
		return opErr(protocol.ErrCodeInvalid, "port %d: want 1 to 65535", req.Port)
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(req.Port)))
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return opErr(protocol.ErrCodeNotFound, "nothing listens on port %d in the sandbox", req.Port)
		}
		return opErr(protocol.ErrCodeInvalid, "port %d: %v", req.Port, err)
	}
	defer c.Close()
	if e := respond(st, &protocol.Response{}); e != nil {
		return e
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // host → guest service
		defer wg.Done()
		io.Copy(c, st)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	go func() { // guest service → host
		defer wg.Done()
		io.Copy(st, c)
		st.Close()
	}()
	stop := context.AfterFunc(ctx, func() { c.Close(); st.Close() })
	defer stop()
	wg.Wait()
	return nil
}
