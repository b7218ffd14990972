"""Shared test fixtures: the data folder (the real copy from $CIFAR10_DIR, else synthetic pickles)
and running a script as a user does."""
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
