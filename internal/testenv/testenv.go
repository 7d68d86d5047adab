// Package testenv gates tests on what the machine provides. Each gate skips with the
// reason — except under CI (CI=true), where .ci/run installs the packages, runs as root
// and builds the images: there a missing prerequisite that CI is meant to provide fails
// the test instead of silently hiding it. KVM is never provided by CI here, so its gate
// always skips.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// InCI reports whether the tests run under .ci/run.
func InCI() bool { return os.Getenv("CI") == "true" }

func missing(t testing.TB, ciProvides bool, format string, args ...any) {
	t.Helper()
	if ciProvides && InCI() {
		t.Fatalf("CI should provide this but it is missing: "+format, args...)
	}
	t.Skipf("skipped: "+format, args...)
}

// RequiresRoot skips unless the test runs as root.
func RequiresRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, true, "needs root")
	}
}

// RequiresBinary skips unless name is on PATH, returning its path.
func RequiresBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		missing(t, true, "%s not on PATH", name)
	}
	return p
}

// RequiresLinux skips on other OSes: what needs namespaces, netlink or a VMM runs only
// on Linux (the tree still builds and unit-tests elsewhere).
func RequiresLinux(t testing.TB) {
	t.Helper()
	if runtime.GOOS != "linux" {
		missing(t, false, "needs Linux, not %s", runtime.GOOS)
	}
}

// RequiresKVM skips unless /dev/kvm can be opened read-write.
func RequiresKVM(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		missing(t, false, "needs KVM: %v", err)
	}
	f.Close()
}

// ImagesDir is where the tests find the kernel and rootfs images: VULCAN_IMAGES_DIR
// (the Makefile exports it), else the Makefile's default for this user.
func ImagesDir() string {
	if d := os.Getenv("VULCAN_IMAGES_DIR"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/lib/vulcan/images"
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local/share/vulcan/images")
}

// RequiresImages skips unless the kernel and the named rootfs images exist, returning
// the images dir.
func RequiresImages(t testing.TB, runtimes ...string) string {
	t.Helper()
	dir := ImagesDir()
	need := []string{"vmlinux"}
	for _, rt := range runtimes {
		need = append(need, "rootfs-"+rt+".ext4")
	}
	for _, f := range need {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			missing(t, true, "no %s in %s; run `make images`", f, dir)
		}
	}
	return dir
}

// BinDir is where `make` put the binaries (VULCAN_BIN_DIR), or "" when unknown.
func BinDir() string { return os.Getenv("VULCAN_BIN_DIR") }

// VulcanBin is the vulcan binary for tests that run it: the one `make` built (in
// BinDir), else one built once per test binary from this tree.
var VulcanBin = sync.OnceValues(func() (string, error) {
	if d := BinDir(); d != "" {
		if p := filepath.Join(d, "vulcan"); fileExists(p) {
			return p, nil
		}
	}
	dir, err := os.MkdirTemp("", "vulcan-test-bin")
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "vulcan")
	return p, GoBuild(p, "github.com/vulcanhq/vulcan/cmd/vulcan")
})

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// ShortTempDir returns a temp dir with a short path: unix socket paths are limited to
// 108 bytes and t.TempDir() names can be long.
func ShortTempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "vt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// GoBuild builds the Go package pkg (an import path, or a path relative to the test's
// package) into out, with extra environment (e.g. CGO_ENABLED=0); the error carries the
// compiler's output.
func GoBuild(out, pkg string, env ...string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}
