package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
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
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
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
