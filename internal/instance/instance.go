// Package instance gives a server an identity that outlives its restarts: a short id kept
// in its data dir. Whatever the server makes outside the data dir on the host — network
// namespaces, the bridge, nft tables — carries the id in its name, so a server's startup
// reclaim can tell what is its own from what belongs to another server on the same host.
package instance

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// FileName is the file under the data dir holding the id.
const FileName = "instance-id"

// Len is the length of an id: "vulcan-" plus the id must still be a Linux interface name
// (at most 15 bytes).
const Len = 8

// alphabet is Crockford's base32 in lower case: no i, l, o, u to misread.
const alphabet = "0123456789abcdefghjkmnpqrstvwxyz"

var idRe = regexp.MustCompile(`^[0-9a-z]{1,8}$`)

// Check reports whether id can name host objects: 1-8 lower-case letters or digits.
func Check(id string) error {
	if !idRe.MatchString(id) {
		return fmt.Errorf("instance id %q: want 1-%d lower-case letters or digits", id, Len)
	}
	return nil
}

// New returns a fresh random id (40 bits).
func New() string {
	b := make([]byte, Len)
	_, _ = rand.Read(b) // never fails on Linux
	for i := range b {
		b[i] = alphabet[b[i]%32]
	}
	return string(b)
}

// Load returns the id kept in dataDir, creating it on first start (created is then true).
// The caller must own dataDir (serve holds its lock). An unreadable or malformed file is an
// error, never a reason to make a new id: with another id the server could no longer find
// what it made on the host.
func Load(dataDir string) (id string, created bool, err error) {
	path := filepath.Join(dataDir, FileName)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		id = strings.TrimSpace(string(b))
		if err := Check(id); err != nil {
			return "", false, fmt.Errorf("%s: %w (restore the file, or remove it to start as a new instance: what the old one left on the host is then not reclaimed)", path, err)
		}
		return id, false, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", false, fmt.Errorf("instance id: %w", err)
	}
	id = New()
	// Written aside, synced, then linked into place: a crash leaves either no file or a
	// complete one, and Link never replaces a file that appeared meanwhile.
	tmp, err := os.CreateTemp(dataDir, FileName+".*")
	if err != nil {
		return "", false, fmt.Errorf("instance id: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(id + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(tmp.Name(), path)
	}
	if err != nil {
		return "", false, fmt.Errorf("instance id: %w", err)
	}
	if d, err := os.Open(dataDir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return id, true, nil
}
