"""See what the network sees, and how training went: PNG figures (matplotlib, Agg) and a report, for any network
of models.py and any run folder of train.py.

    python visualize.py features runs/resnet18-...  --class cat     # feature maps after the first conv and every stage
    python visualize.py features --arch vgg_a --index 7 --layers features.0 features.4   # untrained network
    python visualize.py filters runs/...                            # the first conv's kernels as RGB tiles
    python visualize.py curves runs/bs128 runs/bs1024               # loss, accuracy, lr against epoch, runs overlaid
    python visualize.py errors runs/...                             # mistakes, confusion matrix, per-class bars
    python visualize.py augment --cutout 8                          # a batch after crop/flip/jitter, CutMix, MixUp
    python visualize.py cam runs/... --index 3 12 40                # Grad-CAM of the predicted class
    python visualize.py report runs/a runs/b                        # report.md and a self-contained report.html
    python visualize.py layers --arch resnet18                      # module names and output shapes, for --layers

Figures go to --out: by default the run folder for a subcommand given one run, figures/<their names joined by +> for
several (curves, report: one folder per set of runs), else figures/. A file name says what the figure was drawn
from where that can differ in one folder: the run when --out is not its own folder (its folder's name and a hash of
its path: figs/errors_a-1f2e3d.png, figs/augment_a-1f2e3d.png), the checkpoint when it is not the run's best.pt
(errors_last.png, figs/errors_a-1f2e3d_last.png), an untrained network's --seed when not 0, cam's --target and --layer
when given. Drawing the same figure from the same source again overwrites it in place; every path written is printed.
A PNG at a figure's path that these tools did not draw (one of the user's) is refused before the work, not replaced.
A figure drawn from a run into that run's own folder is marked so (runfiles.mark_text): train.py --force replacing the
run removes it, and no other figure. Everything works through forward hooks on named modules (hooks.py), so no
network needs code of its own here.
"""
import functools
import hashlib
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn

import data
from evaluate import (confusion, evaluate, figure_tag, is_own_folder, per_class, plot_confusion, read_checkpoint,
                      run_tag, safe_name)
from hooks import grad_cam, is_map, stages, trace
from models import ARCHS, build_model, check_arch
from runfiles import check_ours_to_replace, check_output_folder, eval_weights, run_folder, save_figure
from runtime import OneLineParser, check_ranges, path_arg, pick_device, pyplot, resolve_amp, run_main, seed_arg

DPI = 100
# figure sizes in inches; at DPI these give the pixel sizes the tests check
FEATURES_SIZE = (12, 6)
FILTERS_SIZE = (8, 8.5)
PER_CLASS_SIZE = (8, 5)
# image grids, in inches: (cell, (gap across, gap down), (left, right, top, bottom) margins)
ERR_COLS, ERR_GRID, MAX_ERRORS = 6, (1.8, (0.2, 0.6), (0.1, 0.1, 1.0, 0.1)), 300  # 300: 12,050 px tall
AUG_GRID = (1.4, (0.1, 0.55), (0.6, 0.1, 0.6, 0.5))
CAM_GRID = (3.0, (0.3, 0.75), (0.15, 0.15, 1.0, 0.15))


def save(fig, path, own):
    """Save at DPI with the figure's own size (no tight bbox: the pixel size is known in advance), marked as drawn
    here (runfiles.save_figure; own: from the run whose folder path is in); print the path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_figure(fig, path, DPI, "visualize.py", own)
    pyplot().close(fig)
    print(f"wrote {path}")
    return path


def check_paths(ap, paths):
    """Refuse (exit 2), before the work, a file at one of the figure paths that no script here drew: it is the
    user's, and save would replace it."""
    check_ours_to_replace(ap, paths, "visualize.py")
    return paths


