"""lr_finder.py: state restored bit-for-bit, the divergence stop, suggestions on a problem whose
good lr range is known exactly, a suggestion from the default sweep where the loss is slow to
start falling, --recipe, and the command line end to end (lenet on the CPU).

Uses the real CIFAR-10 copy when $CIFAR10_DIR is set, else synthetic pickles.
"""
import copy
import json
import os
import shlex

import numpy as np
import pytest
import torch
import torch.nn as nn

import lr_finder
import recipes
import runfiles
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


class SlowStart(nn.Module):
    """y_hat = stiff * x[:, 0] + x[:, 1:] @ w1 @ w2. The two-layer path carries the target but starts
    near its saddle at 0 (tiny weights, tiny gradients): its loss only falls once the steps so far
    add up to enough lr. The stiff term carries almost no loss but, with feature variance h, blows
    up for any lr above 1 / h. A small network's plateau at its initial loss in miniature."""

    def __init__(self, d, g, k=4, init=1e-4, stiff=0.06):
        super().__init__()
        self.stiff = nn.Parameter(torch.tensor([stiff]))
        self.w1 = nn.Parameter(init * torch.randn(d - 1, k, generator=g))
        self.w2 = nn.Parameter(init * torch.randn(k, 1, generator=g))

    def forward(self, x):
        return x[:, :1] * self.stiff + x[:, 1:] @ self.w1 @ self.w2


def slow_start(n=256, d=8, h=25.0, target=3.0, seed=0):
    """(model, plain SGD, one full batch) of SlowStart on whitened features, x[:, 0] scaled to
    variance h: the loss starts at target**2 + h * 0.06**2 (the stiff part 1% of it) and any lr
    above 1 / h = 0.04 diverges in the end. Over the default range, 100 steps (fastai's count,
    12.5 per decade) reach that blow-up with the loss still on its plateau."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=g))
    x = q * n ** 0.5
    x[:, 0] *= h ** 0.5
    beta = torch.randn(d - 1, 1, generator=g)
    y = x[:, 1:] @ (target * beta / beta.norm())
    model = SlowStart(d, g)
    return model, torch.optim.SGD(model.parameters(), lr=0.1), [(x, y)]


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
    # keep_on_interrupt (the command line's way): the sweep ends with the 5 steps done, the state put back all the same
    calls.clear()
    curve = lr_finder.find_lr(model, optimizer, image_batches(), interrupted, num_iter=20, keep_on_interrupt=True)
    assert curve["stopped"] == "interrupted" and len(curve["lr"]) == len(curve["loss"]) == len(curve["smooth"]) == 5
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


def test_default_sweep_suggests_where_the_loss_is_slow_to_start_falling():
    d = lr_finder.get_parser().parse_args([])  # the command line's defaults
    sweep = dict(start_lr=d.start_lr, end_lr=d.end_lr, smooth=d.smooth, diverge=d.diverge)
    # the case is a hard one: 100 steps over the default range see no descent before the blow-up
    model, optimizer, loader = slow_start()
    short = lr_finder.find_lr(model, optimizer, loader, nn.MSELoss(), num_iter=100, **sweep)
    assert short["stopped"] == "diverged"
    with pytest.raises(lr_finder.NoDescent, match="steps per decade"):
        lr_finder.suggest_lr(short)
    # the default sweep has the steps per decade to see the loss fall, and still stops on the blow-up
    model, optimizer, loader = slow_start()
    curve = lr_finder.find_lr(model, optimizer, loader, nn.MSELoss(), num_iter=d.num_iter,
                              steps_per_decade=d.steps_per_decade, **sweep)
    assert curve["num_iter"] == lr_finder.planned_steps(d.start_lr, d.end_lr, d.steps_per_decade)
    assert curve["stopped"] == "diverged" and min(curve["smooth"]) < 0.9 * curve["smooth"][0]
    suggestions = lr_finder.suggest_lr(curve)
    for name, lr in suggestions.items():  # at lrs where the plateau is left, below the blow-up
        assert 1e-3 < lr < curve["lr"][-1], (name, lr, suggestions)


def test_steps_follow_the_range():
    assert lr_finder.planned_steps(1e-7, 10, 40) == 320
    assert lr_finder.planned_steps(1e-4, 1, 25) == 100
    assert lr_finder.planned_steps(1, 1.01, 40) == 2                            # never fewer than two
    model, optimizer, loader = whitened_regression()
    curve = lr_finder.find_lr(model, optimizer, loader, nn.MSELoss(), start_lr=1e-4, end_lr=1e-2, steps_per_decade=10)
    assert curve["num_iter"] == len(curve["lr"]) == 20 and curve["lr"][-1] == pytest.approx(1e-2)


def test_the_plot_is_written_whole_with_the_mark_of_lr_finder(tmp_path):
    """lr_finder.png carries the toolkit's mark naming lr_finder.py (runfiles.save_figure), as every figure it draws."""
    from PIL import Image
    lrs = np.geomspace(1e-5, 1, 50)
    loss = 2.3 - np.minimum(np.log10(lrs / 1e-5), 3.5) * 0.4 + np.maximum(np.log10(lrs / 10 ** -1.5), 0) * 3
    curve = {"lr": lrs.tolist(), "loss": loss.tolist(), "smooth": loss.tolist(), "stopped": "end"}
    path = str(tmp_path / "lr_finder.png")
    lr_finder.plot_curve(curve, lr_finder.suggest_lr(curve), path, chosen="valley")
    assert runfiles.drawn_by_us(path)
    assert Image.open(path).text[runfiles.MARK_KEY].startswith(f"{runfiles.MARK} lr_finder.py")
    assert os.listdir(tmp_path) == ["lr_finder.png"]  # no temp file left


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


