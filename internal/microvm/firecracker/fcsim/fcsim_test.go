package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/protocol"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// The simulator is tested as the SDK uses it: a process serving HTTP on a unix socket.

var binDir string

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "fcs")
	if err != nil {
		panic(err)
	}
	binDir = d
	code := func() int {
		defer os.RemoveAll(d)
		for _, b := range [][2]string{{"fcsim", "."}, {"vulcan-guest", "github.com/vulcanhq/vulcan/cmd/vulcan-guest"}} {
			if err := testenv.GoBuild(filepath.Join(d, b[0]), b[1], "CGO_ENABLED=0"); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

type sim struct {
	dir  string
	cmd  *exec.Cmd
	http *http.Client
	done chan struct{}
	log  *strings.Builder
}

func startSim(t *testing.T) *sim {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "fc.sock")
	log := &strings.Builder{}
	cmd := exec.Command(filepath.Join(binDir, "fcsim"), "--api-sock", sock, "--id", "t1")
	cmd.Stdout, cmd.Stderr = &lockedWriter{w: log}, &lockedWriter{w: log}
	// The agent as root drops to uid 1000: work dirs must be reachable by it.
	os.Chmod(dir, 0o755)
	cmd.Env = append(os.Environ(), "VULCAN_FCSIM_AGENT_ARGS=--work-root "+dir+" --runtimes-file "+filepath.Join(dir, "none.json"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &sim{dir: dir, cmd: cmd, done: make(chan struct{}), log: log}
	go func() { cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
		if t.Failed() {
			t.Logf("fcsim output:\n%s", log.String())
		}
	})
	s.http = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case <-s.done:
			t.Fatalf("fcsim exited: %s", log.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return s
}

type lockedWriter struct {
	w *strings.Builder
}

var logMu = make(chan struct{}, 1)

func (l *lockedWriter) Write(p []byte) (int, error) {
	logMu <- struct{}{}
	defer func() { <-logMu }()
	return l.w.Write(p)
}

func (s *sim) do(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://localhost"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// put asserts a PUT succeeds.
func (s *sim) put(t *testing.T, path, body string) {
	t.Helper()
	if code, resp := s.do(t, "PUT", path, body); code != http.StatusNoContent {
		t.Fatalf("PUT %s %s: %d %s", path, body, code, resp)
	}
}

// files makes a kernel and a rootfs for the config (the simulator only opens them).
func (s *sim) files(t *testing.T) (kernel, rootfs string) {
	t.Helper()
	kernel, rootfs = filepath.Join(s.dir, "vmlinux"), filepath.Join(s.dir, "rootfs.ext4")
	for _, f := range []string{kernel, rootfs} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return kernel, rootfs
}

const bootArgs = "console=ttyS0 reboot=k panic=1 pci=off init=/usr/local/bin/vulcan-guest vulcan.listen=vsock:1024"

// configure sends the SDK's pre-boot sequence.
func (s *sim) configure(t *testing.T) (vsockPath string) {
	t.Helper()
	kernel, rootfs := s.files(t)
	vsockPath = filepath.Join(s.dir, "v.sock")
	s.put(t, "/machine-config", `{"vcpu_count":1,"mem_size_mib":256,"smt":false}`)
	s.put(t, "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"boot_args":%q}`, kernel, bootArgs))
	s.put(t, "/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"is_read_only":true}`, rootfs))
	s.put(t, "/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q,"vsock_id":"agent"}`, vsockPath))
	return vsockPath
}

func TestRejections(t *testing.T) {
	s := startSim(t)
	kernel, rootfs := s.files(t)
	drive := func(id, extra string) string {
		return fmt.Sprintf(`{"drive_id":%q,"path_on_host":%q,"is_read_only":true%s}`, id, rootfs, extra)
	}
	for _, c := range []struct{ name, method, path, body, fault string }{
		{"malformed json", "PUT", "/machine-config", `{"vcpu_count":1,`, "deserializing"},
		{"unknown field", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"turbo":true}`, "unknown field"},
		{"missing vcpu_count", "PUT", "/machine-config", `{"mem_size_mib":128}`, "vcpu_count"},
		{"missing mem_size_mib", "PUT", "/machine-config", `{"vcpu_count":1}`, "mem_size_mib"},
		{"zero vcpus", "PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":128}`, "vCPU"},
		{"33 vcpus", "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":128}`, "vCPU"},
		{"zero memory", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":0}`, "memory"},
		{"missing kernel", "PUT", "/boot-source", `{"boot_args":"console=ttyS0"}`, "kernel_image_path"},
		{"kernel not found", "PUT", "/boot-source", `{"kernel_image_path":"/nonexistent/vmlinux"}`, "kernel"},
		{"drive id mismatch", "PUT", "/drives/rootfs", drive("other", `,"is_root_device":true`), "does not match"},
		{"drive missing is_root_device", "PUT", "/drives/rootfs", drive("rootfs", ""), "is_root_device"},
		{"iface id mismatch", "PUT", "/network-interfaces/1", `{"iface_id":"2","host_dev_name":"tap0"}`, "does not match"},
		{"iface missing host_dev_name", "PUT", "/network-interfaces/1", `{"iface_id":"1"}`, "host_dev_name"},
		{"vsock cid too small", "PUT", "/vsock", `{"guest_cid":2,"uds_path":"/tmp/x.sock"}`, "CID"},
		{"vsock missing uds_path", "PUT", "/vsock", `{"guest_cid":3}`, "uds_path"},
		{"logger missing path", "PUT", "/logger", `{"level":"Info"}`, "log_path"},
		{"metrics missing path", "PUT", "/metrics", `{}`, "metrics_path"},
		{"unknown action", "PUT", "/actions", `{"action_type":"Reboot"}`, "unknown variant"},
		{"unknown path", "PUT", "/balloon-party", `{}`, "Invalid request"},
		{"flush without metrics", "PUT", "/actions", `{"action_type":"FlushMetrics"}`, "metrics"},
		{"ctrl-alt-del before start", "PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, "before starting"},
		{"start without boot source", "PUT", "/actions", `{"action_type":"InstanceStart"}`, "kernel"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, body := s.do(t, c.method, c.path, c.body)
			if code != http.StatusBadRequest {
				t.Fatalf("status %d, want 400 (body %s)", code, body)
			}
			var e struct {
				FaultMessage string `json:"fault_message"`
			}
			if err := json.Unmarshal([]byte(body), &e); err != nil || !strings.Contains(e.FaultMessage, c.fault) {
				t.Fatalf("body %s: want a fault_message mentioning %q", body, c.fault)
			}
		})
	}
	// Nothing above changed the machine: it keeps Firecracker's defaults.
	if code, body := s.do(t, "GET", "/machine-config", ""); code != 200 || !strings.Contains(body, `"vcpu_count":1`) || !strings.Contains(body, `"mem_size_mib":128`) {
		t.Errorf("machine-config after rejections: %d %s", code, body)
	}
	t.Run("start without root drive", func(t *testing.T) {
		s.put(t, "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, kernel))
		s.put(t, "/drives/data", fmt.Sprintf(`{"drive_id":"data","path_on_host":%q,"is_root_device":false,"is_read_only":true}`, rootfs))
		if code, body := s.do(t, "PUT", "/actions", `{"action_type":"InstanceStart"}`); code != 400 || !strings.Contains(body, "root") {
			t.Fatalf("InstanceStart without root drive: %d %s", code, body)
		}
	})
}

// readHello reads the agent's first frame through conn.
func readHello(t *testing.T, conn net.Conn) *protocol.Hello {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	m, err := protocol.ReadMessage(bufio.NewReader(conn))
	if err != nil {
		t.Fatalf("read hello: %v", err)
	}
	if m.Type != protocol.TypeHello || m.Hello.ProtocolVersion != protocol.Version {
		t.Fatalf("first message %+v, want hello v%d", m, protocol.Version)
	}
	return m.Hello
}

// connect does the hybrid vsock handshake, retrying while the agent starts.
func connect(t *testing.T, path string, port int) (net.Conn, string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("dial vsock: %v", err)
		}
		fmt.Fprintf(c, "CONNECT %d\n", port)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var line []byte
		b := make([]byte, 1)
		for {
			if _, err := c.Read(b); err != nil || b[0] == '\n' {
				break
			}
			line = append(line, b[0])
		}
		c.SetReadDeadline(time.Time{})
		if len(line) > 0 {
			return c, string(line)
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("agent never accepted a vsock connection")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestBootReachesAgentHello(t *testing.T) {
	testenv.RequiresLinux(t)
	s := startSim(t)
	vsockPath := s.configure(t)
	if code, body := s.do(t, "GET", "/", ""); code != 200 || !strings.Contains(body, `"Not started"`) {
		t.Fatalf("GET / before start: %d %s", code, body)
	}
	s.put(t, "/actions", `{"action_type":"InstanceStart"}`)

	if code, body := s.do(t, "GET", "/", ""); code != 200 || !strings.Contains(body, `"Running"`) || !strings.Contains(body, `"t1"`) {
		t.Errorf("GET / after start: %d %s", code, body)
	}
	if code, body := s.do(t, "GET", "/machine-config", ""); code != 200 || !strings.Contains(body, `"mem_size_mib":256`) {
		t.Errorf("GET /machine-config: %d %s", code, body)
	}
	for _, c := range []struct{ path, body string }{
		{"/machine-config", `{"vcpu_count":2,"mem_size_mib":256}`},
		{"/boot-source", `{"kernel_image_path":"/x"}`},
		{"/vsock", `{"guest_cid":4,"uds_path":"/tmp/y.sock"}`},
		{"/actions", `{"action_type":"InstanceStart"}`},
	} {
		if code, body := s.do(t, "PUT", c.path, c.body); code != 400 || !strings.Contains(body, "after starting") {
			t.Errorf("PUT %s after start: %d %s, want 400", c.path, code, body)
		}
	}

	conn, ack := connect(t, vsockPath, 1024)
	defer conn.Close()
	if !strings.HasPrefix(ack, "OK ") {
		t.Fatalf("ack %q, want OK <port>", ack)
	}
	h := readHello(t, conn)
	if h.Runtimes["python"] == "" {
		t.Errorf("hello lists no python: %+v", h)
	}

	// Nobody listens on port 5000: the connection is closed without an OK.
	c, err := net.Dial("unix", vsockPath)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT 5000\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 16)); err != io.EOF {
		t.Errorf("CONNECT to an unused port: read %d bytes, err %v; want EOF", n, err)
	}
	c.Close()

	// Ctrl-Alt-Del powers the VM off: the simulator exits and takes the agent along.
	s.put(t, "/actions", `{"action_type":"SendCtrlAltDel"}`)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		t.Fatal("fcsim still running after SendCtrlAltDel")
	}
	if _, err := os.Stat(filepath.Join(s.dir, "fc.sock")); !os.IsNotExist(err) {
		t.Errorf("API socket left behind: %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(s.dir, "fcsim-agent-*.sock")); len(m) != 0 {
		t.Errorf("agent socket left behind: %v", m)
	}
}

// The guest powering off (the oneshot agent exits after its workload) ends the VMM,
// and the memory limit holds inside the "VM".
func TestGuestPowerOffEndsVMM(t *testing.T) {
	testenv.RequiresLinux(t)
	s := startSim(t)
	vsockPath := s.configure(t)
	s.put(t, "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`) // still pre-boot: allowed
	s.put(t, "/actions", `{"action_type":"InstanceStart"}`)
	conn, _ := connect(t, vsockPath, 1024)
	defer conn.Close()
	hc := protocol.NewConn(conn)
	if _, err := hc.ReadHello(context.Background()); err != nil {
		t.Fatal(err)
	}
	var out []string
	exit, err := hc.Run(context.Background(), &protocol.Exec{ProtocolVersion: protocol.Version, ID: "x", Runtime: "python",
		Code: "b = bytearray(300 * 1024 * 1024)\nprint('allocated')\n"}, func(o *protocol.Output) { out = append(out, o.Stream+":"+o.Data) })
	if err != nil {
		t.Fatal(err)
	}
	if all := strings.Join(out, "\n"); exit.Code == 0 || strings.Contains(all, "stdout:allocated") || !strings.Contains(all, "MemoryError") {
		t.Errorf("300 MiB allocation in a 128 MiB VM: exit %d output %q", exit.Code, out)
	}
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		t.Fatal("fcsim still running after the oneshot agent finished")
	}
}

func TestParseKernelArgs(t *testing.T) {
	for _, c := range []struct {
		in   string
		want kernelArgs
	}{
		{bootArgs, kernelArgs{port: 1024, oneshot: true, hostname: "vulcan"}},
		{"vulcan.listen=vsock:52 vulcan.oneshot=0 vulcan.hostname=box", kernelArgs{port: 52, oneshot: false, hostname: "box"}},
		{"vulcan.listen=serial:vulcan.agent", kernelArgs{oneshot: true, hostname: "vulcan"}},
	} {
		if got := parseKernelArgs(c.in); got != c.want {
			t.Errorf("parseKernelArgs(%q) = %+v, want %+v", c.in, got, c.want)
		}
	}
}

// SIGTERM (the SDK's StopVMM) powers the VM off mid-workload: the simulator exits and
// the workload, in the guest's PID namespace, dies with it.
func TestSIGTERMKillsGuest(t *testing.T) {
	testenv.RequiresLinux(t)
	if os.Geteuid() != 0 {
		t.Skip("the guest's PID namespace needs root")
	}
	s := startSim(t)
	vsockPath := s.configure(t)
	s.put(t, "/actions", `{"action_type":"InstanceStart"}`)
	conn, _ := connect(t, vsockPath, 1024)
	defer conn.Close()
	hc := protocol.NewConn(conn)
	if _, err := hc.ReadHello(context.Background()); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	go hc.Run(context.Background(), &protocol.Exec{ProtocolVersion: protocol.Version, ID: "x", Runtime: "python",
		Code: "import time\nprint('up', flush=True)\ntime.sleep(300)\n"},
		func(o *protocol.Output) {
			if o.Stream != "stdout" || o.Data != "up" {
				t.Errorf("unexpected output %+v", o)
			}
			select {
			case <-started:
			default:
				close(started)
			}
		})
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("workload never printed")
	}
	// The workload's pid is namespaced; find it on the host by its work dir.
	hostPid := 0
	procs, _ := filepath.Glob("/proc/[0-9]*/cwd")
	for _, p := range procs {
		if cwd, err := os.Readlink(p); err == nil && strings.HasPrefix(cwd, s.dir+"/") {
			b, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "cmdline"))
			if strings.Contains(string(b), "python") {
				fmt.Sscan(filepath.Base(filepath.Dir(p)), &hostPid)
			}
		}
	}
	if hostPid == 0 {
		t.Fatal("workload process not found on the host")
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		t.Fatal("fcsim still running after SIGTERM")
	}
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(hostPid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if syscall.Kill(hostPid, 0) == nil {
		t.Errorf("workload %d survived the VM's power off", hostPid)
	}
}
