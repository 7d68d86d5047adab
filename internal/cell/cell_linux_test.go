package cell

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/instance"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// A process started in a cell runs unprivileged, in its own minimal mount namespace, in
// its cgroup with the limits asked for, and can write only its writable files. The
// checks read /proc/<pid> from the host, as a test of a real VMM does.
func TestCellConfinesProcess(t *testing.T) {
	testenv.RequiresRoot(t)
	dir := testenv.ShortTempDir(t)
	ro := filepath.Join(dir, "kernel")
	w := filepath.Join(dir, "scratch")
	for _, f := range []string{ro, w} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := &Spec{UID: UIDBase + 7, GID: UIDBase + 7, Dir: dir, ReadOnly: []string{ro}, Writable: []string{w},
		Root: filepath.Join(dir, RootDirName), ParentPID: os.Getpid()}
	if err := s.PrepareDir(); err != nil {
		t.Fatal(err)
	}
	if err := s.Own(w); err != nil {
		t.Fatal(err)
	}
	cg := NewCgroups("t" + instance.New()[:5])
	var group *Group
	if cg.Err() != nil {
		t.Logf("no cgroups here: %v", cg.Err())
	} else {
		var err error
		group, err = cg.Create("vm1", Limits{MemoryBytes: 64 << 20, CPUs: 1, Pids: 16, IOWeight: 50})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := group.Delete(); err != nil {
				t.Errorf("delete cgroup: %v", err)
			}
			if n, err := cg.Reclaim(); n != 0 || err != nil {
				t.Errorf("reclaim after delete: %d, %v", n, err)
			}
			if err := cg.RemoveParent(); err != nil {
				t.Errorf("remove parent: %v", err)
			}
		})
		s.CgroupProcs = group.Procs
	}

	// The writes are the process's own verdict; sleep keeps it alive for the /proc checks.
	script := "touch " + dir + "/new 2>/dev/null && echo dir-writable; echo y > " + w + " && echo scratch-writable; " +
		"touch /usr/x 2>/dev/null && echo usr-writable; cat " + ro + " >/dev/null && echo kernel-readable; exec sleep 30"
	cmd, err := s.Command("sh", []string{"-c", script})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = SysProcAttr(&syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { _ = syscall.Kill(-pid, syscall.SIGKILL); _ = cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile("/proc/" + itoa(pid) + "/cmdline")
		if bytes.HasPrefix(b, []byte("sleep")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never reached sleep; cmdline %q output %q", b, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := out.String(); got != "scratch-writable\nkernel-readable\n" {
		t.Errorf("inside the cell: %q, want only the scratch file writable and the kernel readable", got)
	}
	st, err := ReadStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Confined(); err != nil {
		t.Errorf("status: %v (%+v)", err, st)
	}
	if st.Seccomp != 0 {
		t.Logf("seccomp %d (the VMM installs its own; sleep does not)", st.Seccomp)
	}
	mounts, err := ReadMounts(pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.OnlyNeeded(mounts); err != nil {
		t.Errorf("mountinfo: %v\n%s", err, strings.Join(mounts, "\n"))
	}
	if group != nil {
		in, err := InGroup(pid, group)
		if err != nil || !in {
			t.Errorf("pid %d not in %v: %v", pid, group.Paths, err)
		}
		lim, err := ReadLimits(group)
		if err != nil {
			t.Fatal(err)
		}
		if lim.MemoryBytes != 64<<20 || lim.CPUs != 1 || lim.Pids != 16 {
			t.Errorf("limits %+v", lim)
		}
		t.Logf("cgroup %s %v: %+v", cg.Mode(), group.Paths, lim)
	}
}

// The setup step refuses to exec a VMM as root.
func TestCellRefusesRoot(t *testing.T) {
	testenv.RequiresRoot(t)
	dir := testenv.ShortTempDir(t)
	s := &Spec{Dir: dir, Root: filepath.Join(dir, RootDirName)}
	cmd, err := s.Command("true", nil)
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = SysProcAttr(nil)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "must not run as root") {
		t.Fatalf("err %v output %q", err, out)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