def shared_flags():
    """The train.py flags lr_finder has (and so takes from a recipe), less those that stay here
    (--subset, --out, --force); lr is no flag here, only what --aux-lr is relative to."""
    ours = set(vars(lr_finder.get_parser().parse_args([])))
    return (ours & set(vars(train.get_parser().parse_args([])))) - {"recipe", "list_recipes", "subset", "out",
                                                                    "force", "lr"}


def test_recipe_fills_the_flags_and_explicit_flags_win(capsys):
    ap = lr_finder.get_parser()
    args = recipes.parse_args(ap, ["--recipe", "report002-resnet9"])
    assert (args.arch, args.batch_size, args.optimizer, args.momentum, args.wd) == ("resnet9", 64, "sgd", 0.9, 0.032)
    assert (args.start_lr, args.end_lr, args.num_iter) == (1e-7, 10.0, None)   # the sweep keeps its own defaults
    args = recipes.parse_args(lr_finder.get_parser(), ["--recipe", "report002-resnet9", "--batch-size", "128",
                                                         "--wd", "0", "--arch", "resnet18"])
    assert (args.arch, args.batch_size, args.optimizer, args.wd) == ("resnet18", 128, "sgd", 0.0)
    # every flag lr_finder shares with train.py comes from the recipe, whichever recipe
    for name, recipe in recipes.RECIPES.items():
        args = recipes.parse_args(lr_finder.get_parser(), ["--recipe", name])
        targs = recipes.parse_args(train.get_parser(), ["--recipe", name])
        for dest in shared_flags() | {"lr"}:
            assert getattr(args, dest) == getattr(targs, dest), (name, dest)
        assert args.optimizer == recipe.get("optimizer", "sgd")
    with pytest.raises(SystemExit) as e:
        recipes.parse_args(lr_finder.get_parser(), ["--list-recipes"])
    assert e.value.code == 0 and "report002-resnet9" in capsys.readouterr().out


