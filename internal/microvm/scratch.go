package microvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// CreateScratch makes a VM's scratch disk: a sparse file of sizeMB formatted ext4 without
// a journal and with lazy inode tables, so it costs a few milliseconds and about a
// megabyte whatever its size; the guest's writes fill it, up to sizeMB. It lives in the VM
// dir and goes with it.
func CreateScratch(ctx context.Context, path string, sizeMB int) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("scratch disk: %w", err)
	}
	err = f.Truncate(int64(sizeMB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("scratch disk: %w", err)
	}
	out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", protocol.ScratchLabel, "-O", "^has_journal",
		"-E", "lazy_itable_init=1,nodiscard", "-m", "0", path, strconv.Itoa(sizeMB)+"M").CombinedOutput()
	if err != nil {
		return fmt.Errorf("scratch disk: mkfs.ext4: %v: %s (install e2fsprogs)", err, out)
	}
	return nil
}
