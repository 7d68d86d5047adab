// Package config loads Vulcan's settings. Precedence, lowest first: defaults, a .env file
// in the working directory, VULCAN_* environment variables, command-line flags.
package config

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Config is every setting of the server and the CLI.
type Config struct {
	ListenAddr      string        // VULCAN_LISTEN_ADDR
	DataDir         string        // VULCAN_DATA_DIR: SQLite database and per-VM state
	ImagesDir       string        // VULCAN_IMAGES_DIR: kernel and rootfs images
	APIToken        string        // VULCAN_API_TOKEN: bearer token; required off loopback
	MaxConcurrent   int           // VULCAN_MAX_CONCURRENT
	QueueSize       int           // VULCAN_QUEUE_SIZE
	OutputLimit     int           // VULCAN_OUTPUT_LIMIT: bytes of stdout+stderr kept per workload
	OutputLineLimit int           // VULCAN_OUTPUT_LINE_LIMIT: lines of stdout+stderr kept per workload
	MaxSandboxes    int           // VULCAN_MAX_SANDBOXES: sandboxes alive at once
	Pool            string        // VULCAN_POOL: warm pool per template, "python=1:4,base=0:2" (min:max); "off" for none
	Snapshots       bool          // VULCAN_SNAPSHOTS: start VMs from template snapshots
	VMM             string        // VULCAN_VMM: auto | firecracker | qemu
	FirecrackerBin  string        // VULCAN_FIRECRACKER_BIN
	QEMUBin         string        // VULCAN_QEMU_BIN
	QEMUAccel       string        // VULCAN_QEMU_ACCEL: auto | kvm | tcg
	NetworkSubnet   string        // VULCAN_NETWORK_SUBNET: private IPv4 range for guests (one /24 of 10.213.0.0/16 per host)
	NetworkDNS      string        // VULCAN_NETWORK_DNS: name servers for egress guests, "host" (from /etc/resolv.conf) or "none"
	NetworkServices string        // VULCAN_NETWORK_SERVICES: ports of the gateway guests may reach besides Vulcan's DNS ("tcp/8080,udp/5000")
	ScratchMB       int           // VULCAN_SCRATCH_MB: each VM's sparse scratch disk for its writes; 0 = in guest memory
	CNIBinDir       string        // VULCAN_CNI_BIN_DIR: CNI plugins (default: cni/ next to the vulcan binary)
	LogLevel        slog.Level    // VULCAN_LOG_LEVEL: debug | info | warn | error
	LogFormat       string        // VULCAN_LOG_FORMAT: text | json
	AllowedHosts    []string      // VULCAN_ALLOWED_HOSTS: Host names the API answers to besides loopback and the listen address
	AllowedOrigins  []string      // VULCAN_ALLOWED_ORIGINS: browser origins allowed besides the server's own
	BodyTimeout     time.Duration // VULCAN_BODY_TIMEOUT: how long a request body may take to arrive
	ShutdownTimeout time.Duration // VULCAN_SHUTDOWN_TIMEOUT: how long SIGTERM waits for running workloads
	Server          string        // VULCAN_SERVER: the API the CLI talks to
	NATSURL         string        // VULCAN_NATS_URL: join a cluster over this NATS (JetStream) server list
	NATSCreds       string        // VULCAN_NATS_CREDS: NATS credentials file
	NATSCA          string        // VULCAN_NATS_CA: CA bundle to trust for NATS TLS
	NATSCert        string        // VULCAN_NATS_CERT: client certificate for NATS TLS
	NATSKey         string        // VULCAN_NATS_KEY: its key
	NodeID          string        // VULCAN_NODE_ID: this node's name in the cluster (default: the server's instance id)
	Advertise       string        // VULCAN_ADVERTISE: URL the other nodes reach this node's API at
}

// A setting ties an environment variable and a flag to a field.
type setting struct {
	env, flag, usage string
	set              func(c *Config, v string) error
	get              func(c *Config) string
}

type field struct {
	set func(c *Config, v string) error
	get func(c *Config) string
}

func str(p func(*Config) *string) field {
	return field{func(c *Config, v string) error { *p(c) = v; return nil }, func(c *Config) string { return *p(c) }}
}