@pytest.mark.parametrize("argv,pick,expected", [
    (["--recipe", "report002-resnet9"], 0.0031622, "python train.py --recipe report002-resnet9 --lr 0.0032"),
    (["--recipe", "report002-resnet9", "--batch-size", "128", "--wd", "0", "--arch", "resnet18", "--nesterov",
      "--subset", "5000", "--num-iter", "50"], 0.05,
     "python train.py --recipe report002-resnet9 --arch resnet18 --batch-size 128 --nesterov --wd 0.0 --lr 0.05"),
    (["--recipe", "report004-dainet7", "--betas", "0.9", "0.999"], 3e-4,
     "python train.py --recipe report004-dainet7 --betas 0.9 0.999 --lr 0.0003"),
    # muon: the sweep kept --aux-lr / --lr at the recipe's 0.005125 / 0.12; the command keeps it at the pick
    (["--recipe", "fast"], 0.06, "python train.py --recipe fast --aux-lr 0.002563 --lr 0.06"),
    (["--recipe", "fast"], 0.12, "python train.py --recipe fast --lr 0.12"),
])
def test_printed_command_with_a_recipe_reproduces_the_setting(argv, pick, expected):
    args = recipes.parse_args(lr_finder.get_parser(), argv)
    cmd = lr_finder.train_command(args, pick)
    assert cmd == expected
    tp = train.get_parser()
    targs = recipes.parse_args(tp, shlex.split(cmd)[2:])
    for dest in shared_flags() - {"aux_lr"}:  # what the range test ran with is what train.py runs with
        assert getattr(targs, dest) == getattr(args, dest), dest
    assert targs.lr == float(f"{pick:.2g}") and targs.subset is None
    if args.optimizer == "muon":  # the non-filter groups at the ratio the sweep ran them at
        assert targs.aux_lr / targs.lr == pytest.approx(args.aux_lr / args.lr, rel=2e-3)
    else:
        assert targs.aux_lr == args.aux_lr
    recipe = recipes.RECIPES[args.recipe]
    assert (targs.epochs, targs.schedule) == (recipe["epochs"], recipe["schedule"])  # carried by --recipe


def test_cli_recipe_with_muon_runs(tmp_path, data_dir, capsys):
    # the fast recipe: fastnet, Muon for the filters and its other groups at the recipe's ratio
    code = lr_finder.main(["--recipe", "fast", "--subset", "200", "--batch-size", "50", "--num-iter", "4",
                           "--data", data_dir, "--out", str(tmp_path / "m")])
    printed = capsys.readouterr().out
    assert code in (0, 1) and "lr range test: fastnet (recipe fast), muon, batch 50, 4 steps" in printed
    assert len((tmp_path / "m" / "lr_finder.csv").read_text().splitlines()) == 5


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
    js = json.loads((out / "suggestions.json").read_text())  # what was printed, for scripts
    assert js["suggest"] == "valley" and f"{js['chosen_lr']:.2g}" == f"{chosen:.2g}" and js["train_command"] == cmd
    assert set(js["suggestions"]) == {"steepest", "valley", "min10"} and js["steps"] == len(rows) - 1


