package vmm

import (
	"os"
	"strings"
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
	// Lines being waited for (Await), seen whether or not they fit under the limit;
	// tail carries the end of the previous write, for a line split across writes.
	waits map[string]chan struct{}
	tail  []byte
}

// maxAwait bounds an awaited line (and so the tail kept between writes).
const maxAwait = 256

// Await returns a channel closed once the guest has written line (at most 256 bytes)
// on its console after this call, past the limit too.
func (c *ConsoleFile) Await(line string) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waits == nil {
		c.waits = map[string]chan struct{}{}
	}
	ch := c.waits[line]
	if ch == nil {
		ch = make(chan struct{})
		c.waits[line] = ch
	}
	return ch
}

func (c *ConsoleFile) seeLocked(p []byte) {
	if len(c.waits) == 0 {
		return
	}
	buf := append(c.tail, p...)
	for line, ch := range c.waits {
		if len(line) <= maxAwait && strings.Contains(string(buf), line) {
			close(ch)
			delete(c.waits, line)
		}
	}
	if len(buf) > maxAwait {
		buf = buf[len(buf)-maxAwait:]
	}
	c.tail = append(c.tail[:0], buf...)
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
	c.seeLocked(p)
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
