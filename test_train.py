"""train.py beyond the smoke test: every refusal is one line with exit code 2 and creates nothing,
checkpoints refuse crafted pickles, divergence stops cleanly, every network of models.py and every recipe
trains a step through the real command, and the step's variants (lookahead, hard examples, a CUDA graph)
train as they should. optim.py's own parts: test_optim.py; the recipes: test_recipes.py.
"""
import copy
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import types

import pytest
import torch
import torch.nn as nn

import optim
import runfiles
import runtime
import evaluate as evaluate_module
import recipes
import train
from evaluate import evaluate
from conftest import BIG, not_warnings, run_script, slow_if, training_metrics
from models import ARCHS, build_model
from selection import AGE, HardExamples, LastLoss

QUICK = ["--arch", "lenet", "--epochs", "1", "--subset", "200", "--batch-size", "50", "--eval-batch-size", "100"]


def refused(capsys, argv):
    """Run train.main in-process; assert exit 2 with one line on stderr, the last (warnings said before it aside, as
    the CPU's "no GPU found" where the mistake shows once the data is read), return that line."""
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    err = capsys.readouterr().err
    line = not_warnings(err)
    assert e.value.code == 2, err
    assert line.count("\n") == 1 and err.endswith(line) and "Traceback" not in err, err
    return line


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory, data_dir):
    """A finished one-epoch lenet run folder."""
    out = str(tmp_path_factory.mktemp("runs") / "lenet")
    assert train.main([*QUICK, "--data", data_dir, "--out", out]) == 0
    return out


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("flags, says", [
    (["--arch", "resnet7"], "unknown --arch 'resnet7'; choose from: lenet, rescnn6"),
    (["--optimizer", "rmsprop"], "unknown --optimizer 'rmsprop'; choose from: sgd, adam, adamw"),
    (["--epochs", "0"], "--epochs must be positive, got 0"), (["--lr", "-0.1"], "--lr must be positive, got -0.1"),
    (["--batch-size", "0"], "--batch-size must be positive, got 0"),
    (["--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
    (["--seed", "18446744073709551616"], "argument --seed: must be from -2**63 to 2**63 - 1, got 1844674407370955"),
    (["--seed", "-9223372036854775809"], "argument --seed: must be from -2**63 to 2**63 - 1, got -922337203685477"),
    (["--seed", "one"], "argument --seed: must be an integer, got 'one'"),
    (["--schedule", "triangle"], "argument --schedule: invalid choice: 'triangle'"),
    (["--bias-lr-scale", "0"], "--bias-lr-scale must be positive, got 0.0"),
    (["--optimizer", "muon", "--aux-lr", "-1"], "--aux-lr must be positive, got -1.0"),
    (["--tta", "mirror"], "argument --tta: invalid choice: 'mirror'"),
    (["--tta-frac", "0"], "--tta-frac must be in (0, 1], got 0.0"),
    (["--tta-mirror-frac", "1.5"], "--tta-mirror-frac must be in (0, 1], got 1.5"),
    (["--select-frac", "1.5"], "--select-frac must be in (0, 1], got 1.5"),
    (["--arch", "resnet18", "--select-frac", "0.5", "--image-sizes", "8", "32"],
     "the --select-frac proxy (fastnet) cannot take 8x8 images (--image-sizes)"),
    (["--select-every", "0"], "--select-every must be positive, got 0"),
    (["--select-frac", "0.5", "--select-by", "loss", "--select-every", "2"], "--select-by loss takes no --select-every"),
    (["--subset", "0"], "--subset must be positive, got 0"),
    (["--subset", "1"], "1 training image(s) for 1 process(es): each needs at least 2"),
    (["--eval-every", "-1"], "--eval-every must be >= 0, got -1"), (["--ema", "1.5"], "--ema must be in [0, 1), got 1.5"),
    (["--warmup-epochs", "-1"], "--warmup-epochs and --milestones must be >= 0, got -1 and 0.5 0.75"),
    (["--schedule", "step", "--milestones", "-0.5"], "--warmup-epochs and --milestones must be >= 0, got 0 and -0.5"),
    (["--schedule", "step", "--gamma", "-1"], "--gamma takes one positive value or one per milestone (2), got [-1.0]"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--gamma", "0.1", "nan"], "--gamma must be a finite number, got [0.1, nan]"),
    (["--mix", "cutmix", "--mix-alpha", "nan"], "--mix-alpha must be a finite number, got nan"),
    (["--cuda-graph"], "--cuda-graph needs --optimizer muon, and takes no --compile, --skip-nonfinite or --amp fp16"),
    (["--optimizer", "muon", "--cuda-graph", "--compile"],
     "--cuda-graph needs --optimizer muon, and takes no --compile, --skip-nonfinite or --amp fp16"),
    (["--optimizer", "muon", "--cuda-graph", "--skip-nonfinite", "3"],
     "--cuda-graph needs --optimizer muon, and takes no --compile, --skip-nonfinite or --amp fp16"),
    (["--image-sizes", "4"], "--image-sizes must lie in 8..32 (the images are 32x32), got 4"),
    (["--image-sizes", "16", "32"], "--arch lenet cannot take 16x16 images (--image-sizes)"),
    (["--lookahead", "1"], "--lookahead must be in [0, 1), got 1.0"),
    (["--nesterov", "--momentum", "0"], "--nesterov needs a --momentum above 0"),
    (["--optimizer", "muon", "--aux-momentum", "1"], "--momentum and --aux-momentum must be in [0, 1), got 0.9 and 1"),
    (["--optimizer", "adam", "--betas", "1", "0.999"], "--betas must be in [0, 1), got 1 0.999"),
    (["--lookahead-k", "0"], "--lookahead-k must be positive, got 0"),
    (["--val", "50000"], "--val 50000 must be at least 0 and below the 200 training images"),
    (["--data", "{tmp}/nowhere"], "CIFAR-10 in {tmp}/nowhere/cifar-10-batches-py: folder not found; fetch the "
                                  "official files with --download, or unpack a local copy"),
    (["--resume", "{tmp}/nothing"], "--resume {tmp}/nothing: checkpoint {tmp}/nothing/last.pt does not exist"),
    (["--out", "{tmp}/file/run"], "cannot write to run folder {tmp}/file/run: Not a directory")])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(capsys, tmp_path, monkeypatch, data_dir, flags, says):
    monkeypatch.chdir(tmp_path)  # the default runs/ folder would land here
    (tmp_path / "file").write_text("not a folder")
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    argv = [*QUICK, "--data", data_dir, *flags]
    if "--out" not in flags:
        argv += ["--out", str(tmp_path / "run")]
    err = refused(capsys, argv)
    assert says.replace("{tmp}", str(tmp_path)) in err
    assert sorted(os.listdir(tmp_path)) == ["file"]


@pytest.mark.parametrize("flags, says", [
    (["--skip-nonfinite", "2"], "--skip-nonfinite works in a single process only"),
    (["--optimizer", "muon", "--cuda-graph"], "--cuda-graph works in a single process only"),
    (["--select-frac", "0.5", "--select-by", "loss"], "--select-by loss works in a single process only"),
])
def test_what_one_process_only_can_do_is_refused_under_torchrun(capsys, tmp_path, monkeypatch, data_dir, flags, says):
    monkeypatch.setattr(train, "setup_distributed", lambda: (0, 2))  # as torchrun with 2 processes, seen by rank 0
    assert says in refused(capsys, [*QUICK, "--data", data_dir, "--out", str(tmp_path / "run"), *flags])
    assert not (tmp_path / "run").exists()


def test_augment_values_are_refused_before_any_warning_and_idle_tta_flags_are_warned(capsys, monkeypatch, tmp_path,
                                                                                    data_dir):
    """A --cutout out of range is refused with the other values, before the device is picked (and warned about on a
    CPU); a --tta-frac or --tta-mirror-frac given where --tta leaves it unused is warned of, not silently dropped."""
    monkeypatch.setattr(train, "pick_device", lambda *a: pytest.fail("device picked before the values were checked"))
    assert "--cutout must be in [0, 32], got 40" in refused(capsys, [*QUICK, "--data", data_dir, "--cutout", "40"])
    monkeypatch.undo()
    argv = [*QUICK, "--data", data_dir, "--tta", "flip", "--tta-frac", "0.5", "--tta-mirror-frac", "0.5"]
    assert train.main([*argv, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().err
    assert "warning: --tta-frac has no effect without --tta translate" in out and "--tta-mirror-frac has" not in out
    assert train.main([*QUICK, "--data", data_dir, "--tta-mirror-frac", "0.5", "--out", str(tmp_path / "b")]) == 0
    assert "warning: --tta-mirror-frac has no effect without --tta flip or translate" in capsys.readouterr().err
    assert train.main([*QUICK, "--data", data_dir, "--recipe", "fast", "--arch", "lenet", "--out", str(tmp_path / "c")
                       ]) == 0
    assert "no effect" not in capsys.readouterr().err  # a recipe's values are no flags given


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    r = run_script("train.py", "--arch", "resnet7", "--out", tmp_path / "run")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown --arch" in r.stderr
    assert not (tmp_path / "run").exists()


def test_any_int_seed_trains(capsys, tmp_path, data_dir):
    """numpy's seed takes only 0..2**32-1; train.py folds a negative or larger --seed into it instead of a traceback."""
    for seed in (-1, 2**32 + 5):
        assert train.main([*QUICK, "--seed", str(seed), "--data", data_dir, "--out", str(tmp_path / f"run{seed}")]) == 0


def test_fp16_without_cuda_falls_back_to_bf16_with_a_warning(capsys, tmp_path, data_dir):
    assert train.main([*QUICK, "--amp", "fp16", "--data", data_dir, "--out", str(tmp_path / "run")]) == 0
    said = capsys.readouterr()
    assert "warning: --amp fp16 needs CUDA; using bf16 autocast on cpu" in said.err and "warning" not in said.out
    assert "amp fp16->torch.bfloat16" in said.out


def test_existing_run_is_not_overwritten(capsys, lenet_run, data_dir):
    before = {n: os.path.getmtime(os.path.join(lenet_run, n)) for n in os.listdir(lenet_run)}
    err = refused(capsys, [*QUICK, "--data", data_dir, "--out", lenet_run])
    assert f"{lenet_run} already holds a run (config.json); use --resume {lenet_run}" in err and "--force" in err
    assert {n: os.path.getmtime(os.path.join(lenet_run, n)) for n in os.listdir(lenet_run)} == before


@pytest.mark.parametrize("name", ["summary.json", "metrics.csv"])
def test_a_folder_with_any_run_file_is_not_overwritten(capsys, data_dir, tmp_path, name):
    """What is left of a run whose other files were removed is still refused, not silently replaced."""
    (tmp_path / name).write_text("{}")
    err = refused(capsys, [*QUICK, "--data", data_dir, "--out", str(tmp_path)])
    assert f"{tmp_path} already holds a run ({name})" in err and (tmp_path / name).read_text() == "{}"
    assert "it has no checkpoint (last.pt) to resume: use --force to start it again" in err and "--resume" not in err


def test_ctrl_c_in_the_final_evaluation_is_one_line_exit_130(capsys, tmp_path, data_dir, monkeypatch):
    def interrupted(run):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "test_figures", interrupted)
    out = str(tmp_path / "run")
    assert train.main([*QUICK, "--data", data_dir, "--out", out]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"train.py: interrupted in the final evaluation; the trained run is in {out}"
    assert all(line.startswith("warning: ") for line in err.strip().splitlines()[:-1]), err
    assert os.path.exists(os.path.join(out, "last.pt"))


def test_force_leaves_nothing_of_the_run_it_replaces(capsys, lenet_run, data_dir, tmp_path):
    """A --force run that diverges at once: the folder holds its own config and none of the old run's summary,
    checkpoints, metrics, TensorBoard events or figures; a file of the user's stays, one named like a figure too."""
    out = str(tmp_path / "run [1]")  # (a glob's special characters)
    shutil.copytree(lenet_run, out)
    os.makedirs(os.path.join(out, "tb"), exist_ok=True)
    for name in ("tb/events.old", "notes.txt", "last.pt.tmp123", "my.png", "errors_mine.png"):  # the user's
        open(os.path.join(out, name), "w").close()
    with open(os.path.join(out, "report.md"), "w") as f:  # what the tools drew carries their mark
        f.write(runfiles.md_mark("visualize.py report", True, "report.md") + "# a report\n")
    fig = runtime.pyplot().figure(figsize=(1, 1))
    runfiles.save_figure(fig, os.path.join(out, "cam_lenet_0.png"), 50, "visualize.py cam", own=True)
    runtime.pyplot().close(fig)
    assert train.main([*QUICK, "--data", data_dir, "--out", out, "--force", "--lr", "1e12"]) == 1  # diverges
    gone, left = {"summary.json", "best.pt", "last.pt", "last.pt.tmp123", "report.md", "cam_lenet_0.png"}, os.listdir(out)
    assert {"notes.txt", "my.png", "errors_mine.png"} < set(left) and not gone & set(left), left
    assert "--force: removed what was drawn from the run replaced: cam_lenet_0.png, report.md\n" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(out, "tb", "events.old"))
    assert json.load(open(os.path.join(out, "config.json")))["args"]["lr"] == 1e12


def test_resume_refuses_a_contradicting_flag(capsys, lenet_run, data_dir):
    err = refused(capsys, ["--resume", lenet_run, "--arch", "rescnn6", "--data", data_dir])
    assert "that run has --arch lenet, not rescnn6" in err


def test_resume_may_add_cuda_graph_checked_against_the_runs_settings(capsys, lenet_run, data_dir):
    """--cuda-graph trains the same steps (Muon's update rounded apart): a resume may add it, and it is checked
    against the run's own settings."""
    err = refused(capsys, ["--resume", lenet_run, "--cuda-graph", "--data", data_dir])
    assert "--cuda-graph needs --optimizer muon" in err  # the run's sgd, not 'that run has --cuda-graph False'


def test_resume_takes_flags_that_change_nothing_trained_and_warns_by_the_runs_own_flags(capsys, lenet_run, data_dir,
                                                                                        tmp_path):
    """--force, --save-every and --eval-batch-size change nothing a run learns: a resume may give them anew. A
    --tta-frac given to a resume is judged by the run's own --tta, not by train.py's default (none)."""
    argv = ["--resume", lenet_run, "--force", "--save-every", "7", "--eval-batch-size", "50", "--data", data_dir]
    args = train.read_command_line(train.get_parser(), argv)[0]
    assert (args.save_every, args.eval_batch_size) == (7, 50)  # taken, not the run's
    assert train.main(argv) == 0 and "nothing to do" in capsys.readouterr().out
    out = str(tmp_path / "tta")
    assert train.main([*QUICK, "--data", data_dir, "--tta", "translate", "--tta-frac", "0.5", "--out", out]) == 0
    capsys.readouterr()
    assert train.main(["--resume", out, "--tta-frac", "0.5", "--data", data_dir]) == 0
    assert "no effect" not in capsys.readouterr().err


def test_resume_refuses_a_contradicting_flag_even_at_its_default_value(capsys, lenet_run, data_dir):
    """--epochs 200 is train.py's default, and the run has 1: given on the command line, it is refused all the same."""
    err = refused(capsys, ["--resume", lenet_run, "--epochs", "200", "--data", data_dir])
    assert "that run has --epochs 1, not 200" in err
    assert train.main(["--resume", lenet_run, "--epochs", "1", "--data", data_dir]) == 0  # agreeing is fine


def test_resume_reads_the_data_where_the_run_did_unless_told_otherwise(lenet_run, data_dir, tmp_path):
    """The resume command train.py prints names no --data: the run's own folder is used, a given one wins."""
    ap = train.get_parser()
    assert train.read_command_line(ap, ["--resume", lenet_run])[0].data == data_dir
    assert train.read_command_line(ap, ["--resume", lenet_run, "--data", str(tmp_path)])[0].data == str(tmp_path)


def test_resume_of_a_finished_run_changes_nothing(lenet_run, data_dir, capsys):
    files = ("metrics.jsonl", "metrics.csv", "summary.json", "last.pt", "best.pt", "config.json")
    before = {n: open(os.path.join(lenet_run, n), "rb").read() for n in files}
    assert train.main(["--resume", lenet_run, "--data", data_dir]) == 0
    assert "finished all 1 epochs; nothing to do" in capsys.readouterr().out
    assert {n: open(os.path.join(lenet_run, n), "rb").read() for n in files} == before


def test_a_run_resumed_mid_epoch_counts_the_time_and_images_of_both_invocations(tmp_path, data_dir, monkeypatch):
    """train.py's clock advances one second per step: the first invocation takes 2 steps and is stopped by SIGTERM,
    the second resumes for the last 2. The epoch's time and speed, and the summary's times, cover both."""
    real, out, clock = train.make_train_step, str(tmp_path / "run"), [1000.0]
    monkeypatch.setattr(train, "time", types.SimpleNamespace(time=lambda: clock[0]))

    def ticking(stop_at=None):
        def make(*a, **k):
            inner, calls = real(*a, **k), [0]

            def step(x, y):
                calls[0] += 1
                clock[0] += 1.0
                if calls[0] == stop_at:
                    os.kill(os.getpid(), signal.SIGTERM)  # train.py's handler: stop after this step, saving last.pt
                return inner(x, y)
            return step
        return make
    monkeypatch.setattr(train, "make_train_step", ticking(stop_at=2))
    assert train.main([*QUICK, "--data", data_dir, "--out", out]) == 128 + signal.SIGTERM
    ckpt = runfiles.load_checkpoint(os.path.join(out, "last.pt"))
    assert ckpt["batch"] == 2 and ckpt["partial"]["time"] == 2.0  # stopped inside the epoch, 2 s into it
    monkeypatch.setattr(train, "make_train_step", ticking())
    assert train.main(["--resume", out, "--data", data_dir]) == 0
    row = json.loads(open(os.path.join(out, "metrics.jsonl")).read())
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert row["epoch_time"] == 4.0 and row["images_per_s"] == 200 / 4.0
    assert summary["train_time_s"] == summary["epoch_time_s"] == 4.0 and summary["images_per_s"] == 50.0
    assert summary["total_time_s"] >= 4.0


def test_a_recipe_s_selection_is_switched_off_by_select_frac_1():
    args, _ = train.read_command_line(train.get_parser(), ["--recipe", "fast-cpu", "--select-frac", "1"])
    assert args.select_by == "loss" and train.make_selector(args, None, "cpu", None, 10) is None


def test_resume_without_the_best_checkpoint_is_refused_before_training(capsys, tmp_path, lenet_run):
    """A last.pt copied alone, its best.pt of an earlier epoch left behind: the closing test would fail on it."""
    ckpt = torch.load(os.path.join(lenet_run, "last.pt"), weights_only=True)
    ckpt["args"]["epochs"] = 2  # one epoch still to train; the best so far is epoch 1
    torch.save(ckpt, tmp_path / "last.pt")
    err = refused(capsys, ["--resume", str(tmp_path)])
    assert f"--resume {tmp_path}: its best.pt (epoch 1) is missing; the closing test may need it" in err
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


@pytest.mark.parametrize("keep", [0.5, 10_000, 0.0])  # cut off half way; at 10 kB (torch's EINVAL); empty (no message)
def test_corrupt_checkpoint_is_refused(capsys, tmp_path, lenet_run, keep):
    run = tmp_path / "run"
    run.mkdir()
    good = open(os.path.join(lenet_run, "last.pt"), "rb").read()
    (run / "last.pt").write_bytes(good[:int(keep if keep > 1 else len(good) * keep)])
    err = refused(capsys, ["--resume", str(run)])
    assert f"--resume {run}: cannot read checkpoint {run}/last.pt: not a whole torch.save archive (cut off" in err


class Exploit:
    """Unpickling this calls os.system: a checkpoint that runs code when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_pickle_is_refused_without_running_code(capsys, tmp_path):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": Exploit(marker), "args": {}}, run / "last.pt")
    with open(run / "plain.pkl", "wb") as f:  # the same through plain pickle
        pickle.dump(Exploit(marker), f, protocol=2)
    err = refused(capsys, ["--resume", str(run)])
    assert "cannot read checkpoint" in err and "refused, as loading them could run code" in err
    assert "weights_only" not in err and not marker.exists()  # torch's advice is the unsafe way
    with pytest.raises(ValueError, match="plain.pkl: not a whole torch.save archive"):  # (weights_only: never run)
        runfiles.load_checkpoint(str(run / "plain.pkl"))
    assert not marker.exists()


# ----------------------------------------------------------------------------- divergence

@pytest.mark.slow
def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    out = tmp_path / "run"
    # epoch 1 at lr 0.01 is fine; the step schedule then multiplies the lr by 1e9
    r = run_script("train.py", "--arch", "lenet", "--epochs", "2", "--subset", "400", "--batch-size", "20",
                   "--lr", "0.01", "--schedule", "step", "--milestones", "1", "--gamma", "1e9", "--save-every", "3",
                   "--data", data_dir, "--out", out)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "at epoch 2, step" in line and "lr 1e+07" in line and "training diverged" in line
    assert f"the last good checkpoints are kept in {out}" in line
    ckpt = runfiles.load_checkpoint(str(out / "last.pt"))  # mid-epoch saves every 3 steps went on until the NaN
    assert ckpt["epoch"] == 1 and 0 < ckpt["batch"] < 20
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert (out / "best.pt").exists() and len(open(out / "metrics.jsonl").readlines()) == 1


def test_divergence_before_any_checkpoint_says_how_to_start_again(capsys, tmp_path, data_dir):
    """No last.pt yet: the message must not promise checkpoints, and the command it gives must run, pasted whole."""
    out = str(tmp_path / "my run")
    argv = [*QUICK, "--data", data_dir, "--out", out]
    assert train.main([*argv, "--lr", "1e8"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "training diverged" in line and "kept" not in line and not os.path.exists(os.path.join(out, "last.pt"))
    assert line.endswith(f"no checkpoint was written yet: start again with --force --out '{out}'")
    assert train.main([*argv, "--force"]) == 0 and f"evaluate: python evaluate.py '{out}'\n" in capsys.readouterr().out


def test_skip_nonfinite_leaves_the_weights_untouched():
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    step = optim.make_train_step(model, opt, sched, nn.CrossEntropyLoss(), torch.device("cpu"), None, scaler,
                                 skip_nonfinite=True)
    w = model.weight.detach().clone()
    loss, _ = step(x * float("nan"), y)
    assert math.isnan(loss.item()) and torch.equal(model.weight, w) and sched.last_epoch == 1
    step(x, y)
    assert not torch.equal(model.weight, w)


def test_a_skipped_last_step_still_ends_the_run_on_the_lookahead_weights():
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    la = optim.Lookahead(model, alpha=0.5, k=2, total_steps=4)
    step = optim.make_train_step(model, opt, sched, nn.CrossEntropyLoss(), torch.device("cpu"), None,
                                 torch.amp.GradScaler("cpu", enabled=False), skip_nonfinite=True, lookahead=la)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    for _ in range(3):  # a sync at step 2, then step 3 runs free
        step(x, y)
    slow, live = la.slow[0].clone(), model.weight.detach().clone()
    assert not torch.equal(slow, live)
    step(x * float("nan"), y)  # the last step is skipped: its sync (2 steps, keep 0.5^2) must still happen
    assert torch.allclose(model.weight, 0.25 * slow + 0.75 * live, atol=1e-6)


# ----------------------------------------------------------------------------- every network

@pytest.mark.parametrize("arch", [pytest.param(a, marks=slow_if(a in BIG)) for a in ARCHS])
def test_every_arch_trains_through_the_command(tmp_path, data_dir, arch):
    out = tmp_path / arch
    assert train.main(["--arch", arch, "--epochs", "1", "--subset", "20", "--batch-size", "10",
                       "--eval-batch-size", "20", "--data", data_dir, "--out", str(out)]) == 0
    summary = json.load(open(out / "summary.json"))
    assert summary["arch"] == arch and summary["params"] > 0 and summary["flops"] > 0
    # one epoch: best.pt holds the final weights, so the three test figures are one evaluation of them
    assert summary["best_test_acc"] == summary["final_test_acc"] == summary["final"]["test_acc"]
    assert summary["best_test_acc"] * 20 == pytest.approx(round(summary["best_test_acc"] * 20))  # of 20 images
    # and the two steps of the epoch changed the weights it started from (seed 0, as train.py builds them)
    torch.manual_seed(0)
    start = build_model(arch).state_dict()
    trained = runfiles.load_checkpoint(str(out / "best.pt"))["model"]
    assert summary["final"]["step"] == 2 and any(not torch.equal(start[k], v) for k, v in trained.items()
                                                  if v.is_floating_point() and "running" not in k)


# ----------------------------------------------------------------------------- the fast recipe's parts

def test_tta_flag_reports_a_second_figure(tmp_path, data_dir, monkeypatch):
    """... computed with the last epoch's test pass as its plain view (not a pass of its own), whose time counts
    in the TTA's."""
    out, given = tmp_path / "tta", []
    monkeypatch.setattr(train, "TTA", lambda *a, plain=None, **k: given.append(plain) or evaluate_module.TTA(
        *a, plain=plain, **k))
    assert train.main([*QUICK, "--tta", "translate", "--data", data_dir, "--out", str(out)]) == 0
    s = json.load(open(out / "summary.json"))
    assert s["tta"] == "translate" and s["tta_eval_s"] > 0
    assert len(given) == 1 and given[0].shape == (200, 10)  # the 200 test images' logits
    assert s["tta_eval_s"] > json.loads(open(out / "metrics.jsonl").readlines()[-1])["eval_time"]  # that pass counts
    assert s["tta_test_acc"] * 200 == pytest.approx(round(s["tta_test_acc"] * 200))  # a count of the 200 images
    # the figure itself: test_evaluate.py checks it equals evaluate.py's flip+translate TTA on the same weights


def test_eval_every_skips_epochs_and_reuses_the_last_epochs_figure(tmp_path, data_dir, monkeypatch):
    """--eval-every 2 over 3 epochs: the test set is read after epochs 2 and 3 only, the final figure is
    the last epoch's (not a third pass), and the figures equal those of a run that evaluates every epoch;
    --eval-every 0: after the last epoch only."""
    flags = [*QUICK, "--epochs", "3", "--data", data_dir]
    assert train.main([*flags, "--out", str(tmp_path / "every")]) == 0
    calls = []
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: calls.append(1) or evaluate(*a, **k))
    assert train.main([*flags, "--eval-every", "2", "--out", str(tmp_path / "sparse")]) == 0
    every, sparse = (json.load(open(tmp_path / d / "summary.json")) for d in ("every", "sparse"))
    rows = [json.loads(line) for line in open(tmp_path / "sparse" / "metrics.jsonl")]
    assert ["test_acc" in r for r in rows] == [False, True, True]
    assert sparse["final_test_acc"] == every["final_test_acc"] == rows[-1]["test_acc"]
    assert len(calls) == 2 + (sparse["best_epoch"] != 3)  # best.pt is read again only if it is not the last epoch
    assert train.main([*flags, "--eval-every", "0", "--out", str(tmp_path / "last")]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "last" / "metrics.jsonl")]
    assert ["test_acc" in r for r in rows] == [False, False, True]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_the_page_faults_of_reallocation():
    """A CPU run re-allocates the same big activations every step: with keep_freed_memory they come back
    without page faults (the first rounds fill the heap), without it every round faults them in again."""
    # in a process set up as train.py's is (train imports everything a run needs): the heap's layout before the
    # first big block decides where freed blocks land, and a bare `import runtime` leaves another layout
    code = ("import resource, sys, torch, runtime, train\n"
            "if sys.argv[1] == '1': runtime.keep_freed_memory()\n"
            "out = []\n"
            "for i in range(4):\n"
            "    f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    x, y = torch.ones(50_000_000), torch.ones(20_000_000)\n"
            "    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)\n"
            "    del x, y\n"
            "print(out[0], out[-1])\n")
    faults = {}
    for on in ("0", "1"):
        r = subprocess.run([sys.executable, "-c", code, on], cwd=os.path.dirname(runtime.__file__),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        faults[on] = [int(v) for v in r.stdout.split()]
    assert faults["0"][1] > 0.5 * faults["0"][0] > 20_000  # 280 MB: ~68,000 pages each round
    assert faults["1"][1] < 0.05 * faults["1"][0]


@pytest.mark.slow
def test_compile_trains_like_eager_and_saves_plain_weights(tmp_path, data_dir):
    """--compile runs the same training (fp32: the same losses up to kernel rounding) and its checkpoints hold the
    raw model's weights, loadable without torch.compile's _orig_mod. prefix."""
    rows, ckpts = {}, {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        out = str(tmp_path / name)
        assert train.main([*QUICK, "--amp", "off", "--data", data_dir, "--out", out, *extra]) == 0
        rows[name] = json.loads(open(os.path.join(out, "metrics.jsonl")).readline())
        ckpts[name] = runfiles.load_checkpoint(os.path.join(out, "last.pt"))
    assert list(ckpts["compiled"]["model"]) == list(ckpts["eager"]["model"])
    for k in ("train_loss", "test_loss"):
        assert rows["compiled"][k] == pytest.approx(rows["eager"][k], rel=1e-3)
    assert ckpts["compiled"]["args"]["compile"] and not ckpts["eager"]["args"]["compile"]


def test_a_cpu_chosen_by_name_keeps_freed_memory_as_auto_does(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1))
    assert runtime.pick_device(log=lambda m: None, name="cpu").type == "cpu"
    assert calls == ([1] if sys.platform.startswith("linux") else [])


def test_the_default_run_folder_is_named_by_rank_0(monkeypatch, tmp_path):
    """Under torchrun each rank reads its own clock; the folder every rank prints and resumes from is rank 0's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runfiles, "rank0_value", lambda value: ("runs/from-rank-0", None))
    args = train.get_parser().parse_args([])
    assert runfiles.prepare_run_dir(args, train.get_parser()) == "runs/from-rank-0"


def test_runs_started_in_the_same_second_get_folders_of_their_own(monkeypatch, one_second):
    """Two runs at once (one a core) with the default folder: each claims its own, and one refused before it wrote
    anything leaves none behind."""
    exits = one_second
    args = train.get_parser().parse_args(["--arch", "fastnet"])
    folders = [runfiles.prepare_run_dir(args, train.get_parser()) for _ in range(3)]
    assert folders == [os.path.join("runs", "fastnet-20261201-171318" + k) for k in ("", "-2", "-3")]
    assert all(os.path.isdir(f) for f in folders)
    open(os.path.join(folders[0], "config.json"), "w").close()
    for f, a in exits:
        f(*a)
    assert os.path.isdir(folders[0]) and not os.path.exists(folders[1]) and not os.path.exists(folders[2])
    os.remove(os.path.join(folders[0], "config.json"))
    exits[0][0](*exits[0][1])
    assert not os.path.exists("runs")  # made for that run alone, so gone with it
    monkeypatch.setattr(runfiles, "claim_run_dir", lambda arch: (_ for _ in ()).throw(PermissionError(13, "Denied")))
    with pytest.raises(SystemExit) as e:
        runfiles.prepare_run_dir(args, train.get_parser())
    assert e.value.code == 2


# ----------------------------------------------------------------------------- hard-example selection

class Images:
    """What HardExamples reads from a loader: its number of batches and clean images for the whitening."""
    def __len__(self):
        return 8

    def clean_images(self, n):
        return torch.randn(64, 3, 32, 32)


def test_selection_trains_on_the_proxys_hardest_share_and_teaches_it_every_kth_batch():
    torch.manual_seed(0)
    args = types.SimpleNamespace(**{**vars(train.get_parser().parse_args([])), "select_frac": 0.25, "select_every": 2,
                                    "label_smoothing": 0.2})
    select = HardExamples(args, Images(), torch.device("cpu"), None, 10)
    x, y = torch.randn(40, 3, 32, 32), torch.randint(0, 10, (40,))
    grads = []  # the gradient reaching the proxy's logits: it must come from its pick only

    def keep_grad(module, inputs, out):
        if out.requires_grad:
            out.register_hook(grads.append)
    select.proxy.head.register_forward_hook(keep_grad)
    for batch in range(4):
        before = [p.detach().clone() for p in select.proxy.parameters()]
        with torch.no_grad():  # the proxy's loss per image, from a copy (scoring also moves BN's running statistics)
            losses = nn.functional.cross_entropy(copy.deepcopy(select.proxy)(x), y, reduction="none",
                                                 label_smoothing=0.2)
        xs, ys = select(x, y)
        hard = losses.topk(10).indices
        assert torch.equal(xs, x[hard]) and torch.equal(ys, y[hard])
        learnt = any(not torch.equal(a, p) for a, p in zip(before, select.proxy.parameters()))
        assert learnt == (batch % 2 == 0) and len(grads) == batch // 2 + 1, batch
        if learnt:
            assert set(grads[-1].abs().sum(1).nonzero().flatten().tolist()) == set(hard.tolist())
    assert select.scheduler.last_epoch == 2
    select.move_to(7)  # as a run resumed with another number of processes: 4 proxy steps before batch 7
    assert select.batches == 7 and select.scheduler.last_epoch == 4
    factor = optim.lr_factor(4, args.epochs * len(Images()) / 2, 0, "cosine")
    assert select.optimizer.param_groups[0]["lr"] == select.scheduler.base_lrs[0] * factor


def test_last_loss_selection_picks_by_the_loss_when_last_trained_on_plus_its_age():
    """--select-by loss: the first epoch trains on whole batches and fills the table; later each batch gives its
    top share by recorded loss + AGE per epoch since; trained() records the step's per-image losses."""
    select = LastLoss(0.5, 10, torch.device("cpu"))
    x, y, idx = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 3]), torch.tensor([7, 2, 5, 0])
    assert select(x, y, idx, 0)[0] is x
    logits = torch.zeros(4, 10)
    logits[torch.arange(4), y] = torch.tensor([4.0, 0.0, 3.0, 6.0])  # the least sure: image 2 (row 1), then 5
    select.trained(logits, y)
    want = nn.functional.cross_entropy(logits, y, reduction="none")
    assert torch.equal(select.loss[idx], want) and select.epoch[idx].tolist() == [0.0] * 4
    select.epoch[0] = -10  # the surest, image 0 (row 3), but last trained on 11 epochs before epoch 1
    xs, ys = select(x, y, idx, 1)
    assert want[3] + AGE * 11 > want[1] > want[2] > want[3]  # so the age moves image 0 ahead of 2 and 5
    assert ys.tolist() == [3, 1] and torch.equal(xs, x[[3, 1]]) and select.picked.tolist() == [0, 2]
    select.trained(logits[[3, 1]], ys)
    assert select.epoch[[0, 2]].tolist() == [1.0, 1.0] and select.epoch[[7, 5]].tolist() == [0.0, 0.0]
    again = LastLoss(0.5, 10, torch.device("cpu"))
    again.load_state_dict(select.state_dict())
    assert torch.equal(again.loss, select.loss) and torch.equal(again.epoch, select.epoch)


@pytest.mark.parametrize("by, stop_at, sizes", [("proxy", 2, [25] * 8), ("loss", 6, [50] * 4 + [25] * 4)])
def test_a_selecting_run_steps_on_the_hard_half_and_resumes_to_identical_weights(tmp_path, data_dir, monkeypatch,
                                                                                 by, stop_at, sizes):
    """--select-frac 0.5: every step sees 25 of the batch's 50 images (by loss: from the second epoch). A run
    stopped by SIGTERM and resumed ends on the weights of a run that was not stopped: the proxy or the table of
    losses is in last.pt too."""
    real, seen = train.make_train_step, []

    def recording(stop_at=None):
        def make(*a, **k):
            inner = real(*a, **k)

            def step(x, y):
                seen.append(len(x))
                if len(seen) == stop_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                return inner(x, y)
            return step
        return make
    flags = [*QUICK, "--epochs", "2", "--select-frac", "0.5", "--select-by", by, "--data", data_dir]
    flags += ["--select-every", "3"] if by == "proxy" else []
    monkeypatch.setattr(train, "make_train_step", recording())
    assert train.main([*flags, "--out", str(tmp_path / "whole")]) == 0
    assert seen == sizes
    monkeypatch.setattr(train, "make_train_step", recording(stop_at=stop_at))
    seen.clear()
    assert train.main([*flags, "--out", str(tmp_path / "cut")]) == 128 + signal.SIGTERM
    assert train.main(["--resume", str(tmp_path / "cut"), "--data", data_dir]) == 0
    a, b = (runfiles.load_checkpoint(str(tmp_path / run / "last.pt")) for run in ("whole", "cut"))
    if by == "proxy":
        assert b["hard"]["batches"] == 8
    else:  # the table as the uninterrupted run left it: a lost one would miss the steps before the stop
        assert torch.equal(a["hard"]["loss"], b["hard"]["loss"]) and torch.equal(a["hard"]["epoch"], b["hard"]["epoch"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_the_graphed_step_trains_exactly_as_the_eager_one():
    """--cuda-graph: after 3 eager warm-up steps the step is captured once per batch shape, each shape first run
    eagerly once, and replayed (on a CPU the replay calls the same function on the static inputs), the lr read
    from a tensor that every step fills; a change of which parameters train captures again. Outputs and
    weights stay those of the eager step with the same tensor lr, bit for bit."""
    args = recipes.parse_args(train.get_parser(), ["--recipe", "fast", "--epochs", "1", "--data", "x"])
    torch.manual_seed(0)
    base = build_model("fastnet", num_classes=4)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g))
               for n in (8, 8, 8, 8, 8, 5, 8, 5, 8, 8, 5, 8, 5)]
    weights = []
    for graphed in (False, True):
        model = copy.deepcopy(base)
        opt, sched, scaler, loss = optim.training_parts(model, args, torch.device("cpu"), torch.bfloat16, len(batches))
        step = optim.make_train_step(model, opt, sched, loss, torch.device("cpu"), torch.bfloat16, scaler,
                                     cuda_graph=graphed)
        if not graphed:
            opt.use_device_lr(torch.device("cpu"))
        outputs = []
        for i, (x, y) in enumerate(batches):
            model.set_epoch(0 if i < 7 else 9)  # fastnet freezes its whitening bias: another set of trained weights
            if not graphed:  # the graphed step loads it itself
                opt.load_lr()
            outputs += [t.clone() for t in step(x, y)]  # as the caller reads them, before the next step
        weights.append([p.detach().clone() for p in model.parameters()] + outputs)
    assert step.graphed.captures == 3  # batches of 8 (4th step); after the freeze, of 8 and 5 (each seen once before)
    last_lr = sched.base_lrs[0] * optim.lr_factor(len(batches) - 1, len(batches), 0, "linear")  # the last step's
    assert opt.device_lr[0].item() == pytest.approx(last_lr) and last_lr > 0
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_a_graphed_fast_run_ends_on_the_weights_of_an_eager_one(tmp_path, data_dir, monkeypatch):
    """train.py --recipe fast --cuda-graph end to end on a CPU (4 epochs: the whitening bias freezes after
    the 3rd, lookahead syncs every 5 steps): the figures and weights of an eager run whose Muon reads the
    same tensor lr (a float lr rounds its update apart, and bf16's Newton-Schulz lets that grow)."""
    flags = ["--recipe", "fast", "--subset", "200", "--batch-size", "50", "--epochs", "4", "--tta", "none",
             "--data", data_dir]
    assert train.main([*flags, "--cuda-graph", "--out", str(tmp_path / "graphed")]) == 0
    real = train.make_train_step

    def eager_with_a_tensor_lr(model, optimizer, *a, **k):
        optimizer.use_device_lr(torch.device("cpu"))
        inner = real(model, optimizer, *a, **k)

        def step(x, y):
            optimizer.load_lr()
            return inner(x, y)
        return step
    monkeypatch.setattr(train, "make_train_step", eager_with_a_tensor_lr)
    assert train.main([*flags, "--out", str(tmp_path / "eager")]) == 0
    assert training_metrics(str(tmp_path / "eager")) == training_metrics(str(tmp_path / "graphed"))
    a, b = (runfiles.load_checkpoint(str(tmp_path / run / "last.pt")) for run in ("eager", "graphed"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
