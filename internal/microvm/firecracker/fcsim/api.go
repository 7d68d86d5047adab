package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
)

// The request bodies, as in Firecracker's swagger (the SDK's client/swagger.yaml).
// Required fields are pointers so that "missing" can be told from "zero".

type logger struct {
	LogPath       *string `json:"log_path"`
	Level         *string `json:"level,omitempty"`
	ShowLevel     *bool   `json:"show_level,omitempty"`
	ShowLogOrigin *bool   `json:"show_log_origin,omitempty"`
}

type metrics struct {
	MetricsPath *string `json:"metrics_path"`
}

type machineConfig struct {
	VcpuCount       *int64  `json:"vcpu_count"`
	MemSizeMib      *int64  `json:"mem_size_mib"`
	Smt             *bool   `json:"smt,omitempty"`
	CPUTemplate     *string `json:"cpu_template,omitempty"`
	TrackDirtyPages *bool   `json:"track_dirty_pages,omitempty"`
}

type bootSource struct {
	KernelImagePath *string `json:"kernel_image_path"`
	BootArgs        string  `json:"boot_args,omitempty"`
	InitrdPath      string  `json:"initrd_path,omitempty"`
}

type rateLimiter = json.RawMessage

type drive struct {
	DriveID      *string      `json:"drive_id"`
	PathOnHost   *string      `json:"path_on_host"`
	IsRootDevice *bool        `json:"is_root_device"`
	IsReadOnly   *bool        `json:"is_read_only"`
	Partuuid     string       `json:"partuuid,omitempty"`
	CacheType    *string      `json:"cache_type,omitempty"`
	IoEngine     *string      `json:"io_engine,omitempty"`
	RateLimiter  *rateLimiter `json:"rate_limiter,omitempty"`
}

type networkInterface struct {
	IfaceID       *string      `json:"iface_id"`
	HostDevName   *string      `json:"host_dev_name"`
	GuestMac      string       `json:"guest_mac,omitempty"`
	RxRateLimiter *rateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *rateLimiter `json:"tx_rate_limiter,omitempty"`
}

type vsockDevice struct {
	GuestCid *int64  `json:"guest_cid"`
	UdsPath  *string `json:"uds_path"`
	VsockID  string  `json:"vsock_id,omitempty"`
}

type action struct {
	ActionType *string `json:"action_type"`
}

// apiError is a 400 with Firecracker's error body.
type apiError struct{ msg string }

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &apiError{fmt.Sprintf(format, args...)}
}

// vm is the simulated microVM: its configuration and, once started, its guest.
type vm struct {
	id  string
	dir string // where the API socket is: the VM dir
	log *slog.Logger

	mu      sync.Mutex
	machine machineConfig
	boot    *bootSource
	drives  []drive // in PUT order, unique ids
	ifaces  []networkInterface
	vsock   *vsockDevice
	vsockLn net.Listener
	logger  *logger
	metrics *metrics
	started bool
	// afterResponse runs once the current request's answer is sent (ServeHTTP).
	afterResponse func()
	paused        bool
	parkedNonce   string // the agent's last park, read off the guest's console (snapshot.go)
	guest         *guest

	exit     chan struct{}
	exitOnce sync.Once
	reason   string
}

func newVM(id, dir string, log *slog.Logger) *vm {
	one, mem := int64(1), int64(128) // Firecracker's defaults
	smt := false
	return &vm{id: id, dir: dir, log: log, machine: machineConfig{VcpuCount: &one, MemSizeMib: &mem, Smt: &smt}, exit: make(chan struct{})}
}

func (v *vm) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	status, body, err := v.route(r)
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			status = http.StatusBadRequest
		} else {
			status = http.StatusInternalServerError
		}
		v.log.Info("api error", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]string{"fault_message": err.Error()})
		return
	}
	w.WriteHeader(status)
	if body != nil {
		_ = json.NewEncoder(w).Encode(body)
	}
	// What must follow the answer (a power off) runs once the answer is sent: the
	// process exiting first would leave the client an EOF instead of its 204.
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	v.mu.Lock()
	after := v.afterResponse
	v.afterResponse = nil
	v.mu.Unlock()
	if after != nil {
		after()
	}
}

