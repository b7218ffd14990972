"""Faults: a run SIGKILLed at any moment (mid-epoch, in the middle of writing a checkpoint) resumes
to the same weights and metrics as an uninterrupted run; out of memory ends in one line with last.pt
kept; 2,000 steps with checkpoints every 200 do not grow resident memory.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import data
import evaluate
import runfiles
import runtime
import train
from conftest import HERE, not_warnings, run_script, training_metrics

# lenet on 2,000 images, 40 steps an epoch; saves: steps 7..35 (1-5), epoch end best.pt (6) and last.pt (7), ...
RUN = ["--arch", "lenet", "--epochs", "3", "--subset", "2000", "--batch-size", "50", "--eval-batch-size", "1000",
       "--lr", "0.05", "--seed", "1", "--save-every", "7", "--ema", "0.9", "--ema-every", "3",
       "--lookahead", "0.9", "--lookahead-k", "9"]


def assert_same_run(a, b):
    ca = torch.load(os.path.join(a, "last.pt"), weights_only=True)
    cb = torch.load(os.path.join(b, "last.pt"), weights_only=True)
    for part in ("model", "ema"):  # the weights and their moving average (updated every 3rd step)
        wa, wb = ca[part], cb[part]
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), part
    # lookahead's slow weights (synced every 9th step: the saves every 7th fall between syncs)
    assert all(torch.equal(x, y) for x, y in zip(ca["lookahead"]["slow"], cb["lookahead"]["slow"], strict=True))
    assert training_metrics(a) == training_metrics(b) and len(training_metrics(a)) == 3
    assert not [n for n in os.listdir(b) if ".tmp" in n]  # no temp file of the killed write is left


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    out = str(tmp_path_factory.mktemp("faults") / "reference")
    r = run_script("train.py", *RUN, "--data", data_dir, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
@pytest.mark.parametrize("save", [3, 6, 7, 12])
def test_sigkill_in_the_middle_of_a_checkpoint_write(tmp_path, data_dir, reference, save):
    out = str(tmp_path / "run")
    r = run_script("train.py", *RUN, "--data", data_dir, "--out", out, env={**os.environ, "TRAIN_CRASH_IN_SAVE": str(save)})
    assert r.returncode == -signal.SIGKILL
    assert [n for n in os.listdir(out) if ".tmp" in n]  # the write really was cut half way
    runfiles.load_checkpoint(os.path.join(out, "last.pt"))  # what is there is whole
    r = run_script("train.py", "--resume", out, "--data", data_dir)
    assert r.returncode == 0, r.stderr
    assert_same_run(reference, out)


@pytest.mark.slow
def test_sigkill_at_a_random_moment(tmp_path, data_dir, reference):
    out = str(tmp_path / "run")
    p = subprocess.Popen([sys.executable, "train.py", *RUN, "--data", data_dir, "--out", out], cwd=HERE,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def inside_epoch_2():  # last.pt saved by --save-every within the second epoch: the run is under way there
        try:
            ckpt = runfiles.load_checkpoint(os.path.join(out, "last.pt"))
        except ValueError:  # not written yet
            return False
        return ckpt["epoch"] == 1 and ckpt["batch"] > 0
    deadline = time.time() + 120
    while not inside_epoch_2() and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, "the run ended before the kill: the test would not test a resume"
    p.kill()
    p.wait()
    assert p.returncode == -signal.SIGKILL
    assert runfiles.load_checkpoint(os.path.join(out, "last.pt"))["epoch"] < 3  # cut short: resume has work to do
    r = run_script("train.py", "--resume", out, "--data", data_dir)
    assert r.returncode == 0, r.stderr
    assert_same_run(reference, out)


def test_out_of_memory_is_one_line_and_keeps_last_pt(tmp_path, data_dir, capsys, monkeypatch):
    real = train.make_train_step

    def make_failing_step(*a, **k):
        step, calls = real(*a, **k), [0]

        def failing(x, y):
            calls[0] += 1
            if calls[0] == 10:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return step(x, y)
        return failing

    monkeypatch.setattr(train, "make_train_step", make_failing_step)
    out = tmp_path / "run"
    code = train.main([*RUN, "--data", data_dir, "--out", str(out)])
    err = not_warnings(capsys.readouterr().err)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "out of memory at --batch-size 50 (evaluation: --eval-batch-size 1000)" in err
    assert f"try a smaller batch size; the last good checkpoints are kept in {out}" in err
    assert runfiles.load_checkpoint(str(out / "last.pt"))["step"] == 7


@pytest.mark.slow
def test_out_of_memory_in_the_final_evaluation(tmp_path, data_dir, capsys, monkeypatch):
    real, calls = evaluate.evaluate, [0]

    def failing_final_eval(*a, **k):
        calls[0] += 1
        if calls[0] > 3:  # after the 3 epochs' evaluations (of the val split): the final report's, on test
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(*a, **k)

    monkeypatch.setattr(train, "evaluate", failing_final_eval)
    code = train.main([*RUN, "--val", "200", "--data", data_dir, "--out", str(tmp_path / "run")])
    err = not_warnings(capsys.readouterr().err)
    assert code == 1 and err.count("\n") == 1 and "out of memory" in err
    assert runfiles.load_checkpoint(str(tmp_path / "run" / "last.pt"))["epoch"] == 3


@pytest.mark.slow
def test_soak_2000_steps_memory_flat(tmp_path, data_dir):
    out = tmp_path / "soak"
    n = min(3200, len(data.load_cifar10(data_dir)["train"][1]))  # 3,200 real images, or all the synthetic ones
    batch = n // 100  # 100 steps an epoch on either
    r = run_script("train.py", "--arch", "lenet", "--epochs", "20", "--subset", n, "--batch-size", batch,
                   "--eval-batch-size", "1000", "--save-every", "200", "--data", data_dir, "--out", out)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert rows[-1]["step"] == 20 * -(-n // batch) == 2000
    rss = [row["rss_mib"] for row in rows]
    assert max(rss[1:]) - rss[1] < 10, rss  # MiB: after the first epoch, nothing accumulates


def test_an_unwritable_output_folder_is_refused_before_the_work(tmp_path, monkeypatch, capsys):
    """A read-only place (as root, permission bits block nothing, so the refusal is simulated) is found when the
    script starts, in one line, exit 2: not in a traceback once the work is done."""
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(runfiles.tempfile, "TemporaryFile", read_only)
    for check, path in ((runfiles.check_output_folder, tmp_path / "new" / "figs"), (runfiles.check_output_file,
                                                                                   tmp_path / "r.json")):
        with pytest.raises(SystemExit) as e:
            check(runtime.OneLineParser(prog="x.py"), "--out", str(path))
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"cannot write in {tmp_path} (Read-only file system)" in err, err


@pytest.mark.parametrize("path", ["", "new/"])
def test_an_output_file_path_that_names_no_file_is_refused(path, capsys):
    """"" or a folder's path with its separator would pass the folder checks and fail only at the save."""
    with pytest.raises(SystemExit) as e:
        runfiles.check_output_file(runtime.OneLineParser(prog="x.py"), "--out", path)
    assert e.value.code == 2 and f"--out {path!r} names no file" in capsys.readouterr().err


