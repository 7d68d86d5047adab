//go:build !linux

package guest

import (
	"context"
	"net"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

func (a *Agent) layerOp(ctx context.Context, req *protocol.Request, st net.Conn) *protocol.OpError {
	return opErr(protocol.ErrCodeUnsupported, "%s needs a Linux guest", req.Op)
}
