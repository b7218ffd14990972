"""report.py through `visualize.py report`: the Markdown and HTML pages hold every run's numbers, their embedded
images decode and the HTML fetches nothing; a user's page is never replaced; the HTML as headless Chromium shows it.
"""
import base64
import contextlib
import fcntl
import io
import json
import os
import pathlib
import re
import select
import shutil
import subprocess
import tempfile
import time
from html.parser import HTMLParser

import matplotlib.image as mpimg
import pytest
import torch

import evaluate
import report
import visualize
from conftest import refused, tag, vis


class Addresses(HTMLParser):
    """The addresses a page fetches or links to, as (tag, attribute, value), and the text of its <style> blocks."""
    ATTRS = {"src", "href", "srcset", "action", "formaction", "poster", "data", "background", "xlink:href"}

    def __init__(self):
        super().__init__()
        self.found, self.css, self.in_style = [], "", False

    def handle_starttag(self, name, attrs):
        self.found += [(name, k, (v or "").strip()) for k, v in attrs if k in self.ATTRS]
        self.in_style = name == "style"

    def handle_endtag(self, name):
        self.in_style = False

    def handle_data(self, data):
        self.css += data if self.in_style else ""

    def outside(self):
        return [(t, k, v[:80]) for t, k, v in self.found if not v.startswith(("data:", "#"))]


