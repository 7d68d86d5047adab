package sandbox

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
	"github.com/vulcanhq/vulcan/internal/store"
)

// fakeMachine is a VM whose "agent" is a session server in the test answering fs.stat.
type fakeMachine struct {
	sess    *protocol.Session
	gone    chan struct{}
	once    sync.Once
	stopped int
	mu      sync.Mutex
}

func newFakeMachine(t *testing.T) *fakeMachine {
	host, guest := net.Pipe()
	go func() {
		m, err := protocol.ReadMessage(guest)
		if err != nil || m.Type != protocol.TypeSession {
			return
		}
		protocol.ServeSession(context.Background(), guest, func(ctx context.Context, req *protocol.Request, st net.Conn) {
			protocol.Respond(st, &protocol.Response{Info: &protocol.FileInfo{Path: req.Path, Type: "file"}})
		})
	}()
	sess, err := protocol.StartSession(host, &protocol.Hello{Session: true})
	if err != nil {
		t.Fatal(err)
	}
	return &fakeMachine{sess: sess, gone: make(chan struct{})}
}

func (m *fakeMachine) Session() *protocol.Session  { return m.sess }
func (m *fakeMachine) Metadata() map[string]string { return map[string]string{"vm_id": "fake"} }
func (m *fakeMachine) Done() <-chan struct{}       { return m.gone }
func (m *fakeMachine) die()                        { m.once.Do(func() { close(m.gone) }) }
func (m *fakeMachine) Stop(context.Context) error {
	m.mu.Lock()
	m.stopped++
	m.mu.Unlock()
	m.die()
	return m.sess.Close()
}

type fakeLauncher struct {
	t       *testing.T
	mu      sync.Mutex
	started []*fakeMachine
	gate    chan struct{} // when set, Launch waits for it
	fail    error
}

