"""landscape.py: the three measures against hand values on a quadratic, exact restore of weights, BN
statistics and gradient, the filter-normalised directions, the JSON round trip, the figures from saved
JSON, bad input, the command line end to end on a tiny subset (VGG-A and VGG-A + BN on the CPU), and what the
one line after a Ctrl-C says against what is on disk.

Uses the real CIFAR-10 copy when $CIFAR10_DIR is set, else synthetic pickles.
"""
import json
import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import landscape
import runfiles
import surface
from conftest import run_script


# ----------------------------------------------------------------------------- helpers

class Quadratic(nn.Module):
    """L(w) = 1/2 sum_i a_i w_i^2: gradient a * w, curvature a_i along axis i, largest max(a)."""

    def __init__(self, a, w):
        super().__init__()
        self.register_buffer("a", torch.tensor(a, dtype=torch.float64))
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self):
        return 0.5 * (self.a * self.w ** 2).sum()


def TinyBN():
    """Conv (4D weight), BatchNorm (running statistics), Linear (2D weight)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 10))


def batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def fake_result(arch, lrs=(1e-3, 5e-4), steps=30, every=5, spread=1.0):
    """A result shaped like run_variant's: loss curves fanning out by `spread` across lrs."""
    runs = []
    for k, lr in enumerate(lrs):
        t = np.arange(steps)
        loss = 2.3 * np.exp(-t / 20) + spread * k * t / steps
        ms = list(range(0, steps, every))
        m = {"step": ms, "loss0": [float(loss[s]) for s in ms], "grad_norm": [1.0] * len(ms),
             "step_length": [2.0] * len(ms), "distances": [[1.0, 8.0] for _ in ms],
             "loss": [[float(loss[s]) - 0.1, float(loss[s]) + spread * 0.1] for s in ms],
             "grad_dist": [[0.1, 0.2 * spread] for _ in ms]}
        m.update(loss_min=[x[0] for x in m["loss"]], loss_max=[x[1] for x in m["loss"]],
                 grad_min=[x[0] for x in m["grad_dist"]], grad_max=[x[1] for x in m["grad_dist"]],
                 beta=[10.0 * spread + s / 10 for s in ms])
        runs.append({"lr": lr, "probe_multiples": [0.5, 4.0], "steps_per_epoch": steps // 3,
                     "train_loss": loss.tolist(), "measure": m, "val_acc": [0.2, 0.3, 0.4 + k / 10],
                     "val_loss": [2.0, 1.9, 1.8], "diverged_at_step": None, "time_s": 1.0, "measure_time_s": 0.5})
    return {"arch": arch, "label": landscape.VARIANTS[arch], "complete": True, "runs": runs, "surface": None,
            "config": {"lrs": list(lrs), "epochs": 3, "batch_size": 128, "subset": None, "seed": 0,
                       "probe_range": [0.5, 4.0], "probes": 2}, "time_s": 2.0}


def exits_with_one_line(capsys, argv):
    with pytest.raises(SystemExit) as e:
        landscape.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "error" in err, err
    return err


def drawn_by(path):
    """The script named in the toolkit's mark of the PNG at path (runfiles.save_figure's text chunk, "MARK script
    (name)"), else None."""
    from PIL import Image
    mark = Image.open(path).text.get(runfiles.MARK_KEY, "")
    ours = runfiles.drawn_by_us(path) and mark.startswith(runfiles.MARK + " ")
    return mark.split(" ", 1)[1].rsplit(" (", 1)[0] if ours else None


def png(path, by):
    """A small PNG at path: drawn by `by` with the toolkit's mark (runfiles.save_figure), or (by None) a plain one."""
    plt = landscape.runtime.pyplot()
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    if by:
        runfiles.save_figure(fig, str(path), dpi=50, by=by, own=False)
    else:
        fig.savefig(str(path), dpi=50)
    plt.close(fig)
    return path.read_bytes()


def assert_png(path, figsize):
    import matplotlib.image as mpimg
    img = mpimg.imread(path)
    assert img.shape[:2] == (round(figsize[1] * landscape.DPI), round(figsize[0] * landscape.DPI)), path
    assert img[..., :3].std() > 0.05, f"{path} looks blank"


# ----------------------------------------------------------------------------- the three measures

def sgd_step(model, lr):
    return torch.optim.SGD(model.parameters(), lr=lr).step


