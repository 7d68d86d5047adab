package engine

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/network/netrules"
)

// MaxEnvBytes and MaxEnvVarBytes are model's (shared with sandbox processes).
const (
	MaxEnvBytes    = model.MaxEnvBytes
	MaxEnvVarBytes = model.MaxEnvVarBytes
)

// Validate checks a submitted spec and fills its defaults (isolation auto, network none,
// the runtime's entrypoint, resources). Every error wraps ErrInvalid and a
// *model.FieldError naming the field at fault; its text is meant for the user.
func (e *Engine) Validate(spec model.Spec) (model.Spec, error) {
	return validate(spec, e.cfg.Limits)
}

// invalid is a validation failure of one field.
func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %w", ErrInvalid, &model.FieldError{Field: field, Reason: fmt.Sprintf(format, args...)})
}

func validate(spec model.Spec, limits model.Limits) (model.Spec, error) {
	switch {
	case spec.Runtime == "":
		return spec, invalid("runtime", "runtime is required (one of go, node, python)")
	case !spec.Runtime.Valid():
		return spec, invalid("runtime", "unknown runtime %q (want go, node or python)", spec.Runtime)
	}
	if spec.Isolation == "" {
		spec.Isolation = model.IsolationAuto
	}
	if !spec.Isolation.Valid() {
		return spec, invalid("isolation", "unknown isolation %q (want auto or microvm)", spec.Isolation)
	}
	if spec.Network == "" {
		spec.Network = model.NetworkNone
	}
	if !spec.Network.Valid() {
		return spec, invalid("network", "unknown network policy %q (want none, host or egress)", spec.Network)
	}
	if rules, err := netrules.Check(spec.Network, spec.NetworkRules); err != nil {
		return spec, fmt.Errorf("%w: %w", ErrInvalid, err)
	} else {
		spec.NetworkRules = rules
	}
	switch {
	case spec.Code != "" && len(spec.Archive) > 0:
		return spec, invalid("code", "give either code or code_archive, not both")
	case spec.Code == "" && len(spec.Archive) == 0:
		return spec, invalid("code", "one of code or code_archive is required")
	}
	if spec.Entrypoint == "" {
		spec.Entrypoint = spec.Runtime.DefaultEntrypoint()
	}
	entry, err := cleanEntrypoint(spec.Entrypoint)
	if err != nil {
		return spec, err
	}
	spec.Entrypoint = entry
	if len(spec.Archive) > 0 {
		if err := checkArchive(spec.Archive, entry); err != nil {
			return spec, err
		}
	}
	if err := validateEnv(spec.Env); err != nil {
		return spec, err
	}
	if len(spec.Input) > 0 && !json.Valid(spec.Input) {
		return spec, invalid("input", "input must be a JSON value")
	}
	r, err := limits.Apply(spec.Resources)
	if err != nil {
		if fe := (*model.FieldError)(nil); errors.As(err, &fe) {
			return spec, fmt.Errorf("%w: %w", ErrInvalid, fe)
		}
		return spec, invalid("resources", "%v", err)
	}
	spec.Resources = r
	// The whole payload goes to the guest in one agent frame: refuse here, with a clear
	// message, what would otherwise fail after queueing.
	if n, err := spec.WireSize(); err != nil {
		return spec, invalid(largestPart(&spec), "%v", err)
	} else if n > model.MaxSpecBytes {
		return spec, invalid(largestPart(&spec), "code, code_archive, input and env take %.1f MiB encoded; the limit is %d MiB",
			float64(n)/(1<<20), model.MaxSpecBytes>>20)
	}
	return spec, nil
}

func validateEnv(env map[string]string) error {
	if fe := model.CheckEnv(env); fe != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, fe)
	}
	return nil
}

// largestPart names the field that contributes most to a spec's wire size, for a spec
// refused as too big: the one to shrink.
func largestPart(s *model.Spec) string {
	field, most := "code", len(s.Code)
	if n := base64.StdEncoding.EncodedLen(len(s.Archive)); n > most {
		field, most = "code_archive", n
	}
	if n := base64.StdEncoding.EncodedLen(len(s.Input)); n > most {
		field, most = "input", n
	}
	env := 0
	for k, v := range s.Env {
		env += len(k) + len(v) + 6 // quotes, colon, comma
	}
	if env > most {
		field = "env"
	}
	return field
}

// cleanEntrypoint accepts a path to a file below the code's root, in slash form ("main.py",
// "cmd/app/main.go"; a leading "./" is dropped) and refuses anything that cannot name one:
// ".", "..", absolute paths, empty components, a trailing slash, backslashes, NULs.
func cleanEntrypoint(e string) (string, error) {
	bad := func(why string) error {
		return invalid("entrypoint", "entrypoint %q %s; name a file relative to the code's root, like main.py or cmd/app/main.go", e, why)
	}
	if strings.ContainsAny(e, "\\\x00") {
		return "", bad("contains a backslash or a NUL byte")
	}
	if strings.HasPrefix(e, "/") {
		return "", bad("is absolute")
	}
	rel := e
	for strings.HasPrefix(rel, "./") {
		rel = rel[2:]
	}
	if strings.HasSuffix(rel, "/") {
		return "", bad("names a directory")
	}
	for _, part := range strings.Split(rel, "/") {
		switch part {
		case "", ".":
			if rel == "" || rel == "." {
				return "", bad("names the code's root directory")
			}
			return "", bad("has an empty or '.' component")
		case "..":
			return "", bad("leaves the code's directory")
		}
	}
	return rel, nil
}

