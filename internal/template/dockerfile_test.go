package template

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseDockerfile(t *testing.T) {
	src := `# a comment
ARG BASE=python
FROM ${BASE}
# vulcan:apt python3-numpy, python3-pandas
# vulcan:apt python3-numpy
ARG VERSION=1.2
ENV APP_HOME=/srv/app GREETING="hello world"
ENV LEGACY the rest of the line
WORKDIR $APP_HOME
COPY --chown=user:user src/ ./src/
ADD ["a b.txt", "c.txt", "/dst/"]
RUN echo $VERSION && \
    python3 -m compileall .
RUN ["python3", "-c", "print(1)"]
USER user
WORKDIR sub
CMD python3 -m http.server 8000
# vulcan:ready curl -sf localhost:8000
`
	d, err := ParseDockerfile([]byte(src), map[string]string{"VERSION": "9"})
	if err != nil {
		t.Fatal(err)
	}
	if d.From != "python" || d.FromLine != 3 {
		t.Fatalf("FROM %q line %d", d.From, d.FromLine)
	}
	if !reflect.DeepEqual(d.Apt, []string{"python3-numpy", "python3-pandas"}) {
		t.Fatalf("apt %v", d.Apt)
	}
	kinds := []string{}
	for _, s := range d.Steps {
		kinds = append(kinds, s.Kind)
	}
	want := []string{"ARG", "ENV", "ENV", "WORKDIR", "COPY", "COPY", "RUN", "RUN", "USER", "WORKDIR"}
	if !reflect.DeepEqual(kinds, want) {
		t.Fatalf("steps %v, want %v", kinds, want)
	}
	st := d.Steps
	if st[0].Vars[0] != [2]string{"VERSION", "9"} {
		t.Errorf("ARG: %v (the build arg wins)", st[0].Vars)
	}
	if !reflect.DeepEqual(st[1].Vars, [][2]string{{"APP_HOME", "/srv/app"}, {"GREETING", "hello world"}}) {
		t.Errorf("ENV: %v", st[1].Vars)
	}
	if st[2].Vars[0] != [2]string{"LEGACY", "the rest of the line"} {
		t.Errorf("legacy ENV: %v", st[2].Vars)
	}
	if st[3].Dir != "/srv/app" || st[9].Dir != "/srv/app/sub" {
		t.Errorf("WORKDIR: %q, %q", st[3].Dir, st[9].Dir)
	}
	if st[4].Chown != "user" || !reflect.DeepEqual(st[4].Sources, []string{"src"}) || st[4].Dest != "./src/" {
		t.Errorf("COPY: %+v", st[4])
	}
	if !reflect.DeepEqual(st[5].Sources, []string{"a b.txt", "c.txt"}) || st[5].Dest != "/dst/" {
		t.Errorf("ADD exec form: %+v", st[5])
	}
	if st[6].Line != 12 || !strings.Contains(st[6].Shell, "echo $VERSION &&") || !strings.Contains(st[6].Shell, "compileall") {
		t.Errorf("RUN continuation: line %d %q", st[6].Line, st[6].Shell)
	}
	if !reflect.DeepEqual(st[7].Argv, []string{"python3", "-c", "print(1)"}) {
		t.Errorf("RUN exec form: %v", st[7].Argv)
	}
	if !reflect.DeepEqual(d.StartCmd, []string{"/bin/sh", "-c", "python3 -m http.server 8000"}) || d.ReadyCmd != "curl -sf localhost:8000" {
		t.Errorf("CMD %v ready %q", d.StartCmd, d.ReadyCmd)
	}
}

// Everything outside the subset is refused with its line and why.
func TestParseDockerfileErrors(t *testing.T) {
	cases := []struct {
		src  string
		line int
		want string
	}{
		{"RUN true", 1, "before FROM"},
		{"FROM python\nEXPOSE 80", 2, "EXPOSE is not supported"},
		{"FROM python\n\nENTRYPOINT [\"x\"]", 3, "use CMD"},
		{"FROM ubuntu:22.04", 1, "not a registry image"},
		{"FROM python AS build", 1, "no AS"},
		{"FROM python\nFROM node", 2, "multi-stage"},
		{"FROM python\nCOPY https://example.com/x /x", 2, "URLs are not fetched"},
		{"FROM python\nCOPY ../secret /x", 2, "outside the build context"},
		{"FROM python\nCOPY --from=build /a /b", 2, "multi-stage"},
		{"FROM python\nUSER postgres", 2, "root or user"},
		{"FROM python\nRUN --mount=type=cache,target=/x true", 2, "not supported"},
		{"FROM python\nRUN <<EOF\necho\nEOF", 2, "heredocs"},
		{"FROM python\n# vulcan:apt Bad_Name", 2, "not a Debian package"},
		{"FROM python\n# vulcan:frobnicate", 2, "unknown directive"},
		{"FROM python\nRUN echo \\", 2, "ends inside"},
		{"FROM python\nFROBNICATE x", 2, "unknown instruction"},
		{"FROM python\n# vulcan:ready true", 2, "add a CMD"},
		{"FROM python\nENV =x", 2, "NAME=value"},
		{"FROM python\nCMD [\"unterminated\"", 2, "JSON array"},
		{"# only a comment", 0, "no FROM"},
	}
	for _, c := range cases {
		_, err := ParseDockerfile([]byte(c.src), nil)
		var le *LineError
		if !errors.As(err, &le) {
			t.Errorf("%q: %v, want a line error", c.src, err)
			continue
		}
		if le.Line != c.line || !strings.Contains(le.Msg, c.want) {
			t.Errorf("%q: line %d %q, want line %d containing %q", c.src, le.Line, le.Msg, c.line, c.want)
		}
	}
}

func TestExpandVars(t *testing.T) {
	env := map[string]string{"A": "1", "EMPTY": "", "LONG_NAME2": "x"}
	look := func(n string) (string, bool) { v, ok := env[n]; return v, ok }
	for in, want := range map[string]string{
		"$A":            "1",
		"${A}b":         "1b",
		"$LONG_NAME2/y": "x/y",
		"${NONE:-def}":  "def",
		"${EMPTY:-def}": "def",
		"${A:+alt}":     "alt",
		"${NONE:+alt}":  "",
		`\$A`:           "$A",
		"a$":            "a$",
		"$1":            "$1",
	} {
		got, err := expandVars(in, look)
		if err != nil || got != want {
			t.Errorf("expand %q = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := expandVars("${A", look); err == nil {
		t.Error("an unterminated ${ expanded")
	}
}
