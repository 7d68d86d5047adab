package template

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/sandbox"
)

// Template is a user template: a name, its image and what its sandboxes start with.
type Template struct {
	Name string `json:"name"`
	// From is the parent template; Runtime the built-in it descends from.
	From    string `json:"from"`
	Runtime string `json:"runtime"`
	// Image is the image's key (its file is images/KEY.ext4); ImageSHA256 its content.
	Image       string `json:"image"`
	ImageSHA256 string `json:"image_sha256"`
	SizeBytes   int64  `json:"size_bytes"`
	// Env, Workdir and User are the defaults the Dockerfile's ENV, WORKDIR and USER leave
	// for the template's sandboxes.
	Env      map[string]string `json:"env,omitempty"`
	Workdir  string            `json:"workdir,omitempty"`
	User     string            `json:"user,omitempty"`
	StartCmd []string          `json:"start_cmd,omitempty"`
	ReadyCmd string            `json:"ready_cmd,omitempty"`
	Apt      []string          `json:"apt,omitempty"`
	BuildID  string            `json:"build_id"`
	Steps    int               `json:"steps"`
	// Dockerfile is the file it was built from.
	Dockerfile string    `json:"dockerfile"`
	CreatedAt  time.Time `json:"created_at"`
}

// Errors of the registry.
var (
	ErrNotFound = errors.New("no such template")
	ErrBuiltin  = errors.New("built-in templates cannot be changed")
)

func isBuiltin(name string) bool {
	for _, t := range model.Templates {
		if string(t) == name {
			return true
		}
	}
	return false
}

// Registry keeps user templates and their images under one directory:
//
//	NAME.json          a template (published by rename: there or not, never half)
//	images/KEY.ext4    an image, images/KEY.json its manifest
//	cache/KEY.tar      a build step's changes (the step cache)
//	work/              builds in progress (cleared at start: a crash leaves nothing)
type Registry struct {
	dir    string
	mu     sync.Mutex
	pinned map[string]int // image keys a build in progress uses or is making
}

// StageKind marks an image a build's apt stage made: a cache, kept by GC.
const StageKind = "template-stage"

// pin keeps image keys from GC until the returned func is called.
func (r *Registry) pin(keys ...string) func() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pinned == nil {
		r.pinned = map[string]int{}
	}
	for _, k := range keys {
		r.pinned[k]++
	}
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, k := range keys {
			if r.pinned[k]--; r.pinned[k] <= 0 {
				delete(r.pinned, k)
			}
		}
	}
}

// maxManifest caps a template or image manifest read back.
const maxManifest = 1 << 20

// OpenRegistry opens (creating) dir and clears what an interrupted build left.
func OpenRegistry(dir string) (*Registry, error) {
	for _, d := range []string{dir, filepath.Join(dir, "images"), filepath.Join(dir, "cache")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	if err := os.RemoveAll(filepath.Join(dir, "work")); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "work"), 0o700); err != nil {
		return nil, err
	}
	// Temporary files a crash left beside published ones.
	for _, sub := range []string{".", "images", "cache"} {
		tmps, _ := filepath.Glob(filepath.Join(dir, sub, ".tmp-*"))
		for _, t := range tmps {
			os.Remove(t)
		}
	}
	return &Registry{dir: dir}, nil
}

// Dir is the registry's directory.
func (r *Registry) Dir() string { return r.dir }

func (r *Registry) path(name string) string { return filepath.Join(r.dir, name+".json") }

// ImagePath is where an image key's file lives.
func (r *Registry) ImagePath(key string) string {
	return filepath.Join(r.dir, "images", key+".ext4")
}

// Get returns a user template.
func (r *Registry) Get(name string) (*Template, error) {
	if !ValidName(name) {
		return nil, ErrNotFound
	}
	var t Template
	if err := readJSON(r.path(name), &t); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	return &t, nil
}

