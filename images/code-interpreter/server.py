"""Vulcan's code interpreter service, in the code-interpreter template on port 49999.

It speaks what @e2b/code-interpreter expects: POST /execute answers NDJSON events
(stdout, stderr, result with a MIME bundle, error, number_of_executions,
end_of_execution, keepalive); /contexts creates, lists, restarts and removes contexts.
Each context is a worker process (worker.py for Python, worker.js for JavaScript) that
keeps its variables between cells. A cell whose client goes away (the SDK's timeout
aborts its request) is interrupted with SIGINT: the worker lives on, with its state.

Standard library only; runs as the sandbox's user.
"""

import http.server
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

PORT = int(os.environ.get("VULCAN_INTERPRETER_PORT", "49999"))
HERE = os.path.dirname(os.path.abspath(__file__))
MAX_BODY = 16 << 20
KEEPALIVE_S = 1.0
INTERRUPT_GRACE_S = 5.0
LANGUAGES = {"python": "python", "py": "python", "javascript": "javascript", "js": "javascript"}


class Worker:
    """One context: a worker process and the cell running in it, if any."""

    def __init__(self, language, cwd):
        self.id = uuid.uuid4().hex[:16]
        self.language = language
        self.cwd = cwd or os.path.expanduser("~")
        self.lock = threading.Lock()  # one cell at a time
        self.sink = None  # the running cell's queue
        self.count = 0
        self.proc = None
        self.start()

    def start(self):
        r, w = os.pipe()
        if self.language == "python":
            argv = [sys.executable, "-u", os.path.join(HERE, "worker.py")]
        else:
            argv = ["node", os.path.join(HERE, "worker.js")]
        env = dict(os.environ, MPLBACKEND="Agg", VULCAN_EVENTS_FD=str(w), PYTHONUNBUFFERED="1")
        if os.path.isdir("/etc/matplotlib-cache") and "MPLCONFIGDIR" not in os.environ:
            env["MPLCONFIGDIR"] = "/etc/matplotlib-cache"  # the image's font cache, built at image build
        cwd = self.cwd if os.path.isdir(self.cwd) else "/"
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
            pass_fds=(w,), start_new_session=True)
        os.close(w)
        proc = self.proc
        threading.Thread(target=self._events, args=(proc, os.fdopen(r, "rb")), daemon=True).start()
        threading.Thread(target=self._stream, args=(proc, proc.stdout, "stdout"), daemon=True).start()
        threading.Thread(target=self._stream, args=(proc, proc.stderr, "stderr"), daemon=True).start()

    def _put(self, proc, ev):
        q = self.sink
        if q is not None and proc is self.proc:
            q.put(ev)

    def _events(self, proc, f):
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            self._put(proc, ev)
        self._put(proc, {"type": "_exited"})

    def _stream(self, proc, f, name):
        # What child processes of the cell write to the real stdout and stderr.
        while True:
            b = f.read1(65536)
            if not b:
                return
            self._put(proc, {"type": name, "text": b.decode("utf-8", "replace")})

    def interrupt(self):
        try:
            os.kill(self.proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def restart(self):
        with self.lock:
            self.stop()
            self.count = 0
            self.start()

    def describe(self):
        return {"id": self.id, "language": self.language, "cwd": self.cwd}


contexts = {}
defaults = {}
registry_lock = threading.Lock()


def default_context(language):
    with registry_lock:
        w = defaults.get(language)
        if w is None or w.id not in contexts:
            w = Worker(language, None)
            contexts[w.id] = w
            defaults[language] = w
        return w


def client_gone(conn):
    """Whether the client closed its side: readable with nothing to read."""
    try:
        r, _, _ = select.select([conn], [], [], 0)
        if not r:
            return False
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class Handler(http.server.BaseHTTPRequestHandler):
    # Keep-alive: the host pools its connections (over the agent channel), so a cell does
    # not pay for a new connection and a new thread. /execute streams chunked.
    protocol_version = "HTTP/1.1"
    server_version = "vulcan-interpreter"

    def setup(self):
        super().setup()
        # Headers and body leave in separate writes: without this, Nagle's algorithm holds
        # the second until the client's delayed ACK (≈40 ms a request).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def fail(self, status, msg):
        self.reply(status, {"error": msg})

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise ValueError("body larger than %d bytes" % MAX_BODY)
        raw = self.rfile.read(n) if n else b"{}"
        v = json.loads(raw or b"{}")
        if not isinstance(v, dict):
            raise ValueError("the body must be a JSON object")
        return v

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/health":
            return self.reply(200, {"status": "ok"})
        if path == "/contexts":
            with registry_lock:
                return self.reply(200, [w.describe() for w in contexts.values()])
        self.fail(404, "no route GET " + path)

    def do_DELETE(self):
        path = self.path.split("?")[0]
        if path.startswith("/contexts/"):
            cid = path[len("/contexts/"):]
            with registry_lock:
                w = contexts.pop(cid, None)
            if w is None:
                return self.fail(404, "no context " + cid)
            w.stop()
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.fail(404, "no route DELETE " + path)

    def do_POST(self):
        path = self.path.split("?")[0]
        try:
            req = self.body()
        except ValueError as e:
            return self.fail(400, str(e))
        if path == "/contexts":
            lang = LANGUAGES.get((req.get("language") or "python").lower())
            if lang is None:
                return self.fail(400, "language %r: want python or javascript" % req.get("language"))
            w = Worker(lang, req.get("cwd"))
            with registry_lock:
                contexts[w.id] = w
            return self.reply(200, w.describe())
        if path.startswith("/contexts/") and path.endswith("/restart"):
            cid = path[len("/contexts/"):-len("/restart")]
            with registry_lock:
                w = contexts.get(cid)
            if w is None:
                return self.fail(404, "no context " + cid)
            w.restart()
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/execute":
            return self.execute(req)
        self.fail(404, "no route POST " + path)

    def execute(self, req):
        code = req.get("code")
        if not isinstance(code, str):
            return self.fail(400, "code must be a string")
        cid = req.get("context_id")
        if cid:
            with registry_lock:
                w = contexts.get(cid)
            if w is None:
                return self.fail(404, "no context " + cid)
        else:
            lang = LANGUAGES.get((req.get("language") or "python").lower())
            if lang is None:
                return self.fail(400, "language %r: want python or javascript" % req.get("language"))
            w = default_context(lang)
        env = req.get("env_vars") or {}
        if not isinstance(env, dict):
            return self.fail(400, "env_vars must be an object")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.gone = False
        with w.lock:
            q = queue.Queue()
            w.sink = q
            w.count += 1
            count = w.count
            try:
                self.run_cell(w, q, code, env, count)
            finally:
                w.sink = None
        if self.gone:
            self.close_connection = True
            return
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def send_event(self, *evs):
        data = "".join(json.dumps(ev) + "\n" for ev in evs).encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def run_cell(self, w, q, code, env, count):
        w.proc.stdin.write((json.dumps({"code": code, "env": {str(k): str(v) for k, v in env.items()}}) + "\n").encode())
        w.proc.stdin.flush()
        interrupted_at = None
        gone = False
        while True:
            try:
                ev = q.get(timeout=KEEPALIVE_S)
            except queue.Empty:
                if not gone and client_gone(self.connection):
                    gone = True
                if gone or interrupted_at is not None:
                    if interrupted_at is None:
                        interrupted_at = time.monotonic()
                        w.interrupt()
                    elif time.monotonic() - interrupted_at > INTERRUPT_GRACE_S:
                        # It ignores SIGINT (stuck in C code): a new worker; the old
                        # state is lost, the context lives on.
                        w.stop()
                        w.start()
                        self.gone = True
                        return
                    continue
                try:
                    self.send_event({"type": "keepalive"})
                except OSError:
                    gone = True
                continue
            if ev.get("type") == "_exited":
                if not gone:
                    self.send_event({"type": "error", "name": "WorkerExited",
                                     "value": "the context's process exited; it was restarted", "traceback": ""})
                w.start()
                self.gone = gone
                return
            if ev.get("type") == "done":
                if not gone:
                    self.send_event({"type": "number_of_executions", "execution_count": count},
                                    {"type": "end_of_execution", "duration_us": ev.get("duration_us")})
                self.gone = gone
                return
            if gone:
                continue
            try:
                self.send_event(ev)
            except OSError:
                gone = True


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    srv = Server(("127.0.0.1", PORT), Handler)
    # The Python context is started at once, so that the first cell does not pay for it.
    default_context("python")
    srv.serve_forever()


if __name__ == "__main__":
    main()
