// Package images finds the guest kernel and the per-runtime root filesystems in an images
// dir and reads their manifests. The images are built by scripts/build-kernel.sh and
// scripts/build-rootfs.sh (`make images`); this package only reads what they wrote.
package images

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/vulcanhq/vulcan/internal/model"
)

// File names inside an images dir.
const (
	KernelFile         = "vmlinux"
	KernelManifestFile = "kernel.json"
	KernelConfigFile   = "vmlinux.config"
)

// RootFSFile is the ext4 image for a runtime.
func RootFSFile(rt model.Runtime) string { return "rootfs-" + string(rt) + ".ext4" }

// RootFSManifestFile is the manifest beside a runtime's image.
func RootFSManifestFile(rt model.Runtime) string { return "rootfs-" + string(rt) + ".json" }

// KernelManifest is what build-kernel.sh records.
type KernelManifest struct {
	Kind         string `json:"kind"`
	Version      string `json:"version"`
	Key          string `json:"key"`
	SHA256       string `json:"sha256"`
	SizeBytes    int64  `json:"size_bytes"`
	BuildSeconds int    `json:"build_seconds"`
	BuiltAt      string `json:"built_at"`
}

// RootFSManifest is what build-rootfs.sh records.
type RootFSManifest struct {
	Kind               string `json:"kind"`
	Runtime            string `json:"runtime"`
	RuntimeVersion     string `json:"runtime_version"`
	AgentVersion       string `json:"agent_version"`
	AgentSHA256        string `json:"agent_sha256"`
	Suite              string `json:"suite"`
	Key                string `json:"key"`
	SizeBytes          int64  `json:"size_bytes"`
	UsedBytes          int64  `json:"used_bytes"`
	SHA256             string `json:"sha256"`
	DebianBuildSeconds int    `json:"debian_build_seconds"`
	ImageBuildSeconds  int    `json:"image_build_seconds"`
	BuiltAt            string `json:"built_at"`
}

// Kernel is a found kernel image.
type Kernel struct {
	Path     string
	Manifest KernelManifest
}

// RootFS is a found runtime image.
type RootFS struct {
	Path     string
	Manifest RootFSManifest
}

// Set is what an images dir holds.
type Set struct {
	Dir    string
	Kernel *Kernel
	RootFS map[model.Runtime]*RootFS
	// Problems lists what is missing or broken, each with the command that fixes it.
	Problems []error
}

// ErrNoKernel is reported when the images dir has no kernel.
var ErrNoKernel = errors.New("no kernel image")

// maxManifest caps what is read of a manifest: it is a few hundred bytes.
const maxManifest = 64 << 10

// Load inspects dir. It never fails as a whole: what it cannot use is listed in Problems.
func Load(dir string) *Set {
	s := &Set{Dir: dir, RootFS: map[model.Runtime]*RootFS{}}
	kpath := filepath.Join(dir, KernelFile)
	if _, err := os.Stat(kpath); err != nil {
		s.Problems = append(s.Problems, fmt.Errorf("%w at %s; run `make kernel` (or `make images`)", ErrNoKernel, kpath))
	} else {
		k := &Kernel{Path: kpath}
		if err := readJSON(filepath.Join(dir, KernelManifestFile), &k.Manifest); err != nil {
			s.Problems = append(s.Problems, fmt.Errorf("kernel manifest: %v; run `make kernel`", err))
		}
		s.Kernel = k
	}
	for _, rt := range model.Templates {
		p := filepath.Join(dir, RootFSFile(rt))
		if _, err := os.Stat(p); err != nil {
			s.Problems = append(s.Problems, fmt.Errorf("no %s rootfs at %s; run `make rootfs RUNTIME=%s` (or `make images`)", rt, p, rt))
			continue
		}
		r := &RootFS{Path: p}
		if err := readJSON(filepath.Join(dir, RootFSManifestFile(rt)), &r.Manifest); err != nil {
			s.Problems = append(s.Problems, fmt.Errorf("%s rootfs manifest: %v; run `make rootfs RUNTIME=%s`", rt, err, rt))
			continue
		}
		if r.Manifest.Runtime != string(rt) {
			s.Problems = append(s.Problems, fmt.Errorf("%s rootfs manifest names runtime %q; run `make rootfs RUNTIME=%s`", rt, r.Manifest.Runtime, rt))
			continue
		}
		s.RootFS[rt] = r
	}
	return s
}

// Runtimes lists the runtimes that have an image, in model order.
func (s *Set) Runtimes() []model.Runtime {
	var out []model.Runtime
	for _, rt := range model.Runtimes {
		if s.RootFS[rt] != nil {
			out = append(out, rt)
		}
	}
	return out
}

// Templates lists the sandbox templates that have an image, in model order.
func (s *Set) Templates() []model.Runtime {
	var out []model.Runtime
	for _, rt := range model.Templates {
		if s.RootFS[rt] != nil {
			out = append(out, rt)
		}
	}
	return out
}

// Usable returns nil when a VM can boot at least one runtime, else why not.
func (s *Set) Usable() error {
	if s.Kernel == nil {
		return fmt.Errorf("%w in %s; run `make images`", ErrNoKernel, s.Dir)
	}
	if len(s.RootFS) == 0 {
		return fmt.Errorf("no runtime images in %s; run `make images`", s.Dir)
	}
	return nil
}

func readJSON(path string, v any) error { return ReadJSON(path, maxManifest, v) }

// ReadJSON decodes the JSON file at path into v, refusing one larger than max bytes.
func ReadJSON(path string, max int64, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return err
	}
	if int64(len(b)) > max {
		return fmt.Errorf("%s is larger than %d bytes", path, maxManifest)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// RootFSScript is scripts/build-rootfs.sh's body (the file lives here to be embedded): a
// template build runs it for its `# vulcan:apt` stage, with the same cache as `make images`.
//
//go:embed build-rootfs.sh
var RootFSScript []byte
