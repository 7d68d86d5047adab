package api_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vulcanhq/vulcan/internal/api"
)

// service is what a sandbox would run: an echo that hashes, a slow stream, a WebSocket
// echo. The in-process agent's "guest" loopback is this machine's, so the agent's
// net.dial reaches it exactly as a VM's agent reaches a guest service.
func service(t *testing.T) int {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		fmt.Fprintf(w, "%d %s %s %s", n, hex.EncodeToString(h.Sum(nil)), r.URL.RawQuery, r.Host)
	})
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 3; i++ {
			fmt.Fprintf(w, "chunk %d\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(300 * time.Millisecond)
		}
	})
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(1 << 20)
		for {
			typ, b, err := c.Read(r.Context())
			if err != nil {
				return
			}
			c.Write(r.Context(), typ, append([]byte("echo:"), b...))
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return ln.Addr().(*net.TCPAddr).Port
}

// A sandbox's port through /v1/sandboxes/{id}/ports/{port}/: bodies of random sizes both
// ways byte for byte, a streamed answer arriving as it is written, a WebSocket, a closed
// port (502) and an unknown sandbox (404).
func TestSandboxPorts(t *testing.T) {
	ts := sandboxServer(t)
	port := service(t)
	resp, body := ts.do(t, http.MethodPost, "/v1/sandboxes", map[string]any{})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	var sb api.Sandbox
	json.Unmarshal(body, &sb)
	base := fmt.Sprintf("%s/v1/sandboxes/%s/ports/%d", ts.URL, sb.ID, port)

	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 8; i++ {
		data := make([]byte, []int{0, 1, 100, 65536, 1 << 20, 3<<20 + 17, r.IntN(1 << 21), r.IntN(100)}[i])
		for j := range data {
			data[j] = byte(r.UintN(256))
		}
		sum := sha256.Sum256(data)
		resp, err := http.Post(base+"/echo?k=v&i="+fmt.Sprint(i), "application/x-whatever", bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := fmt.Sprintf("%d %s k=v&i=%d localhost:%d", len(data), hex.EncodeToString(sum[:]), i, port)
		if resp.StatusCode != 200 || string(got) != want {
			t.Fatalf("echo of %d bytes: %d %q, want %q", len(data), resp.StatusCode, got, want)
		}
	}

	// Streamed: the first chunk arrives long before the last is written.
	start := time.Now()
	resp, err := http.Get(base + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "chunk 0\n" {
		t.Fatalf("first chunk: %q %v", buf, err)
	}
	if first := time.Since(start); first > 500*time.Millisecond {
		t.Errorf("the first chunk took %s: the answer is buffered, not streamed", first)
	}
	rest, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(rest) != "chunk 1\nchunk 2\n" {
		t.Errorf("rest of the stream: %q", rest)
	}

	// WebSocket through the proxy.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, strings.Replace(base, "http", "ws", 1)+"/ws", nil)
	if err != nil {
		t.Fatalf("websocket: %v", err)
	}
	c.SetReadLimit(1 << 20)
	for _, m := range []string{"one", strings.Repeat("x", 100000)} {
		if err := c.Write(ctx, websocket.MessageText, []byte(m)); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil || string(got) != "echo:"+m {
			t.Fatalf("websocket echo: %v %.40q", err, got)
		}
	}
	c.Close(websocket.StatusNormalClosure, "")

	// A port nothing listens on, a bad port, an unknown sandbox.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	for path, want := range map[string]int{
		fmt.Sprintf("/v1/sandboxes/%s/ports/%d/", sb.ID, closed): 502,
		fmt.Sprintf("/v1/sandboxes/%s/ports/0/", sb.ID):          400,
		fmt.Sprintf("/v1/sandboxes/%s/ports/99999/", sb.ID):      400,
		"/v1/sandboxes/01ARZ3NDEKTSV4RRFFQ69G5FAV/ports/80/":     404,
	} {
		resp, body := ts.do(t, http.MethodGet, path, nil)
		if resp.StatusCode != want || !strings.Contains(string(body), `"error"`) {
			t.Errorf("GET %s: %d %s, want %d with a JSON error", path, resp.StatusCode, body, want)
		}
	}
	// No trailing slash: redirected to the directory, query kept.
	req, _ := http.NewRequest(http.MethodGet, base+"?a=1", nil)
	rt, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	rt.Body.Close()
	if loc := rt.Header.Get("Location"); rt.StatusCode != http.StatusPermanentRedirect || !strings.HasSuffix(loc, fmt.Sprintf("/ports/%d/?a=1", port)) {
		t.Errorf("no trailing slash: %d %s", rt.StatusCode, loc)
	}
}
