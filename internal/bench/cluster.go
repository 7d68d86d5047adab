package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/client"
	"github.com/vulcanhq/vulcan/internal/cluster"
	"github.com/vulcanhq/vulcan/internal/cluster/natsserver"
	"github.com/vulcanhq/vulcan/internal/engine"
)

var (
	rowK1a = Row{"K1a", "cluster exec forwarding", "exec `true` in a sandbox through a node that does not own it vs through its owner, p50 difference"}
	rowK1b = Row{"K1b", "cluster call forwarding", "the hop alone: GET the sandbox through the other node vs through its owner, p50 difference"}
	rowK2a = Row{"K2a", "cluster rate, 1 node", "sync no-op workloads/s through the cluster's queue (JetStream), 1 node, 32 clients"}
	rowK2b = Row{"K2b", "cluster rate, 2 nodes", "the same with 2 nodes (clients spread over them); target: no slower than 1 node"}
	rowK2c = Row{"K2c", "cluster rate, 3 nodes", "the same with 3 nodes; the note gives the scaling factor over 1 node"}
)

// K1's and K2's targets: forwarding adds at most 2 ms; one node sustains 100 no-op
// workloads/s through the queue, and more nodes are no slower than one.
const (
	ClusterExecMaxOverhead = 2 * time.Millisecond
	ClusterMinRate         = 100.0
)

// startNATS runs a nats-server for one benchmark, its data under dir.
func startNATS(ctx context.Context, bin, dir string) (*natsserver.Server, error) {
	port, err := natsserver.FreePort()
	if err != nil {
		return nil, err
	}
	return natsserver.Start(ctx, bin, dir, port, natsserver.Options{})
}

func clusterCfg(url, id string) *cluster.Config {
	return &cluster.Config{URL: url, NodeID: id, Heartbeat: 250 * time.Millisecond}
}

