package microvm

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
)

// The sandbox contract, on every driver: one VM that stays up for many processes and file
// operations over its session, then stops leaving nothing behind; and a VM that dies
// under its sandbox is noticed. One VM serves all the cases of the first part (they are
// independent of each other), to keep the suite lean under TCG.
func runSandboxConformance(t *testing.T, h *harness) {
	t.Run("sandbox_session", func(t *testing.T) {
		ctx := context.Background()
		id := fmt.Sprintf("sbx%d", time.Now().UnixNano()%1e9)
		sb, err := h.b.StartSandbox(ctx, VMSpec{ID: id, Template: model.RuntimePython,
			Resources: model.Resources{CPUs: 1, MemMB: 256}})
		if err != nil {
			t.Fatal(err)
		}
		stopped := false
		defer func() {
			if !stopped {
				sb.Stop(ctx)
			}
		}()
		md := sb.Metadata()
		if md["vmm"] != h.vmm || md["boot_ms"] == "" {
			t.Errorf("metadata %v", md)
		}
		sess := sb.Session()

		t.Run("processes", func(t *testing.T) {
			out, exit := runProc(t, sess, protocol.ProcessSpec{Shell: "echo hello; echo oops >&2; exit 3"})
			if out[protocol.Stdout] != "hello\n" || out[protocol.Stderr] != "oops\n" || exit.Code != 3 {
				t.Errorf("out %q exit %+v", out, exit)
			}
			out, exit = runProc(t, sess, protocol.ProcessSpec{Argv: []string{"/bin/sh", "-c", "id -u; pwd; echo $K"}, User: "root", Cwd: "/tmp", Env: map[string]string{"K": "v"}})
			if out[protocol.Stdout] != "0\n/tmp\nv\n" || exit.Code != 0 {
				t.Errorf("as root in /tmp: %q %+v", out, exit)
			}
			// State persists between processes: the second sees the first's file.
			runProc(t, sess, protocol.ProcessSpec{Shell: "echo kept > state.txt"})
			if out, _ := runProc(t, sess, protocol.ProcessSpec{Shell: "cat state.txt; id -u"}); out[protocol.Stdout] != "kept\n1000\n" {
				t.Errorf("second process sees %q", out)
			}
		})

		t.Run("concurrent_processes_and_signals", func(t *testing.T) {
			st, resp, err := sess.Open(ctx, &protocol.Request{Op: protocol.OpProcessStart, Process: &protocol.ProcessSpec{Shell: "sleep 60", Tag: "sleeper"}})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			list, err := sess.Do(ctx, &protocol.Request{Op: protocol.OpProcessList})
			if err != nil || !hasPID(list.Processes, resp.PID) {
				t.Fatalf("list %+v %v (want pid %d)", list, err, resp.PID)
			}
			// Another process runs while the sleeper sleeps.
			if out, _ := runProc(t, sess, protocol.ProcessSpec{Shell: "echo meanwhile"}); out[protocol.Stdout] != "meanwhile\n" {
				t.Errorf("concurrent %q", out)
			}
			if _, err := sess.Do(ctx, &protocol.Request{Op: protocol.OpProcessSignal, Tag: "sleeper", Signal: "KILL"}); err != nil {
				t.Fatal(err)
			}
			exit := waitExit(t, st)
			if exit.Signal == "" && exit.Code != 137 {
				t.Errorf("killed sleeper exit %+v", exit)
			}
		})

		t.Run("no_output_lost", func(t *testing.T) {
			out, exit := runProc(t, sess, protocol.ProcessSpec{Argv: []string{"python3", "-c", "for i in range(20000): print(i)"}})
			var want strings.Builder
			for i := range 20000 {
				want.WriteString(strconv.Itoa(i) + "\n")
			}
			if out[protocol.Stdout] != want.String() || exit.Code != 0 || exit.Truncated {
				t.Errorf("20,000 lines: got %d bytes, want %d; exit %+v", len(out[protocol.Stdout]), want.Len(), exit)
			}
		})

		t.Run("watch", func(t *testing.T) {
			// inotify in the guest's kernel, as the user: a recursive watch sees a file
			// made by a process in a directory made after the watch began.
			st, resp, err := sess.Open(ctx, &protocol.Request{Op: protocol.OpFSWatch, Path: "~", Recursive: true})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			// A fresh name: under fcsim the home is a directory of this host that outlives
			// the run, where an old w/a/b/f.txt would only be rewritten, not created.
			dir := fmt.Sprintf("watch-%d", time.Now().UnixNano())
			defer runProc(t, sess, protocol.ProcessSpec{Argv: []string{"rm", "-rf", dir}})
			runProc(t, sess, protocol.ProcessSpec{Shell: "mkdir -p " + dir + "/a/b && echo x > " + dir + "/a/b/f.txt"})
			want := resp.Info.Path + "/" + dir + "/a/b/f.txt"
			st.SetReadDeadline(time.Now().Add(30 * time.Second))
			for {
				ev, err := st.Event()
				if err != nil {
					t.Fatalf("watch ended before %s was reported: %v", want, err)
				}
				if ev.FS != nil && ev.FS.Op == protocol.FSCreate && ev.FS.Path == want {
					break
				}
			}
		})

		t.Run("files", func(t *testing.T) {
			data := make([]byte, 2<<20+3)
			rand.Read(data)
			st, _, err := sess.Open(ctx, &protocol.Request{Op: protocol.OpFSWrite, Path: "up/blob.bin", Mode: 0o640})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.Write(data); err != nil {
				t.Fatal(err)
			}
			st.CloseWrite()
			resp, err := st.Response()
			st.Close()
			if err != nil || resp.Error != nil || resp.Info.Size != int64(len(data)) || resp.Info.Mode != 0o640 {
				t.Fatalf("write: %+v %v", resp, err)
			}
			rd, resp, err := sess.Open(ctx, &protocol.Request{Op: protocol.OpFSRead, Path: "up/blob.bin"})
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(io.LimitReader(rd, resp.Info.Size+1))
			rd.Close()
			if !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes, want %d equal", len(got), len(data))
			}
			if _, err := sess.Do(ctx, &protocol.Request{Op: protocol.OpFSMove, Path: "up/blob.bin", To: "up/moved.bin"}); err != nil {
				t.Fatal(err)
			}
			list, err := sess.Do(ctx, &protocol.Request{Op: protocol.OpFSList, Path: "up"})
			if err != nil || len(list.Entries) != 1 || list.Entries[0].Name != "moved.bin" {
				t.Fatalf("list %+v %v", list, err)
			}
			if _, err := sess.Do(ctx, &protocol.Request{Op: protocol.OpFSRemove, Path: "up"}); err != nil {
				t.Fatal(err)
			}
			var oe *protocol.OpError
			if _, err := sess.Do(ctx, &protocol.Request{Op: protocol.OpFSStat, Path: "up"}); !errors.As(err, &oe) || oe.Code != protocol.ErrCodeNotFound {
				t.Errorf("stat of a removed dir: %v", err)
			}
			// The user cannot read what only root may.
			if _, err := sess.Do(ctx, &protocol.Request{Op: protocol.OpFSStat, Path: "/root/x"}); !errors.As(err, &oe) || (oe.Code != protocol.ErrCodePermission && oe.Code != protocol.ErrCodeNotFound) {
				t.Errorf("stat under /root as user: %v", err)
			}
		})

		t.Run("metrics", func(t *testing.T) {
			resp, err := sess.Do(ctx, &protocol.Request{Op: protocol.OpMetrics})
			if err != nil {
				t.Fatal(err)
			}
			m := resp.Metrics
			if m.CPUCount < 1 || m.MemTotal <= 0 || m.MemUsed <= 0 || m.MemUsed > m.MemTotal || m.DiskTotal <= 0 {
				t.Errorf("metrics %+v", m)
			}
			if !h.emulated && (m.MemTotal > 256<<20 || m.MemTotal < 180<<20) {
				t.Errorf("MemTotal %d, want about the VM's 256 MiB", m.MemTotal)
			}
		})

		if err := sb.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
		stopped = true
		select {
		case <-sb.Done():
		case <-time.After(10 * time.Second):
			t.Error("Done not closed after Stop")
		}
		h.assertNothingLeft(t, backend.Job{WorkloadID: id}, backend.Result{Metadata: md})
	})

	t.Run("sandbox_vm_death_is_seen", func(t *testing.T) {
		ctx := context.Background()
		id := fmt.Sprintf("sbx%d", time.Now().UnixNano()%1e9)
		sb, err := h.b.StartSandbox(ctx, VMSpec{ID: id, Template: model.RuntimePython, Resources: model.Resources{CPUs: 1, MemMB: 256}})
		if err != nil {
			t.Fatal(err)
		}
		md := sb.Metadata()
		pid, _ := strconv.Atoi(md["vmm_pid"])
		syscall.Kill(pid, syscall.SIGKILL)
		select {
		case <-sb.Done():
		case <-time.After(20 * time.Second):
			t.Fatal("the VMM was killed but Done never closed")
		}
		if err := sb.Stop(ctx); err != nil {
			t.Logf("stop after death: %v", err)
		}
		h.assertNothingLeft(t, backend.Job{WorkloadID: id}, backend.Result{Metadata: md})
	})
}

