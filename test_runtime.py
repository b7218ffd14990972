"""runtime.py's shared plumbing as the scripts meet it: the epoch line on a terminal, Ctrl-C outside a script's own
handling. (Its run folders, checkpoints and devices are tested with the scripts that use them.)"""
import argparse
import ast
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

import runfiles
import runtime
from conftest import HERE

SCRIPTS = ["train.py", "evaluate.py", "lr_finder.py", "landscape.py", "visualize.py", "bench.py"]


def test_an_epochs_line_comes_whole_on_a_terminal_too(capsys, monkeypatch):
    """The bar's suffix is cut to the terminal's width: the epoch's line must come as a line of its own."""
    monkeypatch.setenv("COLUMNS", "60")  # tqdm's width where the output is no terminal
    line = "epoch 1/2  loss 2.1445  acc 0.2000  test loss 2.0512  test acc 0.3120  lr 0.1  1.0s  100 img/s"
    for tty in (True, False):
        bar = runtime.Progress(4, 0, 2, bar=tty)
        bar.update(4, loss="2.145")
        bar.close(line)
        out = capsys.readouterr().out
        assert re.search(rf"(^|[\r\n]){re.escape(line)}\n", out), out


def test_an_epoch_written_to_a_pipe_or_a_log_says_how_far_it_got_every_so_often(capsys, monkeypatch):
    """No bar there (its redraws would pile up): a plain line every PROGRESS_EVERY seconds with the latest figures;
    none under --no-progress, none on a terminal (the bar), none on a process but rank 0."""
    monkeypatch.setattr(runtime.sys.stdout, "isatty", lambda: False)
    assert runtime.progress_style(False) == (False, runtime.PROGRESS_EVERY)
    assert runtime.progress_style(True) == runtime.progress_style(False, main_proc=False) == (False, 0.0)
    monkeypatch.setattr(runtime.sys.stdout, "isatty", lambda: True)
    assert runtime.progress_style(False) == (True, 0.0)
    clock = iter([100.0, 130.0, 161.0, 170.0, 222.0])  # the start, then each update's time
    monkeypatch.setattr(runtime.time, "time", lambda: next(clock))
    bar = runtime.Progress(50, 2, 10, bar=False, every=30.0)
    bar.update(10, loss="2.31")  # 30 s: a line
    bar.update(10, loss="2.05", acc="0.210")  # 61 s: 31 s since the last, a line
    bar.update(10)  # 70 s: only 9 s since
    bar.update(20)  # 122 s: 61 s since, a line
    assert capsys.readouterr().out == ("  epoch 3/10  step 10/50  loss 2.31\n"
                                       "  epoch 3/10  step 20/50  loss 2.05  acc 0.210\n"
                                       "  epoch 3/10  step 50/50  loss 2.05  acc 0.210\n")


def test_train_py_into_a_log_says_how_far_each_epoch_got(tmp_path, data_dir, capsys, monkeypatch):
    import train
    from conftest import TINY
    monkeypatch.setattr(runtime, "PROGRESS_EVERY", 1e-9)  # a line at every step
    for flags, lines in (([], 2 * 10), (["--no-progress"], 0)):  # 2 epochs of 500 images at batch 50
        assert train.main([*(f for f in TINY if f != "--no-progress"), "--batch-size", "50", "--data", data_dir,
                           "--out", str(tmp_path / f"run{len(flags)}"), *flags]) == 0
        out = capsys.readouterr().out
        assert len(re.findall(r"^  epoch [12]/2  step \d+/10", out, re.M)) == lines, out
        assert re.search(r"^  epoch 2/2  step 10/10  loss [\d.]+  acc [\d.]+  lr ", out, re.M) or not lines, out


def test_train_py_warns_of_an_idle_flag_on_rank_0_alone_under_any_launch(monkeypatch, capsys, data_dir):
    """RANK is set by every env:// launch, torchrun's or another: the other ranks say nothing."""
    import train
    for rank, said in (("1", ""), ("0", "warning: --tta-frac has no effect without --tta translate\n")):
        monkeypatch.setenv("RANK", rank)
        train.read_command_line(train.get_parser(), ["--arch", "lenet", "--tta-frac", "0.5", "--data", data_dir])
        assert capsys.readouterr().err == said


def test_metrics_csv_keeps_its_columns_in_place_when_an_epoch_is_not_evaluated(tmp_path):
    """--eval-every 2: epoch 1 has no test figures; their columns still come where an evaluated epoch has them."""
    log = runfiles.MetricsLog(str(tmp_path))
    log.add({"epoch": 1, "train_loss": 2.0, "lr": 0.1})
    log.add({"epoch": 2, "train_loss": 1.5, "test_loss": 1.4, "test_acc": 0.5, "lr": 0.05})
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "epoch,train_loss,test_loss,test_acc,lr", "1,2.0,,,0.1", "2,1.5,1.4,0.5,0.05"]


