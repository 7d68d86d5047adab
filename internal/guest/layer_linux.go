package guest

import (
	"context"
	"errors"
	"net"
	"strconv"
	"time"

	"github.com/vulcanhq/vulcan/internal/layer"
	"github.com/vulcanhq/vulcan/internal/protocol"
)

// layerOp serves fs.archive and fs.apply: a template build reads what its steps changed
// and the finished tree, and writes cached steps and COPY sources back. Root only: the
// stream carries every file's owner.
func (a *Agent) layerOp(ctx context.Context, req *protocol.Request, st net.Conn) *protocol.OpError {
	u, e := a.sessionUser(req.User)
	if e != nil {
		return e
	}
	if u.name != "root" {
		return opErr(protocol.ErrCodeInvalid, "%s is for root only", req.Op)
	}
	if req.Op == protocol.OpFSArchive {
		var dir string
		var o layer.WriteOptions
		switch req.Layer {
		case protocol.LayerTree:
			dir, o = "/", layer.WriteOptions{OneFileSystem: true}
		case protocol.LayerDiff:
			if upperLayer == nil {
				return opErr(protocol.ErrCodeUnsupported, "this VM's root has no overlay layer to archive")
			}
			dir, o = "/proc/self/fd/"+strconv.Itoa(int(upperLayer.Fd())), layer.WriteOptions{Diff: true}
		default:
			return opErr(protocol.ErrCodeInvalid, "layer %.16q: want tree or diff", req.Layer)
		}
		if e := respond(st, &protocol.Response{}); e != nil {
			return e
		}
		w := &deadlineConn{st}
		if err := layer.Write(ctx, w, dir, o); err != nil {
			// The bytes already sent cannot be taken back: the tar ends without its
			// trailer, which the host reads as a failure. Say why on the console.
			a.log.Warn("fs.archive", "layer", req.Layer, "err", err)
		}
		return nil
	}
	p, e := resolvePath(u.home, req.Path)
	if e != nil {
		return e
	}
	o := layer.Options{Whiteouts: req.Layer == protocol.LayerDiff, KeepOwners: true}
	if req.Owner != nil {
		o.Owner = &layer.Owner{UID: req.Owner.UID, GID: req.Owner.GID}
	}
	if e := respond(st, &protocol.Response{}); e != nil {
		return e
	}
	if _, err := layer.Apply(ctx, &deadlineConn{st}, p, o); err != nil {
		if errors.Is(err, layer.ErrRefused) {
			return opErr(protocol.ErrCodeInvalid, "%s", err.Error())
		}
		return fsError(err)
	}
	return respond(st, &protocol.Response{})
}

// deadlineConn moves the stream's deadline on with every read and write, so a host that
// stops midway does not hold the operation for ever.
type deadlineConn struct{ c net.Conn }

func (d *deadlineConn) Read(p []byte) (int, error) {
	d.c.SetReadDeadline(time.Now().Add(streamIdleTimeout))
	return d.c.Read(p)
}

func (d *deadlineConn) Write(p []byte) (int, error) {
	d.c.SetWriteDeadline(time.Now().Add(streamIdleTimeout))
	return d.c.Write(p)
}