func (v *vm) route(r *http.Request) (int, any, error) {
	path := strings.TrimSuffix(r.URL.Path, "/")
	resource, id, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	switch {
	case r.Method == http.MethodGet && path == "":
		return v.instanceInfo()
	case r.Method == http.MethodGet && path == "/machine-config":
		v.mu.Lock()
		defer v.mu.Unlock()
		return http.StatusOK, v.machine, nil
	case r.Method == http.MethodPatch && path == "/vm":
		return v.patchVM(r)
	case r.Method != http.MethodPut:
		return 0, nil, badRequest("Invalid request method and/or path: %s %s.", r.Method, r.URL.Path)
	}

	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		return 0, nil, badRequest("reading the body: %v", err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	preBoot := func() error {
		if v.started {
			return badRequest("The requested operation is not supported after starting the microVM.")
		}
		return nil
	}
	switch {
	case resource == "actions" && id == "":
		return v.action(body)
	case resource == "snapshot" && id == "create":
		return v.snapshotCreate(body)
	case resource == "snapshot" && id == "load":
		return v.snapshotLoad(body)
	case resource == "logger" && id == "":
		var l logger
		if err := decode(body, &l); err != nil {
			return 0, nil, err
		}
		if err := preBoot(); err != nil {
			return 0, nil, err
		}
		if l.LogPath == nil {
			return 0, nil, missing("log_path")
		}
		if l.Level != nil && !oneOf(strings.ToLower(*l.Level), "error", "warning", "info", "debug") {
			return 0, nil, badRequest("Invalid log level: %s", *l.Level)
		}
		if err := openable(*l.LogPath); err != nil {
			return 0, nil, err
		}
		v.logger = &l
	case resource == "metrics" && id == "":
		var m metrics
		if err := decode(body, &m); err != nil {
			return 0, nil, err
		}
		if err := preBoot(); err != nil {
			return 0, nil, err
		}
		if m.MetricsPath == nil {
			return 0, nil, missing("metrics_path")
		}
		if err := openable(*m.MetricsPath); err != nil {
			return 0, nil, err
		}
		v.metrics = &m
	case resource == "machine-config" && id == "":
		var m machineConfig
		if err := decode(body, &m); err != nil {
			return 0, nil, err
		}
		if err := preBoot(); err != nil {
			return 0, nil, err
		}
		switch {
		case m.VcpuCount == nil:
			return 0, nil, missing("vcpu_count")
		case m.MemSizeMib == nil:
			return 0, nil, missing("mem_size_mib")
		case *m.VcpuCount < 1 || *m.VcpuCount > 32:
			return 0, nil, badRequest("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
		case *m.MemSizeMib < 1:
			return 0, nil, badRequest("The memory size (MiB) is invalid.")
		case m.Smt != nil && *m.Smt && *m.VcpuCount > 1 && *m.VcpuCount%2 != 0:
			return 0, nil, badRequest("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
		}
		if m.Smt == nil {
			f := false
			m.Smt = &f
		}
		v.machine = m
	case resource == "boot-source" && id == "":
		var b bootSource
		if err := decode(body, &b); err != nil {
			return 0, nil, err
		}
		if err := preBoot(); err != nil {
			return 0, nil, err
		}
		if b.KernelImagePath == nil {
			return 0, nil, missing("kernel_image_path")
		}
		if err := readable(*b.KernelImagePath, "kernel"); err != nil {
			return 0, nil, err
		}
		if b.InitrdPath != "" {
			if err := readable(b.InitrdPath, "initrd"); err != nil {
				return 0, nil, err
			}
		}
		v.boot = &b
	case resource == "drives" && id != "":
		var d drive
		if err := decode(body, &d); err != nil {
			return 0, nil, err
		}
		if err := preBoot(); err != nil {
			return 0, nil, err
		}
		for _, f := range []struct {
			name string
			set  bool
		}{{"drive_id", d.DriveID != nil}, {"path_on_host", d.PathOnHost != nil}, {"is_root_device", d.IsRootDevice != nil}, {"is_read_only", d.IsReadOnly != nil}} {
			if !f.set {
				return 0, nil, missing(f.name)
			}
		}
		if *d.DriveID != id {
			return 0, nil, badRequest("The id from the path [%s] does not match the id from the body [%s]!", id, *d.DriveID)
		}
		if err := readable(*d.PathOnHost, "drive"); err != nil {
			return 0, nil, err
		}
		if err := v.putDrive(d); err != nil {
			return 0, nil, err
		}
	case resource == "network-interfaces" && id != "":
		var n networkInterface
		if err := decode(body, &n); err != nil {
			return 0, nil, err
		}
		if err := preBoot(); err != nil {
			return 0, nil, err
		}
		if n.IfaceID == nil {
			return 0, nil, missing("iface_id")
		}
		if n.HostDevName == nil {
			return 0, nil, missing("host_dev_name")
		}
		if *n.IfaceID != id {
			return 0, nil, badRequest("The id from the path [%s] does not match the id from the body [%s]!", id, *n.IfaceID)
		}
		if n.GuestMac != "" {
			if _, err := net.ParseMAC(n.GuestMac); err != nil {
				return 0, nil, badRequest("Invalid guest MAC address: %s", n.GuestMac)
			}
		}
		v.putIface(n)
	case resource == "vsock" && id == "":
		var d vsockDevice
		if err := decode(body, &d); err != nil {
			return 0, nil, err
		}
		if err := preBoot(); err != nil {
			return 0, nil, err
		}
		if d.GuestCid == nil {
			return 0, nil, missing("guest_cid")
		}
		if d.UdsPath == nil {
			return 0, nil, missing("uds_path")
		}
		if *d.GuestCid < 3 || *d.GuestCid > 1<<32-1 {
			return 0, nil, badRequest("Invalid guest CID: %d", *d.GuestCid)
		}
		if err := v.putVsock(d); err != nil {
			return 0, nil, err
		}
	default:
		return 0, nil, badRequest("Invalid request method and/or path: %s %s.", r.Method, r.URL.Path)
	}
	return http.StatusNoContent, nil, nil
}

func (v *vm) instanceInfo() (int, any, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	state := "Not started"
	if v.started {
		state = "Running"
	}
	return http.StatusOK, map[string]string{"id": v.id, "state": state, "vmm_version": "1.0.0-fcsim", "app_name": "Firecracker"}, nil
}

func (v *vm) putDrive(d drive) error {
	if *d.IsRootDevice {
		for _, o := range v.drives {
			if *o.IsRootDevice && *o.DriveID != *d.DriveID {
				return badRequest("A root block device already exists!")
			}
		}
	}
	for i, o := range v.drives {
		if *o.DriveID == *d.DriveID {
			v.drives[i] = d
			return nil
		}
	}
	v.drives = append(v.drives, d)
	return nil
}

func (v *vm) putIface(n networkInterface) {
	for i, o := range v.ifaces {
		if *o.IfaceID == *n.IfaceID {
			v.ifaces[i] = n
			return
		}
	}
	v.ifaces = append(v.ifaces, n)
}

// putVsock binds the vsock's unix socket, as Firecracker does when the device is set.
func (v *vm) putVsock(d vsockDevice) error {
	ln, err := net.Listen("unix", *d.UdsPath)
	if err != nil {
		return badRequest("Cannot create backend for vsock device: %v", err)
	}
	if v.vsockLn != nil {
		v.vsockLn.Close()
		os.Remove(*v.vsock.UdsPath)
	}
	v.vsock, v.vsockLn = &d, ln
	go v.serveVsock(ln)
	return nil
}

func (v *vm) action(body []byte) (int, any, error) {
	var a action
	if err := decode(body, &a); err != nil {
		return 0, nil, err
	}
	if a.ActionType == nil {
		return 0, nil, missing("action_type")
	}
	switch *a.ActionType {
	case "InstanceStart":
		if v.started {
			return 0, nil, badRequest("The requested operation is not supported after starting the microVM.")
		}
		if v.boot == nil {
			return 0, nil, badRequest("Cannot start microvm without kernel configuration.")
		}
		root := false
		for _, d := range v.drives {
			root = root || *d.IsRootDevice
		}
		if !root {
			// Real Firecracker would boot and the guest kernel panic without a root;
			// for Vulcan a VM without its root image is always a bug.
			return 0, nil, badRequest("Cannot start microvm without a root block device.")
		}
		g, err := startGuest(v.dir, *v.boot, v.machine, v.console(), nil, v.log)
		if err != nil {
			return 0, nil, fmt.Errorf("start guest: %w", err)
		}
		v.guest, v.started = g, true
		go func() {
			<-g.done
			v.shutdown("guest exited: " + g.status())
		}()
	case "SendCtrlAltDel":
		if !v.started {
			return 0, nil, badRequest("The requested operation is not supported before starting the microVM.")
		}
		// The agent as PID 1 turns Ctrl-Alt-Del into a power off; here the guest is
		// powered off once the answer is out, which is what the host observes.
		v.afterResponse = func() { go v.shutdown("SendCtrlAltDel") } // v.mu is held (route)
	case "FlushMetrics":
		if v.metrics == nil {
			return 0, nil, badRequest("The metrics system was not initialized.")
		}
	default:
		return 0, nil, badRequest("unknown variant `%s`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel`", *a.ActionType)
	}
	return http.StatusNoContent, nil, nil
}

// shutdown ends the VM: the process exits once run sees exit closed.
func (v *vm) shutdown(reason string) {
	v.exitOnce.Do(func() {
		v.mu.Lock()
		v.reason = reason
		v.mu.Unlock()
		close(v.exit)
	})
}

func (v *vm) exitReason() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.reason
}

// powerOff kills the guest and closes the vsock socket.
func (v *vm) powerOff() {
	v.mu.Lock()
	g, ln, vs := v.guest, v.vsockLn, v.vsock
	v.mu.Unlock()
	if g != nil {
		g.kill()
	}
	if ln != nil {
		ln.Close()
		os.Remove(*vs.UdsPath)
	}
}

// decode is strict like Firecracker's serde: one JSON object, no unknown fields.
func decode(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("An error occurred when deserializing the json body of a request: %v.", err)
	}
	if dec.More() {
		return badRequest("An error occurred when deserializing the json body of a request: trailing data.")
	}
	return nil
}

func missing(field string) error {
	return badRequest("An error occurred when deserializing the json body of a request: missing field `%s`.", field)
}

func oneOf(s string, set ...string) bool {
	for _, x := range set {
		if s == x {
			return true
		}
	}
	return false
}

func readable(path, what string) error {
	f, err := os.Open(path)
	if err != nil {
		return badRequest("Cannot open the %s file: %v", what, err)
	}
	return f.Close()
}

// openable checks a log or metrics destination the way Firecracker opens it (append).
func openable(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return badRequest("Cannot open %s: %v", path, err)
	}
	return f.Close()
}
