package engine

import (
	"testing"

	"github.com/vulcanhq/vulcan/internal/guest/archive"
)

// The host refuses an archive where the guest would; its limits must be the guest's.
func TestArchiveLimitsAreTheGuests(t *testing.T) {
	l := archive.DefaultLimits
	if l.MaxFiles != archiveMaxFiles || l.MaxTotalBytes != archiveMaxTotalBytes || l.MaxFileBytes != archiveMaxFileBytes {
		t.Fatalf("guest limits %+v, host files %d total %d file %d", l, archiveMaxFiles, archiveMaxTotalBytes, archiveMaxFileBytes)
	}
}