func num(p func(*Config) *int, min int) field {
	return field{func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < min {
			return fmt.Errorf("must be an integer ≥ %d, got %q", min, v)
		}
		*p(c) = n
		return nil
	}, func(c *Config) string { return strconv.Itoa(*p(c)) }}
}

// list is a comma-separated setting; each item is trimmed and checked.
func list(p func(*Config) *[]string, check func(string) error) field {
	return field{func(c *Config, v string) error {
		var out []string
		for _, item := range strings.Split(v, ",") {
			if item = strings.TrimSpace(item); item == "" {
				continue
			}
			if err := check(item); err != nil {
				return err
			}
			out = append(out, item)
		}
		*p(c) = out
		return nil
	}, func(c *Config) string { return strings.Join(*p(c), ",") }}
}

func entry(env, flag, usage string, f field) setting {
	return setting{env: env, flag: flag, usage: usage, set: f.set, get: f.get}
}

var settings = []setting{
	entry("VULCAN_LISTEN_ADDR", "listen", "address the API listens on", str(func(c *Config) *string { return &c.ListenAddr })),
	entry("VULCAN_DATA_DIR", "data-dir", "directory for the database and per-VM state", str(func(c *Config) *string { return &c.DataDir })),
	entry("VULCAN_IMAGES_DIR", "images-dir", "directory of kernel and rootfs images (default <data-dir>/images)", str(func(c *Config) *string { return &c.ImagesDir })),
	entry("VULCAN_API_TOKEN", "token", "bearer token (server: required to listen off loopback; CLI: sent with requests)", str(func(c *Config) *string { return &c.APIToken })),
	entry("VULCAN_MAX_CONCURRENT", "max-concurrent", "workloads executing at once", num(func(c *Config) *int { return &c.MaxConcurrent }, 1)),
	entry("VULCAN_QUEUE_SIZE", "queue-size", "admitted workloads waiting for a slot before submissions get 429", num(func(c *Config) *int { return &c.QueueSize }, 0)),
	entry("VULCAN_OUTPUT_LIMIT", "output-limit", "bytes of stdout+stderr kept per workload", num(func(c *Config) *int { return &c.OutputLimit }, 1024)),
	entry("VULCAN_OUTPUT_LINE_LIMIT", "output-line-limit", "lines of stdout+stderr kept per workload", num(func(c *Config) *int { return &c.OutputLineLimit }, 1)),
	entry("VULCAN_POOL", "pool", "warm pool of VMs booted ahead, per template, as TEMPLATE=MIN[:MAX] separated by commas (the pool grows from MIN toward MAX on misses and shrinks back when idle); off for none", field{func(c *Config, v string) error {
		if _, err := ParsePool(v); err != nil {
			return err
		}
		c.Pool = v
		return nil
	}, func(c *Config) string { return c.Pool }}),
	entry("VULCAN_SNAPSHOTS", "snapshots", "start VMs by restoring a snapshot of their template booted and warmed once (true or false)", field{func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("must be true or false, got %q", v)
		}
		c.Snapshots = b
		return nil
	}, func(c *Config) string { return strconv.FormatBool(c.Snapshots) }}),
	entry("VULCAN_MAX_SANDBOXES", "max-sandboxes", "sandboxes alive at once (memory and vCPU budgets also bound them)", num(func(c *Config) *int { return &c.MaxSandboxes }, 1)),
	entry("VULCAN_VMM", "vmm", "virtual machine monitor: auto, firecracker or qemu", field{func(c *Config, v string) error {
		switch v {
		case "auto", "firecracker", "qemu":
			c.VMM = v
			return nil
		}
		return fmt.Errorf("must be auto, firecracker or qemu, got %q", v)
	}, func(c *Config) string { return c.VMM }}),
	entry("VULCAN_FIRECRACKER_BIN", "firecracker-bin", "path to the firecracker binary (default: search PATH)", str(func(c *Config) *string { return &c.FirecrackerBin })),
	entry("VULCAN_QEMU_BIN", "qemu-bin", "path to qemu-system-x86_64 (default: search PATH)", str(func(c *Config) *string { return &c.QEMUBin })),
	entry("VULCAN_QEMU_ACCEL", "qemu-accel", "QEMU acceleration: auto (KVM when a test boot works, else TCG), kvm or tcg", field{func(c *Config, v string) error {
		switch v {
		case "auto", "kvm", "tcg":
			c.QEMUAccel = v
			return nil
		}
		return fmt.Errorf("must be auto, kvm or tcg, got %q", v)
	}, func(c *Config) string { return c.QEMUAccel }}),
	entry("VULCAN_NETWORK_SUBNET", "network-subnet", "private IPv4 subnet guests with a network get addresses from; the gateway is its first address", field{func(c *Config, v string) error {
		ip, n, err := net.ParseCIDR(v)
		if err != nil || ip.To4() == nil || !ip.Equal(n.IP) || !ip.IsPrivate() {
			return fmt.Errorf("must be a private IPv4 network like 10.213.0.0/24, got %q", v)
		}
		c.NetworkSubnet = v
		return nil
	}, func(c *Config) string { return c.NetworkSubnet }}),
	entry("VULCAN_NETWORK_DNS", "network-dns", "name servers egress guests use: host (the host's non-loopback ones from /etc/resolv.conf), none, or a comma-separated list of IPv4 addresses", field{func(c *Config, v string) error {
		if v != "host" && v != "none" {
			for _, s := range strings.Split(v, ",") {
				if ip := net.ParseIP(strings.TrimSpace(s)); ip == nil || ip.To4() == nil {
					return fmt.Errorf("must be host, none or IPv4 addresses separated by commas, got %q", v)
				}
			}
		}
		c.NetworkDNS = v
		return nil
	}, func(c *Config) string { return c.NetworkDNS }}),
	entry("VULCAN_NETWORK_SERVICES", "network-services", "ports on the gateway address that guests may reach besides Vulcan's DNS gate, as tcp/PORT or udp/PORT separated by commas (services you run for guests); every other host port is closed to them", field{func(c *Config, v string) error {
		for _, s := range strings.Split(v, ",") {
			proto, port, _ := strings.Cut(strings.TrimSpace(s), "/")
			if n, err := strconv.Atoi(port); v != "" && ((proto != "tcp" && proto != "udp") || err != nil || n < 1 || n > 65535) {
				return fmt.Errorf("must be tcp/PORT or udp/PORT separated by commas, got %q", v)
			}
		}
		c.NetworkServices = v
		return nil
	}, func(c *Config) string { return c.NetworkServices }}),
	entry("VULCAN_SCRATCH_MB", "scratch-mb", "size of each VM's scratch disk, where the guest's writes go (a sparse file: it costs what is written); 0 keeps them in the VM's memory", num(func(c *Config) *int { return &c.ScratchMB }, 0)),
	entry("VULCAN_CNI_BIN_DIR", "cni-bin-dir", "directory of the CNI plugins bridge, host-local and vulcan-cni-tap (default: cni/ next to the vulcan binary)", str(func(c *Config) *string { return &c.CNIBinDir })),
	entry("VULCAN_LOG_LEVEL", "log-level", "debug, info, warn or error", field{func(c *Config, v string) error {
		return c.LogLevel.UnmarshalText([]byte(v))
	}, func(c *Config) string { return strings.ToLower(c.LogLevel.String()) }}),
	entry("VULCAN_LOG_FORMAT", "log-format", "log line format: text or json", field{func(c *Config, v string) error {
		switch v {
		case "text", "json":
			c.LogFormat = v
			return nil
		}
		return fmt.Errorf("must be text or json, got %q", v)
	}, func(c *Config) string { return c.LogFormat }}),
	entry("VULCAN_ALLOWED_HOSTS", "allowed-hosts", "Host header names the API answers to besides localhost, loopback addresses and the listen address, separated by commas: name (any port) or name:port", list(func(c *Config) *[]string { return &c.AllowedHosts }, func(v string) error {
		if strings.ContainsAny(v, "/ @") {
			return fmt.Errorf("%q is not a host name or host:port", v)
		}
		return nil
	})),
	entry("VULCAN_ALLOWED_ORIGINS", "allowed-origins", "browser origins allowed to call the API besides its own, separated by commas, like https://ui.example", list(func(c *Config) *[]string { return &c.AllowedOrigins }, func(v string) error {
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return fmt.Errorf("%q is not an origin like https://ui.example or http://host:8080", v)
		}
		return nil
	})),
	entry("VULCAN_BODY_TIMEOUT", "body-timeout", "how long a request body may take to arrive before the request is refused (408)", field{func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return fmt.Errorf("must be a positive duration like 60s, got %q", v)
		}
		c.BodyTimeout = d
		return nil
	}, func(c *Config) string { return c.BodyTimeout.String() }}),
	entry("VULCAN_SHUTDOWN_TIMEOUT", "shutdown-timeout", "how long a stop signal waits for running workloads before cancelling them", field{func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return fmt.Errorf("must be a duration like 30s, got %q", v)
		}
		c.ShutdownTimeout = d
		return nil
	}, func(c *Config) string { return c.ShutdownTimeout.String() }}),
	entry("VULCAN_SERVER", "server", "URL of the Vulcan API (CLI)", str(func(c *Config) *string { return &c.Server })),
	entry("VULCAN_NATS_URL", "nats", "join a cluster: NATS server URL(s) with JetStream, like nats://127.0.0.1:4222 (comma-separated for several)", str(func(c *Config) *string { return &c.NATSURL })),
	entry("VULCAN_NATS_CREDS", "nats-creds", "NATS credentials file (JWT and nkey seed)", str(func(c *Config) *string { return &c.NATSCreds })),
	entry("VULCAN_NATS_CA", "nats-ca", "CA certificate (PEM) to trust for NATS over TLS", str(func(c *Config) *string { return &c.NATSCA })),
	entry("VULCAN_NATS_CERT", "nats-cert", "client certificate (PEM) for NATS over TLS", str(func(c *Config) *string { return &c.NATSCert })),
	entry("VULCAN_NATS_KEY", "nats-key", "client certificate's key (PEM) for NATS over TLS", str(func(c *Config) *string { return &c.NATSKey })),
	entry("VULCAN_NODE_ID", "node-id", "this node's name in the cluster: letters, digits, - and _ (default: the server's instance id)", field{func(c *Config, v string) error {
		for _, r := range v {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("may hold only letters, digits, - and _, got %q", v)
			}
		}
		if len(v) > 64 {
			return fmt.Errorf("is at most 64 characters, got %d", len(v))
		}
		c.NodeID = v
		return nil
	}, func(c *Config) string { return c.NodeID }}),
	entry("VULCAN_ADVERTISE", "advertise", "URL the cluster's other nodes reach this node's API at (default http://<listen address> when it names a host)", field{func(c *Config, v string) error {
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("must be a URL like http://10.0.0.2:8080, got %q", v)
		}
		c.Advertise = strings.TrimSuffix(v, "/")
		return nil
	}, func(c *Config) string { return c.Advertise }}),
}

