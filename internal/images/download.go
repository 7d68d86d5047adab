package images

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// FirecrackerVersion is the pinned Firecracker release `make download` fetches.
const FirecrackerVersion = "v1.10.1"

// Artifact is one file `make download` fetches.
type Artifact struct {
	Name string // file written into the images dir
	URL  string
	// SHA256 pins the artifact. When empty, the checksum the release publishes at SumURL
	// is used, and the caller records it so the next download is pinned (trust on first
	// use): Vulcan was written offline and ships no checksum it could not verify.
	SHA256 string
	SumURL string
	// Member, for a .tgz, is the archive entry to extract as Name.
	Member string
	// MaxBytes caps the download.
	MaxBytes int64
}

// Pinned lists the downloads: the Firecracker binary and the guest kernel from
// Firecracker's CI artifacts for the same minor release.
func Pinned() []Artifact {
	v := FirecrackerVersion
	return []Artifact{
		{
			Name:     "firecracker",
			URL:      "https://github.com/firecracker-microvm/firecracker/releases/download/" + v + "/firecracker-" + v + "-x86_64.tgz",
			SumURL:   "https://github.com/firecracker-microvm/firecracker/releases/download/" + v + "/firecracker-" + v + "-x86_64.tgz.sha256.txt",
			Member:   "release-" + v + "-x86_64/firecracker-" + v + "-x86_64",
			MaxBytes: 64 << 20,
		},
		{
			Name:     "vmlinux-firecracker-ci",
			URL:      "https://s3.amazonaws.com/spec.ccfc.min/firecracker-ci/v1.10/x86_64/vmlinux-6.1.102",
			MaxBytes: 128 << 20,
		},
	}
}

// ErrChecksum is returned when a download does not match its checksum.
var ErrChecksum = errors.New("checksum mismatch")

// HTTPClient fails fast: an offline host learns so in seconds, not minutes.
func HTTPClient() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Minute,
		Transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 15 * time.Second,
			Proxy:                 http.ProxyFromEnvironment,
		},
	}
}

// Download fetches a into dir, verifying its SHA-256 before anything lands under its
// final name. It returns the verified checksum.
func Download(ctx context.Context, c *http.Client, a Artifact, dir string) (string, error) {
	want := strings.ToLower(a.SHA256)
	if want == "" && a.SumURL != "" {
		body, err := get(ctx, c, a.SumURL, 4096)
		if err != nil {
			return "", offline(a, err)
		}
		if want, err = ParseSumFile(body, filepath.Base(a.URL)); err != nil {
			return "", fmt.Errorf("%s: %w", a.SumURL, err)
		}
	}
	body, err := get(ctx, c, a.URL, a.MaxBytes)
	if err != nil {
		return "", offline(a, err)
	}
	got := sha256.Sum256(body)
	gotHex := hex.EncodeToString(got[:])
	if err := VerifySHA256(gotHex, want); err != nil {
		return "", fmt.Errorf("%s: %w", a.URL, err)
	}
	data := body
	if a.Member != "" {
		if data, err = extractMember(body, a.Member, a.MaxBytes); err != nil {
			return "", fmt.Errorf("%s: %w", a.URL, err)
		}
	}
	if err := writeAtomic(filepath.Join(dir, a.Name), data, 0o755); err != nil {
		return "", err
	}
	return gotHex, nil
}

// VerifySHA256 compares a computed digest with the expected one. An empty expectation is
// refused: nothing is installed unverified.
func VerifySHA256(got, want string) error {
	if want == "" {
		return fmt.Errorf("%w: no expected checksum", ErrChecksum)
	}
	if len(want) != 64 {
		return fmt.Errorf("%w: malformed expected checksum %q", ErrChecksum, want)
	}
	if !strings.EqualFold(got, want) {
		return fmt.Errorf("%w: got %s, want %s", ErrChecksum, got, want)
	}
	return nil
}

// ParseSumFile finds name's digest in a sha256sum-style file ("<hex>  <name>"); a file
// with a single digest and no name also counts.
func ParseSumFile(data []byte, name string) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	var only []string
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f[0]) != 64 {
			continue
		}
		if _, err := hex.DecodeString(f[0]); err != nil {
			continue
		}
		if len(f) >= 2 && strings.TrimPrefix(f[1], "*") == name {
			return strings.ToLower(f[0]), nil
		}
		only = append(only, f[0])
	}
	if len(only) == 1 {
		return strings.ToLower(only[0]), nil
	}
	return "", fmt.Errorf("no checksum for %s", name)
}

var fcVersionRe = regexp.MustCompile(`Firecracker (v\d+\.\d+\.\d+)`)

// CheckFirecrackerVersion checks `firecracker --version` output names the wanted release.
func CheckFirecrackerVersion(output, want string) error {
	m := fcVersionRe.FindStringSubmatch(output)
	if m == nil {
		return fmt.Errorf("cannot read a Firecracker version from %q", firstLine(output))
	}
	if m[1] != want {
		return fmt.Errorf("firecracker is %s, want %s", m[1], want)
	}
	return nil
}

func get(ctx context.Context, c *http.Client, url string, max int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > max {
		return nil, fmt.Errorf("GET %s: larger than %d bytes", url, max)
	}
	return body, nil
}

func extractMember(tgz []byte, member string, max int64) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		return nil, err
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil, fmt.Errorf("%s not in the archive", member)
		}
		if err != nil {
			return nil, err
		}
		if h.Name != member && strings.TrimPrefix(h.Name, "./") != member {
			continue
		}
		if h.Typeflag != tar.TypeReg || h.Size > max {
			return nil, fmt.Errorf("%s: not a regular file within %d bytes", member, max)
		}
		return io.ReadAll(io.LimitReader(tr, h.Size))
	}
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func offline(a Artifact, err error) error {
	return fmt.Errorf("download %s: %v\nthis host cannot reach %s; offline, Vulcan runs VMs with QEMU and the kernel from `make kernel`; to use Firecracker, copy a firecracker binary here and set VULCAN_FIRECRACKER_BIN", a.Name, err, hostOf(a.URL))
}

func hostOf(url string) string {
	s := strings.TrimPrefix(strings.TrimPrefix(url, "https://"), "http://")
	if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	return s
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
