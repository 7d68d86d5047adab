// Package template builds sandbox templates from Dockerfiles, without Docker: the file is
// parsed into steps (a documented subset of the Dockerfile language), RUN steps execute in
// a build microVM booted from the parent template, each step's changes are cached by the
// hash of everything it depends on, and the finished file system becomes an ext4 image the
// template's sandboxes boot read-only.
package template

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"
)

// MaxDockerfileBytes caps a Dockerfile; MaxSteps its instructions.
const (
	MaxDockerfileBytes = 256 << 10
	MaxSteps           = 200
	maxLineBytes       = 64 << 10
)

// Step kinds.
const (
	StepRun     = "RUN"
	StepCopy    = "COPY"
	StepEnv     = "ENV"
	StepWorkdir = "WORKDIR"
	StepUser    = "USER"
	StepArg     = "ARG"
)

// Dockerfile is a parsed Dockerfile.
type Dockerfile struct {
	From     string   // the parent template
	FromLine int      // its line
	Apt      []string // `# vulcan:apt` packages, sorted, unique
	AptLine  int
	Steps    []Step
	// StartCmd (CMD) runs in the background when a sandbox starts; ReadyCmd
	// (`# vulcan:ready`) is run until it exits 0 before the sandbox is handed out.
	StartCmd  []string
	ReadyCmd  string
	ReadyLine int
}

// Step is one instruction after FROM, with its arguments already expanded where Docker
// expands them (COPY, ENV, WORKDIR, USER); RUN's text is left to the shell.
type Step struct {
	Line int    `json:"line"`
	Kind string `json:"kind"`
	Text string `json:"text"` // the instruction as written (continuations joined)
	// RUN: Shell is run with /bin/sh -c, or Argv (exec form).
	Shell string   `json:"shell,omitempty"`
	Argv  []string `json:"argv,omitempty"`
	// COPY: Sources (context-relative, cleaned) → Dest; Chown "root" or "user"; Chmod
	// (octal, 0 keeps the files' modes).
	Sources []string `json:"sources,omitempty"`
	Dest    string   `json:"dest,omitempty"`
	Chown   string   `json:"chown,omitempty"`
	Chmod   uint32   `json:"chmod,omitempty"`
	// ENV and ARG: Vars in order.
	Vars [][2]string `json:"vars,omitempty"`
	// WORKDIR: Dir (absolute); USER: User.
	Dir  string `json:"dir,omitempty"`
	User string `json:"user,omitempty"`
}

// ChangesFiles reports whether the step writes the file system (else it only changes the
// state later steps run with).
func (s Step) ChangesFiles() bool {
	return s.Kind == StepRun || s.Kind == StepCopy || s.Kind == StepWorkdir
}

// LineError is a Dockerfile error at a line.
type LineError struct {
	Line int
	Msg  string
}

func (e *LineError) Error() string {
	if e.Line == 0 {
		return "Dockerfile: " + e.Msg
	}
	return fmt.Sprintf("Dockerfile line %d: %s", e.Line, e.Msg)
}

func lineErr(line int, format string, args ...any) error {
	return &LineError{Line: line, Msg: fmt.Sprintf(format, args...)}
}

var (
	varName     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	aptPackage  = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]{0,127}$`)
	instruction = regexp.MustCompile(`^([A-Za-z]+)(\s+|$)(.*)$`)
)

// unsupported says why an instruction outside the subset is refused.
var unsupported = map[string]string{
	"ENTRYPOINT":  "use CMD for the sandbox's start command",
	"EXPOSE":      "every port of a sandbox is reachable through Vulcan; nothing to declare",
	"VOLUME":      "a template is one read-only image; sandboxes write to their own layer",
	"HEALTHCHECK": "use `# vulcan:ready COMMAND` for the start command's readiness check",
	"ONBUILD":     "not supported",
	"STOPSIGNAL":  "sandboxes are stopped by their VM ending",
	"SHELL":       "RUN uses /bin/sh -c (write `RUN bash -c '...'` for bash)",
	"LABEL":       "not supported: put metadata in the sandbox's metadata",
	"MAINTAINER":  "not supported",
}