def test_only_rank_0_prints_a_command_line_error(monkeypatch, capsys):
    """Under torchrun every process parses the same command line: the mistake is said once, every rank exits 2."""
    for rank, said in (("1", ""), ("0", "x.py: error: bad (see --help)\n")):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # set by torchrun
        with pytest.raises(SystemExit) as e:
            runtime.OneLineParser(prog="x.py").error("bad")
        assert e.value.code == 2 and capsys.readouterr().err == said


def test_a_write_that_fails_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")

    def write(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        runfiles.atomic_write(str(path), write)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]


def test_divergence_names_the_step_and_lr_where_the_loss_first_went_bad(capsys, monkeypatch, tmp_path, data_dir):
    """The loss is read back every SYNC_EVERY steps only; the message still names the first non-finite step and the lr
    it ran at, as a run that reads it after every step finds them."""
    argv = ["--arch", "lenet", "--epochs", "1", "--subset", "2000", "--batch-size", "50", "--lr", "1e8",
            "--schedule", "linear", "--data", data_dir]
    said, sync_every = [], train.SYNC_EVERY
    for every in (sync_every, 1):
        monkeypatch.setattr(train, "SYNC_EVERY", every)
        assert train.main([*argv, "--out", str(tmp_path / f"every{every}")]) == 1
        said.append(capsys.readouterr().err.strip().splitlines()[-1].split(": training diverged")[0])
    assert said[0] == said[1] and int(said[0].split("step ")[1].split(",")[0]) % sync_every, said


def test_a_diverged_run_writes_json_and_an_epoch_of_skipped_steps_stops_in_one_line(capsys, tmp_path, data_dir):
    """--skip-nonfinite on a run whose loss is never finite again: epoch 1 ends with a NaN test loss (written as null:
    NaN is no JSON) and its skipped steps counted, epoch 2 skips every step and stops in one line (it divided by the
    images it trained on: none), without the advice to use --skip-nonfinite."""
    argv = ["--arch", "lenet", "--subset", "500", "--batch-size", "100", "--lr", "1e6", "--skip-nonfinite", "100",
            "--data", data_dir, "--no-progress"]
    assert train.main([*argv, "--epochs", "1", "--out", str(tmp_path / "one")]) == 0
    strict = dict(parse_constant=lambda c: pytest.fail(f"{c} in a JSON file"))
    summary = json.load(open(tmp_path / "one" / "summary.json"), **strict)
    rows = [json.loads(line, **strict) for line in open(tmp_path / "one" / "metrics.jsonl")]
    assert summary["final"]["test_loss"] is None and rows[0]["test_loss"] is None
    out = capsys.readouterr().out  # the steps skipped are counted in summary.json and said at the end; a huge loss
    assert summary["skipped_steps"] > 0 and f"skipped {summary['skipped_steps']} step(s) with a non-finite" in out
    assert re.search(r"epoch 1/1  loss \d\.\d+e\+\d+  ", out), out  # in 4 digits, not 24
    skipped = summary["skipped_steps"]
    assert f"img/s  {skipped} steps skipped" in out and rows[0]["skipped_steps"] == skipped  # and in which epoch
    assert train.main([*argv, "--epochs", "2", "--out", str(tmp_path / "two")]) == 1
    err = not_warnings(capsys.readouterr().err).strip()
    assert "\n" not in err and err.startswith("train.py: every step of epoch 2 had a non-finite loss and was skipped"), err
    assert "--skip-nonfinite" not in err and "try a lower --lr" in err
    assert train.main([*argv[:9], "1", *argv[10:], "--epochs", "1", "--out", str(tmp_path / "few")]) == 1  # N = 1
    assert "try a lower --lr, or a larger --skip-nonfinite N" in capsys.readouterr().err  # not the flag given
