//go:build !linux

package guest

import (
	"errors"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

func sampleSystem() (*protocol.Metrics, cpuSample, error) {
	return nil, cpuSample{}, errors.New("metrics need Linux's /proc")
}