// ParseDockerfile parses src. buildArgs give ARGs values (an ARG's own default otherwise).
func ParseDockerfile(src []byte, buildArgs map[string]string) (*Dockerfile, error) {
	if len(src) > MaxDockerfileBytes {
		return nil, lineErr(0, "%d bytes, at most %d", len(src), MaxDockerfileBytes)
	}
	lines, err := logicalLines(src)
	if err != nil {
		return nil, err
	}
	d := &Dockerfile{}
	args := map[string]string{}    // ARG values in scope
	env := map[string]string{}     // ENV values, for expansion
	preFrom := map[string]string{} // ARGs before FROM may be used in FROM only
	apt := map[string]bool{}
	for _, l := range lines {
		if l.directive != "" {
			if err := d.directive(l, apt); err != nil {
				return nil, err
			}
			continue
		}
		m := instruction.FindStringSubmatch(l.text)
		if m == nil {
			return nil, lineErr(l.no, "cannot read %.40q as an instruction", l.text)
		}
		kw, rest := strings.ToUpper(m[1]), strings.TrimSpace(m[3])
		if d.From == "" && kw != "FROM" && kw != "ARG" {
			return nil, lineErr(l.no, "%s before FROM: a Dockerfile starts with FROM (ARGs may come before it)", kw)
		}
		lookup := func(name string) (string, bool) {
			if v, ok := env[name]; ok {
				return v, true
			}
			v, ok := args[name]
			return v, ok
		}
		expand := func(s string) (string, error) { return expandVars(s, lookup) }
		switch kw {
		case "FROM":
			if d.From != "" {
				return nil, lineErr(l.no, "a second FROM: multi-stage builds are not supported")
			}
			f := strings.Fields(rest)
			if len(f) == 0 {
				return nil, lineErr(l.no, "FROM needs a template name")
			}
			if len(f) > 1 {
				return nil, lineErr(l.no, "FROM takes one template name (no AS, no --platform)")
			}
			from, err := expandVars(f[0], func(n string) (string, bool) { v, ok := preFrom[n]; return v, ok })
			if err != nil {
				return nil, lineErr(l.no, "%v", err)
			}
			if strings.ContainsAny(from, ":/@") {
				return nil, lineErr(l.no, "FROM %q: name a Vulcan template (base, python, node, go or one built here), not a registry image", from)
			}
			if !ValidName(from) && !isBuiltin(from) {
				return nil, lineErr(l.no, "FROM %q is not a template name", from)
			}
			d.From, d.FromLine = from, l.no
			args = map[string]string{} // Docker: ARGs before FROM leave scope at FROM
		case "ARG":
			name, def, hasDef := strings.Cut(rest, "=")
			name = strings.TrimSpace(name)
			if !varName.MatchString(name) || strings.ContainsAny(rest, " \t") && !hasDef {
				return nil, lineErr(l.no, "ARG takes one NAME or NAME=default")
			}
			v, ok := buildArgs[name]
			if !ok {
				if def, err = expand(unquote(strings.TrimSpace(def))); err != nil {
					return nil, lineErr(l.no, "%v", err)
				}
				v = def
			}
			if d.From == "" {
				preFrom[name] = v
				continue
			}
			args[name] = v
			d.Steps = append(d.Steps, Step{Line: l.no, Kind: StepArg, Text: l.text, Vars: [][2]string{{name, v}}})
		case "ENV":
			vars, err := parseEnv(rest, expand)
			if err != nil {
				return nil, lineErr(l.no, "%v", err)
			}
			for _, kv := range vars {
				env[kv[0]] = kv[1]
			}
			d.Steps = append(d.Steps, Step{Line: l.no, Kind: StepEnv, Text: l.text, Vars: vars})
		case "RUN":
			if rest == "" {
				return nil, lineErr(l.no, "RUN needs a command")
			}
			if strings.HasPrefix(rest, "--") {
				return nil, lineErr(l.no, "RUN flags (--mount, --network, ...) are not supported")
			}
			if strings.Contains(rest, "<<") && heredoc.MatchString(rest) {
				return nil, lineErr(l.no, "heredocs are not supported: put the script in the context and COPY it")
			}
			s := Step{Line: l.no, Kind: StepRun, Text: l.text}
			if argv, ok, err := jsonForm(rest); err != nil {
				return nil, lineErr(l.no, "%v", err)
			} else if ok {
				s.Argv = argv
			} else {
				s.Shell = rest
			}
			d.Steps = append(d.Steps, s)
		case "COPY", "ADD":
			s, err := parseCopy(kw, rest, expand)
			if err != nil {
				return nil, lineErr(l.no, "%v", err)
			}
			s.Line, s.Text = l.no, l.text
			d.Steps = append(d.Steps, s)
		case "WORKDIR":
			dir, err := expand(unquote(rest))
			if err != nil {
				return nil, lineErr(l.no, "%v", err)
			}
			if dir == "" {
				return nil, lineErr(l.no, "WORKDIR needs a directory")
			}
			if !path.IsAbs(dir) {
				dir = path.Join(d.workdir(), dir)
			}
			d.Steps = append(d.Steps, Step{Line: l.no, Kind: StepWorkdir, Text: l.text, Dir: path.Clean(dir)})
		case "USER":
			u, err := expand(rest)
			if err != nil {
				return nil, lineErr(l.no, "%v", err)
			}
			name, _, _ := strings.Cut(u, ":")
			switch name {
			case "root", "0":
				name = "root"
			case "user", "1000":
				name = "user"
			default:
				return nil, lineErr(l.no, "USER %q: Vulcan images run as root or user (uid 1000)", u)
			}
			d.Steps = append(d.Steps, Step{Line: l.no, Kind: StepUser, Text: l.text, User: name})
		case "CMD":
			if argv, ok, err := jsonForm(rest); err != nil {
				return nil, lineErr(l.no, "%v", err)
			} else if ok {
				d.StartCmd = argv
			} else if rest != "" {
				d.StartCmd = []string{"/bin/sh", "-c", rest}
			}
			if len(d.StartCmd) == 0 {
				return nil, lineErr(l.no, "CMD needs a command")
			}
		default:
			if why, ok := unsupported[kw]; ok {
				return nil, lineErr(l.no, "%s is not supported: %s", kw, why)
			}
			return nil, lineErr(l.no, "unknown instruction %s", kw)
		}
		if len(d.Steps) > MaxSteps {
			return nil, lineErr(l.no, "more than %d instructions", MaxSteps)
		}
	}
	if d.From == "" {
		return nil, lineErr(0, "no FROM")
	}
	if d.ReadyCmd != "" && len(d.StartCmd) == 0 {
		return nil, lineErr(d.ReadyLine, "vulcan:ready checks a start command: add a CMD")
	}
	for p := range apt {
		d.Apt = append(d.Apt, p)
	}
	sort.Strings(d.Apt)
	return d, nil
}