def test_report_holds_every_run_and_embeds_decodable_images(runs, tmp_path, capsys):
    visualize.say_once.cache_clear()
    vis("report", *runs, "--out", tmp_path)
    err = capsys.readouterr().err  # each run's test pass said, the no-GPU warning once
    assert err.count("testing 500 test images on ") == 2
    assert err.count("warning: no GPU found") == (0 if torch.cuda.is_available() else 1), err
    both = f"{tag(runs[0])}+{tag(runs[1])}"  # in an --out of their own choosing: the page is named for its runs
    page = (tmp_path / f"report_{both}.html").read_text()
    md = (tmp_path / f"report_{both}.md").read_text()
    for run in runs:
        s = json.load(open(os.path.join(run, "summary.json")))
        name = os.path.basename(run)
        for v in (s["best_test_acc"], s["final_test_acc"], s["best_test_acc"]):
            assert f"{100 * v:.2f}%" in page and f"{100 * v:.2f}%" in md
        assert f"{s['params']:,}" in page and f"Run {name}" in page
        assert f"confusion_{tag(run)}.png" in md and os.path.exists(tmp_path / f"confusion_{tag(run)}.png")
    assert "--batch-size" in page  # the comparison says what differs
    blobs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(blobs) == 3  # curves and two confusion matrices
    for b in blobs:
        raw = base64.b64decode(b, validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        assert mpimg.imread(io.BytesIO(raw), format="png").shape[0] > 100
    # self-contained: every address in the page is a data: URI or an anchor on it, and the CSS fetches nothing
    refs = Addresses()
    refs.feed(page)
    assert refs.found  # the images
    assert not refs.outside(), refs.outside()
    assert "url(" not in refs.css and "@import" not in refs.css


def test_config_rows_show_the_key_flags_then_those_the_run_changed():
    cfg = {"args": {"arch": "lenet", "epochs": 2, "batch_size": 50, "lr": 0.1, "momentum": 0.9, "subset": 500,
                    "nesterov": True, "out": "runs/x", "data": "/d", "no_progress": True},
           "changed_args": ["arch", "epochs", "batch_size", "subset", "nesterov", "out", "data", "no_progress"],
           "device": "cpu", "git_commit": None}
    rows = report.config_rows(cfg)
    assert rows == [["--arch", "lenet"], ["--epochs", "2"], ["--batch-size", "50"], ["--lr", "0.1"],
                    ["--subset", "500"], ["--nesterov", "true"], ["device", "cpu"]]
    del cfg["changed_args"]  # a run folder written before train.py recorded the list: the key flags only
    assert [r[0] for r in report.config_rows(cfg)] == ["--arch", "--epochs", "--batch-size", "--lr", "device"]


def test_config_rows_of_a_run_folder_list_what_train_py_recorded_as_changed(runs):
    cfg = json.load(open(os.path.join(runs[0], "config.json")))
    names = [r[0] for r in report.config_rows(cfg)]
    assert names[:3] == ["--arch", "--epochs", "--batch-size"]
    assert "--subset" in names and "--eval-batch-size" in names and "--momentum" not in names
    assert not {"--out", "--data", "--no-progress"} & set(names)  # where the run went, not how it trained


def test_report_renders_in_headless_chromium(request, tmp_path):
    """What a reader of report.html sees: every image decoded at its own size, the headings and tables of report.md,
    the numbers, and nothing in the console. The browser: $CHROMIUM (.ci/run sets it), else chromium on PATH;
    with none the test skips, or fails under REQUIRE_BROWSER=1 (.ci/run sets that too)."""
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        (pytest.fail if os.environ.get("REQUIRE_BROWSER") == "1" else pytest.skip)(
            "no chromium: set CHROMIUM=/path/to/chromium or put chromium on PATH")
    assert shutil.which(exe), f"CHROMIUM={exe} is not an executable file"
    runs = request.getfixturevalue("runs")  # trained only once a browser is there
    vis("report", *runs, "--out", tmp_path)
    both = f"{tag(runs[0])}+{tag(runs[1])}"
    md = (tmp_path / f"report_{both}.md").read_text()
    seen = page_in_chromium(exe, tmp_path / f"report_{both}.html")
    assert seen["errors"] == []
    pngs = re.findall(r"^!\[[^\]]*\]\((\S+\.png)\)$", md, re.M)
    assert len(pngs) == 3  # curves and two confusion matrices
    assert all(i["complete"] and i["width"] > 0 for i in seen["images"]), seen["images"]
    assert [i["width"] for i in seen["images"]] == [mpimg.imread(tmp_path / p).shape[1] for p in pngs]
    heads = re.findall(r"^(#+) ", md, re.M)
    assert {f"h{k}": heads.count("#" * k) for k in (1, 2, 3)} == {t: seen["tags"][t] for t in ("h1", "h2", "h3")}
    # results, the flags that differ, per-class accuracy, each run's settings
    assert seen["tags"]["table"] == len(re.findall(r"^\|(?:-[-:]+\|)+$", md, re.M)) == 5
    assert seen["title"] == "CIFAR-10 training report: bs50, bs100"
    for run in runs:
        s = json.load(open(os.path.join(run, "summary.json")))
        assert f"{100 * s['best_test_acc']:.2f}%" in seen["text"] and f"{s['params']:,}" in seen["text"]


def test_report_refuses_to_replace_a_page_of_the_users_and_redraws_its_own(runs, tmp_path, capsys):
    """A report.md or report.html in --out that the report did not write (no mark) is refused before the work, left
    as it was; the report's own page is redrawn in place. Outside the run's folder it is named for the run and
    marked as no page of the folder's run."""
    for name in (f"report_{tag(runs[0])}.md", f"report_{tag(runs[0])}.html"):
        page = tmp_path / name
        page.write_text("# my notes\n")
        err = refused(capsys, "report", runs[0], "--out", tmp_path)
        assert f"{page} has no mark of visualize.py report" in err and "move it, or give another --out" in err
        assert os.listdir(tmp_path) == [name] and page.read_text() == "# my notes\n"
        page.unlink()
    for _ in range(2):
        vis("report", runs[0], "--out", tmp_path)
    md = (tmp_path / f"report_{tag(runs[0])}.md").read_text()
    assert md.startswith(f"<!-- cifar10-toolkit visualize.py report (report_{tag(runs[0])}.md); ")
    html = (tmp_path / f"report_{tag(runs[0])}.html").read_text()
    assert f'<meta name="generator" content="cifar10-toolkit visualize.py report (report_{tag(runs[0])}.html)">' in html


def test_report_as_a_script(runs, tmp_path):
    """The report subcommand as a user runs it: visualize.py is __main__ when it imports report.py."""
    from conftest import run_script
    r = run_script("visualize.py", "report", runs[0], "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    page = tmp_path / f"report_{tag(runs[0])}"
    assert r.stdout.splitlines()[-2:] == [f"wrote {page}.md", f"wrote {page}.html"]

# ----------------------------------------------------------------------------- a real browser
# Open a local HTML page in headless Chromium and say what a reader sees (the browser test checks report.html so).
# Drives the browser over the DevTools protocol on --remote-debugging-pipe (JSON messages, each ending in a NUL byte,
# on the browser's fds 3 and 4): needs only a Chromium binary and the standard library.
# Written here: the usual drivers (puppeteer, playwright) want a Node or Python package of their own at test time.

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
         "--remote-debugging-pipe"]
SEEN = """JSON.stringify({
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})),
  tags: Object.fromEntries(["h1", "h2", "h3", "table"].map(
    t => [t, document.getElementsByTagName(t).length])),
  title: document.title, text: document.body ? document.body.innerText : "",
  url: location.href, ready: document.readyState})"""
ERRORS = {  # the DevTools events a reader would see in the console as errors, each as one short line
    "Runtime.exceptionThrown": lambda p: p["exceptionDetails"].get("exception", {}).get("description")
                                         or p["exceptionDetails"]["text"],
    "Runtime.consoleAPICalled": lambda p: p["type"] in ("error", "assert") and " ".join(
        str(a.get("value", a.get("description"))) for a in p["args"]),
    "Log.entryAdded": lambda p: p["entry"]["level"] == "error" and f"{p['entry']['text']} "
                                                                   f"({p['entry'].get('url', '')[:60]})"}


def page_in_chromium(exe, page, timeout=60):
    """What the page at path `page` shows once its load event fired: {'images': [{alt, complete, width}],
    'tags': {tag: count}, 'title', 'text', 'errors': [each console error or uncaught exception, one line]}.
    RuntimeError when the browser does not start, fails or takes longer than `timeout` seconds."""
    pipes = [os.pipe(), os.pipe()]  # (read, write): to the browser, from the browser
    # our copies at fds 10 and up, where bash (dash reads one digit only) moves them to 3 and 4 without a clash
    (r_in, w_in), (r_out, w_out) = [[fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in p] for p in pipes]
    for fd in sum(pipes, ()):
        os.close(fd)
    deadline, buf, events, n = time.monotonic() + timeout, b"", [], 0
    with tempfile.TemporaryDirectory() as tmp, open(os.path.join(tmp, "log"), "w+b") as log:
        proc = subprocess.Popen(["/bin/bash", "-c", f'exec "$0" "$@" 3<&{r_in} 4>&{w_out} {r_in}<&- {w_out}>&-', exe,
                                 *FLAGS, f"--user-data-dir={tmp}/profile", "about:blank"],
                                pass_fds=(r_in, w_out), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        os.close(r_in), os.close(w_out)

        def receive():
            nonlocal buf
            while b"\0" not in buf:
                if not select.select([r_out], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise RuntimeError(f"{exe}: no answer in {timeout} s")
                chunk = os.read(r_out, 1 << 20)
                if not chunk:
                    proc.wait(10)
                    log.seek(0)
                    tail = log.read()[-3000:].decode(errors="replace")
                    raise RuntimeError(f"{exe} exited with {proc.returncode}: {tail}")
                buf += chunk
            msg, buf = buf.split(b"\0", 1)
            return json.loads(msg)

        def call(method, session=None, **params):
            nonlocal n
            n += 1
            os.write(w_in, json.dumps({"id": n, "method": method, "params": params,
                                       **({"sessionId": session} if session else {})}).encode() + b"\0")
            while (msg := receive()).get("id") != n:
                events.append(msg)
            if "error" in msg:
                raise RuntimeError(f"{method}: {msg['error']}")
            return msg["result"]

        try:
            target = call("Target.createTarget", url="about:blank")["targetId"]
            s = call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                call(f"{domain}.enable", s)
            url, mark = pathlib.Path(page).resolve().as_uri(), len(events)
            nav = call("Page.navigate", s, url=url)
            if nav.get("errorText"):
                raise RuntimeError(f"{page}: {nav['errorText']}")
            while not any(e.get("method") == "Page.loadEventFired" for e in events[mark:]):
                events.append(receive())
            seen = json.loads(call("Runtime.evaluate", s, expression=SEEN, returnByValue=True)["result"]["value"])
            if (seen["url"], seen["ready"]) != (url, "complete"):
                raise RuntimeError(f"{page}: the browser shows {seen['url']}, {seen['ready']}")
            call("Browser.close")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(w_in), os.close(r_out)
    seen["errors"] = [line[:300] for e in events if e.get("method") in ERRORS
                      for line in [ERRORS[e["method"]](e["params"])] if line]
    return seen


def test_figures_of_several_runs_name_every_run_even_in_one_runs_folder(tmp_path):
    """visualize.py report a b --out a: a's folder is no home of the pair, so every run is named, a too."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    os.makedirs(a), os.makedirs(b)
    assert evaluate.run_tag(a, a) == ""  # one run in its own folder: no name
    assert report.set_tag([a, b], a) == f"_{tag(a)}+{tag(b)}"
    assert report.confusion_files([a, b], a) == [f"confusion_{tag(r)}.png" for r in (a, b)]


def test_runs_are_named_apart_by_the_folders_above_them():
    """The names head the report's sections and name its confusion files: two runs must never share one."""
    assert report.run_names(["runs/a", "runs/b"]) == ["a", "b"]
    assert report.run_names(["p1/runs/r", "p2/runs/r"]) == ["p1/runs/r", "p2/runs/r"]
    assert report.run_names(["x/r", "x/r"]) == ["r #1", "r #2"]  # one folder given twice