// ClusterExec is K1: two real sandbox nodes in a cluster; one sandbox on the owner;
// exec timed through the owner and through the other node, interleaved.
func ClusterExec(ctx context.Context, o Options) (_ []Result, err error) {
	bin, err := natsserver.Find()
	why := sandboxPrereq(o)
	if err != nil {
		why = err.Error()
	}
	if why != "" {
		return []Result{rowK1a.Skipped(why), rowK1b.Skipped(why)}, nil
	}
	dir, err := os.MkdirTemp(o.TempDir, "vk1-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	ns, err := startNATS(ctx, bin, dir)
	if err != nil {
		return nil, err
	}
	defer ns.Stop()
	owner, err := startSandboxStack(ctx, o, 1, fastStart{cluster: clusterCfg(ns.URL, "k1-owner")})
	if err != nil {
		return nil, err
	}
	defer owner.Close()
	other, err := startSandboxStack(ctx, o, 1, fastStart{cluster: clusterCfg(ns.URL, "k1-other")})
	if err != nil {
		return nil, err
	}
	defer other.Close()
	sb, err := owner.c.CreateSandbox(ctx, benchSandbox)
	if err != nil {
		return nil, err
	}
	defer func() {
		if serr := owner.stopAll(ctx, []string{sb.ID}); serr != nil && err == nil {
			err = serr
		}
	}()
	through := func(c *client.Client) (time.Duration, error) {
		t0 := time.Now()
		ev, err := c.Exec(ctx, sb.ID, api.ProcessRequest{Argv: []string{"true"}}, nil)
		if err != nil {
			return 0, err
		}
		if ev.ExitCode == nil || *ev.ExitCode != 0 {
			return 0, fmt.Errorf("exec true: %+v", ev)
		}
		return time.Since(t0), nil
	}
	for range 5 { // warm both paths' connections
		if _, err := through(owner.c); err != nil {
			return nil, err
		}
		if _, err := through(other.c); err != nil {
			return nil, fmt.Errorf("through the other node: %w", err)
		}
	}
	// interleaved times call n times through each node in turn.
	interleaved := func(n int, call func(*client.Client) (time.Duration, error)) (direct, forwarded []time.Duration, err error) {
		direct, forwarded = make([]time.Duration, n), make([]time.Duration, n)
		for i := range n {
			if direct[i], err = call(owner.c); err != nil {
				return nil, nil, err
			}
			if forwarded[i], err = call(other.c); err != nil {
				return nil, nil, fmt.Errorf("through the other node: %w", err)
			}
		}
		return direct, forwarded, nil
	}
	n := o.n(200, 40)
	direct, forwarded, err := interleaved(n, through)
	if err != nil {
		return nil, err
	}
	r := rowK1a.Compare(Overhead, NewSample("through the owner", direct), NewSample("through the other node", forwarded),
		AtMost(ClusterExecMaxOverhead.Seconds()))
	r.Note = fmt.Sprintf("%d execs each, interleaved; p99 owner %s, other %s; under TCG the guest's spread (tens of ms) is wider than the hop, so K1b measures the hop alone; loopback, one host", n,
		formatSeconds(Percentile(direct, 99).Seconds()), formatSeconds(Percentile(forwarded, 99).Seconds()))

	// The hop alone: a call the owner answers from its store, the same way round.
	get := func(c *client.Client) (time.Duration, error) {
		t0 := time.Now()
		if _, err := c.GetSandbox(ctx, sb.ID); err != nil {
			return 0, err
		}
		return time.Since(t0), nil
	}
	m := o.n(1000, 200)
	gd, gf, err := interleaved(m, get)
	if err != nil {
		return nil, err
	}
	hop := rowK1b.Compare(Overhead, NewSample("through the owner", gd), NewSample("through the other node", gf),
		AtMost(ClusterExecMaxOverhead.Seconds()))
	hop.Note = fmt.Sprintf("%d GETs each, interleaved; p99 owner %s, other %s; loopback, one host", m,
		formatSeconds(Percentile(gd, 99).Seconds()), formatSeconds(Percentile(gf, 99).Seconds()))
	return []Result{r, hop}, nil
}

// ClusterScaling is K2: the same closed loop of sync no-op workloads against clusters of
// 1, 2 and 3 nodes (stub backend, each node 32 slots), every one through the cluster's
// queue, directory and store. On one host the nodes share its cores, so the factor
// says what the cluster's own path costs, not what more machines would add.
func ClusterScaling(ctx context.Context, o Options) (_ []Result, err error) {
	rows := []Row{rowK2a, rowK2b, rowK2c}
	bin, err := natsserver.Find()
	if err != nil {
		return []Result{rows[0].Skipped(err.Error()), rows[1].Skipped(err.Error()), rows[2].Skipped(err.Error())}, nil
	}
	total := o.n(1500, 300)
	var out []Result
	var base float64
	for nodes := 1; nodes <= 3; nodes++ {
		rate, err := clusterRate(ctx, o, bin, nodes, total)
		if err != nil {
			return out, err
		}
		// 1 node: at least ClusterMinRate; more nodes: no slower than one.
		target := AtLeast(ClusterMinRate)
		if nodes > 1 {
			target = AtLeast(base)
		}
		r := rows[nodes-1].Rate(total, time.Duration(float64(time.Second)*float64(total)/rate), "workloads/s", target)
		if nodes == 1 {
			base = rate
		}
		r.Note = fmt.Sprintf("%d workloads; %.2fx the 1-node rate; %d CPU cores shared by nodes and nats-server", total, rate/base, runtime.NumCPU())
		out = append(out, r)
	}
	return out, nil
}

func clusterRate(ctx context.Context, o Options, bin string, nodes, total int) (float64, error) {
	dir, err := os.MkdirTemp(o.TempDir, "vk2-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	ns, err := startNATS(ctx, bin, dir)
	if err != nil {
		return 0, err
	}
	defer ns.Stop()
	var urls []string
	for i := range nodes {
		s, err := startStack(ctx, dir, &stubBackend{run: noop}, engine.Config{MaxConcurrent: 32, QueueSize: 64},
			clusterCfg(ns.URL, fmt.Sprintf("k2-%d", i)))
		if err != nil {
			return 0, err
		}
		defer s.Close()
		urls = append(urls, s.URL)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	post := func(url string) error { return postNoop(ctx, hc, url) }
	for _, u := range urls { // warm: connections, the consumer, the stores
		for range 4 {
			if err := post(u); err != nil {
				return 0, err
			}
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	t0 := time.Now()
	for c := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(total) {
				if err := post(urls[c%len(urls)]); err != nil {
					errMu.Lock()
					firstErr = errors.Join(firstErr, err)
					errMu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	d := time.Since(t0)
	o.logf("K2: %d nodes: %d workloads in %s", nodes, total, d.Round(time.Millisecond))
	return float64(total) / d.Seconds(), nil
}
