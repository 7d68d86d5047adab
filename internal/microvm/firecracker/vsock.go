package firecracker

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// ackTimeout bounds the wait for Firecracker's "OK <port>" once CONNECT is sent: it
// answers as soon as the guest accepts or refuses (it closes the socket then).
const ackTimeout = 2 * time.Second

// DialVsock opens one stream to a guest vsock port through Firecracker's hybrid vsock
// unix socket: write "CONNECT <port>\n", read "OK <host port>\n", then the socket
// carries the guest's bytes.
//
// The SDK's vsock.DialContext does the same but reads the acknowledgement through a
// 32-byte bufio.Reader it then drops: when the guest speaks first (our agent sends
// hello at once) and its first bytes arrive with the "OK", they are lost. So the
// acknowledgement is read here one byte at a time, leaving everything after it on
// the connection. (The SDK's dial also gives up, rather than retrying, while the
// socket does not exist yet; DialAgent's loop does the retrying.)
func DialVsock(ctx context.Context, path string, port uint32) (_ net.Conn, err error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			conn.Close()
		}
	}()
	deadline := time.Now().Add(ackTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		return nil, fmt.Errorf("vsock connect: %w", err)
	}
	var line []byte
	b := make([]byte, 1)
	for len(line) < 32 {
		if _, err := conn.Read(b); err != nil {
			return nil, fmt.Errorf("vsock connect to port %d: no acknowledgement: %w", port, err)
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
	}
	ack, ok := strings.CutPrefix(string(line), "OK ")
	if !ok {
		return nil, fmt.Errorf("vsock connect to port %d: want \"OK <port>\", got %q", port, line)
	}
	if _, err := strconv.ParseUint(ack, 10, 32); err != nil {
		return nil, fmt.Errorf("vsock connect to port %d: bad acknowledgement %q", port, line)
	}
	if !stop() {
		return nil, ctx.Err()
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, err
	}
	return conn, nil
}
