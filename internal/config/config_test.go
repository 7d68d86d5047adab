package config

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func chdir(t *testing.T, dotenv string) {
	dir := t.TempDir()
	if dotenv != "" {
		if err := os.WriteFile(filepath.Join(dir, ".env"), []byte(dotenv), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(dir)
}

func TestPrecedence(t *testing.T) {
	chdir(t, "# comment\nexport VULCAN_MAX_CONCURRENT=3\nVULCAN_QUEUE_SIZE='7'\nVULCAN_LISTEN_ADDR=\"127.0.0.1:1\"\nVULCAN_DATA_DIR=/d\n")
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	RegisterFlags(fs)
	if err := fs.Parse([]string{"--listen", "127.0.0.1:3", "--log-level", "debug"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(fs, envMap(map[string]string{"VULCAN_QUEUE_SIZE": "9", "VULCAN_LISTEN_ADDR": "127.0.0.1:2", "VULCAN_SHUTDOWN_TIMEOUT": "5s"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxConcurrent != 3 || c.QueueSize != 9 || c.ListenAddr != "127.0.0.1:3" || c.LogLevel != slog.LevelDebug ||
		c.DataDir != "/d" || c.ImagesDir != "/d/images" || c.ShutdownTimeout != 5*time.Second || c.VMM != "auto" {
		t.Fatalf("%+v", c)
	}
}

func TestDefaults(t *testing.T) {
	chdir(t, "")
	c, err := Load(nil, envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.ListenAddr != "127.0.0.1:8080" || c.MaxConcurrent != 2 || c.QueueSize != 64 || c.Server != "http://127.0.0.1:8080" ||
		c.ImagesDir != filepath.Join(c.DataDir, "images") {
		t.Fatalf("%+v", c)
	}
	if os.Geteuid() == 0 && c.DataDir != "/var/lib/vulcan" {
		t.Fatalf("root data dir %s", c.DataDir)
	}
}

func TestBadValues(t *testing.T) {
	chdir(t, "")
	for k, v := range map[string]string{"VULCAN_MAX_CONCURRENT": "0", "VULCAN_VMM": "kvmtool", "VULCAN_LOG_LEVEL": "loud", "VULCAN_SHUTDOWN_TIMEOUT": "soon"} {
		if _, err := Load(nil, envMap(map[string]string{k: v})); err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%s: %v", k, v, err)
		}
	}
}

func TestNonLoopbackNeedsToken(t *testing.T) {
	for addr, ok := range map[string]bool{"127.0.0.1:8080": true, "localhost:1": true, "[::1]:1": true, "0.0.0.0:8080": false, ":8080": false, "10.0.0.1:80": false} {
		c := Default()
		c.ListenAddr = addr
		if err := c.ValidateServe(); (err == nil) != ok {
			t.Errorf("%s without token: %v", addr, err)
		}
		c.APIToken = "s3cret"
		if err := c.ValidateServe(); err != nil {
			t.Errorf("%s with token: %v", addr, err)
		}
	}
}
