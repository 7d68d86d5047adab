package config

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestFrontDoorAndLogSettings(t *testing.T) {
	chdir(t, "VULCAN_ALLOWED_ORIGINS=http://dotenv.example\n")
	c, err := Load(nil, envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.LogFormat != "text" || c.BodyTimeout != 60*time.Second || c.AllowedHosts != nil ||
		!slices.Equal(c.AllowedOrigins, []string{"http://dotenv.example"}) {
		t.Fatalf("defaults: %+v", c)
	}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	RegisterFlags(fs)
	if err := fs.Parse([]string{"--allowed-hosts", "flag.example", "--log-format", "json"}); err != nil {
		t.Fatal(err)
	}
	c, err = Load(fs, envMap(map[string]string{
		"VULCAN_ALLOWED_HOSTS":   " a.example, b.example:8443 ,",
		"VULCAN_ALLOWED_ORIGINS": "https://ui.example,http://127.0.0.1:3000/",
		"VULCAN_LOG_FORMAT":      "text",
		"VULCAN_BODY_TIMEOUT":    "5s",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.AllowedHosts, []string{"flag.example"}) || c.LogFormat != "json" || c.BodyTimeout != 5*time.Second ||
		!slices.Equal(c.AllowedOrigins, []string{"https://ui.example", "http://127.0.0.1:3000/"}) {
		t.Fatalf("%+v", c)
	}
	for env, v := range map[string]string{
		"VULCAN_LOG_FORMAT":      "xml",
		"VULCAN_ALLOWED_HOSTS":   "http://a.example",
		"VULCAN_ALLOWED_ORIGINS": "ui.example",
		"VULCAN_BODY_TIMEOUT":    "0s",
	} {
		if _, err := Load(nil, envMap(map[string]string{env: v})); err == nil || !strings.Contains(err.Error(), env) {
			t.Errorf("%s=%s: %v", env, v, err)
		}
	}
	if _, err := Load(nil, envMap(map[string]string{"VULCAN_ALLOWED_ORIGINS": "https://ui.example/path"})); err == nil {
		t.Errorf("an origin with a path was accepted")
	}
}
