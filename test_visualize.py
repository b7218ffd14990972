"""visualize.py: every subcommand on the CPU from tiny runs trained here (conftest's `runs`), each PNG of the expected
pixel size and not blank; hooks capture the expected shapes for several architectures; bad input is one line and
exit 2. The report subcommand's pages: test_report.py.
"""
import json
import os
import re
import shutil

import matplotlib.image as mpimg
import pytest
import torch

import hooks
import report
import visualize
from conftest import refused, tag, vis
from models import ARCHS, build_model


def png(path, size):
    """Assert the PNG at path is (height, width) = size and not blank; return its pixels."""
    assert os.path.isfile(path), path
    img = mpimg.imread(path)
    assert img.shape[:2] == size, (path, img.shape)
    rgb = img[..., :3]
    assert rgb.std() > 0.05, f"{path} looks blank"
    assert (rgb.min(-1) < 0.9).mean() > 0.01, f"{path} is nearly all white"
    return img


# ----------------------------------------------------------------------------- hooks, no training needed

EXPECTED = {  # default layers (first conv, end of every stage) and their captured (C, H, W)
    "lenet": {"conv1": (6, 28, 28), "conv2": (16, 10, 10)},
    "rescnn6": {"stem.0": (16, 32, 32), "stem": (16, 32, 32), "layer1": (32, 16, 16), "layer2": (64, 8, 8),
                "layer3": (128, 4, 4)},
    "resnet18": {"conv1": (64, 32, 32), "layer1": (64, 32, 32), "layer2": (128, 16, 16), "layer3": (256, 8, 8),
                 "layer4": (512, 4, 4)},
    "resnet9": {"conv1": (64, 32, 32), "relu": (64, 32, 32), "layer1": (64, 16, 16), "layer2": (128, 8, 8),
                "layer3": (256, 4, 4), "layer4": (512, 2, 2)},
    "vgg_a": {"features.0": (64, 32, 32), "features.1": (64, 32, 32), "features.4": (128, 16, 16),
              "features.9": (256, 8, 8), "features.14": (512, 4, 4), "features.19": (512, 2, 2)},
    "dainet7": {"layer1.0": (64, 32, 32), "layer1": (64, 32, 32), "layer3": (128, 16, 16), "layer6.2": (256, 8, 8)},
    "fastnet": {"whiten": (24, 31, 31), "groups.0.norm2": (64, 15, 15), "groups.1.norm2": (256, 7, 7),
                "groups.2.norm2": (256, 3, 3)},  # its groups: a ModuleList of ModuleDicts, never called themselves
}


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_hooks_capture_stage_ends(arch):
    torch.manual_seed(0)
    model = build_model(arch)
    x = torch.randn(2, 3, 32, 32)
    names = hooks.stages(model)
    assert names == list(EXPECTED[arch])
    info = hooks.trace(model, x, keep=set(names))
    assert {n: tuple(info[n]["out"].shape) for n in names} == {n: (2, *s) for n, s in EXPECTED[arch].items()}
    assert model.training  # trace restores the mode


def test_every_network_has_stages_and_a_cam_layer():
    x = torch.zeros(1, 3, 32, 32)
    # resnet34/101/152 are resnet18/50 with more blocks per stage: skipped, as the slowest to run on a CPU
    for arch in [a for a in ARCHS if a not in ("resnet34", "resnet101", "resnet152")]:
        model = build_model(arch)
        info = hooks.trace(model, x)
        names = hooks.stages(model, info)
        assert len(names) >= 2 and info[names[0]]["type"] == "Conv2d", arch
        assert all(hooks.is_map(info[n]["shape"]) for n in names), arch
        sizes = [info[n]["shape"][1] for n in names]
        assert sizes == sorted(sizes, reverse=True), (arch, names)  # stages go down in resolution


