package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// Snapshots, simulated. Firecracker saves the VM's memory and devices; a process cannot
// be saved, so the simulator records what it can — the machine, boot source, drives and
// vsock as configured, and the nonce the agent parked on (protocol.OpQuiesce, read off
// the guest's console) — and a load starts a fresh agent from that record, parked on
// the same nonce, as a restored agent would be. What the guest did before the snapshot
// (its processes) does not come back here; on real Firecracker it does. The calls,
// their order rules and their file arguments are Firecracker's.

type snapshotRecord struct {
	Format  string        `json:"fcsim_snapshot"`
	Machine machineConfig `json:"machine"`
	Boot    bootSource    `json:"boot"`
	Drives  []drive       `json:"drives"`
	Vsock   *vsockDevice  `json:"vsock"`
	Nonce   string        `json:"parked_nonce,omitempty"`
}

const snapshotFormat = "1"

func (v *vm) patchVM(r *http.Request) (int, any, error) {
	var body struct {
		State *string `json:"state"`
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		return 0, nil, badRequest("reading the body: %v", err)
	}
	if err := decode(raw, &body); err != nil {
		return 0, nil, err
	}
	if body.State == nil {
		return 0, nil, missing("state")
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.started {
		return 0, nil, badRequest("The requested operation is not supported before starting the microVM.")
	}
	switch *body.State {
	case "Paused":
		v.paused = true
	case "Resumed":
		v.paused = false
	default:
		return 0, nil, badRequest("unknown variant `%s`, expected `Paused` or `Resumed`", *body.State)
	}
	return http.StatusNoContent, nil, nil
}

func (v *vm) snapshotCreate(body []byte) (int, any, error) {
	var p struct {
		SnapshotPath *string `json:"snapshot_path"`
		MemFilePath  *string `json:"mem_file_path"`
		SnapshotType string  `json:"snapshot_type,omitempty"`
		Version      string  `json:"version,omitempty"`
	}
	if err := decode(body, &p); err != nil {
		return 0, nil, err
	}
	switch {
	case p.SnapshotPath == nil:
		return 0, nil, missing("snapshot_path")
	case p.MemFilePath == nil:
		return 0, nil, missing("mem_file_path")
	case !v.started:
		return 0, nil, badRequest("The requested operation is not supported before starting the microVM.")
	case !v.paused:
		return 0, nil, badRequest("Cannot save the microVM state: the microVM is not paused.")
	case p.SnapshotType != "" && p.SnapshotType != "Full":
		return 0, nil, badRequest("fcsim takes full snapshots only, not %q", p.SnapshotType)
	}
	rec := snapshotRecord{Format: snapshotFormat, Machine: v.machine, Boot: *v.boot, Drives: v.drives, Vsock: v.vsock, Nonce: v.parkedNonce}
	b, err := json.Marshal(rec)
	if err != nil {
		return 0, nil, err
	}
	if err := os.WriteFile(*p.SnapshotPath, b, 0o600); err != nil {
		return 0, nil, badRequest("Cannot write the snapshot: %v", err)
	}
	// Guest memory: a sparse file of the VM's size, as Firecracker writes one.
	f, err := os.OpenFile(*p.MemFilePath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, nil, badRequest("Cannot write the memory file: %v", err)
	}
	err = f.Truncate(*v.machine.MemSizeMib << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, nil, badRequest("Cannot write the memory file: %v", err)
	}
	v.log.Info("snapshot created", "snapshot", *p.SnapshotPath, "mem", *p.MemFilePath, "parked", rec.Nonce != "")
	return http.StatusNoContent, nil, nil
}

func (v *vm) snapshotLoad(body []byte) (int, any, error) {
	var p struct {
		SnapshotPath *string `json:"snapshot_path"`
		MemFilePath  *string `json:"mem_file_path"`
		MemBackend   *struct {
			BackendPath string `json:"backend_path"`
			BackendType string `json:"backend_type"`
		} `json:"mem_backend"`
		ResumeVM            bool `json:"resume_vm"`
		EnableDiffSnapshots bool `json:"enable_diff_snapshots"`
	}
	if err := decode(body, &p); err != nil {
		return 0, nil, err
	}
	mem := ""
	if p.MemFilePath != nil {
		mem = *p.MemFilePath
	} else if p.MemBackend != nil {
		mem = p.MemBackend.BackendPath
	}
	switch {
	case p.SnapshotPath == nil:
		return 0, nil, missing("snapshot_path")
	case mem == "":
		return 0, nil, missing("mem_file_path")
	case v.started || v.boot != nil || len(v.drives) > 0 || v.vsock != nil:
		return 0, nil, badRequest("Loading a microVM snapshot not allowed after configuring boot-specific resources.")
	}
	if err := readable(mem, "memory file"); err != nil {
		return 0, nil, err
	}
	raw, err := os.ReadFile(*p.SnapshotPath)
	if err != nil || len(raw) > 1<<20 {
		return 0, nil, badRequest("Cannot read the snapshot %s: %v", *p.SnapshotPath, err)
	}
	var rec snapshotRecord
	if err := json.Unmarshal(raw, &rec); err != nil || rec.Format != snapshotFormat || rec.Vsock == nil {
		return 0, nil, badRequest("Cannot load the snapshot %s: not an fcsim snapshot", *p.SnapshotPath)
	}
	for _, d := range rec.Drives {
		if err := readable(*d.PathOnHost, "drive"); err != nil {
			return 0, nil, err
		}
	}
	v.machine, v.boot, v.drives = rec.Machine, &rec.Boot, rec.Drives
	if err := v.putVsock(*rec.Vsock); err != nil {
		return 0, nil, err
	}
	var extra []string
	if rec.Nonce != "" {
		extra = []string{"--parked", rec.Nonce}
	}
	g, err := startGuest(v.dir, *v.boot, v.machine, v.console(), extra, v.log)
	if err != nil {
		return 0, nil, fmt.Errorf("start guest: %w", err)
	}
	v.guest, v.started, v.paused = g, true, !p.ResumeVM
	go func() {
		<-g.done
		v.shutdown("guest exited: " + g.status())
	}()
	v.log.Info("snapshot loaded", "snapshot", *p.SnapshotPath, "resumed", p.ResumeVM, "parked", rec.Nonce != "")
	return http.StatusNoContent, nil, nil
}

// console is the guest's serial console: fcsim's stdout, watched for the agent's park.
func (v *vm) console() io.Writer {
	return &parkWatch{v: v}
}

// parkWatch passes the guest's output on and remembers the nonce of the last
// "parked" line.
type parkWatch struct {
	v    *vm
	mu   sync.Mutex
	line []byte
}

func (w *parkWatch) Write(p []byte) (int, error) {
	n, err := os.Stdout.Write(p)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.line = append(w.line, p...)
	for {
		i := bytes.IndexByte(w.line, '\n')
		if i < 0 {
			break
		}
		l := strings.TrimSpace(string(w.line[:i]))
		w.line = w.line[i+1:]
		if nonce, ok := strings.CutPrefix(l, protocol.ParkedMarker); ok {
			w.v.mu.Lock()
			w.v.parkedNonce = nonce
			w.v.mu.Unlock()
		}
	}
	if len(w.line) > 4096 { // a line that never ends is not a park
		w.line = w.line[:0]
	}
	return n, err
}
