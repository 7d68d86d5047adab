package acceptance

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vulcanhq/vulcan/internal/template"
)

// buildTemplate runs `vulcan template build --json` and returns the finished build and
// the CLI's exit code.
func buildTemplate(t *testing.T, s *server, name, dir string, extra ...string) (template.BuildInfo, string, int) {
	t.Helper()
	args := append([]string{"template", "build", name, "--context", dir, "--network", "none"}, extra...)
	start := time.Now()
	plain, code := s.vulcan(args...)
	t.Logf("template build %s: exit %d in %.1fs", name, code, time.Since(start).Seconds())
	var b template.BuildInfo
	if code == 0 || strings.Contains(plain, "failed") {
		// The same build again as JSON is cheap once cached; the progress output is what
		// the plain run checked. Read the build itself through the API.
		resp, err := http.Get(s.url + "/v1/builds")
		if err == nil {
			var l struct {
				Builds []template.BuildInfo `json:"builds"`
			}
			json.NewDecoder(resp.Body).Decode(&l)
			resp.Body.Close()
			if len(l.Builds) > 0 {
				b = l.Builds[0]
			}
		}
	}
	return b, plain, code
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTemplateBuild builds a template from a Dockerfile on a real server with real VMs:
// FROM python with numpy from the host-side apt stage, COPY from the context, RUN steps
// in the build VM (no network), ENV for the sandboxes. A sandbox from it imports numpy
// and sees what the steps made; the same file again runs no step; a changed last step
// reruns only that one; a bad Dockerfile gets its line; a failing step leaves nothing
// registered; removing the template reclaims its image once no sandbox uses it.
func TestTemplateBuild(t *testing.T) {
	s := startServer(t, "")
	dir := t.TempDir()
	dockerfile := `FROM python
# vulcan:apt python3-numpy
ENV GREETING=hello-from-template
WORKDIR /opt/app
COPY app/ ./
RUN python3 -m compileall -q . && echo built > marker && rm -f /etc/motd
RUN python3 -c "import numpy; print(numpy.__version__)" > numpy-version
`
	writeFiles(t, dir, map[string]string{
		"Dockerfile":      dockerfile,
		"app/calc.py":     "import numpy\nprint('sum', int(numpy.arange(10).sum()))\n",
		"app/lib/util.py": "def twice(x):\n    return 2 * x\n",
	})
	b, out, code := buildTemplate(t, s, "ds", dir)
	if code != 0 {
		t.Fatalf("build: %d\n%s", code, out)
	}
	if !strings.Contains(out, "[====") || !strings.Contains(out, "5/5 done") || !strings.Contains(out, "template ds ready") {
		t.Errorf("the build's output shows no per-step progress:\n%s", out)
	}
	cold := b.Seconds
	if b.Ran != 5 || b.Cached != 0 {
		t.Errorf("first build: %d steps ran, %d cached; want 5 and 0", b.Ran, b.Cached)
	}

	// A sandbox from the template.
	id, code := s.vulcan("sandbox", "create", "--template", "ds")
	if code != 0 {
		t.Fatalf("create from the template: %d %s", code, id)
	}
	id = strings.TrimSpace(id)
	// Processes start in the template's WORKDIR, as Vulcan's default user (no USER).
	got, code := s.vulcan("exec", id, "--", "pwd; id -un; python3 calc.py && cat marker numpy-version && echo $GREETING && ls lib/__pycache__ | head -1 && test ! -e /etc/motd && echo motd-gone")
	if code != 0 {
		t.Fatalf("exec in the template's sandbox: %d %s", code, got)
	}
	lines := strings.Split(strings.TrimSpace(got), "\n")
	if len(lines) != 8 || lines[0] != "/opt/app" || lines[1] != "user" {
		t.Fatalf("processes in the template's sandbox: %q (want its WORKDIR, as user)", got)
	}
	lines = lines[2:]
	if lines[0] != "sum 45" || lines[1] != "built" || !strings.HasPrefix(lines[2], "1.") ||
		lines[3] != "hello-from-template" || !strings.HasPrefix(lines[4], "util.") || lines[5] != "motd-gone" {
		t.Fatalf("the sandbox does not have what the build made: %q", got)
	}

	// The same Dockerfile again: every step from the cache, no VM.
	b2, out, code := buildTemplate(t, s, "ds", dir)
	if code != 0 {
		t.Fatalf("second build: %d\n%s", code, out)
	}
	if b2.Ran != 0 || b2.Cached != 5 || !strings.Contains(out, "5 steps from the cache, 0 run") {
		t.Errorf("second build of the same file: %d ran, %d cached:\n%s", b2.Ran, b2.Cached, out)
	}
	if strings.Contains(out, "booting a build VM") {
		t.Errorf("a fully cached build booted a VM:\n%s", out)
	}

	// Only the last step changes: the prefix comes from the cache, one step runs.
	writeFiles(t, dir, map[string]string{"Dockerfile": strings.Replace(dockerfile, "> numpy-version", "> numpy-version && echo v2 > second", 1)})
	b3, out, code := buildTemplate(t, s, "ds2", dir)
	if code != 0 {
		t.Fatalf("changed build: %d\n%s", code, out)
	}
	if b3.Ran != 1 || b3.Cached != 4 {
		t.Errorf("a changed last step: %d ran, %d cached; want 1 and 4:\n%s", b3.Ran, b3.Cached, out)
	}
	if got, code := s.vulcan("run", "--runtime", "python", "--code", "print(1)"); code != 0 {
		t.Fatalf("run: %s", got)
	}
	t.Logf("build times: cold %.1fs, all cached %.1fs, last step changed %.1fs", cold, b2.Seconds, b3.Seconds)

	// A bad Dockerfile: its line, as the CLI shows and as the API answers (400, JSON).
	bad := t.TempDir()
	writeFiles(t, bad, map[string]string{"Dockerfile": "FROM python\nRUN true\nEXPOSE 8080\n"})
	out, code = s.vulcan("template", "build", "bad", "--context", bad)
	if code == 0 || !strings.Contains(out, "line 3") || !strings.Contains(out, "EXPOSE") {
		t.Errorf("a bad Dockerfile: %d %s", code, out)
	}
	body, _ := json.Marshal(map[string]string{"name": "bad", "dockerfile": "FROM python\nFROM node\n"})
	resp, err := http.Post(s.url+"/v1/templates", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(raw), "line 2") || !strings.Contains(string(raw), `"field":"dockerfile"`) {
		t.Errorf("POST a bad Dockerfile: %d %s", resp.StatusCode, raw)
	}

	// A failing step: its output in the error, nothing registered.
	fail := t.TempDir()
	writeFiles(t, fail, map[string]string{"Dockerfile": "FROM python\nRUN echo made > /made\nRUN echo oops-from-the-step >&2; exit 3\n"})
	_, out, code = buildTemplate(t, s, "broken", fail)
	if code == 0 || !strings.Contains(out, "line 3") || !strings.Contains(out, "oops-from-the-step") || !strings.Contains(out, "exited with 3") {
		t.Errorf("a failing step: %d %s", code, out)
	}
	if ready, failed := s.metric("vulcan_template_builds_total", `outcome="ready"`), s.metric("vulcan_template_builds_total", `outcome="failed"`); ready != 3 || failed != 1 {
		t.Errorf("build metrics: %v ready, %v failed; want 3 and 1", ready, failed)
	}
	ls, _ := s.vulcan("template", "ls")
	if strings.Contains(ls, "broken") || !strings.Contains(ls, "ds2") || !strings.Contains(ls, "python") {
		t.Errorf("template ls after a failed build: %s", ls)
	}

	// Removing a template a sandbox runs on keeps the image until the sandbox is gone.
	images := func() int {
		m, _ := filepath.Glob(filepath.Join(s.dataDir, "templates", "images", "*.ext4"))
		return len(m)
	}
	before := images()
	if out, code := s.vulcan("template", "rm", "ds"); code != 0 {
		t.Fatalf("rm: %d %s", code, out)
	}
	if images() != before {
		t.Errorf("the image of a template a sandbox runs on went at rm: %d → %d", before, images())
	}
	if out, code := s.vulcan("sandbox", "create", "--template", "ds"); code == 0 || !strings.Contains(out, "unknown template") {
		t.Errorf("create from a removed template: %d %s", code, out)
	}
	if out, code := s.vulcan("exec", id, "--", "python3 /opt/app/calc.py"); code != 0 || !strings.Contains(out, "sum 45") {
		t.Errorf("the running sandbox lost its image: %d %s", code, out)
	}
	s.vulcan("sandbox", "kill", id)
	if out, code := s.vulcan("template", "rm", "ds2"); code != 0 {
		t.Fatalf("rm ds2: %d %s", code, out)
	}
	if n := images(); n != before-2 {
		t.Errorf("after both templates went and their sandbox ended: %d images, want %d", n, before-2)
	}
	if out, code := s.vulcan("template", "rm", "python"); code == 0 || !strings.Contains(out, "built-in") {
		t.Errorf("rm a built-in: %d %s", code, out)
	}
}

// TestTemplateStartCmdAndCrash: a template's CMD runs when its sandbox starts and the
// sandbox is handed out only once the readiness check passes (the first request to the
// server in it succeeds); a server killed -9 in the middle of a build leaves, after its
// restart, no template, no build VM and no half-made files.
func TestTemplateStartCmdAndCrash(t *testing.T) {
	data, err := os.MkdirTemp("", "vacc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(data) })
	s := startServer(t, data)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"Dockerfile": `FROM python
RUN mkdir -p /srv && echo served-by-the-start-command > /srv/index.html
CMD ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1", "--directory", "/srv"]
# vulcan:ready python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/')"
`})
	if _, out, code := buildTemplate(t, s, "web", dir); code != 0 {
		t.Fatalf("build: %d %s", code, out)
	}
	id, code := s.vulcan("sandbox", "create", "--template", "web")
	if code != 0 {
		t.Fatalf("create: %d %s", code, id)
	}
	id = strings.TrimSpace(id)
	out, code := s.vulcan("exec", id, "--", `python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/index.html').read().decode().strip())"`)
	if code != 0 || strings.TrimSpace(out) != "served-by-the-start-command" {
		t.Fatalf("the start command's server, right after create: %d %s", code, out)
	}
	// Paused, then its template rebuilt: it resumes on the image it paused on (its
	// start command's server still answering), while a new sandbox gets the new one.
	if out, code := s.vulcan("sandbox", "pause", id); code != 0 {
		t.Fatalf("pause: %d %s", code, out)
	}
	writeFiles(t, dir, map[string]string{"Dockerfile": strings.Replace(readFile(t, filepath.Join(dir, "Dockerfile")), "served-by-the-start-command", "rebuilt", 1)})
	if b, out, code := buildTemplate(t, s, "web", dir); code != 0 || b.Ran != 1 {
		t.Fatalf("rebuild: %d, %d steps ran; %s", code, b.Ran, out)
	}
	if out, code := s.vulcan("sandbox", "resume", id); code != 0 {
		t.Fatalf("resume after the rebuild: %d %s", code, out)
	}
	fetch := `python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/index.html').read().decode().strip())"`
	if out, code := s.vulcan("exec", id, "--", fetch+"; cat /srv/index.html"); code != 0 || out != "served-by-the-start-command\nserved-by-the-start-command\n" {
		t.Errorf("the resumed sandbox: %d %q", code, out)
	}
	id2, code := s.vulcan("sandbox", "create", "--template", "web")
	if code != 0 {
		t.Fatalf("create from the rebuilt template: %d %s", code, id2)
	}
	id2 = strings.TrimSpace(id2)
	if out, code := s.vulcan("exec", id2, "--", fetch); code != 0 || strings.TrimSpace(out) != "rebuilt" {
		t.Errorf("a new sandbox from the rebuilt template: %d %q", code, out)
	}
	s.vulcan("sandbox", "kill", id)
	s.vulcan("sandbox", "kill", id2)

	// A build in a long step, then kill -9.
	body, _ := json.Marshal(map[string]string{"name": "slow", "dockerfile": "FROM python\nRUN echo started; sleep 300\n", "network": "none"})
	resp, err := http.Post(s.url+"/v1/templates", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var b template.BuildInfo
	json.NewDecoder(resp.Body).Decode(&b)
	resp.Body.Close()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := http.Get(s.url + "/v1/builds/" + b.ID)
		if err != nil {
			t.Fatal(err)
		}
		var cur template.BuildInfo
		json.NewDecoder(resp.Body).Decode(&cur)
		resp.Body.Close()
		if len(cur.Steps) > 1 && cur.Steps[1].State == template.StepRunning {
			break
		}
		if time.Now().After(deadline) || cur.State == template.BuildFailed {
			t.Fatalf("the build never reached its step: %+v", cur)
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.crash()
	s = startServer(t, data)
	if ls, _ := s.vulcan("template", "ls"); strings.Contains(ls, "slow") || !strings.Contains(ls, "web") {
		t.Errorf("after the crash: %s", ls)
	}
	work, _ := os.ReadDir(filepath.Join(data, "templates", "work"))
	if len(work) != 0 {
		t.Errorf("the crashed build left work files: %v", work)
	}
	deadline = time.Now().Add(30 * time.Second)
	for left := s.leftovers(); len(left) != 0; left = s.leftovers() {
		if time.Now().After(deadline) {
			t.Fatalf("the crashed build's VM is left: %v", left)
		}
		time.Sleep(200 * time.Millisecond)
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), data) && strings.Contains(string(cmdline), "qemu") {
			t.Errorf("a VMM of the crashed server still runs: %q", cmdline)
		}
	}
	// The same build again runs to its failure cleanly (a shorter step) and the cache
	// has nothing of the interrupted one.
	if out, code := s.vulcan("sandbox", "ls"); code != 0 || strings.Contains(out, "running") {
		t.Errorf("sandboxes after the restart: %d %s", code, out)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