// Default returns the built-in defaults. The data directory is system-wide for root and
// per-user otherwise, matching the Makefile.
func Default() *Config {
	data := "/var/lib/vulcan"
	if os.Geteuid() != 0 {
		if home, err := os.UserHomeDir(); err == nil {
			data = filepath.Join(home, ".local", "share", "vulcan")
		}
	}
	return &Config{
		ListenAddr:      "127.0.0.1:8080",
		DataDir:         data,
		MaxConcurrent:   2,
		QueueSize:       64,
		OutputLimit:     1 << 20,
		OutputLineLimit: 100_000,
		MaxSandboxes:    32,
		Pool:            DefaultPool,
		Snapshots:       true,
		VMM:             "auto",
		QEMUAccel:       "auto",
		NetworkSubnet:   "10.213.0.0/24",
		NetworkDNS:      "host",
		ScratchMB:       2048,
		LogLevel:        slog.LevelInfo,
		LogFormat:       "text",
		BodyTimeout:     60 * time.Second,
		ShutdownTimeout: 30 * time.Second,
		Server:          "http://127.0.0.1:8080",
	}
}

// RegisterFlags adds a flag for each named setting (all of them when names is empty) to fs.
// Flag defaults are not shown as values: Load decides them, after the environment.
func RegisterFlags(fs *pflag.FlagSet, names ...string) {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	for _, s := range settings {
		if len(names) == 0 || want[s.flag] {
			fs.String(s.flag, "", s.usage+" ($"+s.env+")")
		}
	}
}

