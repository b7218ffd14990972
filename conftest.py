"""Shared test fixtures: the data folder (the real copy from $CIFAR10_DIR, else synthetic pickles), running a script
as a user does, and two tiny finished runs that test_visualize.py and test_report.py draw."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

import data

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: multi-epoch, multi-process, compiling or kill/resume runs; "
                                       "pytest -m 'not slow' leaves them out")
REAL = os.environ.get("CIFAR10_DIR")
BIG = {"resnet34", "resnet50", "resnet101", "resnet152"}  # a step of these takes seconds on a CPU: full suite only


def slow_if(big):
    return [pytest.mark.slow] if big else []


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Folder holding cifar-10-batches-py: the real copy when $CIFAR10_DIR is set (.ci/run sets it),
    else 2,000 synthetic train and 500 test images whose classes a tiny network learns in an epoch."""
    if REAL:
        return REAL
    return os.path.dirname(data.make_synthetic(str(tmp_path_factory.mktemp("cifar")), n_train=2000, n_test=500))


def run_script(script, *args, timeout=600, **kw):
    """`python SCRIPT ARGS...` in the repo folder as a user runs it: the CompletedProcess (code, stdout, stderr)."""
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=HERE, capture_output=True, text=True,
                          timeout=timeout, **kw)


def not_warnings(err):
    """stderr without its "warning: " lines: train.py warns on stderr (no GPU found) before the data shows a mistake."""
    return "".join(line for line in err.splitlines(keepends=True) if not line.startswith("warning: "))


def training_metrics(run_dir):
    """A run's metrics.jsonl rows without the fields that measure the machine rather than the training."""
    return [{k: v for k, v in json.loads(line).items() if not any(w in k for w in ("time", "per_s", "rss"))}
            for line in open(os.path.join(run_dir, "metrics.jsonl"))]


@pytest.fixture
def one_second(monkeypatch, tmp_path):
    """In tmp_path, runfiles' clock stopped at 2026-12-01 17:13:18 (every run starts in that second) and its atexit
    registrations collected in the returned list as (function, args), to run when the test says."""
    import datetime
    import runfiles
    monkeypatch.chdir(tmp_path)

    class Clock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2026, 12, 1, 17, 13, 18)
    monkeypatch.setattr(runfiles.datetime, "datetime", Clock)
    exits = []
    monkeypatch.setattr(runfiles.atexit, "register", lambda f, *a: exits.append((f, a)))
    return exits


# ----------------------------------------------------------------------------- two tiny runs to draw (visualize.py)

TINY = ["--arch", "lenet", "--epochs", "2", "--subset", "500", "--eval-batch-size", "500", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """Two finished lenet runs that differ in batch size (a curves/report comparison)."""
    import train  # here, not at the top: most test files need no network trained
    root = tmp_path_factory.mktemp("vis_runs")
    out = []
    for bs in (50, 100):
        path = str(root / f"bs{bs}")
        assert train.main([*TINY, "--batch-size", str(bs), "--data", data_dir, "--out", path]) == 0
        out.append(path)
    return out


def tag(run):
    """What a figure's name carries for a run outside the run's folder: the folder's name and the first 6 hex digits of
    the SHA-1 of its real path (worked out here apart from evaluate.run_tag)."""
    real = os.path.realpath(run)
    return f"{os.path.basename(real)}-{hashlib.sha1(real.encode()).hexdigest()[:6]}"


def vis(*argv):
    """visualize.py's main on these arguments, each made a string."""
    import visualize
    return visualize.main([str(a) for a in argv])


def refused(capsys, *argv):
    """Assert visualize.py refuses these arguments with one line and exit 2; return the line."""
    with pytest.raises(SystemExit) as e:
        vis(*argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err