func (l *fakeLauncher) Launch(ctx context.Context, id string, spec model.SandboxSpec) (Machine, error) {
	if l.gate != nil {
		select {
		case <-l.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if l.fail != nil {
		return nil, l.fail
	}
	m := newFakeMachine(l.t)
	l.mu.Lock()
	l.started = append(l.started, m)
	l.mu.Unlock()
	return m, nil
}

func newService(t *testing.T, cfg Config, l Launcher, dbPath string) (*Service, *store.Store) {
	t.Helper()
	if dbPath == "" {
		dbPath = filepath.Join(t.TempDir(), "db")
	}
	st, err := store.Open(context.Background(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(context.Background(), Options{Config: cfg, Store: st, Launcher: l, Metrics: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()); st.Close() })
	return s, st
}

func TestCreateKillAndStates(t *testing.T) {
	l := &fakeLauncher{t: t}
	s, st := newService(t, Config{}, l, "")
	ctx := context.Background()
	sb, err := s.Create(ctx, model.SandboxSpec{Metadata: map[string]string{"user": "ada"}, Env: map[string]string{"K": "secret"}})
	if err != nil {
		t.Fatal(err)
	}
	if sb.State != model.SandboxRunning || sb.Spec.Template != model.RuntimePython || sb.VM["vm_id"] != "fake" ||
		sb.ExpiresAt.Sub(sb.CreatedAt) != 300*time.Second || sb.Spec.Env != nil {
		t.Fatalf("created %+v", sb)
	}
	// The session is usable.
	resp, err := s.Do(ctx, sb.ID, &protocol.Request{Op: protocol.OpFSStat, Path: "/x"})
	if err != nil || resp.Info.Path != "/x" {
		t.Fatalf("stat: %+v %v", resp, err)
	}
	k, err := s.Kill(ctx, sb.ID)
	if err != nil || k.State != model.SandboxKilled || k.EndedAt == nil {
		t.Fatalf("kill: %+v %v", k, err)
	}
	if _, err := s.Kill(ctx, sb.ID); !errors.Is(err, ErrEnded) {
		t.Fatalf("second kill: %v", err)
	}
	if _, err := s.Do(ctx, sb.ID, &protocol.Request{Op: protocol.OpFSStat, Path: "/x"}); !errors.Is(err, ErrEnded) {
		t.Fatalf("op on a killed sandbox: %v", err)
	}
	if l.started[0].stopped != 1 {
		t.Errorf("VM stopped %d times", l.started[0].stopped)
	}
	stored, _ := st.GetSandbox(ctx, sb.ID)
	if stored.State != model.SandboxKilled || stored.Spec.Metadata["user"] != "ada" {
		t.Fatalf("stored %+v", stored)
	}
	if s.Load().Live != 0 || s.Load().MemMB != 0 {
		t.Fatalf("capacity not released: %+v", s.Load())
	}
}

func TestTimeoutAndExtend(t *testing.T) {
	s, _ := newService(t, Config{}, &fakeLauncher{t: t}, "")
	ctx := context.Background()
	sb, err := s.Create(ctx, model.SandboxSpec{TimeoutS: 1})
	if err != nil {
		t.Fatal(err)
	}
	ext, err := s.SetTimeout(ctx, sb.ID, 2)
	if err != nil || !ext.ExpiresAt.After(sb.ExpiresAt) {
		t.Fatalf("extend: %+v %v", ext, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := s.Get(ctx, sb.ID)
		if got.State == model.SandboxTimedOut {
			if got.EndedAt.Before(ext.ExpiresAt) {
				t.Fatalf("ended %v, before its extended expiry %v", got.EndedAt, ext.ExpiresAt)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %s after its timeout", got.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := s.SetTimeout(ctx, sb.ID, 5); !errors.Is(err, ErrEnded) {
		t.Fatalf("extend an ended sandbox: %v", err)
	}
	for _, bad := range []int{0, -1, model.MaxSandboxTimeoutS + 1} {
		if _, err := s.SetTimeout(ctx, sb.ID, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("timeout %d: %v", bad, err)
		}
	}
}

func TestCapacityRefusesAndStoresNothing(t *testing.T) {
	s, st := newService(t, Config{MaxSandboxes: 2, MemBudgetMB: 10_000}, &fakeLauncher{t: t}, "")
	ctx := context.Background()
	for range 2 {
		if _, err := s.Create(ctx, model.SandboxSpec{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Create(ctx, model.SandboxSpec{}); !errors.Is(err, ErrBusy) {
		t.Fatalf("third: %v", err)
	}
	list, _, _ := st.ListSandboxes(ctx, store.SandboxFilter{})
	if len(list) != 2 {
		t.Fatalf("%d stored, want 2", len(list))
	}
	s2, _ := newService(t, Config{MemBudgetMB: 600}, &fakeLauncher{t: t}, "")
	if _, err := s2.Create(ctx, model.SandboxSpec{Resources: model.Resources{MemMB: 512}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Create(ctx, model.SandboxSpec{Resources: model.Resources{MemMB: 256}}); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "memory") {
		t.Fatalf("over the memory budget: %v", err)
	}
	if v := testutil.ToFloat64(s2.m.rejected.WithLabelValues("busy")); v != 1 {
		t.Errorf("rejected{busy} = %v", v)
	}
}

func TestVMDeathFailsTheSandbox(t *testing.T) {
	l := &fakeLauncher{t: t}
	s, _ := newService(t, Config{}, l, "")
	ctx := context.Background()
	sb, _ := s.Create(ctx, model.SandboxSpec{})
	l.started[0].die()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ := s.Get(ctx, sb.ID)
		if got.State == model.SandboxFailed && strings.Contains(got.Error, "unexpectedly") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("state %s error %q", got.State, got.Error)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestKillWhileBooting(t *testing.T) {
	l := &fakeLauncher{t: t, gate: make(chan struct{})}
	s, _ := newService(t, Config{}, l, "")
	ctx := context.Background()
	created := make(chan *model.Sandbox, 1)
	go func() {
		sb, _ := s.Create(ctx, model.SandboxSpec{})
		created <- sb
	}()
	var id string
	for id == "" {
		list, _, _ := s.List(ctx, store.SandboxFilter{})
		if len(list) == 1 {
			id = list[0].ID
			if list[0].State != model.SandboxStarting {
				t.Fatalf("state while booting: %s", list[0].State)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	killed := make(chan *model.Sandbox, 1)
	go func() { k, _ := s.Kill(ctx, id); killed <- k }()
	time.Sleep(50 * time.Millisecond)
	close(l.gate)
	if k := <-killed; k == nil || k.State != model.SandboxKilled {
		t.Fatalf("kill while booting: %+v", k)
	}
	if sb := <-created; sb == nil || sb.State != model.SandboxKilled {
		t.Fatalf("create returned %+v", sb)
	}
	if l.started[0].stopped != 1 {
		t.Fatal("the VM that finished booting after the kill was not stopped")
	}
}

func TestBootFailureIsStoredFailed(t *testing.T) {
	s, st := newService(t, Config{}, &fakeLauncher{t: t, fail: errors.New("no kernel")}, "")
	if _, err := s.Create(context.Background(), model.SandboxSpec{}); err == nil {
		t.Fatal("create succeeded")
	}
	list, _, _ := st.ListSandboxes(context.Background(), store.SandboxFilter{})
	if len(list) != 1 || list[0].State != model.SandboxFailed || !strings.Contains(list[0].Error, "no kernel") {
		t.Fatalf("%+v", list)
	}
	if s.Load().Live != 0 {
		t.Fatal("capacity held by a failed boot")
	}
}

func TestRestartMarksLost(t *testing.T) {
	db := filepath.Join(t.TempDir(), "db")
	st, _ := store.Open(context.Background(), db)
	s, err := New(context.Background(), Options{Store: st, Launcher: &fakeLauncher{t: t}})
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := s.Create(context.Background(), model.SandboxSpec{})
	st.Close() // the "crash": no Shutdown
	s2, _ := newService(t, Config{}, &fakeLauncher{t: t}, db)
	got, err := s2.Get(context.Background(), sb.ID)
	if err != nil || got.State != model.SandboxLost || got.Error != LostReason {
		t.Fatalf("after restart: %+v %v", got, err)
	}
}

func TestValidate(t *testing.T) {
	for name, spec := range map[string]model.SandboxSpec{
		"template": {Template: "cobol"},
		"cpus":     {Resources: model.Resources{CPUs: 99}},
		"mem":      {Resources: model.Resources{MemMB: 1}},
		"timeout":  {TimeoutS: model.MaxSandboxTimeoutS + 1},
		"network":  {Network: "all"},
		"env":      {Env: map[string]string{"1BAD": "x"}},
		"metadata": {Metadata: map[string]string{"k": strings.Repeat("v", 300)}},
		"rules":    {Network: model.NetworkNone, NetworkRules: &model.NetworkRules{Allow: []string{"example.com"}}},
	} {
		if _, err := Validate(spec, model.DefaultLimits); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
		var fe *model.FieldError
		if _, err := Validate(spec, model.DefaultLimits); !errors.As(err, &fe) || fe.Field == "" {
			t.Errorf("%s: no field in %v", name, err)
		}
	}
}

// A server that stops kills its sandboxes (each stored killed, its VM stopped) and refuses
// new ones; a boot in flight fails rather than leaving a VM behind.
func TestShutdownKillsLiveSandboxes(t *testing.T) {
	l := &fakeLauncher{t: t}
	s, st := newService(t, Config{}, l, "")
	ctx := context.Background()
	var ids []string
	for range 3 {
		sb, err := s.Create(ctx, model.SandboxSpec{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sb.ID)
	}
	s.Shutdown(ctx)
	for i, id := range ids {
		got, err := st.GetSandbox(ctx, id)
		if err != nil || got.State != model.SandboxKilled || !strings.Contains(got.Error, "shut down") {
			t.Errorf("after shutdown: %+v %v", got, err)
		}
		if l.started[i].stopped != 1 {
			t.Errorf("sandbox %d: VM stopped %d times", i, l.started[i].stopped)
		}
	}
	if _, err := s.Create(ctx, model.SandboxSpec{}); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("create after shutdown: %v", err)
	}
	if s.Load().Live != 0 {
		t.Fatalf("live after shutdown: %+v", s.Load())
	}
}