var heredoc = regexp.MustCompile(`<<-?\s*["']?[A-Za-z_]+["']?\s*$`)

// workdir is the directory the steps so far leave later ones in.
func (d *Dockerfile) workdir() string {
	dir := "/"
	for _, s := range d.Steps {
		if s.Kind == StepWorkdir {
			dir = s.Dir
		}
	}
	return dir
}

func (d *Dockerfile) directive(l line, apt map[string]bool) error {
	switch l.directive {
	case "apt":
		if d.From == "" {
			return lineErr(l.no, "vulcan:apt goes after FROM")
		}
		f := strings.Fields(strings.ReplaceAll(l.text, ",", " "))
		if len(f) == 0 {
			return lineErr(l.no, "vulcan:apt needs package names")
		}
		for _, p := range f {
			if !aptPackage.MatchString(p) {
				return lineErr(l.no, "vulcan:apt: %.64q is not a Debian package name", p)
			}
			apt[p] = true
		}
		if len(apt) > 200 {
			return lineErr(l.no, "vulcan:apt: more than 200 packages")
		}
		if d.AptLine == 0 {
			d.AptLine = l.no
		}
	case "ready":
		if strings.TrimSpace(l.text) == "" {
			return lineErr(l.no, "vulcan:ready needs a command")
		}
		d.ReadyCmd, d.ReadyLine = strings.TrimSpace(l.text), l.no
	default:
		return lineErr(l.no, "unknown directive vulcan:%s (want vulcan:apt or vulcan:ready)", l.directive)
	}
	return nil
}

