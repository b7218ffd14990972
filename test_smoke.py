"""End to end on the CPU in a few minutes: train, resume exactly, evaluate.

Uses the real CIFAR-10 copy when $CIFAR10_DIR is set (.ci/run sets it), else synthetic pickles.
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

from conftest import HERE, run_script, training_metrics


# 4,000 train / 1,000 test images, rescnn6 (0.7M params): ~20 s an epoch on 2 cores in bf16.
TINY = ["--arch", "rescnn6", "--subset", "4000", "--batch-size", "128", "--lr", "0.05", "--wd", "5e-4",
        "--eval-batch-size", "500", "--seed", "1"]


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory, data_dir):
    out = str(tmp_path_factory.mktemp("runs") / "full")
    r = run_script("train.py", *TINY, "--epochs", "2", "--data", data_dir, "--out", out)
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_train_learns(two_epoch_run):
    out, stdout = two_epoch_run
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"] < 2.4          # loss goes down from ln(10) = 2.30
    assert rows[1]["test_acc"] > 0.25                                     # chance is 0.10
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["select_split"] == "test" and summary["params"] == 692_122
    assert 0.25 < summary["best_test_acc"] <= 1
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["args"]["arch"] == "rescnn6" and config["torch"] == torch.__version__
    for name in ("last.pt", "best.pt", "metrics.csv"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert "best epoch" in stdout and "test accuracy" in stdout
    assert "flatters" in stdout or "flattering" in stdout                # selecting on test is called out


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tmp_path, data_dir, two_epoch_run):
    """SIGTERM mid-epoch: last.pt is written, exit 143; --resume ends where the uninterrupted run ended."""
    full, _ = two_epoch_run
    out = str(tmp_path / "killed")
    p = subprocess.Popen([sys.executable, "train.py", *TINY, "--epochs", "2", "--data", data_dir, "--out", out,
                          "--save-every", "5"], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(out, "last.pt")) and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 143, err
    assert "--resume" in err
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert ckpt["epoch"] == 0 and 0 < ckpt["batch"] < 32                 # stopped inside the first epoch

    r = run_script("train.py", "--resume", out, "--data", data_dir)
    assert r.returncode == 0, r.stderr
    a = torch.load(os.path.join(full, "last.pt"), weights_only=True)
    b = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert open(os.path.join(full, "metrics.jsonl")).read().count("\n") == 2
    assert training_metrics(full) == training_metrics(out)


def test_evaluate_reads_the_run(tmp_path, data_dir, two_epoch_run):
    full, _ = two_epoch_run
    js = str(tmp_path / "eval.json")
    r = run_script("evaluate.py", full, "--data", data_dir, "--subset", "4000", "--tta", "--json", js,
                   "--out", str(tmp_path / "figs"))
    assert r.returncode == 0, r.stderr
    res = json.load(open(js))
    summary = json.load(open(os.path.join(full, "summary.json")))
    assert res["test_acc"] == pytest.approx(summary["best_test_acc"], abs=1e-6)
    assert len(res["per_class_acc"]) == 10 and sum(map(sum, res["confusion_matrix"])) == res["n_test"]
    assert 0 < res["tta_test_acc"] <= 1 and res["images_per_s"] > 0
    assert "Accuracy of the network on the" in r.stdout
    figure, = os.listdir(tmp_path / "figs")  # named for its run (and a hash of its path): --out is no run folder
    assert re.fullmatch(r"confusion_matrix_full-[0-9a-f]{6}\.png", figure)
    assert os.path.getsize(tmp_path / "figs" / figure) > 1000