// Load builds the configuration: defaults, then the .env file in the working directory (if
// any), then the environment (lookupEnv, normally os.LookupEnv), then the flags in fs that
// were set on the command line (fs may be nil).
func Load(fs *pflag.FlagSet, lookupEnv func(string) (string, bool)) (*Config, error) {
	c := Default()
	dotenv, err := readDotEnv(".env")
	if err != nil {
		return nil, err
	}
	for _, s := range settings {
		if v, ok := dotenv[s.env]; ok {
			if err := s.set(c, v); err != nil {
				return nil, fmt.Errorf(".env: %s: %w", s.env, err)
			}
		}
	}
	for _, s := range settings {
		if v, ok := lookupEnv(s.env); ok && v != "" {
			if err := s.set(c, v); err != nil {
				return nil, fmt.Errorf("%s: %w", s.env, err)
			}
		}
	}
	if fs != nil {
		for _, s := range settings {
			if f := fs.Lookup(s.flag); f != nil && f.Changed {
				if err := s.set(c, f.Value.String()); err != nil {
					return nil, fmt.Errorf("--%s: %w", s.flag, err)
				}
			}
		}
	}
	if c.ImagesDir == "" {
		c.ImagesDir = filepath.Join(c.DataDir, "images")
	}
	return c, nil
}