type line struct {
	no        int
	text      string
	directive string // "apt", "ready": a `# vulcan:NAME ...` comment; text is the rest
}

// logicalLines joins continuations (a trailing backslash), drops comments and blank
// lines, and keeps `# vulcan:` directives.
func logicalLines(src []byte) ([]line, error) {
	var out []line
	sc := bufio.NewScanner(bytes.NewReader(src))
	sc.Buffer(make([]byte, 0, 4096), maxLineBytes)
	no, start := 0, 0
	var cur strings.Builder
	for sc.Scan() {
		no++
		t := strings.TrimRight(sc.Text(), " \t\r")
		trim := strings.TrimSpace(t)
		if strings.HasPrefix(trim, "#") {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(trim[1:]), "vulcan:"); ok && cur.Len() == 0 {
				name, arg, _ := strings.Cut(rest, " ")
				out = append(out, line{no: no, text: strings.TrimSpace(arg), directive: strings.TrimSpace(name)})
			}
			continue // comments inside a continuation are dropped too, as Docker does
		}
		if cur.Len() == 0 {
			if trim == "" {
				continue
			}
			start = no
		}
		if strings.HasSuffix(t, "\\") {
			cur.WriteString(strings.TrimSuffix(t, "\\"))
			cur.WriteByte(' ')
			continue
		}
		cur.WriteString(t)
		out = append(out, line{no: start, text: strings.TrimSpace(cur.String())})
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		return nil, lineErr(no+1, "%v", err)
	}
	if cur.Len() > 0 {
		return nil, lineErr(start, "the file ends inside a continued line")
	}
	return out, nil
}

// jsonForm reads the exec form `["a", "b"]`.
func jsonForm(s string) ([]string, bool, error) {
	if !strings.HasPrefix(s, "[") {
		return nil, false, nil
	}
	var argv []string
	if err := json.Unmarshal([]byte(s), &argv); err != nil {
		return nil, false, fmt.Errorf("the exec form must be a JSON array of strings: %v", err)
	}
	if len(argv) == 0 || argv[0] == "" {
		return nil, false, fmt.Errorf("the exec form needs a program")
	}
	return argv, true, nil
}

func parseEnv(rest string, expand func(string) (string, error)) ([][2]string, error) {
	words, err := shellWords(rest)
	if err != nil {
		return nil, err
	}
	if len(words) == 0 {
		return nil, fmt.Errorf("ENV needs NAME=value")
	}
	var out [][2]string
	if !strings.Contains(words[0], "=") {
		// The legacy form: ENV NAME the rest of the line.
		name := words[0]
		if !varName.MatchString(name) {
			return nil, fmt.Errorf("ENV %q: not a variable name", name)
		}
		v, err := expand(unquote(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(rest), name))))
		if err != nil {
			return nil, err
		}
		return [][2]string{{name, v}}, nil
	}
	for _, w := range words {
		name, v, ok := strings.Cut(w, "=")
		if !ok || !varName.MatchString(name) {
			return nil, fmt.Errorf("ENV %.64q: want NAME=value", w)
		}
		if v, err = expand(v); err != nil {
			return nil, err
		}
		out = append(out, [2]string{name, v})
	}
	return out, nil
}