def test_measures_on_a_quadratic_match_hand_values():
    # a = (1, 3, 10), w = (1, -2, 0.5): g = a w = (1, -6, 5), ||g|| = sqrt(62), L(w) = 7.75.
    # SGD at lr 0.1 steps by 0.1 ||g||, so multiples 0.5 and 1 probe w - d g/||g|| = w - eta g, eta 0.05 and 0.1:
    # w - eta g = w (1 - eta a), so L(w - eta g) = 1/2 sum a w^2 (1 - eta a)^2:
    #   eta 0.05: 1/2 (0.95^2 + 12 * 0.85^2 + 2.5 * 0.5^2) = 5.09875;   eta 0.1: 1/2 (0.81 + 12 * 0.49 + 0) = 3.345
    # grad L(w) - grad L(w - eta g) = eta a g, norm eta sqrt(1 + 9*36 + 100*25) = eta sqrt(2825);
    # the distance is eta ||g|| = eta sqrt(62), so beta = sqrt(2825 / 62) for every eta.
    model = Quadratic([1.0, 3.0, 10.0], [1.0, -2.0, 0.5])
    m = landscape.measure_along_gradient(model, model, [0.5, 1.0], sgd_step(model, 0.1))
    assert m["loss0"] == pytest.approx(7.75)
    assert m["grad_norm"] == pytest.approx(math.sqrt(62))
    assert m["step_length"] == pytest.approx(0.1 * math.sqrt(62))
    assert m["distances"] == pytest.approx([0.05 * math.sqrt(62), 0.1 * math.sqrt(62)])
    assert m["loss"] == pytest.approx([5.09875, 3.345])
    assert (m["loss_min"], m["loss_max"]) == pytest.approx((3.345, 5.09875))
    assert m["grad_dist"] == pytest.approx([0.05 * math.sqrt(2825), 0.1 * math.sqrt(2825)])
    assert (m["grad_min"], m["grad_max"]) == pytest.approx((0.05 * math.sqrt(2825), 0.1 * math.sqrt(2825)))
    assert m["beta"] == pytest.approx(math.sqrt(2825 / 62))
    assert m["beta"] < 10  # never above the largest curvature ...
    # ... and equal to it when the gradient points along that curvature's axis
    top = Quadratic([1.0, 3.0, 10.0], [0.0, 0.0, 0.5])
    assert landscape.measure_along_gradient(top, top, [1, 2, 3], sgd_step(top, 0.01))["beta"] == pytest.approx(10.0)
    # the weights are where the optimizer's step took them, the gradient at w is left in .grad
    assert torch.allclose(model.w.detach(), torch.tensor([0.9, -1.4, 0.0], dtype=torch.float64))
    assert torch.allclose(model.w.grad, torch.tensor([1.0, -6.0, 5.0], dtype=torch.float64))


def test_probe_distances_are_multiples_of_adams_step():
    # Adam's first step moves every coordinate with a nonzero gradient by lr (m/sqrt(v) = g/|g| after bias
    # correction), whatever the gradient's size: its length is lr sqrt(5) here, while lr ||g|| is 100x larger.
    a = [1.0, 10.0, 100.0, 1000.0, 1e4]
    model = Quadratic(a, [1.0, -1.0, 1.0, -1.0, 1.0])
    g = torch.tensor(a, dtype=torch.float64) * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    multiples = landscape.probe_multiples(0.5, 4.0, 4)
    assert multiples == pytest.approx([0.5, 0.5 + 3.5 / 3, 0.5 + 7 / 3, 4.0])
    m = landscape.measure_along_gradient(model, model, multiples, opt.step)
    step = 1e-3 * math.sqrt(5)
    assert m["step_length"] == pytest.approx(step, rel=1e-6)
    assert m["distances"] == pytest.approx([k * step for k in multiples], rel=1e-6)
    assert 1e-3 * m["grad_norm"] > 1000 * step                  # the old probe unit, lr ||g||, is far longer
    # each probe sits at distance d along -g/||g||: L there is 1/2 sum a (w - d g_i/||g||)^2
    w = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    for d, loss in zip(m["distances"], m["loss"]):
        assert loss == pytest.approx(float(0.5 * (g / w * (w - d * g / g.norm()) ** 2).sum()), rel=1e-9)
    assert torch.allclose(model.w.detach(), w - 1e-3 * torch.sign(g), rtol=0, atol=1e-9)  # Adam's step, once
    assert opt.state[model.w]["step"] == 1