// List returns the user templates by name.
func (r *Registry) List() []*Template {
	files, _ := filepath.Glob(filepath.Join(r.dir, "*.json"))
	var out []*Template
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		if t, err := r.Get(name); err == nil {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Put publishes t (replacing a template of that name).
func (r *Registry) Put(t *Template) error {
	if !ValidName(t.Name) {
		return fmt.Errorf("template name %q: want lowercase letters, digits, - and _ (not a built-in's name)", t.Name)
	}
	if _, err := os.Stat(r.ImagePath(t.Image)); err != nil {
		return fmt.Errorf("template %s: image %s: %w", t.Name, t.Image, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return writeJSON(r.dir, r.path(t.Name), t)
}

// Remove unregisters a template; its image goes at the next GC no one uses it at.
func (r *Registry) Remove(name string) error {
	if isBuiltin(name) {
		return ErrBuiltin
	}
	if !ValidName(name) {
		return ErrNotFound
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	err := os.Remove(r.path(name))
	if errors.Is(err, os.ErrNotExist) {
		return ErrNotFound
	}
	return err
}

// Image returns the image of a user template, or of an internal image reference
// (ImageRef: a build's intermediate stage), as the microVM backend boots it.
func (r *Registry) Image(name model.Runtime) *images.RootFS {
	key, ok := strings.CutPrefix(string(name), imageRefPrefix)
	if !ok {
		t, err := r.Get(string(name))
		if err != nil {
			return nil
		}
		key = t.Image
	}
	return r.imageByKey(key)
}

// ImageBySHA finds a stored image by content (a paused sandbox's, whose template may have
// been rebuilt since).
func (r *Registry) ImageBySHA(sha string) *images.RootFS {
	files, _ := filepath.Glob(filepath.Join(r.dir, "images", "*.json"))
	for _, f := range files {
		var m images.RootFSManifest
		if readJSON(f, &m) == nil && m.SHA256 == sha {
			if fs := r.imageByKey(strings.TrimSuffix(filepath.Base(f), ".json")); fs != nil {
				return fs
			}
		}
	}
	return nil
}

func (r *Registry) imageByKey(key string) *images.RootFS {
	if !imageKey.MatchString(key) {
		return nil
	}
	p := r.ImagePath(key)
	if _, err := os.Stat(p); err != nil {
		return nil
	}
	fs := &images.RootFS{Path: p}
	if readJSON(filepath.Join(r.dir, "images", key+".json"), &fs.Manifest) != nil {
		return nil
	}
	return fs
}

// imageRefPrefix names an image directly (a build stage): not a valid template name, so
// no user can ask for one through the API.
const imageRefPrefix = ".image-"

// ImageRef is the template name the backend resolves to the image key.
func ImageRef(key string) model.Runtime { return model.Runtime(imageRefPrefix + key) }

// IsImageRef reports whether a template name is an internal image reference.
func IsImageRef(name model.Runtime) bool { return strings.HasPrefix(string(name), imageRefPrefix) }

// GC removes images no template references and inUse (by SHA-256: running and paused
// VMs, builds in progress) does not report. It returns how many went.
func (r *Registry) GC(inUse func(sha string) bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	keep := map[string]bool{}
	for _, t := range r.List() {
		keep[t.Image] = true
	}
	files, _ := filepath.Glob(filepath.Join(r.dir, "images", "*.json"))
	n := 0
	for _, f := range files {
		key := strings.TrimSuffix(filepath.Base(f), ".json")
		if keep[key] || r.pinned[key] > 0 {
			continue
		}
		var m images.RootFSManifest
		if err := readJSON(f, &m); err == nil && (m.Kind == StageKind || inUse != nil && inUse(m.SHA256)) {
			continue
		}
		os.Remove(r.ImagePath(key))
		os.Remove(f)
		n++
	}
	return n
}

// Builtin describes a built-in template for listings.
type Builtin struct {
	Name           string `json:"name"`
	RuntimeVersion string `json:"runtime_version,omitempty"`
	SizeBytes      int64  `json:"size_bytes,omitempty"`
}

func readJSON(path string, v any) error { return images.ReadJSON(path, maxManifest, v) }

// writeJSON writes v to path whole or not at all (temp file, fsync, rename).
func writeJSON(dir, path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// Template resolves a user template for the sandbox service (internal: an image reference
// too, for a build's VM).
func (r *Registry) Template(name model.Runtime, internal bool) (*sandbox.TemplateDefaults, bool) {
	if IsImageRef(name) {
		if internal && r.Image(name) != nil {
			return &sandbox.TemplateDefaults{}, true
		}
		return nil, false
	}
	t, err := r.Get(string(name))
	if err != nil {
		return nil, false
	}
	return &sandbox.TemplateDefaults{Env: t.Env, Workdir: t.Workdir, User: t.User, StartCmd: t.StartCmd, ReadyCmd: t.ReadyCmd}, true
}