def test_grad_cam_leaves_the_forward_alone_even_before_an_inplace_relu():
    torch.manual_seed(0)
    model = build_model("vgg_a").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    # features.18 is a conv whose output the next ReLU(inplace=True) overwrites
    cam, up, probs, target = hooks.grad_cam(model, x, "features.18")
    assert cam.shape == (2, 2) and up.shape == (32, 32)
    assert torch.isfinite(up).all() and 0 <= up.min() and up.max() <= 1
    assert target == int(ref.argmax()) and torch.allclose(probs, ref.softmax(1)[0], atol=1e-6)
    # the same map by hand: cut the network at features.18 and differentiate the rest (no in-place ReLU there)
    with torch.no_grad():
        a = model.features[:19](x)
    a.requires_grad_(True)
    rest = torch.nn.Sequential(torch.nn.ReLU(), *list(model.features)[20:])
    logits = model.classifier(torch.flatten(rest(a), 1))
    g, = torch.autograd.grad(logits[0, target], a)
    manual = torch.relu((g.mean((2, 3), keepdim=True) * a.detach()).sum(1))[0]
    assert torch.allclose(cam, manual, atol=1e-5)


def test_mixed_labels():
    classes = ["airplane", "automobile", "bird"]
    assert visualize.mixed_label(torch.tensor(2), classes) == "bird"
    assert visualize.mixed_label(torch.tensor([0.0, 0.7, 0.3]), classes) == "automobile 0.70 + bird 0.30"
    assert visualize.mixed_label(torch.tensor([1.0, 0.0, 0.0]), classes) == "airplane"


# ----------------------------------------------------------------------------- each subcommand

def test_features_default_layers_from_a_run(runs, capsys):
    vis("features", runs[0], "--class", "cat")
    written = re.findall(r"wrote (\S+)", capsys.readouterr().out)
    assert len(written) == 2  # LeNet: after conv1 and conv2, as report 002 shows
    assert re.fullmatch(r"features_lenet_\d+_conv1\.png", os.path.basename(written[0]))
    assert re.fullmatch(r"features_lenet_\d+_conv2\.png", os.path.basename(written[1]))
    for p in written:
        assert os.path.dirname(p) == runs[0]
        png(p, (600, 1200))


def test_features_untrained_arch_chosen_layers(tmp_path, data_dir, capsys):
    vis("features", "--arch", "resnet18", "--data", data_dir, "--index", 5, "--layers", "layer1.0.conv1", "layer3",
        "--channels", 16, "--out", tmp_path)
    assert capsys.readouterr().out.count("wrote ") == 2
    png(tmp_path / "features_resnet18_5_layer1.0.conv1.png", (600, 1200))
    png(tmp_path / "features_resnet18_5_layer3.png", (600, 1200))


def test_filters(runs, tmp_path):
    vis("filters", runs[0], "--out", tmp_path)
    png(tmp_path / f"filters_lenet_{tag(runs[0])}.png", (850, 800))  # outside its run's folder: the run's name too


def test_curves_overlay_runs_named_in_the_legend(runs, tmp_path):
    vis("curves", *runs, "--out", tmp_path)
    # named for both runs (--out is neither's folder); two runs + train/test styles: a two-row legend
    png(tmp_path / f"curves_{tag(runs[0])}+{tag(runs[1])}.png", (500, 1500))
    labels = report.run_labels(runs)
    assert labels == ["bs50 (batch_size=50)", "bs100 (batch_size=100)"]


def test_curves_of_a_long_run_evaluated_once_mark_the_point_and_label_ticks_apart(tmp_path, monkeypatch):
    """40 epochs (drawn as lines) whose accuracy spans 93.5-95.1%, evaluated only after the last (--eval-every 0):
    the lone test point has a marker, and the accuracy ticks read apart (not 94% 94% 95%)."""
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.935 + 0.0004 * e, "lr": 0.1} for e in range(1, 41)]
    rows[-1].update(test_loss=0.2, test_acc=0.94)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figs = []
    monkeypatch.setattr(report, "save", lambda fig, path, own: figs.append(fig) or path)
    vis("curves", run, "--out", tmp_path)
    fig, = figs
    fig.canvas.draw()
    acc = fig.axes[1]
    train, test = acc.get_lines()
    assert train.get_marker() == "None" and test.get_marker() == "o" and len(test.get_xdata()) == 1
    low, high = acc.get_ylim()
    ticks = [t.get_text() for t in acc.get_yticklabels() if low <= t.get_position()[1] <= high]
    assert len(ticks) >= 3 and len(set(ticks)) == len(ticks), ticks


