"""evaluate.py: the evaluation loop, test-time augmentation's views and weights, and the script on a run (in the
run's own precision, giving the figures train.py recorded)."""
import functools
import hashlib
import json
import os
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import evaluate
import train
from conftest import run_script

QUICK = ["--arch", "lenet", "--epochs", "1", "--subset", "200", "--batch-size", "50", "--eval-batch-size", "100"]


class Counting(nn.Module):
    """A linear 'network' (a fixed random weight per input value) that counts the batches it sees."""

    def __init__(self, shape=(3, 6, 6)):
        super().__init__()
        self.w = torch.randn(2, *shape)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.einsum("bchw,kchw->bk", x, self.w)


def test_tta_flip_averages_the_image_and_its_mirror():
    torch.manual_seed(0)
    model, x = Counting(), torch.randn(4, 3, 6, 6)
    got = evaluate.TTA(model)(x)
    assert model.calls == 2
    assert torch.allclose(got, 0.5 * (model(x) + model(x.flip(3))), atol=1e-6)


def test_tta_translate_weighs_six_views_half_on_the_image_and_its_mirror():
    """airbench's views: the image and its mirror (1/4 each), and both shifted one pixel up-left and down-right with
    reflected edges, each with its mirror (1/8 each)."""
    torch.manual_seed(0)
    model, x = Counting(), torch.randn(4, 3, 6, 6)
    got = evaluate.TTA(model, translate=True)(x)
    assert model.calls == 6
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, x.flip(3)]
    for shifted in (p[..., :6, :6], p[..., 2:, 2:]):
        views += [shifted, shifted.flip(3)]
    weights = [1 / 4, 1 / 4] + [1 / 8] * 4
    want = sum(w * model(v) for w, v in zip(weights, views))
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, evaluate.TTA(model)(x), atol=1e-3)  # the shifted views count


def test_tta_frac_shifts_only_the_least_sure_images():
    """frac 0.25: the shifted views for the quarter of the batch whose flip-averaged prediction has the smallest
    top-two margin (these get the full six-view figure), flip TTA alone for the rest."""
    torch.manual_seed(0)
    model, x = Counting(), torch.randn(16, 3, 6, 6)
    full, flip = evaluate.TTA(model, translate=True)(x), evaluate.TTA(model)(x)
    p = flip.softmax(1).topk(2, dim=1).values
    unsure = (p[:, 0] - p[:, 1]).argsort()[:4]
    want = flip.clone()
    want[unsure] = full[unsure]
    sizes = []
    model.forward = lambda v, f=model.forward: sizes.append(len(v)) or f(v)
    got = evaluate.TTA(model, translate=True, frac=0.25)(x)
    assert torch.allclose(got, want, atol=1e-5)
    assert sizes == [16, 16, 4, 4, 4, 4]  # the four shifted views of 4 images only
    assert not torch.allclose(got, flip, atol=1e-3) and not torch.allclose(got, full, atol=1e-3)


def test_tta_mirror_frac_mirrors_only_the_least_sure_then_shifts_the_least_sure_of_those_results():
    """mirror_frac 0.5, frac 0.25: the mirror pair for the half of the batch least sure under the plain view, the
    plain view alone for the rest; then the shifted views for the quarter least sure under that."""
    torch.manual_seed(0)
    model, x = Counting(), torch.randn(16, 3, 6, 6)
    plain, flip, full = model(x), evaluate.TTA(model)(x), evaluate.TTA(model, translate=True)(x)

    def least_sure(logits, k):
        p = logits.softmax(1).topk(2, dim=1).values
        return (p[:, 0] - p[:, 1]).argsort()[:k]

    half = plain.clone()
    half[least_sure(plain, 8)] = flip[least_sure(plain, 8)]
    want, unsure = half.clone(), least_sure(half, 4)
    want[unsure] = 0.5 * half[unsure] + 0.5 * (2 * full[unsure] - flip[unsure])  # full = (flip + shifted) / 2
    sizes = []
    model.forward = lambda v, f=model.forward: sizes.append(len(v)) or f(v)
    got = evaluate.TTA(model, translate=True, frac=0.25, mirror_frac=0.5)(x)
    assert torch.allclose(got, want, atol=1e-5)
    assert sizes == [16, 8, 4, 4, 4, 4]  # plain for all, the mirror of 8 (their plain view reused), 4 x 4 shifted
    assert not torch.allclose(got, evaluate.TTA(model, translate=True, frac=0.25)(x), atol=1e-3)
    assert torch.allclose(evaluate.TTA(model, mirror_frac=0.5)(x), half, atol=1e-5)  # flip TTA alone