def image_grid(rows, cols, layout, title):
    """rows x cols square image axes laid out in inches (see *_GRID), so titles above and labels below each image get
    the room they need whatever the grid's size; the title on top. Returns (fig, 2-D array of axes)."""
    cell, (gw, gh), (left, right, top, bottom) = layout
    w = left + cols * cell + (cols - 1) * gw + right
    h = top + rows * cell + (rows - 1) * gh + bottom
    fig, axes = pyplot().subplots(rows, cols, figsize=(w, h), squeeze=False)
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h,
                        wspace=gw / cell, hspace=gh / cell)
    fig.suptitle(title, fontsize=12, y=1 - 0.12 / h, va="top")
    return fig, axes


# ----------------------------------------------------------------------------- inputs

class Src:
    """What a subcommand looks at: a trained checkpoint or an untrained network, with its data and display stats."""

    def __init__(self, model, arch, classes, mean, std, root, out, name, ckpt=None, tag="", download=False, own=False):
        self.model, self.arch, self.classes, self.mean, self.std = model, arch, classes, mean, std
        self.root, self.out, self.name, self.ckpt, self.tag = root, out, name, ckpt, tag  # tag: for file names
        self.download = download  # --download: fetch the official files into root if missing
        self.own = own  # out is the checkpoint's run folder: its figures there are the run's (an untrained one: never)

    @property
    def trained(self):
        return self.ckpt is not None

    @property
    def label(self):
        return self.arch if self.trained else f"{self.arch} (untrained)"


@functools.lru_cache(maxsize=2)
def _cifar(root, download):
    return data.load_cifar10(root, download)


def load_data(ap, root, download=False):
    """load_cifar10 (cached: read once per process), a DataError becoming a one-line exit 2."""
    try:
        return _cifar(os.path.abspath(os.path.expanduser(root)), download)
    except data.DataError as e:
        ap.error(str(e))


def default_out(args):
    """Where a subcommand writes without --out: the folder of the run it was given one of, a folder of figures/ for
    several (report.runs_folder), else figures/."""
    runs = getattr(args, "runs", None) or [r for r in (getattr(args, "source", None), getattr(args, "run", None)) if r]
    if len(runs) > 1:
        import report  # it imports this module: imported when needed (see in_report)
        return report.runs_folder(runs)
    return run_folder(runs[0]) if runs else "figures"


def run_name(path):
    return os.path.basename(os.path.normpath(path)) or path


def open_source(ap, args, need_data=True):
    """The checkpoint named by args.source (a run folder or .pt), or an untrained --arch (seeded)."""
    arch, fetch = getattr(args, "arch", None), getattr(args, "download", False)
    if args.source and arch:
        ap.error("give a run folder or checkpoint, or --arch, not both")
    if args.source:
        ckpt = read_checkpoint(ap, args.source)
        targs = ckpt["args"]
        root = getattr(args, "data", None) or targs.get("data", "./data")
        classes = ckpt.get("classes") or (load_data(ap, root, fetch)["classes"] if need_data
                                          else [str(i) for i in range(10)])
        model = build_model(targs["arch"], num_classes=len(classes))
        model.load_state_dict(eval_weights(ckpt))
        folder = run_folder(args.source)
        out = getattr(args, "out", None) or folder
        return Src(model.eval(), targs["arch"], classes, ckpt["mean"], ckpt["std"], root, out, run_name(folder), ckpt,
                   figure_tag(args.source, out), fetch, is_own_folder(args.source, out))
    if not arch:
        ap.error(f"give a run folder or checkpoint, or an untrained network with --arch ({', '.join(ARCHS)})")
    check_arch(ap, arch)
    torch.manual_seed(args.seed)
    model = build_model(arch).eval()
    root = getattr(args, "data", None) or "./data"
    classes, mean, std = [str(i) for i in range(10)], [0.5] * 3, [0.25] * 3
    if need_data:
        d = load_data(ap, root, fetch)
        mean, std = (t.tolist() for t in data.channel_stats(d["train"][0]))
        classes = d["classes"]
    return Src(model, arch, classes, mean, std, root, getattr(args, "out", None) or "figures", f"{arch}-untrained",
               tag=f"_seed{args.seed}" if args.seed else "", download=fetch)


