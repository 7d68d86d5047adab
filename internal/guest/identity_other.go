//go:build !linux

package guest

import (
	"errors"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// ApplyIdentity needs Linux (the agent runs in Linux VMs only).
func ApplyIdentity(*protocol.Identity) error { return errors.New("identity needs Linux") }
