"""A Python context of Vulcan's code interpreter: runs cells in one namespace, so state
persists between them. Cells arrive as JSON lines on stdin; events (stdout, stderr,
result, error, done) leave as JSON lines on the fd named by VULCAN_EVENTS_FD. SIGINT
interrupts the running cell (KeyboardInterrupt), not the worker."""

import ast
import base64
import io
import json
import os
import signal
import sys
import time
import traceback

EVENTS = os.fdopen(int(os.environ["VULCAN_EVENTS_FD"]), "w", buffering=1)
CELL = "<cell>"


def send(ev):
    EVENTS.write(json.dumps(ev, default=str) + "\n")
    EVENTS.flush()


class Stream(io.TextIOBase):
    """sys.stdout and sys.stderr: each line is an event, in order with the results (what
    is left without a newline goes at the next flush, and at the cell's end)."""

    def __init__(self, name):
        self.name = name
        self.buf = ""

    def writable(self):
        return True

    def write(self, s):
        self.buf += s
        if "\n" in self.buf:
            head, _, self.buf = self.buf.rpartition("\n")
            send({"type": self.name, "text": head + "\n"})
        elif len(self.buf) > 65536:
            self.flush()
        return len(s)

    def flush(self):
        if self.buf:
            send({"type": self.name, "text": self.buf})
            self.buf = ""

    def isatty(self):
        return False


REPRS = [("_repr_html_", "html"), ("_repr_markdown_", "markdown"), ("_repr_svg_", "svg"), ("_repr_png_", "png"),
         ("_repr_jpeg_", "jpeg"), ("_repr_latex_", "latex"), ("_repr_json_", "json"), ("_repr_javascript_", "javascript"),
         ("_repr_pdf_", "pdf")]


def figure_png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def chart(fig):
    """A chart's data, where it is a plain line, scatter or bar chart (E2B's chart field)."""
    try:
        elements = []
        for ax in fig.axes:
            c = {"title": ax.get_title() or None, "x_label": ax.get_xlabel() or None, "y_label": ax.get_ylabel() or None}
            lines = [l for l in ax.get_lines() if not l.get_label().startswith("_child")]
            bars = [p for p in ax.patches if p.__class__.__name__ == "Rectangle"]
            if lines:
                c["type"] = "line"
                c["elements"] = [{"label": l.get_label(), "points": [[float(x), float(y)] for x, y in zip(l.get_xdata(), l.get_ydata())]}
                                 for l in lines]
            elif bars:
                labels = [t.get_text() for t in ax.get_xticklabels()]
                c["type"] = "bar"
                c["elements"] = [{"label": labels[i] if i < len(labels) and labels[i] else str(i), "value": float(b.get_height()),
                                  "group": ""} for i, b in enumerate(bars)]
            elif ax.collections:
                c["type"] = "scatter"
                c["elements"] = [{"label": col.get_label(), "points": [[float(x), float(y)] for x, y in col.get_offsets()]}
                                 for col in ax.collections]
            else:
                continue
            elements.append(c)
        if not elements:
            return None
        if len(elements) == 1:
            return elements[0]
        return {"type": "superchart", "title": None, "elements": elements}
    except Exception:
        return None


def bundle(obj):
    """The MIME bundle of a value: text always, the rich forms it has."""
    d = {"text": repr(obj)}
    for attr, key in REPRS:
        f = getattr(obj, attr, None)
        if not callable(f) or isinstance(obj, type):
            continue
        try:
            v = f()
        except Exception:
            continue
        if v is None:
            continue
        if isinstance(v, tuple):
            v = v[0]
        if isinstance(v, bytes):
            v = base64.b64encode(v).decode()
        d[key] = v
    if type(obj).__module__.startswith("matplotlib") and hasattr(obj, "savefig"):
        d["png"] = figure_png(obj)
        c = chart(obj)
        if c:
            d["chart"] = c
    return d


def display(*objs):
    sys.stdout.flush()
    for o in objs:
        send(dict(bundle(o), type="result", is_main_result=False))


def flush_figures(shown):
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    for num in plt.get_fignums():
        fig = plt.figure(num)
        if id(fig) in shown:
            continue
        d = {"type": "result", "is_main_result": False, "text": repr(fig), "png": figure_png(fig)}
        c = chart(fig)
        if c:
            d["chart"] = c
        send(d)
    plt.close("all")


NS = {"__name__": "__main__", "display": display}


def run(code, env):
    t0 = time.perf_counter()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    shown = set()
    try:
        tree = ast.parse(code, CELL, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, CELL, "exec"), NS)
        if last is not None:
            value = eval(compile(last, CELL, "eval"), NS)
            if value is not None:
                NS["_"] = value
                sys.stdout.flush()
                if type(value).__module__.startswith("matplotlib") and hasattr(value, "savefig"):
                    shown.add(id(value))
                send(dict(bundle(value), type="result", is_main_result=True))
        flush_figures(shown)
    except BaseException as e:  # KeyboardInterrupt included: the interrupted cell's error
        tb = traceback.TracebackException.from_exception(e)
        # The worker's own frames are not the user's business.
        tb.stack = traceback.StackSummary.from_list([f for f in tb.stack if f.filename == CELL])
        send({"type": "error", "name": type(e).__name__, "value": str(e), "traceback": "".join(tb.format())})
        try:
            flush_figures(shown)
        except Exception:
            pass
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sys.stdout.flush()
        sys.stderr.flush()
        # The cell's own time, parse to last event: what the code took, without the trip.
        send({"type": "done", "duration_us": int((time.perf_counter() - t0) * 1e6)})


def main():
    # SIGINT interrupts a cell, even when this process was started with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.stdout, sys.stderr = Stream("stdout"), Stream("stderr")
    stdin = sys.stdin.buffer
    while True:
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            continue  # an interrupt between cells
        if not line:
            return
        try:
            req = json.loads(line)
        except ValueError:
            continue
        try:
            run(req.get("code", ""), req.get("env") or {})
        except KeyboardInterrupt:
            send({"type": "done"})  # it came after the cell's own handler


if __name__ == "__main__":
    main()