def pick_test_images(ap, args, src):
    """Test images by --index (one or several) and --class NAME (then --index counts within that class): a list of
    (index in the test set, the image normalised as the network sees it (1, 3, H, W), its true class)."""
    x_test, labels = load_data(ap, src.root, src.download)["test"]
    classes = src.classes
    idx = args.index if isinstance(args.index, list) else [args.index]
    pool = torch.arange(len(labels))
    where = f"the test set has {len(labels)} images"
    if args.cls is not None:
        if args.cls not in classes:
            ap.error(f"unknown --class {args.cls!r}; choose from: {', '.join(classes)}")
        pool = (labels == classes.index(args.cls)).nonzero().flatten()
        where = f"the test set has {len(pool)} {args.cls} images"
    for i in idx:
        if not 0 <= i < len(pool):
            ap.error(f"--index {i} is out of range: {where}")
    picked = [int(pool[i]) for i in idx]
    return [(i, data.normalise(x_test[i:i + 1], src.mean, src.std), classes[int(labels[i])]) for i in picked]


def to_rgb(x, mean, std):
    """Normalised (..., 3, H, W) -> displayable float (..., H, W, 3) in [0, 1]."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x.detach().float().cpu() * s + m).clamp(0, 1).movedim(-3, -1).numpy()


def mosaic(tiles, ncols, pad=1):
    """(N, h, w[, c]) -> one (rows*(h+pad)-pad, cols*(w+pad)-pad[, c]) array, the gaps NaN (shown blank)."""
    n, h, w = tiles.shape[:3]
    rows = -(-n // ncols)
    out = np.full((rows * (h + pad) - pad, ncols * (w + pad) - pad, *tiles.shape[3:]), np.nan, dtype=np.float32)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = t
    return out


def scale01(t):
    """Each tile (first dim) min-max scaled to [0, 1] on its own; a constant tile becomes 0."""
    flat = t.reshape(len(t), -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp(min=1e-12)).reshape(t.shape)


def pct(v):
    return "–" if v is None else f"{100 * v:.2f}%"


# ----------------------------------------------------------------------------- features, filters, layers

def valid_layers(ap, src, info, wanted):
    """Refuse (exit 2, one line listing the valid names) a name that is no module, or a module without feature maps."""
    maps = [n for n, r in info.items() if is_map(r["shape"])]
    for name in wanted:
        if name not in info:
            ap.error(f"unknown layer {name!r} for {src.arch}; valid names: {', '.join(maps)}")
        if not is_map(info[name]["shape"]):
            ap.error(f"layer {name!r} of {src.arch} outputs shape {info[name]['shape']}, not feature maps; "
                     f"choose from: {', '.join(maps)}")


def cmd_features(ap, args):
    src = open_source(ap, args)
    i, x, true = pick_test_images(ap, args, src)[0]
    info = trace(src.model, x)
    layers = args.layers or stages(src.model, info)
    valid_layers(ap, src, info, layers)
    check_ranges(ap, args, positive=("channels",))
    paths = check_paths(ap, [os.path.join(src.out, f"features_{src.arch}{src.tag}_{i}_{layer}.png")
                             for layer in layers])
    info = trace(src.model, x, keep=set(layers))
    caption = f"test #{i}: {true}"
    if src.trained:
        with torch.no_grad():
            probs = src.model(x).float().softmax(1)[0]
        caption += f"\npredicted {src.classes[int(probs.argmax())]} ({100 * float(probs.max()):.0f}%)"
    plt = pyplot()
    for layer, path in zip(layers, paths):
        rec = info[layer]
        fmap = rec["out"][0]
        c, h, w = fmap.shape
        k = min(args.channels, c)
        order = fmap.mean((1, 2)).argsort(descending=True)[:k]  # strongest first
        tiles = scale01(fmap[order]).numpy()
        grid = mosaic(tiles, math.ceil(math.sqrt(k)))
        fig = plt.figure(figsize=FEATURES_SIZE)
        gs = fig.add_gridspec(1, 2, width_ratios=[1, 2.6], left=0.03, right=0.98, bottom=0.04, top=0.84, wspace=0.08)
        ax = fig.add_subplot(gs[0])
        ax.imshow(to_rgb(x[0], src.mean, src.std), interpolation="nearest")
        ax.set_title(caption, fontsize=11)
        ax.axis("off")
        ax = fig.add_subplot(gs[1])
        ax.imshow(grid, cmap=plt.get_cmap("viridis").with_extremes(bad="white"), vmin=0, vmax=1,
                  interpolation="nearest")
        ax.axis("off")
        shown = f"all {c} channels" if k == c else f"the {k} strongest of {c} channels"
        calls = f", last of {rec['calls']} calls" if rec["calls"] > 1 else ""
        fig.suptitle(f"{src.label} · {layer} ({rec['type']}{calls}) → "
                     f"{c}×{h}×{w}", fontsize=14, y=0.975)
        fig.text(0.5, 0.895, f"{shown} by mean activation, each scaled to its own range (dark = low, yellow = high)",
                 ha="center", fontsize=10, color="0.3")
        save(fig, path, src.own)
    return paths


def first_conv(model):
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    return None, None


def cmd_filters(ap, args):
    src = open_source(ap, args, need_data=False)
    name, conv = first_conv(src.model)
    if conv is None:
        ap.error(f"{src.arch} has no Conv2d layer")
    path, = check_paths(ap, [os.path.join(src.out, f"filters_{src.arch}{src.tag}.png")])
    w = conv.weight.detach().float()
    o, cin, kh, kw = w.shape
    tiles = scale01(w).permute(0, 2, 3, 1).numpy() if cin == 3 else scale01(w.mean(1)).numpy()
    ncols = math.ceil(math.sqrt(o))
    plt = pyplot()
    fig = plt.figure(figsize=FILTERS_SIZE)
    ax = fig.add_axes((0.04, 0.03, 0.92, 0.84))
    grid = mosaic(tiles, ncols)
    ax.imshow(np.nan_to_num(grid, nan=1.0), cmap=None if cin == 3 else "gray", interpolation="nearest")
    ax.axis("off")
    fig.suptitle(f"{src.label} · {name}: {o} kernels of {cin}×{kh}×{kw}",
                 fontsize=14, y=0.975)
    fig.text(0.5, 0.905, ("as RGB" if cin == 3 else "mean over input channels, gray")
             + ", each kernel scaled to its own range", ha="center", fontsize=10, color="0.3")
    return [save(fig, path, src.own)]


def cmd_layers(ap, args):
    src = open_source(ap, args, need_data=False)
    info = trace(src.model, torch.zeros(1, 3, 32, 32))
    default = stages(src.model, info)
    width = max(len(n) for n in info)
    print(f"{src.arch}: modules in the order they finish a forward pass; * = default --layers, "
          f"last * = Grad-CAM's layer")
    for n, r in info.items():
        shape = "×".join(map(str, r["shape"])) if r["shape"] is not None else "-"
        print(f"{'*' if n in default else ' '} {n:<{width}}  {r['type']:<18} {shape}"
              + (f"  ({r['calls']} calls)" if r["calls"] > 1 else ""))
    return []


# ----------------------------------------------------------------------------- errors

@functools.lru_cache(maxsize=None)
def say_once(message):
    """message on stderr, once a process (a report of several runs predicts once per run)."""
    print(message, file=sys.stderr, flush=True)


def predict_test_set(ap, src, subset=None, batch_size=500):
    """Probabilities (N, classes) of the checkpoint on the test set (the run's own --subset unless given), computed
    as train.py evaluated (same autocast), so the accuracy matches summary.json. Returns (x uint8, y, probs, acc)."""
    d = load_data(ap, src.root, src.download)
    x, y = d["test"]
    subset = subset if subset is not None else src.ckpt["args"].get("subset")
    if subset:
        x, y = x[:subset], y[:subset]
    device = pick_device(say_once)  # its no-GPU warning: why the pass below takes a minute
    amp = resolve_amp(src.ckpt["args"].get("amp", "off"), device, lambda m: None)
    print(f"testing {len(y):,} test images on {device} ...", file=sys.stderr, flush=True)
    loader = data.Loader(x, y, batch_size, device=device, mean=torch.tensor(src.mean), std=torch.tensor(src.std))
    res = evaluate(src.model.to(device), loader, device, amp, return_outputs=True)
    src.model.cpu()
    return x, y, res["logits"].float().softmax(1).cpu(), res["acc"]


def cmd_errors(ap, args):
    check_ranges(ap, args, positive=("count", "subset"))
    if args.count > MAX_ERRORS:
        ap.error(f"--count {args.count}: at most {MAX_ERRORS} mistakes fit one figure")
    src = open_source(ap, args)
    # the figures' files, named for the checkpoint they are drawn from (src.tag); errors-confusion, not
    # confusion_matrix.png, which is evaluate.py's
    errors, cm, bars = check_paths(ap, [os.path.join(src.out, f"{name}{src.tag}.png")
                                        for name in ("errors", "errors-confusion", "per_class")])
    x, y, probs, acc = predict_test_set(ap, src, args.subset)
    conf, pred = probs.max(1)
    wrong = (pred != y).nonzero().flatten()
    wrong = wrong[conf[wrong].argsort(descending=True)][:args.count]  # most confident mistakes first
    n_wrong = int((pred != y).sum())
    fig, axes = image_grid(max(1, -(-len(wrong) // ERR_COLS)), ERR_COLS, ERR_GRID,  # rows for the mistakes shown
                           f"{src.name} ({src.arch}): {n_wrong} of {len(y)} test images misclassified "
                           f"(accuracy {pct(acc)});\nthe {len(wrong)} most confident mistakes")
    imgs = to_rgb(data.normalise(x[wrong], src.mean, src.std), src.mean, src.std)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(wrong):
            i = int(wrong[k])
            ax.imshow(imgs[k], interpolation="nearest")
            ax.set_title(f"#{i} true: {src.classes[int(y[i])]}\npredicted: {src.classes[int(pred[i])]} "
                         f"{100 * float(conf[i]):.0f}%", fontsize=9, color="firebrick")
    return [save(fig, errors, src.own), save_confusion(pred, y, src.classes, acc, src.name, cm, src.own),
            plot_per_class(per_class(pred, y, len(src.classes)), src.classes, acc, bars,
                           f"{src.name}: per-class test accuracy", src.own)]


def save_confusion(pred, y, classes, acc, name, path, own):
    """evaluate.py's confusion-matrix figure of test predictions, titled with the accuracy (own: see save); prints the
    path."""
    plot_confusion(confusion(pred, y, len(classes)), classes, path, f"{name}: test accuracy {pct(acc)}", own)
    print(f"wrote {path}")
    return path


def plot_per_class(accs, classes, overall, path, title, own):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=PER_CLASS_SIZE)
    ypos = np.arange(len(classes))[::-1]
    shown = [a or 0 for a in accs]  # a class without test images (None): no bar, "n/a"
    bars = ax.barh(ypos, shown, color=["firebrick" if a < overall else "steelblue" for a in shown])
    ax.axvline(overall, color="k", ls="--", lw=1, label=f"overall {pct(overall)}")
    for b, a in zip(bars, accs):
        ax.text(min(a or 0, 1) + 0.01, b.get_y() + b.get_height() / 2, "n/a" if a is None else f"{100 * a:.1f}%",
                va="center", fontsize=9, bbox=dict(facecolor="white", edgecolor="none", pad=0.5), zorder=3)
    ax.set_yticks(ypos, classes)
    ax.set_xlim(0, 1.12)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    return save(fig, path, own)


# ----------------------------------------------------------------------------- augment

def wrap(text, width):
    """Break ' + '-joined text into lines of about `width` characters."""
    lines = [""]
    for part in text.split(" + "):
        if lines[-1] and len(lines[-1]) + len(part) + 3 > width:
            lines.append("+ " + part)
        else:
            lines[-1] += (" + " if lines[-1] else "") + part
    return "\n".join(lines)


def mixed_label(t, classes):
    """A label or soft target -> 'cat 0.62 + ship 0.38' (the two largest shares; one class: its name)."""
    if t.ndim == 0:
        return classes[int(t)]
    top = t.argsort(descending=True)[:2]
    parts = [(classes[int(j)], float(t[j])) for j in top if t[j] > 0.005]
    if len(parts) == 1:
        return parts[0][0]
    return " + ".join(f"{c} {v:.2f}" for c, v in parts)


def cmd_augment(ap, args):
    """Rows: the original images, then crop/flip/jitter/cutout, then that plus CutMix, plus MixUp (as --mix asks),
    all from one Loader draw (same seed and epoch), so every row holds the same images in the same order."""
    if not 2 <= args.count <= 64:  # mixing pairs images of the batch; one column per image
        ap.error(f"--count must be from 2 to 64, got {args.count}")
    try:
        data.check_augment_args(args)
    except data.DataError as e:
        ap.error(str(e))
    # a run's batch outside its folder is named for the run (run_tag), so another run's beside it stays
    path, = check_paths(ap, [os.path.join(args.out, f"augment{run_tag(args.run, args.out)}.png" if args.run
                                          else "augment.png")])
    d = load_data(ap, args.data or "./data", args.download)
    x, y = d["train"]
    # normalised as train.py does, then shown un-normalised by the same statistics, whatever they are
    mean, std = (t.tolist() for t in data.channel_stats(x))
    g = torch.Generator().manual_seed(args.seed)
    pick = torch.randperm(len(y), generator=g)[:args.count]
    xs, ys = x[pick], y[pick]

    def batch(**kw):
        loader = data.Loader(xs, ys, args.count, mean=mean, std=std, train=True, seed=args.seed, **kw)
        return next(iter(loader))

    aug = dict(crop=args.crop_pad, pad_mode=args.pad_mode, flip=data.flip_mode(args), jitter=args.jitter,
               cutout=args.cutout, mix_alpha=args.mix_alpha)
    what = [f"crop pad {args.crop_pad}" if args.crop_pad else None, None if args.no_flip else "flip",
            f"jitter {args.jitter:g}" if args.jitter else None, f"cutout {args.cutout}" if args.cutout else None]
    rows = [("original", batch(crop=0, flip=False)),
            (" + ".join(w for w in what if w) or "no augmentation", batch(**aug))]
    if args.mix in ("cutmix", "both"):
        rows.append((f"+ CutMix (α={args.mix_alpha:g})", batch(mix="cutmix", **aug)))
    if args.mix in ("mixup", "both"):
        rows.append((f"+ MixUp (α={args.mix_alpha:g})", batch(mix="mixup", **aug)))
    n = args.count
    src = f"the data flags of {run_name(args.run)}" if args.run else "these flags"
    fig, axes = image_grid(len(rows), n, AUG_GRID,
                           f"One training batch as the network sees it ({src}; seed {args.seed})")
    for r, (title, (bx, by)) in enumerate(rows):
        imgs = to_rgb(bx, mean, std)
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(imgs[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(mixed_label(by[c], d["classes"]).replace(" + ", "\n+ "), fontsize=8, linespacing=1.0)
        axes[r, 0].set_ylabel(wrap(title, 24), fontsize=9)
    return [save(fig, path, bool(args.run) and is_own_folder(args.run, args.out))]


# ----------------------------------------------------------------------------- Grad-CAM

def cmd_cam(ap, args):
    src = open_source(ap, args)
    picked = pick_test_images(ap, args, src)
    info = trace(src.model, torch.zeros(1, 3, 32, 32))
    ends = stages(src.model, info)  # its last: the default layer
    if not (args.layer or ends):
        ap.error(f"{src.arch} has no module with a spatial output for Grad-CAM")
    layer = args.layer or ends[-1]
    valid_layers(ap, src, info, [layer])
    target = None
    if args.target is not None:
        if args.target not in src.classes:
            ap.error(f"unknown --target {args.target!r}; choose from: {', '.join(src.classes)}")
        target = src.classes.index(args.target)
    # what differs from the default drawing is in the name: a figure of another class or layer keeps its own file
    ids = [str(i) for i, _, _ in picked]  # past 8 images: the first 8 and a hash of all, so two lists stay apart
    more = f"_etc-{hashlib.sha1(','.join(ids).encode()).hexdigest()[:6]}" if len(ids) > 8 else ""
    name = (f"cam_{src.arch}{src.tag}_{'_'.join(ids[:8])}{more}"
            + (f"_{safe_name(args.target)}" if target is not None else "")
            + (f"_{safe_name(layer)}" if ends[-1:] != [layer] else "") + ".png")
    path, = check_paths(ap, [os.path.join(src.out, name)])
    fig, axes = image_grid(len(picked), 3, CAM_GRID, f"Grad-CAM · {src.label} · "
                           f"{'predicted class' if target is None else args.target}")
    for row, (i, x, true) in zip(axes, picked):
        cam, up, probs, t = grad_cam(src.model, x, layer, target)
        img = to_rgb(x[0], src.mean, src.std)
        pred = int(probs.argmax())
        row[0].imshow(img, interpolation="nearest")
        row[0].set_title(f"test #{i}: {true}\npredicted {src.classes[pred]} ({100 * float(probs[pred]):.0f}%)",
                         fontsize=10, color="black" if src.classes[pred] == true else "firebrick")
        row[1].imshow(cam.numpy(), cmap="jet", interpolation="nearest")
        row[1].set_title(f"{layer}: {cam.shape[0]}×{cam.shape[1]} map\nfor {src.classes[t]} "
                         f"({100 * float(probs[t]):.0f}%)", fontsize=10)
        row[2].imshow(img, interpolation="nearest")
        row[2].imshow(up.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
        row[2].set_title(f"upsampled {up.shape[0]}×{up.shape[1]}, overlaid", fontsize=10)
        for ax in row:
            ax.axis("off")
    return [save(fig, path, src.own)]


# ----------------------------------------------------------------------------- command line

def get_parser():
    ap = OneLineParser(description="Figures of what a CIFAR-10 network sees and how its training went (PNG), "
                                   "and a Markdown/HTML report.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True, help="what to draw (each has its --help)")

    ap.commands = {}

    def add(name, help_, source=None, out_default="figures/"):
        """source: None, "run" (a checkpoint is needed) or "any" (a checkpoint, or an untrained --arch)."""
        p = ap.commands[name] = sub.add_parser(name, help=help_, description=help_)
        if source:
            p.add_argument("source", type=path_arg, nargs="?" if source == "any" else None,
                           help="a run folder (uses best.pt) or a .pt checkpoint")
        if source == "any":
            p.add_argument("--arch", default=None, help=f"an untrained network instead: {', '.join(ARCHS)}")
            p.add_argument("--seed", type=seed_arg, default=0, help="initialisation seed of an untrained --arch")
        if out_default:
            p.add_argument("--out", type=path_arg, default=None, help=f"output folder (default: {out_default})")
        return p

    def data_args(p, where):
        p.add_argument("--data", type=path_arg, default=None, help=where)
        p.add_argument("--download", action="store_true", help="fetch the official files into it if missing or damaged")

    def pick_args(p, several=False):
        data_args(p, "CIFAR-10 folder (default: the run's, else ./data)")
        p.add_argument("--index", type=int, nargs="+" if several else None, default=[0] if several else 0,
                       help=f"{'test images' if several else 'the test image'} by position (with --class: among "
                            "that class's images)")
        p.add_argument("--class", dest="cls", default=None, metavar="NAME", help="pick the test image from this class")

    own = "the run folder, else figures/"
    p = add("features", "feature maps of one test image after chosen layers, one grid per layer", "any", own)
    pick_args(p)
    p.add_argument("--layers", nargs="+", default=None, metavar="NAME",
                   help="module names as in model.named_modules() (see the `layers` subcommand); "
                        "default: the first conv and the end of every stage")
    p.add_argument("--channels", type=int, default=64, help="show at most this many channels per layer (strongest)")

    add("filters", "the first conv layer's kernels as a grid of RGB tiles", "any", own)

    several = "the run folder for one run, else figures/<the runs' names joined by +>"
    p = add("curves", "loss, accuracy and learning rate against epoch, several runs overlaid", out_default=several)
    p.add_argument("runs", type=path_arg, nargs="+", metavar="RUN_DIR", help="run folders, overlaid")

    p = add("errors", "misclassified test images, the confusion matrix and per-class accuracy bars", "run",
            "the run folder")
    data_args(p, "CIFAR-10 folder (default: the run's)")
    p.add_argument("--count", type=int, default=36, help=f"mistakes shown, most confident first (at most {MAX_ERRORS})")
    p.add_argument("--subset", type=int, default=None, help="first N test images (default: as the run was tested)")

    p = add("augment", "one training batch after crop/flip/jitter/cutout, CutMix and MixUp, labels under each image",
            out_default="RUN_DIR if given, else figures/")
    p.add_argument("run", type=path_arg, nargs="?", default=None, metavar="RUN_DIR",
                   help="take the data flags from this run's config.json (flags given here still win)")
    data.add_data_args(p, helps={"data": "folder holding cifar-10-batches-py, or that folder (default: RUN_DIR's, "
                                         "else ./data)",
                                 "val": "taken with a run's flags, not used: the batch is drawn from every training "
                                        "image",
                                 "mix_off_epochs": "taken with a run's flags, not used: one batch has no last epochs"})
    p.set_defaults(data=None, jitter=0.4, mix="both")  # show every augmentation unless told otherwise
    p.add_argument("--count", type=int, default=8, help="images in the batch")
    p.add_argument("--seed", type=seed_arg, default=0, help="seeds the batch's draws")

    p = add("cam", "Grad-CAM heat map of the predicted class over the input image", "any", own)
    pick_args(p, several=True)
    p.add_argument("--layer", default=None,
                   help="module to explain (default: the end of the last stage; another adds _LAYER to the file name)")
    p.add_argument("--target", default=None, metavar="CLASS",
                   help="explain this class instead of the predicted one (adds _CLASS to the file name)")

    p = add("report", "report.md and a self-contained report.html: configuration, results, curves, "
                      "confusion matrix and per-class table; several runs become one comparison",
            out_default=several)
    p.add_argument("runs", type=path_arg, nargs="+", metavar="RUN_DIR", help="run folders (several: one comparison)")
    data_args(p, "CIFAR-10 folder (default: each run's)")

    add("layers", "print every module's name, type and output shape (the names --layers takes)", "any", None)
    return ap


def in_report(ap, args):
    """`curves` and `report`: report.py's cmd_curves and cmd_report. report.py imports this module, so it is imported
    here, when one of them runs, not at the top."""
    import report
    return getattr(report, f"cmd_{args.command}")(ap, args)


COMMANDS = {"features": cmd_features, "filters": cmd_filters, "curves": in_report, "errors": cmd_errors,
            "augment": cmd_augment, "cam": cmd_cam, "report": in_report, "layers": cmd_layers}


def main(argv=None):
    ap = get_parser()
    args = ap.parse_args(argv)
    if args.command == "augment" and args.run:
        # the run's data flags become the defaults, so flags given on the command line still win
        import report  # see in_report
        sub, dest = ap.commands["augment"], set(vars(args))
        sub.set_defaults(**{k: v for k, v in report.train_args(sub, args.run).items()
                            if k in dest and k not in ("out", "seed", "run")})
        args = ap.parse_args(argv)
    if "out" in vars(args):  # figures are written after the work: a place that cannot take them is found now
        given, args.out = args.out is not None, args.out or default_out(args)
        check_output_folder(ap.commands[args.command], "--out" if given else "the default --out", args.out)
    COMMANDS[args.command](ap.commands[args.command], args)
    return 0


if __name__ == "__main__":
    run_main(main, "visualize.py")
