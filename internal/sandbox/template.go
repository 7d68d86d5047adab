package sandbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
)

// KnowsTemplate reports whether name is a built-in template or one the catalog has.
func (s *Service) KnowsTemplate(name model.Runtime) bool {
	if name.ValidTemplate() {
		return true
	}
	if s.templates == nil {
		return false
	}
	_, ok := s.templates.Template(name, false)
	return ok
}

// templateDefaults is the user template a live sandbox runs on, nil for a built-in.
func (s *Service) templateDefaults(id string) *TemplateDefaults {
	b := s.lookup(id)
	if b == nil || s.templates == nil {
		return nil
	}
	b.mu.Lock()
	name := b.sb.Spec.Template
	b.mu.Unlock()
	if name.ValidTemplate() {
		return nil
	}
	d, _ := s.templates.Template(name, true)
	return d
}

// CodeInterpreterPort is where the code-interpreter template's service listens.
const CodeInterpreterPort = 49999

// builtinDefaults are the built-in templates that start a service with the sandbox.
var builtinDefaults = map[model.Runtime]*TemplateDefaults{
	model.RuntimeCodeInterpreter: {
		StartCmd: []string{"python3", "/usr/local/lib/vulcan-interpreter/server.py"},
		ReadyCmd: "exec 3<>/dev/tcp/127.0.0.1/49999",
		User:     "user",
		Workdir:  "/home/user",
	},
}

// StartTag names a template's start command among the sandbox's processes.
const StartTag = "start"

// readyTimeout bounds how long a start command may take to become ready.
const readyTimeout = 2 * time.Minute

// startCommand runs a template's start command in the background and, when the template
// has a readiness check, runs the check until it exits 0 (or the start command exits,
// or ctx ends).
func startCommand(ctx context.Context, sess *protocol.Session, t *TemplateDefaults) error {
	user := t.User
	if user == "" {
		user = "root"
	}
	st, _, err := sess.Open(ctx, &protocol.Request{Op: protocol.OpProcessStart, Process: &protocol.ProcessSpec{
		Argv: t.StartCmd, Cwd: t.Workdir, User: user, Tag: StartTag}})
	if err != nil {
		return err
	}
	// The start command runs on in the guest; its stream is not needed (attach by tag).
	exited := make(chan string, 1)
	go func() {
		defer st.Close()
		var tail strings.Builder
		for {
			ev, err := st.Event()
			if err != nil {
				return
			}
			if o := ev.Output; o != nil && tail.Len() < 2048 {
				tail.WriteString(o.Data)
			}
			if x := ev.Exit; x != nil {
				exited <- fmt.Sprintf("exited with %d before it was ready; output: %.2000s", x.Code, strings.TrimSpace(tail.String()))
				return
			}
		}
	}()
	if t.ReadyCmd == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		code, err := runOnce(ctx, sess, t.ReadyCmd, user, t.Workdir)
		if err == nil && code == 0 {
			return nil
		}
		select {
		case why := <-exited:
			return errors.New(why)
		case <-ctx.Done():
			return fmt.Errorf("not ready (%q) within %s", t.ReadyCmd, readyTimeout)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// runOnce runs a shell command to its end and returns its exit code.
func runOnce(ctx context.Context, sess *protocol.Session, cmd, user, cwd string) (int, error) {
	st, _, err := sess.Open(ctx, &protocol.Request{Op: protocol.OpProcessStart, Process: &protocol.ProcessSpec{
		Argv: []string{"/bin/bash", "-c", cmd}, User: user, Cwd: cwd, TimeoutMS: 30_000}})
	if err != nil {
		return -1, err
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Now()) })
	defer stop()
	for {
		ev, err := st.Event()
		if err != nil {
			return -1, err
		}
		if x := ev.Exit; x != nil {
			return x.Code, nil
		}
	}
}