// The guest refuses archives beyond these (internal/guest/archive's DefaultLimits and
// headerSlack; a test keeps them equal), so the host may stop reading there too: a scan
// of the headers is then bounded in bytes decompressed and entries read.
const (
	archiveMaxFiles      = 10_000
	archiveMaxTotalBytes = 256 << 20
	archiveMaxFileBytes  = 128 << 20
	archiveMaxDepth      = 64
	archiveMaxPathBytes  = 4095
	archiveMaxNameBytes  = 255
	archiveHeaderSlack   = 32 << 20
)

// archiveShape checks a name (an entry's path or a link's target) against the guest's
// depth and length caps.
func archiveShape(name string) string {
	if len(name) > archiveMaxPathBytes {
		return fmt.Sprintf("is %d bytes long; at most %d", len(name), archiveMaxPathBytes)
	}
	parts := strings.Split(strings.Trim(name, "/"), "/")
	if len(parts) > archiveMaxDepth {
		return fmt.Sprintf("is %d levels deep; at most %d", len(parts), archiveMaxDepth)
	}
	for _, p := range parts {
		if len(p) > archiveMaxNameBytes {
			return fmt.Sprintf("has a %d-byte name; at most %d", len(p), archiveMaxNameBytes)
		}
	}
	return ""
}

// checkArchive reads code_archive's tar headers, without extracting anything, and checks
// that it is a tar.gz the guest will extract (its limits, and the lexical rules it refuses
// an archive for) and that the entrypoint is a regular file in it or a hard link to one. A
// later entry of a name replaces an earlier one, as in extraction.
func checkArchive(archive []byte, entry string) error {
	bad := func(format string, args ...any) error {
		return invalid("code_archive", "code_archive "+format, args...)
	}
	zr, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		return bad("must be a gzip-compressed tar archive: %v", err)
	}
	budget := &budgetReader{r: zr, n: archiveMaxTotalBytes + archiveHeaderSlack}
	tr := tar.NewReader(budget)
	regular := map[string]bool{} // by cleaned name: whether its last entry is a file
	implied := map[string]bool{} // directories entries' paths imply: the guest counts them
	var entryType byte           // of the entrypoint's last entry; 0 when there is none
	var total int64
	for files := 0; ; files++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if budget.n < 0 {
				return bad("expands to more than %d MiB", archiveMaxTotalBytes>>20)
			}
			return bad("is not a readable tar.gz: %v", err)
		}
		if files >= archiveMaxFiles {
			return bad("has more than %d entries", archiveMaxFiles)
		}
		if hdr.Name == "" || strings.ContainsAny(hdr.Name, "\\\x00") || strings.HasPrefix(hdr.Name, "/") ||
			slices.Contains(strings.Split(hdr.Name, "/"), "..") {
			return bad("entry %q is not a relative path inside the archive", hdr.Name)
		}
		name := path.Clean(hdr.Name)
		if why := archiveShape(name); why != "" {
			return bad("entry %.80q… %s", name, why)
		}
		if hdr.Typeflag == tar.TypeSymlink || hdr.Typeflag == tar.TypeLink {
			if why := archiveShape(hdr.Linkname); why != "" {
				return bad("entry %q links to a target that %s", hdr.Name, why)
			}
		}
		for d := path.Dir(name); d != "." && d != "/" && !implied[d]; d = path.Dir(d) {
			implied[d] = true
		}
		if files+len(implied) >= archiveMaxFiles {
			return bad("has more than %d entries (counting the directories their paths imply)", archiveMaxFiles)
		}
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeRegA:
			if hdr.Size > archiveMaxFileBytes {
				return bad("entry %q is %d MiB; a file may have at most %d MiB", hdr.Name, hdr.Size>>20, archiveMaxFileBytes>>20)
			}
			if total += hdr.Size; total > archiveMaxTotalBytes {
				return bad("expands to more than %d MiB", archiveMaxTotalBytes>>20)
			}
			regular[name] = true
		case tar.TypeLink:
			regular[name] = regular[path.Clean(hdr.Linkname)]
		case tar.TypeDir, tar.TypeSymlink:
			regular[name] = false
		default:
			return bad("entry %q is a %s, which cannot be extracted", hdr.Name, typeName(hdr.Typeflag))
		}
		if name == entry {
			entryType = hdr.Typeflag
		}
	}
	if regular[entry] {
		return nil
	}
	why := "is not a regular file in code_archive"
	switch entryType {
	case 0:
		why = "is not in code_archive"
	case tar.TypeDir:
		why = "is a directory in code_archive; name the file to run"
	case tar.TypeSymlink:
		why = "is a symbolic link in code_archive; name the file it points to"
	}
	return invalid("entrypoint", "entrypoint %q %s", entry, why)
}

func typeName(t byte) string {
	switch t {
	case tar.TypeChar, tar.TypeBlock:
		return "device file"
	case tar.TypeFifo:
		return "fifo"
	}
	return fmt.Sprintf("entry of type %q", t)
}

// budgetReader reads at most n bytes, then fails; n goes negative once the budget is spent.
type budgetReader struct {
	r io.Reader
	n int64
}

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.n <= 0 {
		b.n = -1
		return 0, errors.New("archive too large")
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	b.n -= int64(n)
	return n, err
}
