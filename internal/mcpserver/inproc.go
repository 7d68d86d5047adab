package mcpserver

import (
	"context"
	"net"
	"net/http"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vulcanhq/vulcan/internal/client"
)

// Mounted is the MCP server a Vulcan server serves at /mcp (streamable HTTP). Its tools
// call the server's own API over in-memory connections (net.Pipe), through the same
// front door, auth and limits as any client; nothing listens on a socket for them.
type Mounted struct {
	http.Handler
	mu   sync.Mutex
	api  http.Handler
	ln   *pipeListener
	srv  *http.Server
	once sync.Once
}

// NewMounted returns the /mcp handler. SetAPI must be called (with the API it is
// mounted in) before it serves; token is the API's.
func NewMounted(token string) *Mounted {
	m := &Mounted{ln: &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}}
	hc := &http.Client{Transport: &http.Transport{DialContext: m.ln.dial}}
	s := New(client.NewHTTP("http://localhost", token, hc))
	m.Handler = mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, nil)
	m.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		api := m.api
		m.mu.Unlock()
		if api == nil {
			http.Error(w, "the API is not ready", http.StatusServiceUnavailable)
			return
		}
		api.ServeHTTP(w, r)
	})}
	return m
}

// SetAPI names the API the tools call.
func (m *Mounted) SetAPI(h http.Handler) {
	m.mu.Lock()
	m.api = h
	m.mu.Unlock()
	m.once.Do(func() { go m.srv.Serve(m.ln) })
}

// Close ends the in-memory connections.
func (m *Mounted) Close() error { return m.srv.Close() }

// pipeListener hands out the server ends of net.Pipe connections its dial makes.
type pipeListener struct {
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

func (l *pipeListener) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	c, s := net.Pipe()
	select {
	case l.conns <- s:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "in-memory" }