def test_errors(runs, tmp_path, capsys):
    vis("errors", runs[0], "--count", 12, "--out", tmp_path)  # a minute on a CPU: stderr says what it is doing
    assert re.search(r"^testing 500 test images on \w+(:\d+)? \.\.\.$", capsys.readouterr().err, re.M)
    t = tag(runs[0])
    png(tmp_path / f"errors_{t}.png", (530, 1200))
    png(tmp_path / f"errors-confusion_{t}.png", (720, 840))  # not evaluate.py's confusion_matrix_... beside it
    png(tmp_path / f"per_class_{t}.png", (500, 800))
    assert len(os.listdir(tmp_path)) == 3


def test_augment_rows_and_sizes(runs, tmp_path, data_dir):
    vis("augment", "--data", data_dir, "--count", 4, "--cutout", 8, "--out", tmp_path / "a")
    png(tmp_path / "a" / "augment.png", (835, 660))   # original, crop/flip/jitter/cutout, CutMix, MixUp
    vis("augment", runs[0], "--count", 4, "--out", tmp_path / "b")  # the run trained without mixing: two rows
    png(tmp_path / "b" / f"augment_{tag(runs[0])}.png", (445, 660))  # a run's, outside its folder: named for it


def test_cam(runs, tmp_path):
    vis("cam", runs[0], "--index", 0, 1, "--out", tmp_path)
    png(tmp_path / f"cam_lenet_{tag(runs[0])}_0_1.png", (790, 990))
    first = list(range(2, 10))  # two lists of nine that share their first eight images keep a figure each
    for last in (10, 11):
        vis("cam", runs[0], "--index", *first, last, "--out", tmp_path)
    nine = sorted(p for p in os.listdir(tmp_path) if p.startswith(f"cam_lenet_{tag(runs[0])}_2_3_4_5_6_7_8_9_etc-"))
    assert len(nine) == 2, nine


def test_errors_grid_has_rows_for_the_mistakes_shown_not_for_count(runs, tmp_path):
    """--count is an upper bound: 12 test images hold at most 12 mistakes, at most two rows of six (not 50 rows)."""
    vis("errors", runs[0], "--subset", 12, "--count", 300, "--out", tmp_path)
    shape = mpimg.imread(tmp_path / f"errors_{tag(runs[0])}.png").shape[:2]
    assert shape in ((290, 1200), (530, 1200))  # one row, or two


def test_figures_from_another_source_keep_their_own_file(runs, tmp_path, capsys):
    """Drawn into one folder from another checkpoint, --target, --layer or --seed, a figure gets a name of its own
    and the first stays; the same figure from the same source again (cam at lenet's default layer) refreshes it."""
    last = os.path.join(runs[0], "last.pt")
    for argv in (["errors", runs[0], "--count", 6], ["errors", last, "--count", 6], ["cam", runs[0], "--index", 5],
                 ["cam", runs[0], "--index", 5, "--target", "dog"], ["cam", runs[0], "--index", 5, "--layer", "conv1"],
                 ["cam", runs[0], "--index", 5, "--layer", "conv2"], ["filters", "--arch", "lenet"],
                 ["filters", "--arch", "lenet", "--seed", 3], ["filters", last],
                 ["features", last, "--layers", "conv1"]):
        vis(*argv, "--out", tmp_path)
    written = re.findall(r"wrote (\S+)", capsys.readouterr().out)
    assert len(written) == len(set(written)) + 1
    assert sorted(os.listdir(tmp_path)) == sorted(name.replace("bs50", tag(runs[0])) for name in [
        "errors_bs50.png", "errors-confusion_bs50.png", "per_class_bs50.png", "errors_bs50_last.png",
        "errors-confusion_bs50_last.png", "per_class_bs50_last.png", "cam_lenet_bs50_5.png", "cam_lenet_bs50_5_dog.png",
        "cam_lenet_bs50_5_conv1.png", "filters_lenet.png", "filters_lenet_seed3.png", "filters_lenet_bs50_last.png",
        "features_lenet_bs50_last_0_conv1.png"])


