package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/vulcanhq/vulcan/internal/config"
)

// VULCAN_LOG_FORMAT=json gives one JSON object per line; text stays the default.
func TestLogFormat(t *testing.T) {
	for format, isJSON := range map[string]bool{"json": true, "text": false} {
		var out bytes.Buffer
		cfg := config.Default()
		cfg.LogFormat = format
		newLogger(cfg, &out).Info("http request", "method", "GET", "status", 200)
		var m map[string]any
		err := json.Unmarshal(out.Bytes(), &m)
		switch {
		case isJSON && (err != nil || m["msg"] != "http request" || m["status"] != float64(200)):
			t.Errorf("json: %q (%v)", out.String(), err)
		case !isJSON && (err == nil || !strings.Contains(out.String(), `msg="http request" method=GET status=200`)):
			t.Errorf("text: %q", out.String())
		}
	}
}
