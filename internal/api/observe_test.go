package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/model"
)

// Garbage from clients without the token (invented methods, random paths) must not mint
// metric series: /metrics stays about the size it was.
func TestMetricsCardinalityIsBounded(t *testing.T) {
	ts := newServerWith(t, &backendtest.Fake{}, func(o *api.Options) { o.Token = "s3cret" })
	ts.token = "s3cret"
	scrape := func() (size int, series map[string]bool) {
		_, body := ts.do(t, "GET", "/metrics", nil)
		series = map[string]bool{}
		for _, l := range strings.Split(string(body), "\n") {
			if k, _, ok := strings.Cut(l, " "); ok && !strings.HasPrefix(l, "#") {
				series[k] = true
			}
		}
		return len(body), series
	}
	rng := rand.New(rand.NewPCG(1, 2))
	word := func(n int, alphabet string) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return string(b)
	}
	known := []string{"GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"}
	paths := []func() string{
		func() string { return "/v1/workloads/" + word(26, "0123456789ABCDEFGHJKMNPQRSTVWXYZ") },
		func() string { return "/v1/" + word(10, "abcdefghijklmnopqrstuvwxyz/") },
		func() string { return "/v1/workloads/" + word(8, "abcdef") + "/logs/" + word(5, "xyz") },
		func() string { return "/" + word(12, "abcdefghijklmnopqrstuvwxyz0123456789/.") },
	}
	send := func(method, path string) {
		req, _ := http.NewRequest(method, ts.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	// Every kind of garbage once, so that the series it may reach (a bounded set) exist;
	// and one scrape, whose own series appear in the next.
	scrape()
	for _, m := range append(known, "BREW") {
		for _, p := range paths {
			send(m, p())
		}
	}
	before, seriesBefore := scrape()
	for range 3000 {
		method := word(3+rng.IntN(8), "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
		if rng.IntN(10) == 0 {
			method = known[rng.IntN(len(known))]
		}
		send(method, paths[rng.IntN(len(paths))]())
	}
	after, seriesAfter := scrape()
	t.Logf("/metrics: %d bytes before 3,000 garbage requests, %d after", before, after)
	// Only the counts grow, by a few digits each; no series is added.
	for k := range seriesAfter {
		if !seriesBefore[k] {
			t.Errorf("garbage added the series %s", k)
		}
	}
	if after > before+before/10 {
		t.Errorf("/metrics grew from %d to %d bytes", before, after)
	}
	if !seriesAfter[`vulcan_http_requests_total{code="405",method="other",route="unmatched"}`] {
		t.Errorf("invented methods are not counted as other")
	}
}

// lockedBuffer collects log output written from the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(l.b.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// One info line per request: method, route pattern, status, duration, bytes.
func TestOneLogLinePerRequest(t *testing.T) {
	var logs lockedBuffer
	ts := newServerWith(t, &backendtest.Fake{}, func(o *api.Options) {
		o.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	ts.do(t, "GET", "/v1/workloads/01NOPE", nil)
	ts.do(t, "POST", "/v1/workloads", `{"runtime":"go","code":"x"}`)
	ts.do(t, "GET", "/healthz", nil)
	var got []string
	for _, l := range logs.lines() {
		if l["msg"] != "http request" {
			continue
		}
		if l["level"] != "INFO" || l["duration"] == nil || l["bytes"] == nil || l["bytes"].(float64) <= 0 {
			t.Errorf("line %v", l)
		}
		got = append(got, fmt.Sprint(l["method"], " ", l["route"], " ", l["status"], " ", l["path"]))
	}
	want := []string{"GET /v1/workloads/{id} 404 /v1/workloads/01NOPE", "POST /v1/workloads 200 /v1/workloads", "GET /healthz 200 /healthz"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("request lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// A client that trickles its body is cut off at the body deadline with a 408, and its
// connection closed; long responses after a complete body (a sync run, an SSE stream)
// are not bounded by that deadline.
func TestSlowBodyIsCutOffButLongResponsesAreNot(t *testing.T) {
	const bodyTimeout = 300 * time.Millisecond
	b := backendtest.NewBlocker(2)
	ts := newServerWith(t, &backendtest.Fake{Run: b.Run}, func(o *api.Options) { o.BodyTimeout = bodyTimeout })

	conn, err := net.Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/workloads HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{", ts.Listener.Addr())
	stop := make(chan struct{})
	defer close(stop)
	go func() { // one byte every 50 ms, forever
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				if _, err := conn.Write([]byte(" ")); err != nil {
					return
				}
			}
		}
	}()
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a trickled body after %v: %v", time.Since(start), err)
	}
	data, _ := io.ReadAll(resp.Body) // to EOF: the server closes the connection
	if e := decode[api.ErrorBody](t, data); resp.StatusCode != 408 || e.Error.Code != "body_timeout" {
		t.Fatalf("%d %s", resp.StatusCode, data)
	}
	t.Logf("trickled body refused after %v", time.Since(start))
	if n := ts.count(t); n != 0 {
		t.Fatalf("%d workloads stored", n)
	}

	// A sync run that outlasts the body deadline many times over still gets its answer.
	synced := make(chan int, 1)
	go func() {
		resp, _ := ts.do(t, "POST", "/v1/workloads", `{"runtime":"go","code":"x"}`)
		synced <- resp.StatusCode
	}()
	<-b.Started
	// And an SSE stream of a running workload outlives it too.
	_, body := ts.do(t, "POST", "/v1/workloads/async", `{"runtime":"go","code":"y"}`)
	id := decode[api.Workload](t, body).ID
	<-b.Started
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", ts.URL+"/v1/workloads/"+id+"/logs", nil)
	stream, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	time.Sleep(5 * bodyTimeout)
	close(b.Release)
	if code := <-synced; code != 200 {
		t.Fatalf("sync run that outlasted the body deadline: %d", code)
	}
	events, heartbeats := readSSE(t, stream.Body, -1)
	if len(events) == 0 || events[len(events)-1].event != "done" || heartbeats < 5 {
		t.Fatalf("SSE stream past the body deadline: %d heartbeats, events %+v", heartbeats, events)
	}
	var w api.Workload
	json.Unmarshal([]byte(events[len(events)-1].data), &w)
	if w.Status != model.StatusCompleted {
		t.Fatalf("done %+v", w)
	}
}