func parseCopy(kw, rest string, expand func(string) (string, error)) (Step, error) {
	s := Step{Kind: StepCopy}
	rest = strings.TrimSpace(rest)
	for strings.HasPrefix(rest, "--") {
		word, after, _ := strings.Cut(rest, " ")
		rest = strings.TrimSpace(after)
		flag, val, _ := strings.Cut(word, "=")
		switch flag {
		case "--chown":
			u, _, _ := strings.Cut(val, ":")
			switch u {
			case "root", "0":
				s.Chown = "root"
			case "user", "1000":
				s.Chown = "user"
			default:
				return s, fmt.Errorf("%s --chown=%q: Vulcan images have root and user (uid 1000)", kw, val)
			}
		case "--chmod":
			var m uint32
			if _, err := fmt.Sscanf(val, "%o", &m); err != nil || m > 0o7777 || m == 0 {
				return s, fmt.Errorf("%s --chmod=%q: want an octal mode", kw, val)
			}
			s.Chmod = m
		case "--from":
			return s, fmt.Errorf("%s --from: multi-stage builds are not supported", kw)
		default:
			return s, fmt.Errorf("%s %s is not supported (only --chown and --chmod)", kw, flag)
		}
	}
	words, ok, err := jsonForm(rest)
	if err != nil {
		return s, err
	}
	if !ok {
		if words, err = shellWords(rest); err != nil {
			return s, err
		}
	}
	if len(words) < 2 {
		return s, fmt.Errorf("%s needs a source and a destination", kw)
	}
	for i, w := range words {
		if words[i], err = expand(w); err != nil {
			return s, err
		}
	}
	for _, src := range words[:len(words)-1] {
		if strings.Contains(src, "://") {
			return s, fmt.Errorf("%s %q: URLs are not fetched (a build reads its context only)", kw, src)
		}
		if strings.HasPrefix(path.Clean(src), "..") {
			return s, fmt.Errorf("%s %q is outside the build context", kw, src)
		}
		c := path.Clean("/" + src)[1:]
		if c == "" {
			c = "."
		}
		s.Sources = append(s.Sources, c)
	}
	s.Dest = words[len(words)-1]
	return s, nil
}

// shellWords splits like a shell without expansion: quotes group, backslash escapes.
func shellWords(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	in, quote, esc := false, byte(0), false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case esc:
			cur.WriteByte(c)
			esc = false
		case c == '\\' && quote != '\'':
			esc, in = true, true
		case quote != 0:
			if c == quote {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
		case c == '"' || c == '\'':
			quote, in = c, true
		case c == ' ' || c == '\t':
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote", quote)
	}
	if in {
		out = append(out, cur.String())
	}
	return out, nil
}

func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' || s[0] == '\'') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}
	return s
}

// expandVars expands $NAME, ${NAME}, ${NAME:-default} and ${NAME:+alt}; an unset name is
// empty, as in Docker. `\$` is a literal dollar.
func expandVars(s string, lookup func(string) (string, bool)) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) && s[i+1] == '$' {
			b.WriteByte('$')
			i++
			continue
		}
		if c != '$' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		if s[i+1] == '{' {
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return "", fmt.Errorf("unterminated ${ in %.64q", s)
			}
			expr := s[i+2 : i+end]
			name, mod, word := expr, "", ""
			if k := strings.Index(expr, ":"); k >= 0 && k+1 < len(expr) && (expr[k+1] == '-' || expr[k+1] == '+') {
				name, mod, word = expr[:k], expr[k:k+2], expr[k+2:]
			}
			if !varName.MatchString(name) {
				return "", fmt.Errorf("bad variable ${%.64s}", expr)
			}
			v, ok := lookup(name)
			switch {
			case mod == ":-" && (!ok || v == ""):
				v = word
			case mod == ":+":
				if ok && v != "" {
					v = word
				} else {
					v = ""
				}
			}
			b.WriteString(v)
			i += end
			continue
		}
		j := i + 1
		for j < len(s) && (s[j] == '_' || s[j] >= 'A' && s[j] <= 'Z' || s[j] >= 'a' && s[j] <= 'z' || j > i+1 && s[j] >= '0' && s[j] <= '9') {
			j++
		}
		if j == i+1 {
			b.WriteByte(c)
			continue
		}
		v, _ := lookup(s[i+1 : j])
		b.WriteString(v)
		i = j - 1
	}
	return b.String(), nil
}

// ValidName reports whether name may name a user template: lowercase letters, digits,
// '-' and '_', starting with a letter or digit, at most 63 bytes, not a built-in's name.
func ValidName(name string) bool {
	return templateName.MatchString(name) && !isBuiltin(name)
}

var templateName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