@pytest.mark.parametrize("mirror_frac, first_sizes", [(1.0, [16, 4]), (0.5, [8, 4])])
def test_tta_given_the_plain_logits_skips_that_pass_and_gives_the_same_figures_bit_for_bit(mirror_frac, first_sizes):
    """train.py hands TTA its last test pass's logits (float32, from bf16 here): the mirror and the shifted views
    are computed as before, the plain one not again, and every logit is the recomputed one exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()
    batches = [(torch.randn(n, 3, 6, 6), torch.randint(0, 10, (n,))) for n in (16, 16, 5)]  # a short last batch
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    plain = evaluate.evaluate(model, batches, cpu, bf16, return_outputs=True)["logits"]
    sizes = []
    model.register_forward_hook(lambda m, i, o: sizes.append(len(i[0])))
    tta = functools.partial(evaluate.TTA, model, translate=True, frac=0.25, mirror_frac=mirror_frac)
    want = evaluate.evaluate(tta(), batches, cpu, bf16, return_outputs=True)
    n_want, sizes[:] = len(sizes), []
    got = evaluate.evaluate(tta(plain=plain), batches, cpu, bf16, return_outputs=True)
    assert torch.equal(got["logits"], want["logits"]) and got["acc"] == want["acc"]
    assert len(sizes) == n_want - 3 and sizes[:2] == first_sizes  # per batch: the mirror, then the shifted views
    with pytest.raises(ValueError, match="TTA was given 30 plain logits, fewer than the images it scores"):
        evaluate.evaluate(evaluate.TTA(model, plain=plain[:30]), batches, cpu, bf16)


def test_a_class_without_test_images_has_no_accuracy_rather_than_zero():
    pred, labels = torch.tensor([0, 1, 1, 3]), torch.tensor([0, 1, 2, 2])  # class 3: none among the labels
    assert evaluate.per_class(pred, labels, 4) == [1.0, 1.0, 0.0, None]


def test_evaluate_with_a_criterion_gives_its_mean_over_every_image():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).train()
    batches = [(torch.randn(n, 3, 2, 2), torch.randint(0, 3, (n,))) for n in (5, 5, 2)]  # a short last batch
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    smooth = nn.CrossEntropyLoss(label_smoothing=0.2)
    got = evaluate.evaluate(model, batches, torch.device("cpu"), criterion=smooth)
    plain = evaluate.evaluate(model, batches, torch.device("cpu"))
    with torch.no_grad():
        want_smooth, want_plain = smooth(model(x), y).item(), nn.functional.cross_entropy(model(x), y).item()
    assert got["loss"] == pytest.approx(want_smooth, rel=1e-6) and plain["loss"] == pytest.approx(want_plain, rel=1e-6)
    assert abs(want_smooth - want_plain) > 1e-3 and got["acc"] == plain["acc"] and model.training


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory, data_dir):
    """A one-epoch lenet run trained and evaluated without autocast, with flip+translate TTA: the mirror for the
    least sure 70%, the shifted views for the least sure half."""
    out = str(tmp_path_factory.mktemp("runs") / "fp32")
    assert train.main([*QUICK, "--amp", "off", "--tta", "translate", "--tta-frac", "0.5", "--tta-mirror-frac", "0.7",
                       "--data", data_dir, "--out", out]) == 0
    return out


def test_evaluate_py_uses_the_runs_precision_and_gives_its_figures(fp32_run, data_dir, tmp_path):
    """No --amp: the run's own (off), so the loss is the one train.py logged to the last digits (bf16 would move
    it in the third); --translate alone turns on TTA, at the run's --tta-frac and --tta-mirror-frac, whose figure
    is the one in summary.json; no --subset: the run's own test images (its first 200)."""
    js = str(tmp_path / "eval.json")
    r = run_script("evaluate.py", fp32_run, "--data", data_dir, "--translate", "--json", js,
                   "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    res = json.load(open(js))
    row = json.loads(open(os.path.join(fp32_run, "metrics.jsonl")).readline())
    summary = json.load(open(os.path.join(fp32_run, "summary.json")))
    assert res["amp"] == "None" and res["test_loss"] == pytest.approx(row["test_loss"], rel=1e-6)
    assert res["test_acc"] == summary["best_test_acc"]
    assert res["tta"] == "flip+translate" and (res["tta_frac"], res["tta_mirror_frac"]) == (0.5, 0.7)
    assert res["tta_test_acc"] == summary["tta_test_acc"]
    assert "With flip+translate TTA" in r.stdout
    assert "testing 200 images" in r.stderr and "testing with flip+translate TTA" in r.stderr  # minutes on a CPU


@pytest.mark.parametrize("flags, says", [
    (["--subset", "-5"], "--subset must be positive, got -5"),
    (["--subset", "0"], "--subset must be positive, got 0"),
    (["--json", "{tmp}/missing/eval.json"], "--json {tmp}/missing/eval.json: the folder {tmp}/missing does not exist"),
    (["--json", "{tmp}"], "--json {tmp} is a folder; name a file"),
    (["--json", "{tmp}/file"], "--json {tmp}/file exists; use --force to overwrite it"),  # a checkpoint, say
    (["--out", "{tmp}/file/figs"], "--out {tmp}/file/figs: {tmp}/file is a file, not a folder"),
])
def test_evaluate_py_bad_input_is_one_line_exit_2_before_any_work(fp32_run, data_dir, tmp_path, flags, says):
    (tmp_path / "file").write_text("not a folder")
    r = run_script("evaluate.py", fp32_run, "--data", data_dir, "--out", str(tmp_path / "figs"),
                   *[f.replace("{tmp}", str(tmp_path)) for f in flags], timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert says.replace("{tmp}", str(tmp_path)) in r.stderr and not (tmp_path / "figs").exists()
    assert (tmp_path / "file").read_text() == "not a folder"


def test_evaluate_py_json_replaces_an_existing_file_only_with_force(fp32_run, data_dir, tmp_path):
    js = tmp_path / "eval.json"
    js.write_text("an older result")
    r = run_script("evaluate.py", fp32_run, "--data", data_dir, "--subset", "50", "--json", str(js), "--force",
                   "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert json.loads(js.read_text())["test_acc"] >= 0


def test_evaluate_py_names_the_figure_of_another_checkpoint_apart(fp32_run, data_dir, tmp_path):
    """best.pt draws confusion_matrix.png, last.pt confusion_matrix_last.png: neither replaces the other; best.pt
    again refreshes its own."""
    run = str(tmp_path / "run")
    shutil.copytree(fp32_run, run)
    before = set(os.listdir(run))
    for ck in (run, os.path.join(run, "last.pt"), run):
        assert evaluate.main([ck, "--data", data_dir, "--subset", "50"]) == 0
    assert sorted(set(os.listdir(run)) - before) == ["confusion_matrix.png", "confusion_matrix_last.png"]


def test_evaluate_py_refuses_to_replace_a_png_of_the_users_before_the_work(fp32_run, data_dir, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(fp32_run, run)
    (tmp_path / "run" / "confusion_matrix.png").write_bytes(b"my own figure")
    r = run_script("evaluate.py", run, "--data", data_dir, "--subset", "50", timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"{run}/confusion_matrix.png has no mark of evaluate.py" in r.stderr and "Accuracy" not in r.stdout
    assert (tmp_path / "run" / "confusion_matrix.png").read_bytes() == b"my own figure"


def test_evaluate_py_names_the_figure_for_its_run_in_another_folder(fp32_run, data_dir, tmp_path, monkeypatch):
    """Runs evaluated into one --out (not a run's own folder): the name carries the run's folder name and a hash of
    its real path, so none replaces another's figure, not even two runs both called seed0 (expA/seed0, expB/seed0);
    the same run again, from another working folder too, refreshes its own."""
    runs = [str(tmp_path / p) for p in ("other run", "expA/seed0", "expB/seed0")]
    for run in runs:
        shutil.copytree(fp32_run, run)
    figs = tmp_path / "figs"
    for ck in (fp32_run, *runs, os.path.join(runs[0], "last.pt")):
        assert evaluate.main([ck, "--data", data_dir, "--subset", "50", "--out", str(figs)]) == 0
    monkeypatch.chdir(tmp_path / "expA")
    assert evaluate.main(["seed0", "--data", data_dir, "--subset", "50", "--out", str(figs)]) == 0

    def tag(run):
        name = os.path.basename(run).replace(" ", "_")  # (a name fit for a file)
        return f"{name}-{hashlib.sha1(os.path.realpath(run).encode()).hexdigest()[:6]}"
    assert sorted(os.listdir(figs)) == sorted([f"confusion_matrix_{tag(r)}.png" for r in (fp32_run, *runs)]
                                              + [f"confusion_matrix_{tag(runs[0])}_last.png"])
    assert tag(runs[1]).startswith("seed0-") and tag(runs[1]) != tag(runs[2])


def test_evaluate_py_warns_of_a_tta_fraction_it_cannot_use_and_does_not_record_it(fp32_run, data_dir, tmp_path,
                                                                                    capsys):
    """--tta-frac needs --translate (the shifted views), --tta-mirror-frac needs --tta: given without, one line on
    stderr says so, and --json does not record a value that was not used."""
    for k, (flags, says, recorded) in enumerate([
            (["--tta-frac", "0.5"], ["--tta-frac has no effect without --translate"], set()),
            (["--tta-mirror-frac", "0.5"], ["--tta-mirror-frac has no effect without --tta"], set()),
            (["--tta", "--tta-frac", "0.2"], ["--tta-frac has no effect without --translate"], {"tta_mirror_frac"}),
            (["--translate", "--tta-frac", "0.2"], [], {"tta_frac", "tta_mirror_frac"})]):
        js = str(tmp_path / f"{k}.json")
        assert evaluate.main([fp32_run, "--data", data_dir, "--subset", "50", "--out", str(tmp_path), "--json", js,
                              *flags]) == 0
        err = capsys.readouterr().err
        assert [line for line in err.splitlines() if "has no effect" in line] == [f"warning: {s}" for s in says]
        assert {key for key in json.load(open(js)) if key.endswith("frac")} == recorded, flags


def test_evaluate_py_calls_a_file_that_is_no_checkpoint_so(fp32_run, tmp_path):
    """A config.json (any file that is no torch.save archive) is not a checkpoint, not a pickle refused as unsafe."""
    r = run_script("evaluate.py", os.path.join(fp32_run, "config.json"), "--out", str(tmp_path), timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "config.json: not a whole torch.save archive (cut off, empty, or another kind of file than a train.py .pt)" \
        in r.stderr
    assert "could run code" not in r.stderr and os.listdir(tmp_path) == []
