package bench

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// Machine is what the figures were measured on.
type Machine struct {
	CPU         string `json:"cpu"`
	CPUs        int    `json:"cpus"`
	MemoryBytes uint64 `json:"memory_bytes"`
	Kernel      string `json:"kernel"`
	Accel       string `json:"accel"`                  // kvm, tcg, or why neither
	AccelReason string `json:"accel_reason,omitempty"` // why not KVM
	Go          string `json:"go"`
}

// DetectMachine reads the CPU model, memory and kernel release from /proc; what cannot
// be read is left empty. accel and reason come from the caller, which knows how the VMM
// was resolved.
func DetectMachine(accel, reason string) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Accel: accel, AccelReason: reason, Go: runtime.Version()}
	m.CPU = procField("/proc/cpuinfo", "model name")
	if kb, err := strconv.ParseUint(strings.TrimSuffix(procField("/proc/meminfo", "MemTotal"), " kB"), 10, 64); err == nil {
		m.MemoryBytes = kb << 10
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	} else {
		m.Kernel = runtime.GOOS
	}
	return m
}

// procField is the value of the first "key: value" line named key.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// String is the one-line description under the table.
func (m Machine) String() string {
	cpu := m.CPU
	if cpu == "" {
		cpu = "unknown CPU"
	}
	accel := m.Accel
	if m.AccelReason != "" {
		accel += " (" + m.AccelReason + ")"
	}
	return fmt.Sprintf("%s, %d CPUs, %.1f GiB RAM, %s, accel %s, %s", cpu, m.CPUs,
		float64(m.MemoryBytes)/(1<<30), m.Kernel, accel, m.Go)
}