// readDotEnv parses KEY=VALUE lines; blank lines, # comments and a leading "export " are
// allowed and one level of matching quotes around the value is removed.
func readDotEnv(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("config: %s:%d: want KEY=VALUE", path, n)
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		out[strings.TrimSpace(k)] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	return out, nil
}

// ValidateServe checks what the server needs: listening beyond loopback requires a token,
// because the API runs arbitrary code for whoever reaches it.
func (c *Config) ValidateServe() error {
	host, _, err := net.SplitHostPort(c.ListenAddr)
	if err != nil {
		return fmt.Errorf("VULCAN_LISTEN_ADDR %q: %w", c.ListenAddr, err)
	}
	if c.APIToken == "" && !loopback(host) {
		return fmt.Errorf("refusing to listen on %s without an API token: anyone who can reach it could run code on this machine; "+
			"set VULCAN_API_TOKEN (or --token), or listen on 127.0.0.1", c.ListenAddr)
	}
	return nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// DatabasePath is where the SQLite database lives.
func (c *Config) DatabasePath() string { return filepath.Join(c.DataDir, "vulcan.db") }

// Env lists each setting's variable with its current value, for documentation and `serve`
// start-up logs. The token is redacted.
func (c *Config) Env() [][2]string {
	var out [][2]string
	for _, s := range settings {
		v := s.get(c)
		if s.env == "VULCAN_API_TOKEN" && v != "" {
			v = "(set)"
		}
		out = append(out, [2]string{s.env, v})
	}
	return out
}

// DefaultPool keeps one python and one base VM warm, growing to four on demand, and
// node and go VMs warm only once asked for.
const DefaultPool = "python=1:4,base=1:4,node=0:2,go=0:2"

// PoolSize is one template's warm pool bounds.
type PoolSize struct{ Min, Max int }

// ParsePool reads VULCAN_POOL: TEMPLATE=MIN[:MAX] separated by commas, "" or "off" for
// none.
func ParsePool(v string) (map[string]PoolSize, error) {
	out := map[string]PoolSize{}
	v = strings.TrimSpace(v)
	if v == "" || v == "off" {
		return out, nil
	}
	bad := func(part string) error {
		return fmt.Errorf("pool %q: want TEMPLATE=MIN[:MAX] with 0 <= MIN <= MAX <= 64, separated by commas, or off", part)
	}
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		name, sizes, ok := strings.Cut(part, "=")
		if !ok || name == "" {
			return nil, bad(part)
		}
		lo, hi, ranged := strings.Cut(sizes, ":")
		min, err := strconv.Atoi(lo)
		if err != nil {
			return nil, bad(part)
		}
		max := min
		if ranged {
			if max, err = strconv.Atoi(hi); err != nil {
				return nil, bad(part)
			}
		}
		if min < 0 || max < min || max > 64 {
			return nil, bad(part)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("pool: %s given twice", name)
		}
		out[name] = PoolSize{Min: min, Max: max}
	}
	return out, nil
}