@pytest.mark.slow
def test_cli_lenet_on_the_defaults_suggests(tmp_path, data_dir):
    # only --data and --out, as a user's first run: LeNet's loss is slow to leave its start, the case
    # the steps per decade are for
    out = tmp_path / "defaults"
    r = run(["--arch", "lenet", "--data", data_dir, "--out", str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{lr_finder.planned_steps(1e-7, 10)} steps from 1e-07 to 10" in r.stdout
    chosen = float(r.stdout.split("chosen (valley): ")[1].split()[0])
    targs = train.get_parser().parse_args(shlex.split(r.stdout.strip().splitlines()[-1])[2:])
    assert (targs.arch, targs.lr, targs.optimizer, targs.batch_size) == ("lenet", chosen, "sgd", 128)
    assert 1e-3 < chosen < 1


def test_cli_val_loss_with_mixing_and_channels_last(tmp_path, data_dir, capsys):
    out = tmp_path / "val"
    # lrs far too small to move the held-out loss (the same 1,000 images after every step): the run
    # must work, and its answer is a refusal
    code = lr_finder.main(["--arch", "lenet", "--subset", "2000", "--num-iter", "8", "--val-loss", "--mix", "cutmix",
                           "--mix-off-epochs", "2", "--channels-last", "--start-lr", "1e-7", "--end-lr", "1e-6",
                           "--data", data_dir, "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1 and "loss on 1,000 held-out" in printed and "no usable descent" in printed
    assert len((out / "lr_finder.csv").read_text().splitlines()) == 9


def test_cli_without_descent_says_so_and_suggests_nothing(tmp_path, data_dir, capsys):
    out = tmp_path / "flat"
    code = lr_finder.main(["--arch", "lenet", "--subset", "1000", "--start-lr", "1e-7", "--end-lr", "1e-6",
                           "--num-iter", "20", "--data", data_dir, "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1 and "no usable descent" in printed and "train.py" not in printed
    assert (out / "lr_finder.csv").exists() and (out / "lr_finder.png").exists()   # kept to look at
    js = json.loads((out / "suggestions.json").read_text())
    assert js["suggestions"] == {} and "no_suggestion" in js and "chosen_lr" not in js


def interrupt_at(monkeypatch, step):
    """Ctrl-C as step `step` of the sweep begins (find_lr asks lr_at for each step's lr first)."""
    real = lr_finder.lr_at

    def ctrl_c(i, *args, **kw):
        if i == step:
            raise KeyboardInterrupt
        return real(i, *args, **kw)

    monkeypatch.setattr(lr_finder, "lr_at", ctrl_c)
    return real


@pytest.mark.parametrize("done", [0, 3, 30])
def test_ctrl_c_writes_the_steps_done_and_exits_130(tmp_path, data_dir, capsys, monkeypatch, done):
    """Ctrl-C after `done` of 60 steps: the csv, the plot and suggestions.json as a whole sweep writes them, with
    only those steps and marked as interrupted; exit 130, one line on stderr. 3 steps are too few for a suggestion
    (the first 6 are skipped): the curve is still written; no step at all: nothing is."""
    real = interrupt_at(monkeypatch, done)
    out = tmp_path / "cut"
    code = lr_finder.main(["--arch", "lenet", "--subset", "2000", "--num-iter", "60", "--start-lr", "1e-4",
                           "--end-lr", "1", "--optimizer", "adam", "--wd", "0", "--data", data_dir, "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 130 and len(printed.err.strip().splitlines()) == 1, printed.err
    if done == 0:
        assert printed.err.strip() == "lr_finder.py: interrupted before the first step; nothing written"
        assert not out.exists()
        return
    assert printed.err.strip().startswith(f"lr_finder.py: interrupted after {done} of 60 steps; wrote the steps "
                                          f"done to {out}")
    assert f"interrupted after {done} of 60 steps;" in printed.out
    rows = (out / "lr_finder.csv").read_text().splitlines()
    assert rows[0] == "step,lr,loss,smooth_loss" and len(rows) == done + 1
    assert [float(r.split(",")[1]) for r in rows[1:]] == [real(i, 60, 1e-4, 1) for i in range(done)]
    assert os.path.getsize(out / "lr_finder.png") > 10_000
    js = json.loads((out / "suggestions.json").read_text())
    assert (js["interrupted"], js["stopped"], js["steps"], js["planned_steps"]) == (True, "interrupted", done, 60)
    if done == 3:
        assert js["suggestions"] == {} and "chosen_lr" not in js and "train.py" not in printed.out
        assert js["no_suggestion"] == ("interrupted after 3 steps, too few to see a descent: it takes 10, "
                                       "the first 6 skipped")
        assert printed.err.strip().endswith(", with no suggestion")
    else:  # the loss fell in those steps: suggestions from them, within the lrs swept
        assert set(js["suggestions"]) == {"steepest", "valley", "min10"}
        assert all(1e-4 <= lr <= real(done - 1, 60, 1e-4, 1) for lr in js["suggestions"].values())
        assert js["train_command"] in printed.out


def test_a_second_ctrl_c_while_writing_is_one_line_exit_130(tmp_path, data_dir, capsys, monkeypatch):
    interrupt_at(monkeypatch, 5)

    def ctrl_c_again(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(lr_finder, "plot_curve", ctrl_c_again)
    out = tmp_path / "again"
    code = lr_finder.main(["--arch", "lenet", "--subset", "500", "--num-iter", "20", "--data", data_dir,
                           "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 130 and err == (f"lr_finder.py: interrupted while writing to {out}; some of its files may be "
                                   "missing or left from an earlier run")
    assert (out / "lr_finder.csv").exists() and not (out / "lr_finder.png").exists()


@pytest.mark.parametrize("bad,message", [
    (["--arch", "alexnet"], "unknown --arch"),
    (["--start-lr", "1", "--end-lr", "0.1"], "--start-lr"),
    (["--num-iter", "0"], "--num-iter must be positive"),
    (["--num-iter", "3"], "3 steps can never give a suggestion (it takes at least 4): raise --num-iter"),
    (["--start-lr", "1", "--end-lr", "1.1"], "2 steps can never give a suggestion"),
    (["--data", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--recipe", "nope"], "unknown --recipe 'nope'"),
    (["--recipe", "report002-resnet9", "--steps-per-decade", "0"], "--steps-per-decade must be positive"),
    (["--nesterov", "--momentum", "0"], "--nesterov needs a --momentum above 0"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1), got 1.0"),
    (["--smooth", "0"], "--smooth must be in (0, 1], got 0.0"),
    (["--optimizer", "adamw", "--betas", "0.9", "1"], "--betas must be in [0, 1), got 0.9 1"),
    (["--end-lr", "inf"], "--end-lr must be a finite number, got inf"),
    (["--steps-per-decade", "nan"], "--steps-per-decade must be a finite number, got nan"),
    (["--out", "{tmp}/file/lrf"], "--out {tmp}/file/lrf: {tmp}/file is a file, not a folder"),
    (["--arch", "lenet", "--subset", "500", "--val-loss", "--data", "{data}"],
     "below the 500 training images (--val-loss holds out 1000 when no --val is given)"),
])
def test_cli_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, capsys, data_dir, bad, message):
    out = tmp_path / "never"
    (tmp_path / "file").write_text("not a folder")
    bad = [b.replace("{tmp}", str(tmp_path)).replace("{data}", data_dir) for b in bad]
    with pytest.raises(SystemExit) as e:
        lr_finder.main([*bad, "--out", str(out)] if "--out" not in bad else bad)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message.replace("{tmp}", str(tmp_path)) in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_one_training_image_is_refused_in_one_line(tmp_path, data_dir, capsys):
    with pytest.raises(SystemExit) as e:  # a batch of 1 is dropped, which left the range test no batch at all
        lr_finder.main(["--arch", "lenet", "--subset", "1", "--data", data_dir, "--out", str(tmp_path / "lrf")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "each needs at least 2" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "lrf").exists()


def test_runs_started_in_the_same_second_get_default_folders_of_their_own(tmp_path, one_second, capsys):
    """Without --out each run claims lr_finder/<arch>-<timestamp> (-2 for a second one in the same second), and one
    refused before it wrote anything leaves none behind."""
    exits = one_second
    for _ in range(2):
        with pytest.raises(SystemExit) as e:
            lr_finder.main(["--arch", "lenet", "--data", str(tmp_path / "no-cifar")])  # refused after the claim
        assert e.value.code == 2
    assert [a for _, a in exits] == [(os.path.join("lr_finder", "lenet-20261201-171318" + k),) for k in ("", "-2")]
    assert all(os.path.isdir(a[0]) for _, a in exits)
    for f, a in exits:
        f(*a)
    assert not os.path.exists("lr_finder")


@pytest.mark.parametrize("name", lr_finder.OUTPUTS)
def test_cli_refuses_to_overwrite(tmp_path, capsys, name):
    (tmp_path / name).write_text("precious\n")
    with pytest.raises(SystemExit) as e:
        lr_finder.main(["--arch", "lenet", "--out", str(tmp_path)])
    assert e.value.code == 2 and f"{tmp_path / name} exists; use --force" in capsys.readouterr().err
    assert (tmp_path / name).read_text() == "precious\n"


@pytest.mark.parametrize("name", lr_finder.OUTPUTS)
def test_cli_refuses_an_output_name_taken_by_a_folder_before_the_test(tmp_path, capsys, name):
    (tmp_path / name).mkdir()  # --force overwrites files; it cannot overwrite this
    with pytest.raises(SystemExit) as e:
        lr_finder.main(["--arch", "lenet", "--force", "--out", str(tmp_path), "--data", str(tmp_path / "no-cifar")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{tmp_path / name} is a folder, not a file; move it, or use another --out" in err


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
    # the fewest steps allowed: a suggestion or not (exit 0 or 1), the curve is written
    code = lr_finder.main(["--arch", "fastnet", "--subset", "500", "--num-iter", "4", "--batch-size", "50",
                           "--bias-lr-scale", "64", "--data", data_dir, "--out", str(tmp_path / "f")])
    assert code in (0, 1)
    assert len((tmp_path / "f" / "lr_finder.csv").read_text().splitlines()) == 5
    assert calls == [(500, 3, 32, 32)]
    args = lr_finder.get_parser().parse_args(["--arch", "fastnet", "--bias-lr-scale", "64"])
    assert lr_finder.train_command(args, 0.1) == "python train.py --arch fastnet --bias-lr-scale 64.0 --lr 0.1"