def test_runs_drawn_into_one_out_keep_a_figure_each(runs, tmp_path, capsys):
    """Outside a run's own folder a figure's name carries the run's, augment's and curves' too: two runs drawn into one
    --out replace nothing of each other's (in the run's folder the names stay as they are:
    test_features_default_layers_from_a_run); the same run again refreshes its own."""
    for run in (*runs, runs[0]):
        for argv in (["errors", run, "--count", 4], ["cam", run], ["filters", run],
                     ["features", run, "--layers", "conv1"], ["augment", run, "--count", 2], ["curves", run]):
            vis(*argv, "--out", tmp_path)
    written = re.findall(r"wrote (\S+)", capsys.readouterr().out)
    assert len(written) == 24 and len(set(written)) == 16
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"{name}.png" for run in map(tag, runs)
        for name in (f"errors_{run}", f"errors-confusion_{run}", f"per_class_{run}", f"cam_lenet_{run}_0",
                     f"filters_lenet_{run}", f"features_lenet_{run}_0_conv1", f"augment_{run}", f"curves_{run}"))


def test_several_runs_default_to_a_folder_of_their_own(runs, tmp_path, monkeypatch, capsys):
    """curves and report of several runs go to figures/<their names joined by +>: another set of runs never replaces
    them (nor orphans their confusion matrices); the same set again refreshes them in place."""
    monkeypatch.chdir(tmp_path)
    vis("report", *runs)
    vis("curves", runs[1], runs[0])
    vis("curves", *runs)
    first, second = tmp_path / "figures" / "bs50+bs100", tmp_path / "figures" / "bs100+bs50"
    assert sorted(os.listdir(first)) == ["confusion_bs100.png", "confusion_bs50.png", "curves.png", "report.html",
                                         "report.md"]
    assert os.listdir(second) == ["curves.png"] and "report: bs50, bs100" in (first / "report.md").read_text()
    assert re.findall(r"wrote (\S+)", capsys.readouterr().out).count("figures/bs50+bs100/curves.png") == 2


def test_a_long_set_of_run_names_is_cut_and_kept_apart_by_a_hash():
    a = [f"/r/{'a' * 50}{k}" for k in range(3)]
    fa, fb = report.runs_folder(a), report.runs_folder(a[:2] + [f"/r/{'a' * 50}9"])
    assert fa != fb and len(os.path.basename(fa)) <= 100 and fa.startswith(os.path.join("figures", "a" * 50 + "0+"))


def test_help_texts_say_what_each_flag_does_there(capsys):
    helps = {}
    for cmd in ("augment", "features", "cam"):
        with pytest.raises(SystemExit):
            vis(cmd, "--help")
        helps[cmd] = " ".join(capsys.readouterr().out.split())
    assert "--data DIR folder holding cifar-10-batches-py, or that folder (default: RUN_DIR's, else ./data)" in \
        helps["augment"]
    assert "epoch on" not in helps["augment"] and "last K epochs" not in helps["augment"]  # one batch has no epochs
    assert "--index INDEX the test image by position" in helps["features"]
    assert "--index INDEX [INDEX ...] test images by position" in helps["cam"]


