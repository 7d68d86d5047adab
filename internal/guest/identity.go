package guest

import (
	"net"
	"regexp"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// hostnameRE is an RFC 1123 host name label (one label: the host sends a name, not a
// domain).
var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$`)

// validIdentity checks what the host asks for before anything is applied.
func validIdentity(id *protocol.Identity) *protocol.OpError {
	switch {
	case id == nil:
		return opErr(protocol.ErrCodeInvalid, "sys.identity needs an identity")
	case id.Hostname != "" && (len(id.Hostname) > protocol.MaxHostnameLen || !hostnameRE.MatchString(id.Hostname)):
		return opErr(protocol.ErrCodeInvalid, "hostname %.80q is not a host name of at most %d characters", id.Hostname, protocol.MaxHostnameLen)
	case len(id.Seed) < protocol.MinIdentitySeed || len(id.Seed) > protocol.MaxIdentitySeed:
		return opErr(protocol.ErrCodeInvalid, "seed must be %d to %d bytes, got %d", protocol.MinIdentitySeed, protocol.MaxIdentitySeed, len(id.Seed))
	case id.UnixNano < 0:
		return opErr(protocol.ErrCodeInvalid, "negative clock")
	}
	return validateSpec(&protocol.ProcessSpec{Argv: []string{"env"}, Env: id.Env})
}

// identity applies sys.identity: only an agent that owns its VM (PID 1) has an
// ApplyIdentity; one running as a host process says it cannot.
func (a *Agent) identity(req *protocol.Request, st net.Conn) *protocol.OpError {
	if err := validIdentity(req.Identity); err != nil {
		return err
	}
	// The env is the agent's own to keep, wherever it runs; none sent keeps the one it
	// has (a sandbox resumed by a server that never knew its env).
	if req.Identity.Env != nil {
		a.sess.setDefaultEnv(req.Identity.Env)
	}
	if a.cfg.ApplyIdentity == nil {
		return opErr(protocol.ErrCodeUnsupported, "this agent does not own its machine (not PID 1): identity not applied")
	}
	if err := a.cfg.ApplyIdentity(req.Identity); err != nil {
		return opErr(protocol.ErrCodeInternal, "identity: %v", err)
	}
	return respond(st, &protocol.Response{})
}
