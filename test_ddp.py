"""torchrun on the CPU (gloo, 2 processes): the ranks stay identical, the run folder is written once
with plain state dicts, and a 2-process run stopped by SIGTERM resumes in 1 process.
(The shards of an epoch being disjoint and covering the data is test_data.py's rank test.)
"""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

import data
import runtime
from conftest import HERE, run_script

LENET = ["--arch", "lenet", "--batch-size", "50", "--eval-batch-size", "500", "--lr", "0.05"]


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "train.py",
            *map(str, args)]


@pytest.mark.slow
def test_two_processes_train_identical_replicas(tmp_path, data_dir):
    out = tmp_path / "ddp"
    r = subprocess.run(torchrun(*LENET, "--epochs", "1", "--subset", "2000", "--data", data_dir, "--out", out),
                       cwd=HERE, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "global batch 50 x 2 = 100, lr 0.05 -> 0.1 (--scale-lr linear)" in r.stdout
    assert "weights identical on all 2 processes" in r.stdout
    assert r.stdout.count("epoch 1/1 ") == 1  # only rank 0 prints
    summary = json.load(open(out / "summary.json"))
    assert summary["world_size"] == 2 and summary["ranks_agree"] is True
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert len(rows) == 1 and rows[0]["step"] == 20  # 2,000 images / (50 x 2) per step
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and not any(k.startswith("module.") for k in ckpt["model"])


@pytest.mark.slow
def test_the_fast_recipe_under_two_processes(tmp_path, data_dir):
    """fastnet's whitening init, Muon and lookahead: every rank must hold the same weights at the end."""
    out = tmp_path / "fast"
    r = subprocess.run(torchrun("--recipe", "fast", "--epochs", "2", "--subset", "2000", "--batch-size", "100",
                                "--eval-batch-size", "500", "--data", data_dir, "--out", out),
                       cwd=HERE, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "global batch 100 x 2 = 200, lr 0.12 -> 0.24 (--scale-lr linear)" in r.stdout
    assert "weights identical on all 2 processes" in r.stdout
    summary = json.load(open(out / "summary.json"))
    assert summary["ranks_agree"] is True and summary["final_test_acc"] > 0.3
    ckpt = torch.load(out / "last.pt", weights_only=True)
    live = [v for v in ckpt["model"].values() if v.is_floating_point()]
    assert all(torch.equal(a, b) for a, b in zip(ckpt["lookahead"]["slow"], live, strict=True))  # ends on a sync


@pytest.mark.slow
def test_sigterm_stops_all_ranks_and_one_process_resumes(tmp_path, data_dir):
    out = tmp_path / "ddp"
    args = [*LENET, "--epochs", "3", "--subset", "10000", "--data", data_dir, "--out", out]
    p = subprocess.Popen(torchrun(*args), cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks, which agree on a step to stop at
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0
    assert err.count("stopped by signal SIGTERM") == 1 and f"python train.py --resume {out}" in err
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] in (1, 2)

    r = run_script("train.py", "--resume", out, "--data", data_dir)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    # an epoch has half the steps with 2 processes (each its half of the images) as with one: the schedule goes on
    # from the same point of the run (an epoch cut mid-way restarts: the shards differ) and ends where a
    # 1-process run ends
    n = min(10000, len(data.load_cifar10(data_dir)["train"][1]))
    assert rows[0]["step"] == -(-(n // 2) // 50) and rows[-1]["step"] == 3 * -(-n // 50)
    assert rows[-1]["lr"] == 0.0 and json.load(open(out / "summary.json"))["world_size"] == 1


def _rank0_value_worker(rank, init_file, results):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    results[rank] = runtime.rank0_value(f"runs/lenet-from-rank-{rank}")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_every_rank_gets_rank_0s_value(tmp_path):
    """What names the run folder (a timestamp each rank reads on its own) comes from rank 0 on every rank."""
    results = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(_rank0_value_worker, args=(str(tmp_path / "init"), results), nprocs=2)
    assert dict(results) == {0: "runs/lenet-from-rank-0", 1: "runs/lenet-from-rank-0"}
