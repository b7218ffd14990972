"""visualize.py: every subcommand on the CPU from tiny runs trained here, each PNG of the expected pixel size and not
blank; the report's HTML holds every run's numbers and its embedded images decode; hooks capture the expected
shapes for several architectures; bad input is one line and exit 2.
"""
import base64
import contextlib
import fcntl
import hashlib
import io
import json
import os
import pathlib
import re
import select
import shutil
import subprocess
import tempfile
import time
from html.parser import HTMLParser

import matplotlib.image as mpimg
import pytest
import torch

import hooks
import report
import train
import visualize
from models import ARCHS, build_model

TINY = ["--arch", "lenet", "--epochs", "2", "--subset", "500", "--eval-batch-size", "500", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """Two finished lenet runs that differ in batch size (a curves/report comparison)."""
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


def png(path, size):
    """Assert the PNG at path is (height, width) = size and not blank; return its pixels."""
    assert os.path.isfile(path), path
    img = mpimg.imread(path)
    assert img.shape[:2] == size, (path, img.shape)
    rgb = img[..., :3]
    assert rgb.std() > 0.05, f"{path} looks blank"
    assert (rgb.min(-1) < 0.9).mean() > 0.01, f"{path} is nearly all white"
    return img


def vis(*argv):
    return visualize.main([str(a) for a in argv])


def refused(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        vis(*argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


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


class Addresses(HTMLParser):
    """The addresses a page fetches or links to, as (tag, attribute, value), and the text of its <style> blocks."""
    ATTRS = {"src", "href", "srcset", "action", "formaction", "poster", "data", "background", "xlink:href"}

    def __init__(self):
        super().__init__()
        self.found, self.css, self.in_style = [], "", False

    def handle_starttag(self, tag, attrs):
        self.found += [(tag, k, (v or "").strip()) for k, v in attrs if k in self.ATTRS]
        self.in_style = tag == "style"

    def handle_endtag(self, tag):
        self.in_style = False

    def handle_data(self, data):
        self.css += data if self.in_style else ""

    def outside(self):
        return [(t, k, v[:80]) for t, k, v in self.found if not v.startswith(("data:", "#"))]


def test_report_holds_every_run_and_embeds_decodable_images(runs, tmp_path, capsys):
    visualize.say_once.cache_clear()
    vis("report", *runs, "--out", tmp_path)
    err = capsys.readouterr().err  # each run's test pass said, the no-GPU warning once
    assert err.count("testing 500 test images on ") == 2
    assert err.count("warning: no GPU found") == (0 if torch.cuda.is_available() else 1), err
    both = f"{tag(runs[0])}+{tag(runs[1])}"  # in an --out of their own choosing: the page is named for its runs
    page = (tmp_path / f"report_{both}.html").read_text()
    md = (tmp_path / f"report_{both}.md").read_text()
    for run in runs:
        s = json.load(open(os.path.join(run, "summary.json")))
        name = os.path.basename(run)
        for v in (s["best_test_acc"], s["final_test_acc"], s["best_test_acc"]):
            assert f"{100 * v:.2f}%" in page and f"{100 * v:.2f}%" in md
        assert f"{s['params']:,}" in page and f"Run {name}" in page
        assert f"confusion_{tag(run)}.png" in md and os.path.exists(tmp_path / f"confusion_{tag(run)}.png")
    assert "--batch-size" in page  # the comparison says what differs
    blobs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(blobs) == 3  # curves and two confusion matrices
    for b in blobs:
        raw = base64.b64decode(b, validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        assert mpimg.imread(io.BytesIO(raw), format="png").shape[0] > 100
    # self-contained: every address in the page is a data: URI or an anchor on it, and the CSS fetches nothing
    refs = Addresses()
    refs.feed(page)
    assert refs.found  # the images
    assert not refs.outside(), refs.outside()
    assert "url(" not in refs.css and "@import" not in refs.css


def test_config_rows_show_the_key_flags_then_those_the_run_changed():
    cfg = {"args": {"arch": "lenet", "epochs": 2, "batch_size": 50, "lr": 0.1, "momentum": 0.9, "subset": 500,
                    "nesterov": True, "out": "runs/x", "data": "/d", "no_progress": True},
           "changed_args": ["arch", "epochs", "batch_size", "subset", "nesterov", "out", "data", "no_progress"],
           "device": "cpu", "git_commit": None}
    rows = report.config_rows(cfg)
    assert rows == [["--arch", "lenet"], ["--epochs", "2"], ["--batch-size", "50"], ["--lr", "0.1"],
                    ["--subset", "500"], ["--nesterov", "true"], ["device", "cpu"]]
    del cfg["changed_args"]  # a run folder written before train.py recorded the list: the key flags only
    assert [r[0] for r in report.config_rows(cfg)] == ["--arch", "--epochs", "--batch-size", "--lr", "device"]


def test_config_rows_of_a_run_folder_list_what_train_py_recorded_as_changed(runs):
    cfg = json.load(open(os.path.join(runs[0], "config.json")))
    names = [r[0] for r in report.config_rows(cfg)]
    assert names[:3] == ["--arch", "--epochs", "--batch-size"]
    assert "--subset" in names and "--eval-batch-size" in names and "--momentum" not in names
    assert not {"--out", "--data", "--no-progress"} & set(names)  # where the run went, not how it trained


def test_report_renders_in_headless_chromium(request, tmp_path):
    """What a reader of report.html sees: every image decoded at its own size, the headings and tables of report.md,
    the numbers, and nothing in the console. The browser: $CHROMIUM (.ci/run sets it), else chromium on PATH;
    with none the test skips, or fails under REQUIRE_BROWSER=1 (.ci/run sets that too)."""
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        (pytest.fail if os.environ.get("REQUIRE_BROWSER") == "1" else pytest.skip)(
            "no chromium: set CHROMIUM=/path/to/chromium or put chromium on PATH")
    assert shutil.which(exe), f"CHROMIUM={exe} is not an executable file"
    runs = request.getfixturevalue("runs")  # trained only once a browser is there
    vis("report", *runs, "--out", tmp_path)
    both = f"{tag(runs[0])}+{tag(runs[1])}"
    md = (tmp_path / f"report_{both}.md").read_text()
    seen = page_in_chromium(exe, tmp_path / f"report_{both}.html")
    assert seen["errors"] == []
    pngs = re.findall(r"^!\[[^\]]*\]\((\S+\.png)\)$", md, re.M)
    assert len(pngs) == 3  # curves and two confusion matrices
    assert all(i["complete"] and i["width"] > 0 for i in seen["images"]), seen["images"]
    assert [i["width"] for i in seen["images"]] == [mpimg.imread(tmp_path / p).shape[1] for p in pngs]
    heads = re.findall(r"^(#+) ", md, re.M)
    assert {f"h{k}": heads.count("#" * k) for k in (1, 2, 3)} == {t: seen["tags"][t] for t in ("h1", "h2", "h3")}
    # results, the flags that differ, per-class accuracy, each run's settings
    assert seen["tags"]["table"] == len(re.findall(r"^\|(?:-[-:]+\|)+$", md, re.M)) == 5
    assert seen["title"] == "CIFAR-10 training report: bs50, bs100"
    for run in runs:
        s = json.load(open(os.path.join(run, "summary.json")))
        assert f"{100 * s['best_test_acc']:.2f}%" in seen["text"] and f"{s['params']:,}" in seen["text"]


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


def test_report_refuses_to_replace_a_page_of_the_users_and_redraws_its_own(runs, tmp_path, capsys):
    """A report.md or report.html in --out that the report did not write (no mark) is refused before the work, left
    as it was; the report's own page is redrawn in place. Outside the run's folder it is named for the run and
    marked as no page of the folder's run."""
    for name in (f"report_{tag(runs[0])}.md", f"report_{tag(runs[0])}.html"):
        page = tmp_path / name
        page.write_text("# my notes\n")
        err = refused(capsys, "report", runs[0], "--out", tmp_path)
        assert f"{page} has no mark of visualize.py report" in err and "move it, or give another --out" in err
        assert os.listdir(tmp_path) == [name] and page.read_text() == "# my notes\n"
        page.unlink()
    for _ in range(2):
        vis("report", runs[0], "--out", tmp_path)
    assert (tmp_path / f"report_{tag(runs[0])}.md").read_text().startswith("<!-- cifar10-toolkit visualize.py report; ")
    html = (tmp_path / f"report_{tag(runs[0])}.html").read_text()
    assert '<meta name="generator" content="cifar10-toolkit visualize.py report">' in html


def test_as_a_script(runs, tmp_path):
    from conftest import run_script
    r = run_script("visualize.py", "filters", runs[1], "--out", tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"wrote {tmp_path / f'filters_lenet_{tag(runs[1])}.png'}", r.stderr
    r = run_script("visualize.py", "cam", runs[1], "--layer", "fc1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not feature maps" in r.stderr, r.stderr


def test_report_as_a_script(runs, tmp_path):
    """The report subcommand as a user runs it: visualize.py is __main__ when it imports report.py."""
    from conftest import run_script
    r = run_script("visualize.py", "report", runs[0], "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    page = tmp_path / f"report_{tag(runs[0])}"
    assert r.stdout.splitlines()[-2:] == [f"wrote {page}.md", f"wrote {page}.html"]

# ----------------------------------------------------------------------------- a real browser
# Open a local HTML page in headless Chromium and say what a reader sees (the browser test checks report.html so).
# Drives the browser over the DevTools protocol on --remote-debugging-pipe (JSON messages, each ending in a NUL byte,
# on the browser's fds 3 and 4): needs only a Chromium binary and the standard library.
# Written here: the usual drivers (puppeteer, playwright) want a Node or Python package of their own at test time.

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
         "--remote-debugging-pipe"]
SEEN = """JSON.stringify({
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})),
  tags: Object.fromEntries(["h1", "h2", "h3", "table"].map(
    t => [t, document.getElementsByTagName(t).length])),
  title: document.title, text: document.body ? document.body.innerText : "",
  url: location.href, ready: document.readyState})"""
ERRORS = {  # the DevTools events a reader would see in the console as errors, each as one short line
    "Runtime.exceptionThrown": lambda p: p["exceptionDetails"].get("exception", {}).get("description")
                                         or p["exceptionDetails"]["text"],
    "Runtime.consoleAPICalled": lambda p: p["type"] in ("error", "assert") and " ".join(
        str(a.get("value", a.get("description"))) for a in p["args"]),
    "Log.entryAdded": lambda p: p["entry"]["level"] == "error" and f"{p['entry']['text']} "
                                                                   f"({p['entry'].get('url', '')[:60]})"}


def page_in_chromium(exe, page, timeout=60):
    """What the page at path `page` shows once its load event fired: {'images': [{alt, complete, width}],
    'tags': {tag: count}, 'title', 'text', 'errors': [each console error or uncaught exception, one line]}.
    RuntimeError when the browser does not start, fails or takes longer than `timeout` seconds."""
    pipes = [os.pipe(), os.pipe()]  # (read, write): to the browser, from the browser
    # our copies at fds 10 and up, where bash (dash reads one digit only) moves them to 3 and 4 without a clash
    (r_in, w_in), (r_out, w_out) = [[fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in p] for p in pipes]
    for fd in sum(pipes, ()):
        os.close(fd)
    deadline, buf, events, n = time.monotonic() + timeout, b"", [], 0
    with tempfile.TemporaryDirectory() as tmp, open(os.path.join(tmp, "log"), "w+b") as log:
        proc = subprocess.Popen(["/bin/bash", "-c", f'exec "$0" "$@" 3<&{r_in} 4>&{w_out} {r_in}<&- {w_out}>&-', exe,
                                 *FLAGS, f"--user-data-dir={tmp}/profile", "about:blank"],
                                pass_fds=(r_in, w_out), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        os.close(r_in), os.close(w_out)

        def receive():
            nonlocal buf
            while b"\0" not in buf:
                if not select.select([r_out], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise RuntimeError(f"{exe}: no answer in {timeout} s")
                chunk = os.read(r_out, 1 << 20)
                if not chunk:
                    proc.wait(10)
                    log.seek(0)
                    tail = log.read()[-3000:].decode(errors="replace")
                    raise RuntimeError(f"{exe} exited with {proc.returncode}: {tail}")
                buf += chunk
            msg, buf = buf.split(b"\0", 1)
            return json.loads(msg)

        def call(method, session=None, **params):
            nonlocal n
            n += 1
            os.write(w_in, json.dumps({"id": n, "method": method, "params": params,
                                       **({"sessionId": session} if session else {})}).encode() + b"\0")
            while (msg := receive()).get("id") != n:
                events.append(msg)
            if "error" in msg:
                raise RuntimeError(f"{method}: {msg['error']}")
            return msg["result"]

        try:
            target = call("Target.createTarget", url="about:blank")["targetId"]
            s = call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                call(f"{domain}.enable", s)
            url, mark = pathlib.Path(page).resolve().as_uri(), len(events)
            nav = call("Page.navigate", s, url=url)
            if nav.get("errorText"):
                raise RuntimeError(f"{page}: {nav['errorText']}")
            while not any(e.get("method") == "Page.loadEventFired" for e in events[mark:]):
                events.append(receive())
            seen = json.loads(call("Runtime.evaluate", s, expression=SEEN, returnByValue=True)["result"]["value"])
            if (seen["url"], seen["ready"]) != (url, "complete"):
                raise RuntimeError(f"{page}: the browser shows {seen['url']}, {seen['ready']}")
            call("Browser.close")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(w_in), os.close(r_out)
    seen["errors"] = [line[:300] for e in events if e.get("method") in ERRORS
                      for line in [ERRORS[e["method"]](e["params"])] if line]
    return seen


def test_runs_are_named_apart_by_the_folders_above_them():
    """The names head the report's sections and name its confusion files: two runs must never share one."""
    assert report.run_names(["runs/a", "runs/b"]) == ["a", "b"]
    assert report.run_names(["p1/runs/r", "p2/runs/r"]) == ["p1/runs/r", "p2/runs/r"]
    assert report.run_names(["x/r", "x/r"]) == ["r #1", "r #2"]  # one folder given twice


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
