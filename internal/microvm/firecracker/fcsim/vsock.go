package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// hostPorts numbers host-initiated connections the way Firecracker does (from 2^30).
var hostPorts atomic.Uint32

func init() { hostPorts.Store(1 << 30) }

// serveVsock is the host side of the hybrid vsock: each connection sends
// "CONNECT <port>\n"; when the guest listens on that port the reply is
// "OK <host port>\n" and the bytes flow both ways, else the connection is closed.
func (v *vm) serveVsock(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go v.vsockConn(c)
	}
}

func (v *vm) vsockConn(c net.Conn) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	// One byte at a time: nothing past the newline may be consumed here.
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := c.Read(b); err != nil {
			return
		}
		if b[0] == '\n' {
			break
		}
		if line = append(line, b[0]); len(line) > 32 {
			return
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	p, ok := strings.CutPrefix(string(line), "CONNECT ")
	if !ok {
		return
	}
	port, err := strconv.ParseUint(p, 10, 32)
	if err != nil {
		return
	}
	v.mu.Lock()
	g := v.guest
	v.mu.Unlock()
	// Nobody listens on that port (or the guest is not running): the guest resets
	// the connection and Firecracker closes the unix socket.
	if g == nil || uint32(port) != g.port {
		return
	}
	a, err := net.DialTimeout("unix", g.sock, time.Second)
	if err != nil {
		return
	}
	defer a.Close()
	if _, err := fmt.Fprintf(c, "OK %d\n", hostPorts.Add(1)); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(a, c); closeWrite(a); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, a); closeWrite(c); done <- struct{}{} }()
	select {
	case <-done:
	case <-g.done:
		return
	}
	select {
	case <-done:
	case <-g.done:
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

func signalNotify(c chan os.Signal) { signal.Notify(c, syscall.SIGTERM, syscall.SIGINT) }
