package microvm

import (
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
)

// Every spec the engine accepts (WireSize up to model.MaxSpecBytes) must fit in one agent
// frame once the backend turns it into an exec message.
func TestLargestAcceptedSpecFitsOneFrame(t *testing.T) {
	for _, shape := range []string{"archive", "code", "input"} {
		spec := model.Spec{Runtime: model.RuntimePython, Isolation: model.IsolationMicroVM,
			Entrypoint: "main.py", Env: map[string]string{"A": "b"}, Resources: model.Resources{CPUs: 1, MemMB: 256, TimeoutS: 60}}
		base, _ := spec.WireSize()
		room := model.MaxSpecBytes - base - 64
		switch shape {
		case "archive": // base64 in both encodings
			spec.Archive = make([]byte, room/4*3)
			spec.Code = ""
		case "code": // a string that JSON escapes grows the same in both encodings
			spec.Code = strings.Repeat("\x01", room/6)
		case "input": // stdin travels base64-encoded
			spec.Code = "x"
			spec.Input, _ = json.Marshal(strings.Repeat("y", room/4*3-16))
		}
		size, err := spec.WireSize()
		if err != nil || size > model.MaxSpecBytes {
			t.Fatalf("%s: test spec is %d bytes (%v), over the limit", shape, size, err)
		}
		ex := execFor(backend.Job{WorkloadID: strings.Repeat("W", 26), Spec: spec, OutputLimit: 1 << 20})
		if err := protocol.WriteMessage(io.Discard, &protocol.Message{Type: protocol.TypeExec, Exec: ex}); err != nil {
			t.Errorf("%s: a spec of %d bytes does not fit one frame: %v", shape, size, err)
		}
	}
}
