package guest

import (
	"io"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/protocol"
)

// writeFile writes data with fs.write as "user" and returns the written file's info.
func writeFile(t *testing.T, e *sessEnv, path string, data []byte) *protocol.FileInfo {
	t.Helper()
	info, err := writeFileAs(t, e, "", path, 0, data)
	if err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return info
}

func writeFileAs(t *testing.T, e *sessEnv, user, path string, mode uint32, data []byte) (*protocol.FileInfo, error) {
	t.Helper()
	st, _, err := e.s.Open(tctx(t), &protocol.Request{Op: protocol.OpFSWrite, Path: path, User: user, Mode: mode})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(2 * time.Minute))
	for len(data) > 0 {
		n := min(len(data), 1<<20)
		if _, err := st.Write(data[:n]); err != nil {
			return nil, err
		}
		data = data[n:]
	}
	st.CloseWrite()
	resp, err := st.Response()
	if err != nil {
		return nil, err
	}
	if resp.Error != nil {
		return nil, resp.Error
	}
	return resp.Info, nil
}

// readFile reads a file with fs.read; it checks the byte count against Info.Size.
func readFileAs(t *testing.T, e *sessEnv, user, path string, w io.Writer) (*protocol.FileInfo, error) {
	t.Helper()
	st, resp, err := e.s.Open(tctx(t), &protocol.Request{Op: protocol.OpFSRead, Path: path, User: user})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(2 * time.Minute))
	n, err := io.Copy(w, st)
	if err != nil {
		return nil, err
	}
	if n != resp.Info.Size {
		t.Fatalf("read %s: %d bytes, info says %d", path, n, resp.Info.Size)
	}
	return resp.Info, nil
}