def test_ctrl_c_outside_a_scripts_own_handling_is_one_line_and_exit_130(capsys):
    def main():
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as e:
        runtime.run_main(main, "some.py")
    assert e.value.code == 130 and capsys.readouterr().err == "some.py: interrupted\n"
    with pytest.raises(SystemExit) as e:
        runtime.run_main(lambda: 3, "some.py")
    assert e.value.code == 3


def test_output_cut_by_a_pipes_reader_ends_quietly():
    """visualize.py layers | head: the reader leaves, the next write fails; no traceback, the shell's exit code. Only
    for stdout's reader: any other broken pipe is raised."""
    code = "import runtime\nruntime.run_main(lambda: [print('line', i) for i in range(10 ** 6)], 'some.py')"
    r = subprocess.run(f"{shlex.quote(sys.executable)} -c {shlex.quote(code)} | head -1; exit ${{PIPESTATUS[0]}}",
                       shell=True, executable="/bin/bash", cwd=HERE, capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr) == (141, "line 0\n", "")
    with pytest.raises(BrokenPipeError):  # another pipe broke (a worker's, a socket): a fault, shown as one
        runtime.run_main(lambda: (_ for _ in ()).throw(BrokenPipeError(32, "a worker's pipe")), "some.py")


def test_a_missing_requirement_imported_late_is_said_before_any_work(capsys, monkeypatch):
    """tqdm and matplotlib are imported where first used: missing, they would end a long run in a traceback."""
    real, ran = runtime.importlib.util.find_spec, []
    monkeypatch.setattr(runtime.importlib.util, "find_spec", lambda name, *a: None if name == "tqdm" else real(name, *a))
    with pytest.raises(SystemExit) as e:
        runtime.run_main(lambda: ran.append(1), "some.py")
    assert (e.value.code, ran) == (1, []) and capsys.readouterr().err == (
        "some.py: tqdm not installed; install every requirement: pip install -r requirements.txt\n")
    assert set(runtime.LATE_IMPORTS) < set(open(f"{HERE}/requirements.txt").read().split())


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_runs_its_main_through_run_main(script):
    tree = ast.parse(open(f"{HERE}/{script}").read())
    guard = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    assert guard and "run_main(" in ast.unparse(guard[0]), f"{script}: a Ctrl-C while it loads would be a traceback"


def every_parser(ap):
    yield ap
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from every_parser(sub)


def every_scripts_parser(monkeypatch):
    """Each script's parser with its subcommands' (bench.py builds its parser in main: caught as it parses)."""
    import bench, evaluate, landscape, lr_finder, train, visualize

    class Built(Exception):
        pass

    def built(ap, *a, **k):
        raise Built(ap)
    parsers = [m.get_parser() for m in (train, evaluate, lr_finder, landscape, visualize)]
    with monkeypatch.context() as m:
        m.setattr(runtime.OneLineParser, "parse_known_args", built)
        with pytest.raises(Built) as e:
            bench.main([])
    return [p for ap in parsers + [e.value.args[0]] for p in every_parser(ap)]


def test_every_flag_of_every_script_says_what_it_does_and_its_default(monkeypatch):
    """argparse shows a flag's default only beside a help text: a flag without one leaves the user guessing."""
    parsers = every_scripts_parser(monkeypatch)
    for p in parsers:
        assert [a.dest for a in p._actions if not a.help] == [], p.prog
        assert issubclass(p.formatter_class, argparse.ArgumentDefaultsHelpFormatter), p.prog
        text = " ".join(p.format_help().split())
        assert not re.search(r"\(default: (None|False)\)|default[^()]*\) \(default", text), (p.prog, text)
    assert "passes over the training images (default: 200)" in " ".join(parsers[0].format_help().split())


def test_json_text_writes_null_for_what_json_would_write_as_nan():
    text = runfiles.json_text({"loss": float("nan"), "rows": [1.5, float("inf"), (float("-inf"), "a")], "n": 2})
    assert text == '{"loss": null, "rows": [1.5, null, [null, "a"]], "n": 2}'


PATHS = {"out", "resume", "data", "checkpoint", "source", "runs", "run", "json", "work"}


def test_every_path_of_every_script_expands_a_tilde(monkeypatch):
    """A shell expands ~ in a word of its own, not in --out=~/x: each script expands it (else a folder named ~)."""
    paths = [(p.prog, a.dest, a.type) for p in every_scripts_parser(monkeypatch) for a in p._actions if a.dest in PATHS]
    assert len(paths) >= 30 and all(t is not None and t("~/x").startswith(os.path.expanduser("~/")) for _, _, t in paths), \
        [(prog, dest) for prog, dest, t in paths if t is None or t("~/x").startswith("~")]


def test_a_run_folder_refused_is_named_in_a_command_that_pastes_whole(tmp_path, capsys):
    out = tmp_path / "my run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"")
    with pytest.raises(SystemExit):
        runfiles.prepare_run_dir(argparse.Namespace(resume=None, out=str(out), force=False), runtime.OneLineParser())
    assert f"use --resume '{out}' to continue it, --force to overwrite it" in capsys.readouterr().err