def test_augment_download_reaches_the_data_loader(tmp_path, data_dir, monkeypatch):
    seen, real = [], visualize.data.load_cifar10
    monkeypatch.setattr(visualize.data, "load_cifar10",
                        lambda root, download=False: seen.append(download) or real(root))
    visualize._cifar.cache_clear()
    try:
        vis("augment", "--data", data_dir, "--download", "--count", 2, "--out", tmp_path)
    finally:
        visualize._cifar.cache_clear()
    assert seen == [True]


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("argv, says", [
    (["features", "{run}", "--layers", "conv9"], "unknown layer 'conv9' for lenet; valid names: conv1, conv2, pool"),
    (["features", "{run}", "--layers", "fc1"], "layer 'fc1' of lenet outputs shape (120,), not feature maps"),
    (["features", "{run}", "--class", "unicorn"], "unknown --class 'unicorn'; choose from: airplane, automobile"),
    (["features", "{run}", "--index", "999999"], "--index 999999 is out of range: the test set has"),
    (["cam", "{run}", "--class", "cat", "--index", "0", "99999"], "--index 99999 is out of range: the test set has"),
    (["cam", "{run}", "--target", "unicorn"], "unknown --target 'unicorn'"),
    (["features", "{tmp}/nothing"], "checkpoint {tmp}/nothing does not exist"),
    (["features", "{run}", "--arch", "lenet"], "give a run folder or checkpoint, or --arch, not both"),
    (["features"], "give a run folder or checkpoint, or an untrained network with --arch"),
    (["filters", "--arch", "resnet7"], "unknown --arch 'resnet7'; choose from: lenet"),
    (["curves", "{run}", "{tmp}/nothing"], "{tmp}/nothing: no such run folder"),
    (["curves", "{tmp}"], "{tmp} has no metrics.jsonl or metrics.csv"),
    (["curves", "{tmp}/file"], "{tmp}/file: a file, not a run folder"),
    (["curves", "{tmp}/badjson"], "{tmp}/badjson/metrics.jsonl is not train.py's metrics (JSONDecodeError"),
    (["curves", "{tmp}/badrow"], "{tmp}/badrow/metrics.jsonl is not train.py's metrics (ValueError: a row that"),
    (["curves", "{tmp}/badcsv"], "{tmp}/badcsv/metrics.csv is not train.py's metrics (ValueError: could not"),
    (["curves", "{tmp}/noepoch"], "{tmp}/noepoch/metrics.jsonl is not train.py's metrics (ValueError: a row that"),
    (["curves", "{run}", "{tmp}/listrun"], "{tmp}/listrun/config.json is not train.py's config"),
    (["report", "{tmp}/listrun"], "{tmp}/listrun/config.json is not train.py's config"),
    (["curves", "{run}", "{tmp}/badcfg"], "{tmp}/badcfg/config.json is not JSON (JSONDecodeError: Expecting"),
    (["curves"] + ["{run}"] * 21, "at most 20 runs at once (one colour each in the curves), got 21"),
    (["report", "{run}", "--data", "{tmp}/nowhere"], "CIFAR-10 in {tmp}/nowhere/cifar-10-batches-py: folder not"),
    (["curves", "{run}", "--out", "{tmp}/taken"], "{tmp}/taken/curves_{tag}.png is a folder, not a file; move it"),
    (["report", "{run}", "--out", "{tmp}/pagetaken"], "{tmp}/pagetaken/report_{tag}.md is a folder, not a file"),
    (["errors", "{tmp}/nothing"], "checkpoint {tmp}/nothing does not exist"),
    (["report", "{run}", "{tmp}/nothing"], "{tmp}/nothing: no such run folder"),
    (["augment", "{tmp}"], "{tmp}: no train.py config.json"),
    (["augment", "{tmp}/foreign"], "{tmp}/foreign/config.json is not train.py's config"),
    (["augment", "{tmp}/listcfg"], "{tmp}/listcfg/config.json is not train.py's config"),
    (["augment", "{tmp}/badcfg"], "{tmp}/badcfg/config.json is not JSON (JSONDecodeError: Expecting"),
    (["errors", "{run}/config.json"], "{run}/config.json: not a whole torch.save archive (cut off, empty, or another"),
    (["errors", "{run}", "--count", "301"], "--count 301: at most 300 mistakes fit one figure"),
    (["augment", "--count", "65"], "--count must be from 2 to 64, got 65"),
    (["augment", "--cutout", "40"], "--cutout must be in [0, 32], got 40"),
    (["filters", "--arch", "lenet", "--seed", "18446744073709551616"], "argument --seed: must be from -2**63 to 2**63"),
    (["features", "{run}", "--data", "{tmp}/nowhere"], "CIFAR-10 in {tmp}/nowhere/cifar-10-batches-py: folder not"),
    (["errors", "--arch", "lenet"], "unrecognized arguments: --arch"),
    (["errors", "{run}", "--subset", "0"], "--subset must be positive, got 0"),
    (["sketch"], "argument COMMAND: invalid choice: 'sketch'"),
    (["curves", "{run}", "--out", "{tmp}/file/figs"], "--out {tmp}/file/figs: {tmp}/file is a file, not a folder"),
    (["report", "{run}", "{tmp}/nockpt"], "no best.pt or last.pt in {tmp}/nockpt"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, tmp_path, capsys, argv, says):
    argv = [a.replace("{run}", runs[0]).replace("{tmp}", str(tmp_path)) for a in argv]
    says = says.replace("{run}", runs[0]).replace("{tag}", tag(runs[0]))
    (tmp_path / "file").write_text("not a folder")
    os.makedirs(tmp_path / "nockpt")  # a run folder whose checkpoints were deleted
    for name, file, text in [("badjson", "metrics.jsonl", '{"epoch": 1}\nnot json\n'), ("badrow", "metrics.jsonl", "3\n"),
                             ("badcsv", "metrics.csv", "epoch,test_acc\n1,high\n"),  # hand-edited metrics
                             ("noepoch", "metrics.jsonl", '{"epoch": 1}\n{"train_loss": 2.0}\n'),
                             ("foreign", "config.json", '{"model_type": "bert"}'), ("listcfg", "config.json", "[]"),
                             ("badcfg", "config.json", '{"args": {"crop_pad": 4'),  # cut off
                             ("listrun", "config.json", '["--arch", "lenet"]')]:
        os.makedirs(tmp_path / name)
        (tmp_path / name / file).write_text(text)
    for name in ("metrics.jsonl", "config.json"):
        shutil.copy(os.path.join(runs[0], name), tmp_path / "nockpt")
    for name in ("listrun", "badcfg"):  # runs whose config.json is not train.py's: curves and report read it too
        shutil.copy(os.path.join(runs[0], "metrics.jsonl"), tmp_path / name)
    os.makedirs(tmp_path / "taken" / f"curves_{tag(runs[0])}.png")  # folders where the figure and the page go
    os.makedirs(tmp_path / "pagetaken" / f"report_{tag(runs[0])}.md")
    before = set(os.listdir(runs[0]))
    out = [] if argv[0] in ("sketch", "layers") or "--out" in argv else ["--out", str(tmp_path / "out")]
    err = refused(capsys, *argv, *out)
    assert says.replace("{tmp}", str(tmp_path)) in err
    assert not (tmp_path / "out").exists() and set(os.listdir(runs[0])) == before


@pytest.mark.parametrize("argv, name", [
    (["filters", "{run}"], "filters_lenet_{tag}.png"),
    (["features", "{run}", "--layers", "conv1", "conv2"], "features_lenet_{tag}_0_conv2.png"),
    (["errors", "{run}", "--count", "4"], "per_class_{tag}.png"),  # the last of its three figures
    (["augment", "--count", "2"], "augment.png"),
    (["cam", "{run}"], "cam_lenet_{tag}_0.png"),
    (["curves", "{run}"], "curves_{tag}.png"),
    (["report", "{run}"], "confusion_{tag}.png"),
])
def test_a_png_of_the_users_at_a_figures_path_is_refused_before_the_work(runs, tmp_path, capsys, monkeypatch, argv,
                                                                          name):
    """A file at a figure's path that no script here drew (a PNG of the user's) is left as it was: one line, exit 2,
    before any figure is drawn."""
    name = name.replace("{tag}", tag(runs[0]))
    (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n my own figure")
    for module in (visualize, report):  # refused before any figure is begun
        monkeypatch.setattr(module, "pyplot", lambda: pytest.fail("a figure was begun"))
    err = refused(capsys, *[a.replace("{run}", runs[0]) for a in argv], "--out", tmp_path)
    assert f"{tmp_path / name} has no mark of visualize.py" in err and "move it, or give another --out" in err
    assert os.listdir(tmp_path) == [name] and (tmp_path / name).read_bytes() == b"\x89PNG\r\n\x1a\n my own figure"


@pytest.mark.parametrize("argv, out", [(["filters", "--arch", "lenet"], "figures"), (["augment"], "figures"),
                                       (["curves", "{run}", "{run}"], "figures/bs50_1+bs50_2")])
def test_the_default_out_is_checked_before_the_work(runs, tmp_path, monkeypatch, capsys, argv, out):
    """Without --out, figures/ in the working folder, or a folder in it for several runs (the run's own folder is
    checked the same way)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figures").write_text("not a folder")
    err = refused(capsys, *[a.replace("{run}", runs[0]) for a in argv])
    assert f"the default --out {out}: {tmp_path / 'figures'} is a file, not a folder" in err


def test_train_force_removes_every_figure_drawn_into_a_run_folder(runs, tmp_path):
    """What evaluate.py and every subcommand draw into a run folder is in runfiles.DRAWN_FILES, which a run replacing
    it with train.py --force removes: no figure of the old run stays beside the new one; a figure of the user's with
    such a name (matplotlib's, unmarked) stays."""
    import evaluate
    import runfiles
    run = str(tmp_path / "run")
    shutil.copytree(runs[0], run)
    fig = visualize.pyplot().figure()
    fig.savefig(os.path.join(run, "confusion_mine.png"))
    visualize.pyplot().close(fig)
    before = set(os.listdir(run))
    last = os.path.join(run, "last.pt")  # figures drawn from another checkpoint, class or layer: names of their own
    for argv in (["features", run], ["filters", run], ["errors", run, "--count", 4], ["cam", run], ["curves", run],
                 ["report", run], ["augment", run, "--count", 2], ["errors", last, "--count", 4], ["filters", last],
                 ["cam", last, "--target", "cat", "--layer", "conv1"]):
        vis(*argv)
    assert evaluate.main([run]) in (0, None) and evaluate.main([last]) in (0, None)
    drawn = set(os.listdir(run)) - before
    assert len(drawn) >= 18 and drawn <= set(runfiles.clear_run(run)), drawn  # (and what earlier tests drew there)
    assert os.listdir(run) == ["confusion_mine.png"]


def test_train_force_keeps_the_figures_of_other_runs_drawn_into_its_folder(runs, tmp_path, capsys):
    """Figures of a run drawn into another folder (an --out later trained into, or another run's folder) are no
    figures of the run that folder holds: train.py --force replacing that run (clear_run) leaves them, and removes
    only what was drawn from the run itself."""
    import evaluate
    import runfiles
    r1, figs = str(tmp_path / "r1"), str(tmp_path / "figs")
    os.makedirs(r1)
    for name in runfiles.run_files_in(runs[0]):  # the run, not the figures other tests drew into its folder
        shutil.copy(os.path.join(runs[0], name), r1)
    assert evaluate.main([r1, "--out", figs]) == 0
    for argv in (["errors", r1, "--count", 2], ["cam", r1], ["curves", r1], ["augment", r1, "--count", 2],
                 ["report", r1]):
        vis(*argv, "--out", figs)
    drawn = sorted(os.listdir(figs))
    shutil.copy(os.path.join(runs[1], "summary.json"), figs)  # a run trained into figs, then replaced with --force
    assert runfiles.clear_run(figs) == [] and sorted(os.listdir(figs)) == drawn
    vis("errors", runs[1], "--count", 2, "--out", r1)  # another run's figures in r1's folder, then r1's own
    theirs = set(os.listdir(r1))
    vis("errors", r1, "--count", 2)
    assert sorted(runfiles.clear_run(r1)) == ["errors-confusion.png", "errors.png", "per_class.png"]
    assert {f"errors_{tag(runs[1])}.png", f"per_class_{tag(runs[1])}.png"} <= set(os.listdir(r1)) <= theirs


def test_as_a_script(runs, tmp_path):
    from conftest import run_script
    r = run_script("visualize.py", "filters", runs[1], "--out", tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"wrote {tmp_path / f'filters_lenet_{tag(runs[1])}.png'}", r.stderr
    r = run_script("visualize.py", "cam", runs[1], "--layer", "fc1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not feature maps" in r.stderr, r.stderr


def test_per_class_bars_say_n_a_for_a_class_without_test_images(monkeypatch):
    monkeypatch.setattr(visualize, "save", lambda fig, path, own: [t.get_text() for t in fig.axes[0].texts])
    assert visualize.plot_per_class([0.5, None, 1.0], ["a", "b", "c"], 0.6, "p.png", "t", False) == [
        "50.0%", "n/a", "100.0%"]


def test_download_reaches_the_loader_in_every_subcommand_that_reads_the_images(runs, monkeypatch, capsys, tmp_path):
    """A missing CIFAR-10 is met with "fetch the official files with --download": every subcommand that reads the
    images takes the flag and hands it to data.load_cifar10."""
    asked = []

    def absent(root, download=False):
        asked.append((root, download))
        raise visualize.data.DataError(f"CIFAR-10 in {root}: folder not found")
    monkeypatch.setattr(visualize.data, "load_cifar10", absent)
    visualize._cifar.cache_clear()
    nowhere = str(tmp_path / "nowhere")
    for cmd in ("features", "errors", "cam", "report"):
        assert "folder not found" in refused(capsys, cmd, runs[0], "--data", nowhere, "--download")
    assert asked == [(nowhere, True)] * 4
