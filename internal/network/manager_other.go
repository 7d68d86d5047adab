//go:build !linux

package network

import (
	"context"
	"fmt"
	"net"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/nic"
)

// Manager attaches VMs to the network; only Linux has one.
type Manager struct{}

// New fails: VM networking needs Linux.
func New(ctx context.Context, cfg Config) (*Manager, error) { return nil, Check(cfg.BinDir) }

// Check fails: VM networking needs Linux.
func Check(binDir string) error { return fmt.Errorf("%w: VM networking needs Linux", ErrUnavailable) }

func (m *Manager) Gateway() net.IP { return nil }

func (m *Manager) Attach(ctx context.Context, vmID string, policy model.NetworkPolicy, rules *model.NetworkRules) (*nic.NIC, error) {
	return nil, Check("")
}

func (m *Manager) Detach(ctx context.Context, vmID string) error { return nil }

func (m *Manager) Reclaim(ctx context.Context) (Reclaimed, error) { return Reclaimed{}, nil }

func (m *Manager) Close(ctx context.Context) error { return nil }

func (m *Manager) Prepare() error { return Check("") }

func (m *Manager) Attached() (int, error) { return 0, nil }

func (m *Manager) Names() Names { return Names{} }
