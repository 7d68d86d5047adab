package api_test

import (
	"bytes"
	"strconv"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/api"
	"github.com/vulcanhq/vulcan/internal/backend/backendtest"
	"github.com/vulcanhq/vulcan/internal/engine"
)

// hugeEnvBody is a submission of about 15 MiB holding ~1.15 million valid env vars: too
// big for the guest, and (before validation returned its field) a per-variable re-run of
// validation costing ~9 s of CPU before the 400.
func hugeEnvBody() []byte {
	var b bytes.Buffer
	b.WriteString(`{"runtime":"python","code":"pass","env":{`)
	for i := 0; b.Len() < 15<<20+1024; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"E`)
		b.WriteString(strconv.Itoa(i))
		b.WriteString(`":""`)
	}
	b.WriteString(`}}`)
	return b.Bytes()
}

func TestHugeEnvIsRefusedOnceWithItsField(t *testing.T) {
	ts := newServer(t, engine.Config{}, &backendtest.Fake{}, "")
	body := hugeEnvBody()
	start := time.Now()
	resp, data := ts.do(t, "POST", "/v1/workloads/async", body)
	took := time.Since(start)
	t.Logf("%d bytes of env refused in %v", len(body), took)
	e := decode[api.ErrorBody](t, data)
	if resp.StatusCode != 400 || e.Error.Field != "env" {
		t.Fatalf("%d %s", resp.StatusCode, data)
	}
}
