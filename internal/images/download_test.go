package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestVerifySHA256(t *testing.T) {
	sum := sha256.Sum256([]byte("x"))
	good := hex.EncodeToString(sum[:])
	cases := []struct {
		got, want string
		ok        bool
	}{
		{good, good, true},
		{good, strings.ToUpper(good), true},
		{good, strings.Repeat("0", 64), false},
		{good, "", false},
		{good, "abc", false},
	}
	for _, c := range cases {
		err := VerifySHA256(c.got, c.want)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrChecksum)) {
			t.Errorf("VerifySHA256(%q) = %v, want ok=%v", c.want, err, c.ok)
		}
	}
}

func TestParseSumFile(t *testing.T) {
	h1, h2 := strings.Repeat("a", 64), strings.Repeat("b", 64)
	cases := []struct {
		data, name, want string
		ok               bool
	}{
		{h1 + "  firecracker.tgz\n", "firecracker.tgz", h1, true},
		{h1 + "  other\n" + h2 + " *firecracker.tgz\n", "firecracker.tgz", h2, true},
		{h1 + "\n", "anything", h1, true},
		{h1 + "  a\n" + h2 + "  b\n", "c", "", false},
		{"not a checksum\n", "x", "", false},
	}
	for _, c := range cases {
		got, err := ParseSumFile([]byte(c.data), c.name)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseSumFile(%q, %q) = %q, %v", c.data, c.name, got, err)
		}
	}
}

func TestCheckFirecrackerVersion(t *testing.T) {
	if err := CheckFirecrackerVersion("Firecracker v1.10.1\n\nSupported snapshot data format versions: 4.0.0", "v1.10.1"); err != nil {
		t.Error(err)
	}
	if err := CheckFirecrackerVersion("Firecracker v1.9.0", "v1.10.1"); err == nil {
		t.Error("older version accepted")
	}
	if err := CheckFirecrackerVersion("garbage", "v1.10.1"); err == nil {
		t.Error("unparsable version accepted")
	}
}

// TestDownload runs the whole fetch against a loopback server: checksum from the published
// sum file, member extracted, a tampered artifact refused and nothing installed.
func TestDownload(t *testing.T) {
	bin := []byte("\x7fELF fake firecracker")
	var tgz bytes.Buffer
	gz := gzip.NewWriter(&tgz)
	tw := tar.NewWriter(gz)
	tw.WriteHeader(&tar.Header{Name: "release-v9/firecracker-v9", Mode: 0o755, Size: int64(len(bin)), Typeflag: tar.TypeReg})
	tw.Write(bin)
	tw.Close()
	gz.Close()
	sum := sha256.Sum256(tgz.Bytes())
	tampered := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fc.tgz":
			b := tgz.Bytes()
			if tampered {
				b = append([]byte{}, b...)
				b[len(b)-1] ^= 0xff
			}
			w.Write(b)
		case "/fc.tgz.sha256.txt":
			w.Write([]byte(hex.EncodeToString(sum[:]) + "  fc.tgz\n"))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	a := Artifact{Name: "firecracker", URL: srv.URL + "/fc.tgz", SumURL: srv.URL + "/fc.tgz.sha256.txt", Member: "release-v9/firecracker-v9", MaxBytes: 1 << 20}
	dir := t.TempDir()
	got, err := Download(context.Background(), srv.Client(), a, dir)
	if err != nil {
		t.Fatal(err)
	}
	if got != hex.EncodeToString(sum[:]) {
		t.Errorf("checksum %s", got)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "firecracker")); !bytes.Equal(b, bin) {
		t.Errorf("installed %q", b)
	}

	tampered = true
	dir2 := t.TempDir()
	if _, err := Download(context.Background(), srv.Client(), a, dir2); !errors.Is(err, ErrChecksum) {
		t.Fatalf("tampered download: %v", err)
	}
	if entries, _ := os.ReadDir(dir2); len(entries) != 0 {
		t.Errorf("tampered download left files: %v", entries)
	}

	// A pinned checksum wins over the published one.
	a.SHA256 = strings.Repeat("0", 64)
	tampered = false
	if _, err := Download(context.Background(), srv.Client(), a, t.TempDir()); !errors.Is(err, ErrChecksum) {
		t.Fatalf("pin not enforced: %v", err)
	}
}

// TestDownloadFailsFastOffline: an unreachable host is reported with the way out.
func TestDownloadFailsFastOffline(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there any more: connection refused, like an offline host
	a := Artifact{Name: "firecracker", URL: url + "/fc.tgz", SHA256: strings.Repeat("a", 64), MaxBytes: 1 << 20}
	_, err := Download(context.Background(), HTTPClient(), a, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "VULCAN_FIRECRACKER_BIN") {
		t.Fatalf("err = %v", err)
	}
}