func hasPID(list []protocol.ProcessInfo, pid int) bool {
	for _, p := range list {
		if p.PID == pid {
			return true
		}
	}
	return false
}

// runProc runs a process to its end and returns its output per stream and its exit.
func runProc(t *testing.T, sess *protocol.Session, p protocol.ProcessSpec) (map[string]string, *protocol.Exit) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, _, err := sess.Open(ctx, &protocol.Request{Op: protocol.OpProcessStart, Process: &p})
	if err != nil {
		t.Fatalf("start %v: %v", p.Argv, err)
	}
	defer st.Close()
	out := map[string]*strings.Builder{protocol.Stdout: {}, protocol.Stderr: {}}
	for {
		ev, err := st.Event()
		if err != nil {
			t.Fatalf("events: %v", err)
		}
		if o := ev.Output; o != nil {
			b := out[o.Stream]
			b.WriteString(o.Data)
			if !o.Partial {
				b.WriteByte('\n')
			}
			continue
		}
		return map[string]string{protocol.Stdout: out[protocol.Stdout].String(), protocol.Stderr: out[protocol.Stderr].String()}, ev.Exit
	}
}

func waitExit(t *testing.T, st *protocol.Stream) *protocol.Exit {
	t.Helper()
	for {
		ev, err := st.Event()
		if err != nil {
			t.Fatalf("events: %v", err)
		}
		if ev.Exit != nil {
			return ev.Exit
		}
	}
}