def test_eta_at_the_mean_pace_so_far(monkeypatch):
    monkeypatch.setattr(runtime.time, "time", lambda: 1000.0)
    assert runtime.eta(900.0, 2, 3) == "  eta 2m30s" and runtime.eta(0.0, 1, 8) == "  eta 2h13m"
    assert runtime.eta(990.0, 5, 2) == "  eta 4s" and runtime.eta(900.0, 2, 0) == "" and runtime.eta(1000.0, 0, 5) == ""


def test_clear_run_removes_figures_only_where_a_run_is_replaced(tmp_path):
    """train.py clears every new run's folder: one that held no run keeps even the figures drawn there; one that held
    a run loses what the tools drew from that run (marked own) and keeps the user's own report.md and errors_x.png (a
    plain matplotlib figure too, although matplotlib marks every PNG with its own name), and what the tools drew there
    from another run (marked, not own)."""
    plt = runtime.pyplot()
    for name in ("report.md", "notes.txt"):
        (tmp_path / name).write_text("mine")
    plt.figure().savefig(tmp_path / "errors_by_hand.png")
    for name in ("errors.png", "cam_lenet_0.png"):
        runfiles.save_figure(plt.figure(), str(tmp_path / name), 50, "test", own=True)
    runfiles.save_figure(plt.figure(), str(tmp_path / "errors_other-1a2b3c.png"), 50, "test", own=False)
    (tmp_path / "report.html").write_text(f"<head>{runfiles.html_mark('test', True, 'report.html')}</head>")
    plt.close("all")
    shutil.copy(tmp_path / "errors.png", tmp_path / "errors_kept.png")  # a copy the user kept: not the run's own
    assert runfiles.clear_run(str(tmp_path)) == [] and len(os.listdir(tmp_path)) == 8
    (tmp_path / "summary.json").write_text("{}")  # a run's: --force replaces it, with what was drawn from it
    assert runfiles.clear_run(str(tmp_path)) == ["cam_lenet_0.png", "errors.png", "report.html"]
    assert sorted(os.listdir(tmp_path)) == ["errors_by_hand.png", "errors_kept.png", "errors_other-1a2b3c.png",
                                            "notes.txt", "report.md"]
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "report.md").write_text(runfiles.md_mark("test", False, "report.md") + "# a report of another run\n")
    assert runfiles.clear_run(str(tmp_path)) == []
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "report.md").write_text(runfiles.md_mark("test", True, "report.md") + "# a report\n")
    assert runfiles.clear_run(str(tmp_path)) == ["report.md"]


def test_the_mark_is_read_from_where_the_tools_write_it_not_found_anywhere_in_the_file(tmp_path):
    """read_mark parses the PNG's chunks for the text chunk "Generator" (not a byte search, which another chunk
    holding the same bytes would fool), report.md's first line and report.html's generator tag; own or not is in it."""
    import struct
    import zlib
    plt = runtime.pyplot()
    plain = tmp_path / "plain.png"
    plt.figure().savefig(plain)
    plt.close("all")
    raw = plain.read_bytes()
    body = b"Comment\0seen: tEXtGenerator\0cifar10-toolkit visualize.py (own run)"  # a user's comment, not a mark
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    fooled = tmp_path / "errors.png"
    fooled.write_bytes(raw[:33] + chunk + raw[33:])  # after the signature and IHDR (8 + 25 bytes)
    assert runfiles.read_mark(str(fooled)) is None and not runfiles.drawn_by_us(str(fooled))
    for own in (False, True):
        fig = plt.figure()
        runfiles.save_figure(fig, str(tmp_path / "cam.png"), 20, "visualize.py", own)
        plt.close(fig)
        (tmp_path / "r.md").write_text(runfiles.md_mark("visualize.py report", own, "r.md") + "# r\n")
        (tmp_path / "r.html").write_text(f"<html><head>{runfiles.html_mark('visualize.py report', own, 'r.html')}"
                                         "</head></html>")
        report = "visualize.py report"
        for name, by in (("cam.png", "visualize.py"), ("r.md", report), ("r.html", report)):
            path = str(tmp_path / name)
            assert runfiles.read_mark(path) == f"cifar10-toolkit {by} ({'own run: ' if own else ''}{name})", name
            assert runfiles.drawn_by_us(path) and runfiles.mark_is_own(path) == own, name
    late = runfiles.md_mark("visualize.py report", True, "late.md")
    (tmp_path / "late.md").write_text("# notes\n" + late)  # not on line one
    assert runfiles.read_mark(str(tmp_path / "late.md")) is None
    (tmp_path / "old.md").write_text("<!-- cifar10-toolkit visualize.py report (own run); this mark lets it ... -->\n")
    assert runfiles.mark_is_own(str(tmp_path / "old.md"))  # drawn before marks named their file: still the run's
