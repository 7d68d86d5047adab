package qemu

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
)

// ProbeAccel decides between KVM and TCG. /dev/kvm existing is not enough: nested or
// half-virtualised hosts expose it and then fail at the first unsupported instruction
// ("KVM internal error ... emulation failure"). So when /dev/kvm opens, the probe boots
// the real kernel with no root disk under KVM: a working KVM panics ("no root") and,
// with panic=-1 and -no-reboot, exits within a second or two; a broken one reports an
// internal error or hangs. It returns the accel to use and, for TCG, why KVM was not.
func ProbeAccel(ctx context.Context, bin, kernel string) (accel, reason string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return AccelTCG, fmt.Sprintf("/dev/kvm not usable: %v", err)
	}
	f.Close()
	if _, err := os.Stat(kernel); err != nil {
		return AccelTCG, "kvm not probed: no kernel image"
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host",
		"-m", "128M", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
		"-no-reboot", "-serial", "stdio", "-kernel", kernel,
		"-append", "console=ttyS0 panic=-1 reboot=t")
	out := &probeOutput{cancel: cancel}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = vmm.ProcAttr()
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	text := out.String()
	switch {
	case strings.Contains(text, "KVM internal error") || strings.Contains(text, "emulation failure"):
		return AccelTCG, "/dev/kvm is present but KVM cannot run this guest (KVM internal error: emulation failure; nested virtualization without full CPU support)"
	case err == nil && strings.Contains(text, "Kernel panic"):
		return AccelKVM, ""
	case ctx.Err() != nil:
		return AccelTCG, "/dev/kvm is present but a KVM test boot did not finish within 15s"
	default:
		return AccelTCG, fmt.Sprintf("/dev/kvm is present but a KVM test boot failed: %v: %s", err, lastLine(text))
	}
}

// probeOutput collects QEMU's output and stops the probe at the first internal error:
// a broken KVM hangs after printing it.
type probeOutput struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	cancel func()
}

func (p *probeOutput) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.buf.Len() < 64<<10 {
		p.buf.Write(b)
	}
	if bytes.Contains(p.buf.Bytes(), []byte("KVM internal error")) {
		p.cancel()
	}
	return len(b), nil
}

func (p *probeOutput) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.String()
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// probeRecord is a cached probe result. It is valid for the same QEMU binary, kernel and
// host boot: any of those changing can change whether KVM works.
type probeRecord struct {
	Key    string `json:"key"`
	Accel  string `json:"accel"`
	Reason string `json:"reason"`
}

// ProbeAccelCached is ProbeAccel with its result remembered in cacheFile, so a server
// start or a test does not pay for a test boot each time.
func ProbeAccelCached(ctx context.Context, bin, kernel, cacheFile string) (accel, reason string) {
	key := probeKey(bin, kernel)
	if cacheFile != "" && key != "" {
		if b, err := os.ReadFile(cacheFile); err == nil && len(b) < 4096 {
			var rec probeRecord
			if json.Unmarshal(b, &rec) == nil && rec.Key == key && (rec.Accel == AccelKVM || rec.Accel == AccelTCG) {
				return rec.Accel, rec.Reason
			}
		}
	}
	accel, reason = ProbeAccel(ctx, bin, kernel)
	if cacheFile != "" && key != "" && ctx.Err() == nil {
		if b, err := json.Marshal(probeRecord{Key: key, Accel: accel, Reason: reason}); err == nil {
			tmp := cacheFile + ".tmp"
			if os.WriteFile(tmp, b, 0o644) == nil {
				_ = os.Rename(tmp, cacheFile)
			}
		}
	}
	return accel, reason
}

func probeKey(bin, kernel string) string {
	path, err := exec.LookPath(bin)
	if err != nil {
		return ""
	}
	bst, err1 := os.Stat(path)
	boot, err2 := os.ReadFile("/proc/sys/kernel/random/boot_id")
	// The kernel by content: `make kernel` reinstalls the same file with a new mtime.
	kf, err3 := os.Open(kernel)
	if err1 != nil || err2 != nil || err3 != nil {
		return ""
	}
	defer kf.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(kf, 256<<20)); err != nil {
		return ""
	}
	return fmt.Sprintf("%s:%d:%d|%x|%s", path, bst.Size(), bst.ModTime().UnixNano(),
		h.Sum(nil), strings.TrimSpace(string(boot)))
}
