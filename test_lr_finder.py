"""lr_finder.py: state restored bit-for-bit, the divergence stop, suggestions on a problem whose
good lr range is known exactly, and the command line end to end (lenet on the CPU).

Uses the real CIFAR-10 copy when $CIFAR10_DIR is set, else synthetic pickles.
"""
import copy
import os
import shlex

import pytest
import torch
import torch.nn as nn

import lr_finder
import train

from conftest import run_script


# ----------------------------------------------------------------------------- helpers

class Tiny(nn.Module):
    """Conv + BatchNorm + Linear: weights, running stats and a num_batches_tracked counter."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def image_batches(n=4, b=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 3, 8, 8, generator=g), torch.randint(0, 10, (b,), generator=g)) for _ in range(n)]


def whitened_regression(n=512, d=8, seed=0):
    """Full-batch least squares with x.T @ x / n = I exactly: the Hessian of nn.MSELoss is 2I, so
    each plain SGD step scales the error by (1 - 2 lr). Known answer: lr > 1 diverges, and 50
    constant-lr steps bring the loss under 1% of its start iff |1 - 2 lr|**100 < 0.01, i.e. for
    lr in (0.023, 0.977). Returns (model, optimizer, loader)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=g))
    x = q * n ** 0.5
    y = x @ torch.randn(d, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    model = nn.Linear(d, 1, bias=False)
    nn.init.zeros_(model.weight)
    return model, torch.optim.SGD(model.parameters(), lr=0.1), [(x, y)]


GOOD_RANGE = (0.023, 0.977)


def assert_same(a, b, where="state"):
    """Recursive bit-for-bit equality of (nested) state dicts."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# ----------------------------------------------------------------------------- find_lr as a library

@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_find_lr_restores_model_and_optimizer_bit_for_bit(opt):
    torch.manual_seed(0)
    model = Tiny()
    optimizer = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
                 if opt == "sgd" else torch.optim.Adam(model.parameters(), lr=1e-3))
    criterion = nn.CrossEntropyLoss()
    for x, y in image_batches(3, seed=1):  # momentum buffers, Adam moments and steps, BN running stats exist
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
    optimizer.param_groups[0]["lr"] = 0.0123  # a hand-set lr find_lr must put back
    model.eval()
    model_before = copy.deepcopy(model.state_dict())
    opt_before = copy.deepcopy(optimizer.state_dict())
    grads_before = [p.grad.clone() for p in model.parameters()]

    seen = []

    def spy(out, y):  # the weights during the test, to show they did move
        seen.append(model.fc.weight.detach().clone())
        return criterion(out, y)

    curve = lr_finder.find_lr(model, optimizer, image_batches(), spy, start_lr=1e-4, end_lr=10, num_iter=25)
    assert len(curve["lr"]) >= 10 and not torch.equal(seen[-1], model_before["fc.weight"])
    assert_same(model.state_dict(), model_before, "model")
    assert_same(optimizer.state_dict(), opt_before, "optimizer")
    assert optimizer.param_groups[0]["lr"] == 0.0123
    for p, g in zip(model.parameters(), grads_before):
        assert torch.equal(p.grad, g)
    assert not model.training
    # the optimizer still drives the same tensors: a step after find_lr moves the model
    optimizer.zero_grad()
    criterion(model(image_batches(1)[0][0]), image_batches(1)[0][1]).backward()
    optimizer.step()
    assert not torch.equal(model.fc.weight, model_before["fc.weight"])


def test_find_lr_restores_state_when_interrupted():
    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model_before, opt_before = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    calls = []

    def interrupted(out, y):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return nn.functional.cross_entropy(out, y)

    with pytest.raises(KeyboardInterrupt):
        lr_finder.find_lr(model, optimizer, image_batches(), interrupted, num_iter=20)
    assert_same(model.state_dict(), model_before, "model")
    assert_same(optimizer.state_dict(), opt_before, "optimizer")


def test_lr_schedule_and_bias_corrected_smoothing():
    assert lr_finder.lr_at(0, 100, 1e-7, 10) == pytest.approx(1e-7)
    assert lr_finder.lr_at(99, 100, 1e-7, 10) == pytest.approx(10)
    assert lr_finder.lr_at(50, 101, 1e-6, 1) == pytest.approx(1e-3)            # geometric: the middle in log
    assert lr_finder.lr_at(50, 101, 0.0, 1.0, "linear") == pytest.approx(0.5)
    model, optimizer, loader = whitened_regression()

    def constant(out, y):
        return out.sum() * 0 + 1.5

    curve = lr_finder.find_lr(model, optimizer, loader, constant, start_lr=1e-3, end_lr=1, num_iter=12, mode="linear")
    assert curve["lr"] == pytest.approx([lr_finder.lr_at(i, 12, 1e-3, 1, "linear") for i in range(12)])
    assert curve["smooth"] == pytest.approx([1.5] * 12)                        # no pull towards 0 at the start
    assert curve["stopped"] is None


def test_divergence_stop_fires():
    model, optimizer, loader = whitened_regression()
    curve = lr_finder.find_lr(model, optimizer, loader, nn.MSELoss(), start_lr=1e-3, end_lr=1e3, num_iter=100)
    sm = curve["smooth"]
    assert curve["stopped"] == "diverged" and len(sm) < 100
    assert sm[-1] > 5 * min(sm) and all(s <= 5 * min(sm[:i + 1]) for i, s in enumerate(sm[:-1]))
    assert 1 < curve["lr"][-1] < 10                                            # soon after the stability limit lr = 1
    # with the stop switched off it runs into a non-finite loss, and stops there
    model, optimizer, loader = whitened_regression()
    curve = lr_finder.find_lr(model, optimizer, loader, nn.MSELoss(), start_lr=1e-3, end_lr=1e3, num_iter=100,
                              diverge=float("inf"))
    assert curve["stopped"] == "nonfinite" and len(curve["lr"]) < 100


@pytest.mark.parametrize("start_lr,num_iter", [(1e-7, 100), (1e-5, 60), (1e-3, 200)])
def test_suggestions_land_in_the_known_good_range(start_lr, num_iter):
    model, optimizer, loader = whitened_regression()
    curve = lr_finder.find_lr(model, optimizer, loader, nn.MSELoss(), start_lr=start_lr, end_lr=100,
                              num_iter=num_iter)
    suggestions = lr_finder.suggest_lr(curve)
    for name, lr in suggestions.items():
        assert GOOD_RANGE[0] < lr < GOOD_RANGE[1], (name, lr, suggestions)


def test_no_usable_descent_is_an_error_not_a_number():
    model, optimizer, loader = whitened_regression()
    flat = lr_finder.find_lr(model, optimizer, loader, nn.MSELoss(), start_lr=1e-7, end_lr=1e-6, num_iter=50)
    with pytest.raises(lr_finder.NoDescent, match="never fell below"):
        lr_finder.suggest_lr(flat)
    blown = lr_finder.find_lr(model, optimizer, loader, nn.MSELoss(), start_lr=10, end_lr=1e3, num_iter=50)
    with pytest.raises(lr_finder.NoDescent, match="lower --start-lr"):
        lr_finder.suggest_lr(blown)


def test_longest_valley_follows_fastai():
    # longest decreasing subsequence 9, 8.5, 8, 5, 4, 2, 1 (7 members) ends at index 9; fastai's start is 9 - 7
    y = [3.0, 9.0, 8.5, 7.0, 8.0, 5.0, 4.0, 4.5, 2.0, 1.0, 6.0]
    assert lr_finder.longest_valley(y) == (2, 9)
    drift = [1.0, 1.001, 1.0, 0.999, 0.5, 0.2]  # a slow drift on the plateau only counts without a tolerance
    assert lr_finder.longest_valley(drift) == (0, 5) and lr_finder.longest_valley(drift, tol=0.01) == (2, 5)


# ----------------------------------------------------------------------------- the command line

def test_printed_command_is_valid_for_train_py():
    ap = lr_finder.get_parser()
    args = ap.parse_args(["--arch", "lenet", "--batch-size", "64", "--optimizer", "adamw", "--wd", "0.05",
                          "--nesterov", "--label-smoothing", "0.1", "--mix", "cutmix", "--mix-off-epochs", "5",
                          "--data", "/some where/cifar", "--subset", "2000", "--num-iter", "30", "--amp", "off",
                          "--val", "5000", "--out", "x", "--force"])
    cmd = lr_finder.train_command(args, 0.0031622)
    argv = shlex.split(cmd)
    assert argv[:2] == ["python", "train.py"] and "--subset" not in argv and "--out" not in argv
    targs = train.get_parser().parse_args(argv[2:])
    assert (targs.arch, targs.lr, targs.batch_size, targs.optimizer, targs.wd) == ("lenet", 0.0032, 64, "adamw", 0.05)
    assert targs.nesterov and targs.label_smoothing == 0.1 and targs.mix == "cutmix" and targs.mix_off_epochs == 5
    assert (targs.data, targs.amp, targs.val, targs.subset) == ("/some where/cifar", "off", 5000, None)
    defaults = lr_finder.train_command(ap.parse_args([]), 0.1)
    assert defaults == "python train.py --arch resnet18 --lr 0.1"


def run(args):
    return run_script("lr_finder.py", *args, timeout=300)


def test_cli_lenet_end_to_end(tmp_path, data_dir):
    out = tmp_path / "lenet"
    r = run(["--arch", "lenet", "--subset", "2000", "--num-iter", "60", "--start-lr", "1e-4", "--end-lr", "1",
             "--optimizer", "adam", "--wd", "0", "--data", data_dir, "--out", str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    rows = (out / "lr_finder.csv").read_text().splitlines()
    assert rows[0] == "step,lr,loss,smooth_loss" and 10 < len(rows) <= 61
    assert os.path.getsize(out / "lr_finder.png") > 10_000
    for name in ("steepest", "valley", "min10"):
        assert name in r.stdout
    chosen = float(r.stdout.split("chosen (valley): ")[1].split()[0])
    cmd = r.stdout.strip().splitlines()[-1].strip()
    targs = train.get_parser().parse_args(shlex.split(cmd)[2:])
    assert cmd.startswith("python train.py --arch lenet") and targs.lr == chosen and targs.optimizer == "adam"
    assert 1e-4 <= chosen <= 1


def test_cli_val_loss_with_mixing_and_channels_last(tmp_path, data_dir, capsys):
    out = tmp_path / "val"
    code = lr_finder.main(["--arch", "lenet", "--subset", "2000", "--num-iter", "8", "--val-loss", "--mix", "cutmix",
                           "--mix-off-epochs", "2", "--channels-last", "--data", data_dir, "--out", str(out)])
    assert code in (0, 1)  # 8 steps may or may not show a descent; the run itself must work
    assert "loss on 1,000 held-out" in capsys.readouterr().out
    assert len((out / "lr_finder.csv").read_text().splitlines()) == 9


def test_cli_without_descent_says_so_and_suggests_nothing(tmp_path, data_dir, capsys):
    out = tmp_path / "flat"
    code = lr_finder.main(["--arch", "lenet", "--subset", "1000", "--start-lr", "1e-7", "--end-lr", "1e-6",
                           "--num-iter", "20", "--data", data_dir, "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1 and "no usable descent" in printed and "train.py" not in printed
    assert (out / "lr_finder.csv").exists() and (out / "lr_finder.png").exists()   # kept to look at


@pytest.mark.parametrize("bad,message", [
    (["--arch", "alexnet"], "unknown --arch"),
    (["--start-lr", "1", "--end-lr", "0.1"], "--start-lr"),
    (["--num-iter", "0"], "--num-iter must be positive"),
    (["--data", "/nonexistent/cifar"], "/nonexistent/cifar"),
])
def test_cli_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, capsys, bad, message):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as e:
        lr_finder.main([*bad, "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_refuses_to_overwrite(tmp_path, capsys):
    (tmp_path / "lr_finder.csv").write_text("precious\n")
    with pytest.raises(SystemExit) as e:
        lr_finder.main(["--arch", "lenet", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--force" in capsys.readouterr().err
    assert (tmp_path / "lr_finder.csv").read_text() == "precious\n"


def test_every_param_group_keeps_its_ratio_to_the_swept_lr():
    torch.manual_seed(0)
    model = Tiny()
    weights = [p for p in model.parameters() if p.ndim > 1]
    vectors = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": weights, "lr": 0.1}, {"params": vectors, "lr": 6.4}], lr=0.1)
    seen, criterion = [], nn.CrossEntropyLoss()

    def spy(out, y):
        seen.append([g["lr"] for g in optimizer.param_groups])
        return criterion(out, y)

    lr_finder.find_lr(model, optimizer, image_batches(), spy, start_lr=1e-4, end_lr=1, num_iter=10)
    assert len(seen) == 10 and seen[0][0] == pytest.approx(1e-4)
    assert all(v == pytest.approx(64 * w) for w, v in seen)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 6.4]  # put back afterwards


def test_cli_fastnet_gets_its_whitening_and_the_command_keeps_bias_lr_scale(tmp_path, data_dir, capsys, monkeypatch):
    import models
    calls, real = [], models.FastNet.init_from_data

    def spy(self, images, **kw):
        calls.append(images.shape)
        return real(self, images, **kw)

    monkeypatch.setattr(models.FastNet, "init_from_data", spy)
    code = lr_finder.main(["--arch", "fastnet", "--subset", "500", "--num-iter", "6", "--batch-size", "50",
                           "--bias-lr-scale", "64", "--data", data_dir, "--out", str(tmp_path / "f")])
    assert code in (0, 1) and len((tmp_path / "f" / "lr_finder.csv").read_text().splitlines()) == 7
    assert calls == [(500, 3, 32, 32)]
    args = lr_finder.get_parser().parse_args(["--arch", "fastnet", "--bias-lr-scale", "64"])
    assert lr_finder.train_command(args, 0.1) == "python train.py --arch fastnet --bias-lr-scale 64.0 --lr 0.1"
