package vmm

import (
	"os"
	"sync"
)

// ConsoleFile keeps the first Limit bytes a guest writes to its console and counts the
// rest. The guest is hostile: a console flood must not fill the host's disk.
type ConsoleFile struct {
	mu      sync.Mutex
	f       *os.File
	limit   int64
	written int64
	dropped int64
}

// CreateConsoleFile creates (truncating) path for a VM's console.
func CreateConsoleFile(path string, limit int64) (*ConsoleFile, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = 1 << 20
	}
	return &ConsoleFile{f: f, limit: limit}, nil
}

// Write never fails for the writer's sake: dropping console output is better than
// blocking the VMM on a full pipe.
func (c *ConsoleFile) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	room := c.limit - c.written
	keep := int64(len(p))
	if keep > room {
		keep = room
	}
	if keep > 0 && c.f != nil {
		n, _ := c.f.Write(p[:keep])
		c.written += int64(n)
	}
	c.dropped += int64(len(p)) - keep
	return len(p), nil
}

// Close closes the file, noting how much was dropped.
func (c *ConsoleFile) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.f == nil {
		return nil
	}
	if c.dropped > 0 {
		_, _ = c.f.WriteString("\n[vulcan: console output past the limit was dropped]\n")
	}
	err := c.f.Close()
	c.f = nil
	return err
}

// Tail returns up to n bytes from the end of a console log, for error messages.
func Tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := st.Size() - n
	if off < 0 {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	_, _ = f.ReadAt(buf, off)
	return string(buf)
}
