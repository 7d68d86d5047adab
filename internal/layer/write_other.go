//go:build !linux

package layer

import (
	"context"
	"errors"
	"io"
)

// WriteOptions say what Write walks.
type WriteOptions struct {
	Diff          bool
	OneFileSystem bool
}

// Write is Linux's (overlayfs layers, stat fields).
func Write(ctx context.Context, w io.Writer, dir string, o WriteOptions) error {
	return errors.New("layer: Write needs Linux")
}
