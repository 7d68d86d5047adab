package microvm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/nic"
	"github.com/vulcanhq/vulcan/internal/protocol"
)

// VMSpec is a sandbox VM to start: which image, how big, on what network.
type VMSpec struct {
	ID           string // the sandbox id; names the VM's dir, netns and logs
	Template     model.Runtime
	Resources    model.Resources
	Network      model.NetworkPolicy
	NetworkRules *model.NetworkRules
	Env          map[string]string // every process's default env, kept by the guest
}

// SandboxVM is a running VM whose agent serves a session. Stop it when done; it is also
// stopped by the backend's Cleanup for its id.
type SandboxVM struct {
	v       *vm
	session *protocol.Session
}

// Session is the multiplexed agent connection: processes, files, metrics.
func (s *SandboxVM) Session() *protocol.Session { return s.session }

// Metadata describes the VM (vm_id, vmm, accel, boot_ms, cid, guest_ip, versions).
func (s *SandboxVM) Metadata() map[string]string { return s.v.metadata() }

// Done is closed when the VM is gone: its VMM exited or its agent connection ended.
func (s *SandboxVM) Done() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-s.v.machine.Done():
		case <-s.session.Done():
		}
	}()
	return done
}

// Stop tears the VM down and releases everything it held. Idempotent.
func (s *SandboxVM) Stop(ctx context.Context) error { return s.v.teardown(ctx) }

// StartSandbox boots a VM for a sandbox and returns it once its agent serves a session.
// ctx bounds the boot only; the VM lives until Stop (or Cleanup of spec.ID).
func (b *Backend) StartSandbox(ctx context.Context, spec VMSpec) (*SandboxVM, error) {
	driver, err := b.drivers.get(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", backend.ErrUnavailable, err)
	}
	set := images.Load(b.cfg.ImagesDir)
	if err := set.Usable(); err != nil {
		return nil, fmt.Errorf("%w: %v", backend.ErrUnavailable, err)
	}
	rootfs := b.rootfsFor(set, spec.Template)
	if rootfs == nil {
		return nil, fmt.Errorf("%w: no %s image; run `make rootfs RUNTIME=%s`", backend.ErrUnavailable, spec.Template, spec.Template)
	}
	job := backend.Job{WorkloadID: spec.ID, Spec: model.Spec{
		Runtime: spec.Template, Isolation: model.IsolationMicroVM, Resources: spec.Resources,
		Network: spec.Network, NetworkRules: spec.NetworkRules, Env: spec.Env,
	}}
	v, err := b.acquire(ctx, driver, job, set.Kernel, rootfs)
	if err != nil {
		if v != nil {
			if terr := v.teardown(context.WithoutCancel(ctx)); terr != nil {
				b.log.Warn("vm teardown", "vm", v.id, "err", terr)
			}
		}
		return nil, err
	}
	return &SandboxVM{v: v, session: v.session}, nil
}

// bootArgs are the kernel arguments Vulcan adds for the agent. The agent must not power
// off after one exec: the host stops the VM (a sandbox runs many).
func bootArgs(n *nic.NIC) []string {
	return []string{"vulcan.hostname=vulcan", n.KernelIPArg(), "vulcan.oneshot=0"}
}

// greet reads the agent's hello and turns the connection into a session. Nothing may read
// frames from it first (a protocol.Conn's reader would swallow the session's bytes).
func (v *vm) greet(ctx context.Context, conn net.Conn, wake string) (*protocol.Hello, error) {
	if wake != "" {
		// A restored VM was parked: it greets only after its wake line.
		conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write(protocol.WakeLine(wake)); err != nil {
			return nil, fmt.Errorf("protocol: waking the restored agent: %w", err)
		}
		conn.SetWriteDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	m, err := protocol.ReadMessage(conn)
	if !stop() {
		if err == nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("protocol: waiting for hello: %w", errors.Join(err, ctx.Err()))
	}
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		return nil, fmt.Errorf("protocol: waiting for hello: %w", err)
	}
	if m.Type != protocol.TypeHello {
		return nil, fmt.Errorf("%w: first guest message is %s, want hello", protocol.ErrUnexpected, m.Type)
	}
	if h := m.Hello; h.ProtocolVersion != protocol.Version {
		return nil, fmt.Errorf("%w: guest agent %q speaks protocol %d, host speaks %d",
			protocol.ErrVersion, strings.TrimSpace(h.AgentVersion), h.ProtocolVersion, protocol.Version)
	}
	s, err := protocol.StartSession(conn, m.Hello)
	if err != nil {
		return nil, err
	}
	v.session = s
	v.cleanup.Add("close session", func(context.Context) error { return s.Close() })
	return m.Hello, nil
}

// park readies v to be saved (protocol.OpQuiesce): the agent leaves its session and says
// so on its console; the returned nonce wakes a restored copy.
func (v *vm) park(ctx context.Context) (string, error) {
	aw, ok := v.machine.(vmm.ConsoleAwaiter)
	if !ok {
		return "", fmt.Errorf("%s machines cannot be parked", v.driver.Name())
	}
	raw := make([]byte, 16)
	_, _ = rand.Read(raw)
	nonce := hex.EncodeToString(raw)
	parked := aw.AwaitConsole(protocol.ParkedMarker + nonce)
	_, err := v.session.Do(ctx, &protocol.Request{Op: protocol.OpQuiesce, Nonce: nonce})
	if oe := (*protocol.OpError)(nil); errors.As(err, &oe) {
		return "", fmt.Errorf("quiesce: %w", err)
	}
	// Any other error may be the agent's own doing: it ends the session right after its
	// answer, and a write still waiting on yamux can see that close first ("session
	// shutdown") though the request went out. The park line with this nonce is the proof
	// either way: only an agent that took this request prints it.
	t := time.NewTimer(15 * time.Second)
	defer t.Stop()
	select {
	case <-parked:
		return nonce, nil
	case <-t.C:
		if err != nil {
			return "", fmt.Errorf("quiesce: %w%s", err, v.consoleTail())
		}
		return "", errors.New("quiesce: the agent did not park within 15s")
	case <-ctx.Done():
		return "", fmt.Errorf("quiesce: %w", errors.Join(ctx.Err(), err))
	}
}