def test_measures_leave_the_state_of_one_plain_training_step():
    x, y = batch()
    torch.manual_seed(0)
    model = TinyBN()
    ref = TinyBN()
    ref.load_state_dict(model.state_dict())
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    opt, ref_opt = torch.optim.Adam(model.parameters(), lr=1e-2), torch.optim.Adam(ref.parameters(), lr=1e-2)
    m = landscape.measure_along_gradient(model, lambda: F.cross_entropy(model(x), y), landscape.probe_multiples(),
                                         opt.step)
    F.cross_entropy(ref(x), y).backward()  # one plain forward/backward and Adam step on the same batch
    ref_opt.step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k   # weights stepped once, BN statistics updated once
    assert not torch.equal(model.state_dict()["1.running_mean"], w0["1.running_mean"])  # the one update happened
    assert not torch.equal(model.state_dict()["0.weight"], w0["0.weight"])              # and the one step
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-6, atol=0)
        assert all(torch.equal(opt.state[p][k], ref_opt.state[q][k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert len(m["loss"]) == len(m["grad_dist"]) == len(m["distances"]) == 4 and m["beta"] > 0
    assert m["loss_min"] <= m["loss_max"] and m["grad_min"] <= m["grad_max"]


def test_xavier_init_as_the_course_code():
    from models import build_model, xavier_init
    torch.manual_seed(0)
    model = xavier_init(build_model("vgg_a_bn"))
    conv = model.features[4]                                        # 64 -> 128, 3x3
    assert isinstance(conv, nn.Conv2d) and not conv.bias.any()
    expected = math.sqrt(2 / (9 * 64 + 9 * 128))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.02)
    lin = model.classifier[0]
    assert lin.weight.std().item() == pytest.approx(math.sqrt(2 / 1024), rel=0.02) and not lin.bias.any()


# ----------------------------------------------------------------------------- loss surface

def test_filter_normalized_direction_and_surface():
    torch.manual_seed(0)
    model = TinyBN()
    d = surface.filter_normalized_direction(model, torch.Generator().manual_seed(1))
    for p, di in zip(model.parameters(), d):
        assert di.shape == p.shape
        if p.dim() <= 1:
            assert not di.any()                                     # biases and BN parameters stay put
        else:
            assert torch.allclose(di.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-5)
    batches = [batch(8, seed=s) for s in range(2)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    s = surface.loss_surface(model, batches, res=3)
    assert s["alphas"] == pytest.approx([-1, -0.5, 0, 0.5, 1]) and s["grid"] == pytest.approx([-1, 0, 1])
    assert len(s["loss_1d"]) == 5 and np.asarray(s["loss_2d"]).shape == (3, 3)
    centre = surface.batches_loss(model, batches)
    assert s["loss_1d"][2] == pytest.approx(centre) and s["loss_2d"][1][1] == pytest.approx(centre)
    assert s["images"] == 16
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


# ----------------------------------------------------------------------------- results and figures

def test_json_round_trip(tmp_path):
    r = fake_result("vgg_a_bn")
    r["runs"][0]["train_loss"][5] = float("nan")
    r["runs"][0]["measure"]["beta"][1] = float("inf")
    path = str(tmp_path / "vgg_a_bn.json")
    landscape.save_results(r, path)
    back = landscape.load_results(path)
    assert back["runs"][0]["train_loss"][5] is None and back["runs"][0]["measure"]["beta"][1] is None
    back["runs"][0]["train_loss"][5] = r["runs"][0]["train_loss"][5] = None
    back["runs"][0]["measure"]["beta"][1] = r["runs"][0]["measure"]["beta"][1] = None
    assert back == json.loads(json.dumps(r))
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]     # atomic write leaves no temp file
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        landscape.load_results(str(tmp_path / "bad.json"))


def test_bands_and_summary_numbers():
    r = fake_result("vgg_a", lrs=(1e-3, 5e-4), steps=4, every=2)
    r["runs"][0]["train_loss"] = [1.0, 2.0, 3.0, 4.0]
    r["runs"][1]["train_loss"] = [2.0, 4.0, 6.0]                 # diverged: one step short
    x, lo, hi = landscape.loss_band(r)
    assert list(x) == [0, 1, 2, 3] and list(lo) == [1, 2, 3, 4] and list(hi) == [2, 4, 6, 4]
    assert landscape.measures_lr({"vgg_a": r}) == 5e-4                # report 003's lr, where it ran
    r["runs"][1]["measure"]["beta"] = [3.0, 5.0]
    s = landscape.summarize(r, 5e-4)
    assert s["loss_band"] == pytest.approx((1 + 2 + 3) / 3)       # the last step has one lr: no band
    assert s["loss_var"] == pytest.approx(0.2) and s["grad_pred"] == pytest.approx(0.2)
    assert s["beta"] == pytest.approx(4.0) and s["step_length"] == pytest.approx(2.0)
    assert s["lr_grad"] == pytest.approx(5e-4) and s["measurements"] == 2 and s["final_acc"] == pytest.approx(0.5)
    assert landscape.summarize(r, 1e-3)["final_acc"] == pytest.approx(0.4)


def test_plot_only_draws_the_comparison_from_saved_json(tmp_path, capsys):
    out = str(tmp_path)
    landscape.save_results(fake_result("vgg_a", spread=1.0), os.path.join(out, "vgg_a.json"))
    landscape.save_results(fake_result("vgg_a_bn", spread=0.3), os.path.join(out, "vgg_a_bn.json"))
    assert landscape.main(["--plot-only", "--out", out]) == 0
    stdout = capsys.readouterr().out
    expected = {"loss_landscape.png": "loss_landscape", "measures.png": "measures",
                "curves_lr0.001.png": "curves", "curves_lr0.0005.png": "curves"}
    for name, kind in expected.items():
        assert os.path.join(out, name) in stdout
        assert_png(os.path.join(out, name), landscape.FIGSIZE[kind])
        assert drawn_by(os.path.join(out, name)) == "landscape.py", name
    assert "comparison figures" in stdout and "BN's loss band is narrower" in stdout
    assert not os.path.exists(os.path.join(out, "surface_1d.png"))  # no surface was saved


def test_plot_only_single_variant_and_surface(tmp_path, capsys):
    out = str(tmp_path)
    r = fake_result("vgg_a_bn")
    grid = [-1.0, 0.0, 1.0]
    r["surface"] = {"lr": 5e-4, "alphas": [-1, -0.5, 0, 0.5, 1], "loss_1d": [3, 2.5, 2, 2.4, 3.1], "grid": grid,
                    "loss_2d": [[4, 3, 4], [3, 2, 3.2], [4.1, 3, 4]], "images": 64, "span": 1.0, "seed": 0}
    landscape.save_results(r, os.path.join(out, "vgg_a_bn.json"))
    assert landscape.main(["--plot-only", "--bn", "--out", out]) == 0
    stdout = capsys.readouterr().out
    assert "VGG-A + BatchNorm only figures" in stdout and "BN's loss band" not in stdout
    assert_png(os.path.join(out, "loss_landscape.png"), landscape.FIGSIZE["loss_landscape"])
    assert_png(os.path.join(out, "surface_1d.png"), landscape.FIGSIZE["surface_1d"])
    assert_png(os.path.join(out, "surface_2d.png"), landscape.FIGSIZE["surface_2d"])
    # asking for a variant that has no results is refused
    err = exits_with_one_line(capsys, ["--plot-only", "--both", "--out", out])
    assert "vgg_a.json" in err



def test_figures_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A save cut short (a Ctrl-C, a full disk) leaves the figure there before it as it was, and no temp file."""
    import matplotlib.figure
    before = png(tmp_path / "loss_landscape.png", "landscape.py")

    def cut_short(fig, fname, *args, **kw):  # half a PNG written, then a Ctrl-C
        if isinstance(fname, (str, os.PathLike)):
            with open(fname, "wb") as f:
                f.write(b"\x89PNG half a figure")
        else:
            fname.write(b"\x89PNG half a figure")
        raise KeyboardInterrupt
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", cut_short)
    with pytest.raises(KeyboardInterrupt):
        landscape.plot_loss_landscape({"vgg_a": fake_result("vgg_a")}, str(tmp_path / "loss_landscape.png"))
    assert (tmp_path / "loss_landscape.png").read_bytes() == before and os.listdir(tmp_path) == ["loss_landscape.png"]


def unmeasured(result):
    """`result` as --measure-every 0 leaves it: every measure list empty."""
    for run in result["runs"]:
        run["measure"] = {k: [] for k in run["measure"]}
    return result


def test_no_measures_draw_no_measures_png_and_summary_has_no_nan(tmp_path, capsys):
    """--measure-every 0: no empty measures.png (an earlier run's goes), one line says so, no nan in the summary."""
    out = str(tmp_path)
    landscape.save_results(unmeasured(fake_result("vgg_a")), os.path.join(out, "vgg_a.json"))
    png(tmp_path / "measures.png", "landscape.py")  # an earlier run's figure
    assert landscape.main(["--plot-only", "--out", out]) == 0
    stdout = capsys.readouterr().out
    assert not os.path.exists(os.path.join(out, "measures.png"))
    assert "  no measures.png: no measurements at lr 0.0005 (--measure-every 0); an earlier run's removed\n" in stdout
    png(tmp_path / "measures.png", None)  # one without the mark (the user's, or drawn before it) stays, and is named
    assert landscape.main(["--plot-only", "--out", out]) == 0
    assert os.path.exists(os.path.join(out, "measures.png"))
    assert ("  no measures.png: no measurements at lr 0.0005 (--measure-every 0); the one there has no mark of "
            "landscape.py (yours, or older): left as it is\n") in capsys.readouterr().out
    assert "nan" not in stdout.lower() and "No measures at lr 0.0005 (--measure-every 0)" in stdout, stdout
    assert "beta-smooth" not in stdout and "VGG-A" in stdout and "val 0.500" in stdout
    summary = json.load(open(os.path.join(out, "summary.json")), parse_constant=pytest.fail)  # NaN would be invalid
    assert summary["vgg_a"]["beta"] is None and summary["vgg_a"]["measurements"] == 0


def test_summary_says_in_words_what_was_not_measured():
    """One variant measured, the other not (and over one lr, so no band): words, never nan."""
    table = landscape.summary_table({"vgg_a": fake_result("vgg_a"),
                                     "vgg_a_bn": unmeasured(fake_result("vgg_a_bn", lrs=(5e-4,)))})
    bn = next(line for line in table.splitlines() if line.startswith("VGG-A + BatchNorm"))
    assert "nan" not in table, table
    assert re.split(r"\s{2,}", bn)[1:] == ["n/a"] + ["not measured"] * 5 + ["val 0.400", "0"], table


# ----------------------------------------------------------------------------- command line

@pytest.mark.parametrize("argv, says", [
    (["--lrs", "0"], "--lrs must be positive"),
    (["--lrs", "1e-3", "1e-3"], "repeated"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--amp", "fp8"], "invalid choice"),
    (["--probe-range", "4", "1"], "--probe-range"),
    (["--init", "he"], "invalid choice"),
    (["--norm", "none"], "invalid choice"),
    (["--measure-every", "-1"], "--measure-every"),
    (["--surface-lr", "0.1"], "--surface-lr"),
    (["--plot-only", "--surface"], "--surface"),
    (["--no-such-flag"], "unrecognized"),
    (["--lrs", "nan"], "--lrs must be a finite number, got [nan]"),
    (["--out", "{tmp}/file/x"], "{tmp}/file is a file, not a folder"),
    (["--out", "{tmp}/run"], "--out {tmp}/run holds a train.py run (config.json); name another folder"),
    (["--seed", "2e3"], "argument --seed: must be an integer, got '2e3'"),
    (["--bn", "--both"], "argument --both: not allowed with argument --bn"),  # --bn: instead of VGG-A; --both: with it
    (["--both", "--bn", "--plot-only"], "argument --bn: not allowed with argument --both"),
])
def test_bad_input_is_one_line_and_exit_2(argv, says, capsys, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")  # a train.py run, whose summary.json landscape.py would replace
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out = [] if "--out" in argv else ["--out", str(tmp_path / "x")]
    assert says.replace("{tmp}", str(tmp_path)) in exits_with_one_line(capsys, argv + out)


@pytest.mark.parametrize("data, says", [("nodata", "folder not found"), ("file", "is a file, not a folder")])
def test_missing_data_is_refused_before_out_is_made(data, says, capsys, tmp_path):
    """The data is found before --out is created: a refused run leaves no empty folder behind."""
    (tmp_path / "file").write_text("not CIFAR-10")
    argv = ["--lrs", "1e-3", "--epochs", "1", "--data", str(tmp_path / data), "--out", str(tmp_path / "o")]
    assert says in exits_with_one_line(capsys, argv)
    assert not (tmp_path / "o").exists()


def test_plot_only_without_results_exits_2_with_one_line(tmp_path):
    r = run_script("landscape.py", "--plot-only", "--out", tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no results" in r.stderr, r.stderr


def test_cli_tiny_subset_trains_both_variants_and_writes_everything(tmp_path, data_dir, capsys):
    out = str(tmp_path / "ls")
    # 60 training images (4 steps of 16), the first 60 test images for accuracy; measures at steps 0 and 3
    r = run_script("landscape.py", "--both", "--epochs", "1", "--subset", "60", "--batch-size", "16",
                   "--lrs", "1e-3", "5e-4", "--measure-every", "3", "--probes", "2",
                   "--surface", "--surface-res", "3", "--surface-images", "16", "--data", data_dir, "--out", out)
    assert r.returncode == 0, r.stderr
    for name in ["loss_landscape", "measures", "curves_lr0.001", "curves_lr0.0005", "surface_1d", "surface_2d"]:
        path = os.path.join(out, name + ".png")
        assert path in r.stdout and os.path.getsize(path) > 10_000, name
    assert "BN's loss band is" in r.stdout
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert set(summary) == set(landscape.VARIANTS) and all(v["lr"] == 5e-4 and v["measurements"] == 2
                                                          for v in summary.values())
    for arch in landscape.VARIANTS:
        res = json.load(open(os.path.join(out, f"{arch}.json")))
        c = res["config"]
        assert res["complete"] and res["arch"] == arch
        assert c["lrs"] == [1e-3, 5e-4] and c["epochs"] == 1 and c["batch_size"] == 16 and c["subset"] == 60
        assert c["seed"] == 0 and c["device"] and c["torch"] == torch.__version__
        # the course code's setup by default: all training images, the test set for accuracy, mean/std 0.5, fp32
        assert c["data"]["n_train"] == 60 and c["data"]["n_val"] == 0 and c["data"]["n_test"] == 60
        assert c["data"]["mean"] == [0.5] * 3 and c["data"]["std"] == [0.5] * 3
        assert c["init"] == "xavier" and c["amp"] == "fp32" and c["probe_range"] == [0.5, 4.0]
        assert [run["lr"] for run in res["runs"]] == [1e-3, 5e-4]
        for run in res["runs"]:
            assert len(run["train_loss"]) == 4 and all(math.isfinite(v) for v in run["train_loss"])
            assert run["measure"]["step"] == [0, 3] and len(run["measure"]["beta"]) == 2
            assert run["measure"]["loss0"][0] == pytest.approx(run["train_loss"][0])
            assert len(run["test_acc"]) == 1 and run["time_s"] > 0
            assert run["probe_multiples"] == [0.5, 4.0]
            for length, dists in zip(run["measure"]["step_length"], run["measure"]["distances"]):
                assert length > 0 and dists == pytest.approx([0.5 * length, 4.0 * length])
        # step 0: same initial weights and batch at every lr, so the same loss
        assert res["runs"][0]["train_loss"][0] == res["runs"][1]["train_loss"][0]
        assert res["surface"]["lr"] == 5e-4 and np.asarray(res["surface"]["loss_2d"]).shape == (3, 3)
    # the results are never overwritten without --force
    err = exits_with_one_line(capsys, ["--bn", "--out", out, "--data", data_dir])
    assert "--force" in err


# ----------------------------------------------------------------------------- Ctrl-C: its one line vs. the disk

def interrupting_train_lr(monkeypatch, finish):
    """landscape.train_lr that finishes `finish` lrs (instantly, a tiny run record), then raises KeyboardInterrupt."""
    calls = []

    def train_lr(arch, lr, *rest):
        calls.append(lr)
        if len(calls) > finish:
            raise KeyboardInterrupt
        return {"lr": lr, "train_loss": [2.3, 2.2], "measure": {"step": []}}, None
    monkeypatch.setattr(landscape, "train_lr", train_lr)


def interrupted(capsys, argv):
    """main(argv) as a Ctrl-C ends it: exit code 130 and one line on stderr, which is returned."""
    assert landscape.main(argv) == 130
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err.strip()


def tiny(data_dir, out, *more):
    return ["--epochs", "1", "--subset", "60", "--batch-size", "16", "--lrs", "1e-3", "2e-3", "--data", data_dir,
            "--out", out, *more]


def test_surface_lr_without_surface_is_said_to_do_nothing(tmp_path, capsys):
    """Said after the work, so that a mistake found before it still comes as its one line."""
    err = exits_with_one_line(capsys, ["--plot-only", "--surface-lr", "0.001", "--out", str(tmp_path)])
    assert "--plot-only: no results in" in err
    landscape.save_results(fake_result("vgg_a"), str(tmp_path / "vgg_a.json"))
    assert landscape.main(["--plot-only", "--surface-lr", "0.001", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err == "warning: --surface-lr had no effect without --surface\n"


@pytest.mark.parametrize("name", ["loss_landscape.png", "measures.png", "curves_lr0.0005.png", "summary.json"])
def test_plot_only_refuses_to_replace_a_file_of_the_users(tmp_path, capsys, name):
    """A file under a name the report draws that no script here wrote (a plain PNG, a summary.json of other keys) is
    refused before any figure is drawn, and left as it was; a landscape.py figure there is redrawn."""
    out = str(tmp_path)
    landscape.save_results(fake_result("vgg_a"), os.path.join(out, "vgg_a.json"))
    mine = png(tmp_path / name, None) if name.endswith(".png") else b'{"my": "notes"}'
    (tmp_path / name).write_bytes(mine)
    err = exits_with_one_line(capsys, ["--plot-only", "--out", out])
    assert f"{tmp_path / name} is not landscape.py's (a file of yours" in err and "move it, then run again" in err
    assert sorted(os.listdir(out)) == sorted([name, "vgg_a.json"]) and (tmp_path / name).read_bytes() == mine
    if name.endswith(".png"):
        png(tmp_path / name, "landscape.py")
        assert landscape.main(["--plot-only", "--out", out]) == 0


def test_training_refuses_a_file_of_the_users_before_it_starts_or_after_it_with_the_results_kept(tmp_path, data_dir,
                                                                                                 capsys):
    """A name the report surely draws (curves at an asked lr, measures.png when measuring, the surfaces) is refused
    before the training; one only the other variant's saved results bring (curves at its lr) after it, the results
    saved for --plot-only."""
    out = tmp_path / "ls"
    os.makedirs(out)
    for name, flags in (("curves_lr0.002.png", []), ("measures.png", ["--measure-every", "1"]),
                        ("surface_2d.png", ["--surface"])):
        mine = png(out / name, None)
        err = exits_with_one_line(capsys, tiny(data_dir, str(out), *flags))
        assert f"{name} is not landscape.py's" in err and "move it, or give another --out" in err
        assert os.listdir(out) == [name] and (out / name).read_bytes() == mine
        os.remove(out / name)
    landscape.save_results(fake_result("vgg_a_bn", lrs=(5e-4,)), str(out / "vgg_a_bn.json"))
    mine = png(out / "curves_lr0.0005.png", None)
    err = exits_with_one_line(capsys, tiny(data_dir, str(out), "--measure-every", "0"))
    assert "curves_lr0.0005.png is not landscape.py's" in err and "then draw the saved results with --plot-only" in err
    assert sorted(os.listdir(out)) == ["curves_lr0.0005.png", "vgg_a.json", "vgg_a_bn.json"]
    assert (out / "curves_lr0.0005.png").read_bytes() == mine


def test_ctrl_c_before_any_lr_finished_says_nothing_was_written(tmp_path, data_dir, capsys, monkeypatch):
    out = str(tmp_path / "ls")
    interrupting_train_lr(monkeypatch, finish=0)
    err = interrupted(capsys, tiny(data_dir, out, "--bn"))
    assert err == "landscape.py: interrupted; VGG-A + BatchNorm: no lr finished, nothing written"
    assert os.listdir(out) == []


def test_ctrl_c_names_this_runs_file_and_lrs_never_an_earlier_runs(tmp_path, data_dir, capsys, monkeypatch):
    out = str(tmp_path / "ls")
    path = os.path.join(out, "vgg_a_bn.json")
    interrupting_train_lr(monkeypatch, finish=1)
    err = interrupted(capsys, tiny(data_dir, out, "--bn"))
    assert err == f"landscape.py: interrupted; VGG-A + BatchNorm: 1 of 2 lrs finished, saved in {path}"
    saved = json.load(open(path))
    assert saved["complete"] is False and [r["lr"] for r in saved["runs"]] == [1e-3]
    # a rerun is refused, and says the file is an interrupted run's part and that --force starts over (no resuming)
    err = exits_with_one_line(capsys, tiny(data_dir, out, "--bn"))
    assert f"{path} holds 1 of 2 lrs of an interrupted run; use --force to start over" in err
    # --force, Ctrl-C before this run's first lr finished: the earlier run's file is left, and not named as this run's
    before = open(path).read()
    interrupting_train_lr(monkeypatch, finish=0)
    err = interrupted(capsys, tiny(data_dir, out, "--bn", "--force"))
    assert err == "landscape.py: interrupted; VGG-A + BatchNorm: no lr finished, nothing written"
    assert open(path).read() == before
    # --force, Ctrl-C after two of this run's lrs: its saves replaced the earlier file, which is named. (The second
    # save's file may get the earlier file's inode back, as ext4 does: the inode alone does not tell them apart.)
    interrupting_train_lr(monkeypatch, finish=2)
    err = interrupted(capsys, tiny(data_dir, out, "--bn", "--force", "--lrs", "5e-4", "1e-3", "2e-3"))
    assert err == f"landscape.py: interrupted; VGG-A + BatchNorm: 2 of 3 lrs finished, saved in {path}"
    assert [r["lr"] for r in json.load(open(path))["runs"]] == [5e-4, 1e-3]


def test_ctrl_c_in_the_second_variant_names_the_finished_first(tmp_path, data_dir, capsys, monkeypatch):
    out = str(tmp_path / "ls")
    interrupting_train_lr(monkeypatch, finish=2)
    err = interrupted(capsys, tiny(data_dir, out, "--both"))
    assert err == (f"landscape.py: interrupted; VGG-A: all lrs finished, saved in {os.path.join(out, 'vgg_a.json')}; "
                   f"VGG-A + BatchNorm: no lr finished, nothing written")
    assert json.load(open(os.path.join(out, "vgg_a.json")))["complete"] and os.listdir(out) == ["vgg_a.json"]


def test_measure_every_0_says_no_measures(tmp_path, data_dir, capsys, monkeypatch):
    interrupting_train_lr(monkeypatch, finish=0)
    assert landscape.main(tiny(data_dir, str(tmp_path / "ls"), "--measure-every", "0")) == 130
    out = capsys.readouterr().out
    assert "epochs x 4 steps, no measures (--measure-every 0)\n" in out and "never" not in out, out


def test_long_work_says_when_it_ends(tmp_path, data_dir, capsys):
    """An eta after each epoch but a run's last (for that lr), and on each lr's line after the first (for the variant's
    lrs left: with --both the other variant's come after)."""
    assert landscape.main(tiny(data_dir, str(tmp_path / "ls"), "--measure-every", "0", "--epochs", "2")) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "epoch" in line and " lr " in line]
    assert [bool(re.search(r"  eta \d+s$", line)) for line in lines if line.startswith("vgg_a")] == [True, False] * 2
    assert [bool(re.search(r"; eta \d+s for this variant's lrs left$", line))
            for line in lines if line.startswith("==")] == [False, True], lines


def test_force_removes_the_figures_of_the_run_it_replaces(tmp_path, data_dir, capsys, monkeypatch):
    """--force: a figure landscape.py drew for the replaced run that the new one does not draw goes (curves at an lr
    no longer run, measures.png without measures), and one line names it; an unmarked figure, a copy under another
    name and another script's figure stay."""
    def train_lr(arch, lr, loaders, args, *rest):  # instantly, a run record as train_lr's
        r = fake_result(arch, lrs=(lr,))
        return (unmeasured(r) if args.measure_every == 0 else r)["runs"][0], None
    monkeypatch.setattr(landscape, "train_lr", train_lr)
    out = tmp_path / "ls1"
    assert landscape.main(tiny(data_dir, str(out), "--bn", "--lrs", "0.001", "0.0005")) == 0
    assert drawn_by(out / "curves_lr0.0005.png") == drawn_by(out / "measures.png") == "landscape.py"
    (out / "copy.png").write_bytes((out / "curves_lr0.0005.png").read_bytes())
    (out / "curves_lr0.02.png").write_bytes((out / "curves_lr0.0005.png").read_bytes())  # a copy named like a figure
    kept = {"curves_lr0.002.png": png(out / "curves_lr0.002.png", None),        # before the mark, or the user's
            "curves_lr0.01.png": png(out / "curves_lr0.01.png", "visualize.py"),  # another script's
            "surface_1d.png": png(out / "surface_1d.png", None)}
    capsys.readouterr()
    assert landscape.main(tiny(data_dir, str(out), "--bn", "--force", "--lrs", "0.001", "--measure-every", "0")) == 0
    stdout = capsys.readouterr().out
    assert "; an earlier run's removed\n" in stdout
    assert f"  removed curves_lr0.0005.png: figures of results no longer in {out}\n" in stdout, stdout
    assert sorted(os.listdir(out)) == sorted(["copy.png", "curves_lr0.02.png", "curves_lr0.001.png",
                                              "loss_landscape.png", "summary.json", "vgg_a_bn.json", *kept])
    assert all((out / name).read_bytes() == data for name, data in kept.items())
