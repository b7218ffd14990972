"""Does BatchNorm smooth the loss landscape? VGG-A with and without BN (report 003, after
Santurkar et al. 2018, "How Does Batch Normalization Help Optimization?").

    python landscape.py                 # VGG-A without BN at every --lrs
    python landscape.py --bn            # VGG-A with BN; draws the comparison once both results exist
    python landscape.py --plot-only     # redraw from the saved JSON, no training

Each variant is trained from the same initial weights once per learning rate in the course code's setup
behind report 003 (Adam, batch 128, Xavier-normal init, inputs normalised with mean and std 0.5, all
50,000 training images, the test set for the per-epoch accuracy, no augmentation, fp32; --init, --norm,
--val, --augment and --amp change these). Every step's training loss is recorded and, every
--measure-every steps, the paper's three measures along the gradient g on the same batch
(measure_along_gradient), at probe distances that are multiples of the length of Adam's update at that
step (probe_multiples says why). Results go to --out/<arch>.json and --out/summary.json; figures to --out:

    loss_landscape.png   report 003's figure: per-step training loss, band between min and max over lrs
    measures.png         Santurkar et al.'s Fig. 4 at lr 5e-4: bands over the probe distances, and beta (if measured)
    curves_lr<LR>.png    per lr: training loss per step and held-out accuracy per epoch
    surface_1d.png, surface_2d.png   with --surface: filter-normalised loss slices (Li et al. 2018)

Every figure shows whichever variants have results in --out, VGG-A green and VGG-A + BN red; a figure that
landscape.py drew there before and does not draw again (of results no longer there) is removed. A file of yours
under one of these names is refused (one line, exit 2; before the training where the name is sure), not replaced.
"""
import datetime
import json
import math
import os
import platform
import re
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

import data
import evaluate
import runfiles
import runtime
from models import build_model, xavier_init
from surface import loss_surface, surface_batches

VARIANTS = {"vgg_a": "VGG-A", "vgg_a_bn": "VGG-A + BatchNorm"}
COLORS = {"vgg_a": "tab:green", "vgg_a_bn": "tab:red"}
DEFAULT_LRS = [1e-3, 2e-3, 1e-4, 5e-4]  # the course code's list (report 003)
REPORT_LR = 5e-4                        # the lr whose curves report 003 shows
DPI = 100
FIGURES = r"(loss_landscape|measures|curves_lr[0-9.e+-]+|surface_1d|surface_2d)\.png"  # the names it draws
FIGSIZE = {"loss_landscape": (10, 5), "measures": (16, 4.5), "curves": (12, 4.5),
           "surface_1d": (7, 4.5), "surface_2d": (12, 5)}


# ----------------------------------------------------------------------------- the three measures

def probe_multiples(lo=0.5, hi=4.0, n=4):
    """The probe distances as multiples of the length of the optimizer's own update at the measured step:
    n values evenly spaced over [lo, hi]. Santurkar et al. (Fig. 4) move along the gradient "as we move in
    the gradient direction" and "cap the maximum distance to be eta = 0.4 x the gradient" while training
    with SGD at lr 0.1, i.e. up to 4x the step SGD takes there. Adam's step is not lr x gradient (each
    coordinate moves by at most about lr, whatever the gradient's size), so the unit here is the length of
    the update the optimizer actually makes: [0.5, 4] x that length by default."""
    return [float(m) for m in np.linspace(lo, hi, n)]


def _norm(tensors):
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))


def measure_along_gradient(model, closure, multiples, optimizer_step):
    """The paper's three measures at the current weights w on one fixed batch (closure() returns that
    batch's loss from a fresh forward pass), at distances set by the optimizer's own update.

    With g = grad L(w), the update is taken first (optimizer_step() moves the weights using p.grad = g,
    as a training step would); its length s = ||w_next - w|| sets the probe distances d_i = multiples[i] x s.
    Then, along the unit gradient direction u = g / ||g||, with w_i = w - d_i u:

        loss[i]      = L(w_i)                                   loss_min, loss_max: their range
        grad_dist[i] = ||g - grad L(w_i)||                      grad_min, grad_max: its range
        beta         = max_i ||g - grad L(w_i)|| / d_i          effective beta-smoothness

    All on the same batch (as the paper), in closure's precision. Afterwards the weights are w_next, the
    buffers as after the first forward pass (BN statistics see that pass only, as in a plain step) and
    every p.grad holds g. Returns a dict of floats (and lists for loss, grad_dist and distances)."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    loss0 = closure()
    loss0.backward()
    g = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    w0 = [p.detach().clone() for p in params]
    buffers = [b.detach().clone() for b in model.buffers()]
    optimizer_step()
    w1 = [p.detach().clone() for p in params]
    step_length = _norm([b - a for a, b in zip(w0, w1)])
    g_norm = _norm(g)
    distances = [m * step_length for m in multiples]
    losses, dists, ratios = [], [], []
    try:
        for d in distances:
            with torch.no_grad():
                for p, w, gi in zip(params, w0, g):
                    torch.add(w, gi, alpha=-d / g_norm if g_norm > 0 else 0.0, out=p.data)
            model.zero_grad(set_to_none=True)
            loss = closure()
            loss.backward()
            dist = _norm([gi - (p.grad if p.grad is not None else 0) for p, gi in zip(params, g)])
            losses.append(loss.item())
            dists.append(dist)
            ratios.append(dist / d if d > 0 else 0.0)
    finally:
        with torch.no_grad():
            for p, w, gi in zip(params, w1, g):
                p.copy_(w)
                p.grad = gi
            for b, s in zip(model.buffers(), buffers):
                b.copy_(s)
    return {"loss0": loss0.item(), "grad_norm": g_norm, "step_length": step_length, "distances": distances,
            "loss": losses, "grad_dist": dists, "loss_min": min(losses), "loss_max": max(losses),
            "grad_min": min(dists), "grad_max": max(dists), "beta": max(ratios)}


MEASURE_KEYS = ["loss0", "grad_norm", "step_length", "loss_min", "loss_max", "grad_min", "grad_max", "beta"]


# ----------------------------------------------------------------------------- training one variant

def train_lr(arch, lr, loaders, args, device, amp_dtype, progress):
    """Train `arch` at one lr from the seed's initial weights; returns (run record, model)."""
    train_loader, eval_loader, eval_split, num_classes = loaders
    torch.manual_seed(args.seed)  # same initial weights for every lr
    model = build_model(arch, num_classes=num_classes)
    if args.init == "xavier":
        xavier_init(model)  # replaces build_model's Kaiming init
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)  # the course code's optimizer (no weight decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    multiples = probe_multiples(*args.probe_range, args.probes)
    run = {"lr": lr, "probe_multiples": multiples, "steps_per_epoch": len(train_loader), "train_loss": [],
           "measure": {"step": [], "loss": [], "grad_dist": [], "distances": [], **{k: [] for k in MEASURE_KEYS}},
           f"{eval_split}_acc": [], f"{eval_split}_loss": [], "diverged_at_step": None}
    t0, t_measure, step = time.time(), 0.0, 0
    model.train()
    for epoch in range(args.epochs):
        train_loader.set_epoch(epoch)
        bar = runtime.Progress(len(train_loader), epoch, args.epochs, *progress)
        losses = []  # on the device: one host sync per epoch (and per measurement)
        for x, y in train_loader:
            if args.measure_every and step % args.measure_every == 0:
                tm = time.time()
                # fp32, no autocast: the differences measured are far below bf16's resolution. The
                # optimizer's step happens inside, on g, the fp32 gradient the measures start from.
                m = measure_along_gradient(model, lambda: F.cross_entropy(model(x), y), multiples, optimizer.step)
                t_measure += time.time() - tm
                for k, v in m.items():
                    run["measure"][k].append(v)
                run["measure"]["step"].append(step)
                losses.append(torch.tensor(m["loss0"], device=device))
            else:
                with runtime.autocast(device, amp_dtype):
                    loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(loss.detach().float())
            step += 1
            bar.update(1)
        epoch_losses = torch.stack(losses).tolist()
        bad = [i for i, v in enumerate(epoch_losses) if not math.isfinite(v)]
        run["train_loss"] += epoch_losses[:bad[0]] if bad else epoch_losses
        if bad:
            run["diverged_at_step"] = step - len(epoch_losses) + bad[0]
            bar.close(f"{arch} lr {lr:g}: loss is {epoch_losses[bad[0]]} at step {run['diverged_at_step']}; "
                      f"this lr stops here")
            break
        r = evaluate.evaluate(model, eval_loader, device, amp_dtype)
        run[f"{eval_split}_acc"].append(r["acc"])
        run[f"{eval_split}_loss"].append(r["loss"])
        bar.close(f"{arch} lr {lr:g} epoch {epoch + 1}/{args.epochs}  train loss {np.mean(epoch_losses):.4f}  "
                  f"{eval_split} acc {r['acc']:.4f}  {time.time() - t0:.0f}s"
                  + runtime.eta(t0, epoch + 1, args.epochs - epoch - 1))  # of this lr's run
    run.update(time_s=time.time() - t0, measure_time_s=t_measure)
    return run, model


def run_variant(arch, args, loaders, info, device, amp_dtype, path, saved, log=print):
    """Train `arch` at every lr, write `path` after each lr (atomically; `saved` gets each save's lrs), return it."""
    progress = runtime.progress_style(args.no_progress)
    result = {"arch": arch, "label": VARIANTS[arch], "complete": False,
              "config": config_of(args, device, amp_dtype, info), "runs": [], "surface": None}
    probes, t0 = ", ".join(f"{m:.3g}" for m in probe_multiples(*args.probe_range, args.probes)), time.time()
    for i, lr in enumerate(args.lrs):
        left = runtime.eta(t0, i, len(args.lrs) - i)  # at the mean pace of the lrs done
        log(f"== {VARIANTS[arch]}: lr {lr:g} ({i + 1}/{len(args.lrs)}), {args.epochs} epochs x {len(loaders[0])} steps"
            + (f", measures every {args.measure_every} steps at {probes} x Adam's step" if args.measure_every else
               ", no measures (--measure-every 0)") + (f"; {left.strip()} for this variant's lrs left" if left else ""))
        run, model = train_lr(arch, lr, loaders, args, device, amp_dtype, progress)
        result["runs"].append(run)
        if args.surface and lr == args.surface_lr:
            ts = time.time()
            log(f"   loss surface around the final weights: {2 * args.surface_res - 1} + "
                f"{args.surface_res ** 2} points on {args.surface_images} training images")
            result["surface"] = {"lr": lr, **loss_surface(model, surface_batches(loaders[0], args.surface_images),
                                                          args.surface_res, seed=args.seed)}
            result["surface"]["time_s"] = time.time() - ts
        result["time_s"] = time.time() - t0
        save_results(result, path)
        saved.append(len(result["runs"]))  # for a caller cut short by Ctrl-C: what this run wrote
    result.update(complete=True, finished=datetime.datetime.now().isoformat(timespec="seconds"))
    save_results(result, path)
    log(f"   wrote {path} ({result['time_s']:.0f}s)")
    return result


def config_of(args, device, amp_dtype, info):
    return {"lrs": args.lrs, "epochs": args.epochs, "batch_size": args.batch_size, "subset": args.subset,
            "seed": args.seed, "optimizer": "adam", "measure_every": args.measure_every,
            "probe_range": list(args.probe_range), "probes": args.probes, "probe_unit": "length of Adam's step",
            "measures_precision": "fp32", "amp": str(amp_dtype or "fp32"), "init": args.init, "norm": args.norm,
            "augment": {"crop_pad": args.crop_pad, "flip": not args.no_flip},
            "data": {k: v for k, v in info.items() if k != "classes"}, "device": runtime.device_name(device),
            "torch": torch.__version__, "python": platform.python_version(), "git_commit": runfiles.git_commit(),
            "started": datetime.datetime.now().isoformat(timespec="seconds")}


# ----------------------------------------------------------------------------- results on disk

def save_results(result, path):
    runfiles.write_text(path, runfiles.json_text(result))


def lrs_held(path):
    """'N of M' when `path` holds an interrupted run's result (complete false: N of its M lrs saved), else None."""
    try:
        r = load_results(path)
        return None if r.get("complete", True) else f"{len(r['runs'])} of {len(r['config']['lrs'])}"
    except (ValueError, KeyError, TypeError):  # unreadable, or not as run_variant writes it: nothing to count
        return None


def load_results(path):
    """A variant's saved result; ValueError with a one-line reason when unreadable."""
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(result, dict) or result.get("arch") not in VARIANTS or not isinstance(result.get("runs"), list):
        raise ValueError(f"{path} is not a result written by landscape.py")
    return result


# ----------------------------------------------------------------------------- bands and summary

def _stack(rows):
    """Rows of different lengths (a diverged lr stops early; null = NaN) -> 2D float array padded with NaN."""
    n = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), n), np.nan)
    for i, r in enumerate(rows):
        out[i, :len(r)] = np.asarray(r, dtype=float)
    return out


def loss_band(result):
    """(steps, min over lrs, max over lrs) of the per-step training loss."""
    a = _stack([r["train_loss"] for r in result["runs"]])
    with warnings.catch_warnings():  # all-NaN columns (every lr diverged by then) stay NaN silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.arange(a.shape[1]), np.nanmin(a, axis=0), np.nanmax(a, axis=0)


def measures_lr(results):
    """The lr whose measures are drawn and summarised: report 003's 5e-4 where it ran, else the first lr."""
    lrs = [r["lr"] for res in results.values() for r in res["runs"]]
    return next((lr for lr in lrs if math.isclose(lr, REPORT_LR, rel_tol=1e-9)), lrs[0] if lrs else REPORT_LR)


def run_at(result, lr):
    return next((r for r in result["runs"] if math.isclose(r["lr"], lr, rel_tol=1e-9)), None)


def _nanmean(values):
    a = np.asarray([v if v is not None else np.nan for v in values], dtype=float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else float("nan")


def summarize(result, lr):
    """One row of the summary: the mean width of the training-loss band over lrs, and at `lr` the means over
    its measurements of the loss variation along g (loss_max - loss_min), the gradient predictiveness
    (max ||g - grad L(w_i)||), beta, Adam's step length and lr ||g|| (the probe unit of Santurkar et al.'s SGD)."""
    _, lo, hi = loss_band(result)
    counts = np.isfinite(_stack([r["train_loss"] for r in result["runs"]])).sum(0)  # a band over one lr says nothing
    split = "val" if any("val_acc" in r for r in result["runs"]) else "test"
    run = run_at(result, lr) or {"measure": {k: [] for k in ("step", "loss_min", "loss_max", *MEASURE_KEYS)}}
    m = run["measure"]
    acc = run.get(f"{split}_acc") or [float("nan")]
    return {"lr": lr, "loss_band": _nanmean(np.where(counts >= 2, hi - lo, np.nan)),
            "loss_var": _nanmean([b - a if a is not None and b is not None else None
                                  for a, b in zip(m["loss_min"], m["loss_max"])]),
            "grad_pred": _nanmean(m["grad_max"]), "beta": _nanmean(m["beta"]),
            "step_length": _nanmean(m.get("step_length", [])),
            "lr_grad": lr * _nanmean(m["grad_norm"]), "final_acc": acc[-1], "split": split,
            "measurements": len(m["step"])}


def summary_table(results):
    def cell(value, fmt, none):  # NaN, nothing to average (no measurement; a band over one lr), in words
        return format(value, fmt) if math.isfinite(value) else none

    lr = measures_lr(results)
    rows = [(VARIANTS[a], summarize(r, lr)) for a, r in results.items()]
    measured = any(s["measurements"] for _, s in rows)  # --measure-every 0: no measure columns at all
    cols = [("loss var. along g", "loss_var", ".4g"), ("max |dgrad|", "grad_pred", ".4g"), ("beta-smooth", "beta",
             ".4g"), ("Adam step", "step_length", ".3g"), ("lr |g|", "lr_grad", ".3g")] if measured else []
    head = ["variant", "loss band", *[c[0] for c in cols], "final acc"] + ["n"] * measured
    body = [[name, cell(s["loss_band"], ".4f", "n/a"),
             *[cell(s[k], f, "n/a" if s["measurements"] else "not measured") for _, k, f in cols],
             f"{s['split']} {cell(s['final_acc'], '.3f', 'n/a')}"] + [str(s["measurements"])] * measured
            for name, s in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(x.ljust(w) if i in (0, len(cols) + 2) else x.rjust(w)  # variant and final acc: to the left
                       for i, (x, w) in enumerate(zip(r, widths))).rstrip() for r in [head, *body]]
    lines.append("loss band: mean over steps of (max - min) of the training loss across lrs (steps where at least "
                 "two lrs ran). " + (f"The rest at lr {lr:g}, means over its n measurements: loss_max - loss_min and "
                 f"max ||grad L(w) - grad L(w_i)|| over the probes w_i = w - d_i g/||g||, max ||dgrad|| / d_i, the "
                 f"length of Adam's step (the probe unit) and lr ||g||" if measured else
                 f"No measures at lr {lr:g} (--measure-every 0)"))
    if len(rows) == 2 and all(math.isfinite(r[1]["loss_band"]) for r in rows):
        a, b = rows[0][1]["loss_band"], rows[1][1]["loss_band"]
        word = "narrower" if b < a else "wider" if b > a else "as wide"
        lines.append(f"BN's loss band is {word}: {b:.4f} vs {a:.4f} without BN" +
                     (f" ({b / a:.2f}x)" if a > 0 and math.isfinite(b / a) else ""))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures

def _band(ax, x, lo, hi, arch):
    ax.fill_between(x, lo, hi, color=COLORS[arch], alpha=0.35, lw=0, label=VARIANTS[arch])
    ax.plot(x, lo, color=COLORS[arch], lw=0.8)
    ax.plot(x, hi, color=COLORS[arch], lw=0.8)


def _label(ax, xlabel, ylabel, title, legend=True):
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _save(fig, path):
    fig.tight_layout()
    # whole or not at all, with landscape.py's mark; not own: --out is never a train.py run's folder (check_args)
    runfiles.save_figure(fig, path, dpi=DPI, by="landscape.py", own=False)
    runtime.pyplot().close(fig)
    return path


def remove_stale_figures(out, written):
    """Remove the figures landscape.py drew in `out` (FIGURES) that this report did not redraw, of results no longer
    there (a run replaced with --force); their names. A file without landscape.py's mark for its name stays: the
    user's own, one drawn before the mark named its file, or a copy under another name."""
    found = {os.path.join(out, n) for n in os.listdir(out) if re.fullmatch(FIGURES, n)} - set(written)
    stale = sorted(p for p in found
                   if runfiles.read_mark(p) == runfiles.mark_text("landscape.py", False, os.path.basename(p)))
    for path in stale:
        os.remove(path)
    return [os.path.basename(p) for p in stale]


def plot_loss_landscape(results, path):
    """Report 003's figure: per-step training loss, band between min and max over the lrs."""
    fig, ax = runtime.pyplot().subplots(figsize=FIGSIZE["loss_landscape"])
    for arch, res in results.items():
        _band(ax, *loss_band(res), arch)
    lrs = "; ".join(f"{VARIANTS[a]} lrs " + ", ".join(f"{r['lr']:g}" for r in v["runs"]) for a, v in results.items())
    _label(ax, "training step", "training loss (batch)",
           f"Loss landscape: range of the training loss over learning rates\n{lrs}")
    return _save(fig, path)


MEASURE_PANELS = [("loss_min", "loss_max", "loss L(w - d g/||g||)", "(a) loss landscape", False),
                  ("grad_min", "grad_max", "||grad L(w) - grad L(w - d g/||g||)||", "(b) gradient predictiveness",
                   True), ("beta", None, "max ||dgrad|| / d", "(c) \"effective\" beta-smoothness", True)]


def plot_measures(results, path):
    """Santurkar et al. Fig. 4 at one lr (measures_lr): at each measured step, the range over the probe
    distances d of the loss (a) and of the gradient change (b) as a band, and beta (c) as a curve. None, and
    no figure, when no variant measured at that lr (--measure-every 0): an empty figure shows nothing."""
    lr = measures_lr(results)
    runs = {a: r for a, r in ((a, run_at(res, lr)) for a, res in results.items()) if r and r["measure"]["step"]}
    if not runs:
        return None
    fig, axes = runtime.pyplot().subplots(1, 3, figsize=FIGSIZE["measures"])
    units = {", ".join(f"{x:.3g}" for x in run["probe_multiples"]) if "probe_multiples" in run else
             "(unknown: results of an older landscape.py, whose probes were lr x 0.5-4 x g)" for run in runs.values()}
    for ax, (lo_key, hi_key, ylabel, title, log) in zip(axes, MEASURE_PANELS):
        for arch, run in runs.items():
            m = run["measure"]
            x, lo = np.asarray(m["step"]), np.asarray(m[lo_key], dtype=float)
            if hi_key:
                _band(ax, x, lo, np.asarray(m[hi_key], dtype=float), arch)
            else:
                ax.plot(x, lo, color=COLORS[arch], lw=1.0, label=VARIANTS[arch])
        if log and ax.has_data():
            ax.set_yscale("log")
        _label(ax, "training step", ylabel, title)
    fig.suptitle(f"Adam at lr {lr:g}: at each measured step, probes along the gradient at distances d = "
                 f"{' / '.join(sorted(units))} x the length of Adam's update at that step; bands span the probe "
                 f"distances", fontsize=10)
    return _save(fig, path)


def plot_curves(results, lr, path):
    """At one lr: training loss per step and held-out accuracy per epoch, for each variant that ran it."""
    fig, (a1, a2) = runtime.pyplot().subplots(1, 2, figsize=FIGSIZE["curves"])
    split = "val"
    for arch, res in results.items():
        r = run_at(res, lr)
        if r is None:
            continue
        split = "val" if "val_acc" in r else "test"
        a1.plot(np.arange(len(r["train_loss"])), np.asarray(r["train_loss"], dtype=float),
                color=COLORS[arch], lw=0.8, label=VARIANTS[arch])
        acc = r.get(f"{split}_acc", [])
        a2.plot(np.arange(1, len(acc) + 1), acc, "o-", color=COLORS[arch], label=VARIANTS[arch])
    _label(a1, "training step", "training loss (batch)", f"training loss, lr {lr:g}")
    a2.xaxis.set_major_locator(runtime.pyplot().MaxNLocator(integer=True))
    _label(a2, "epoch", f"{split} accuracy", f"{split} accuracy per epoch, lr {lr:g}")
    return _save(fig, path)


def plot_surface(results, path_1d, path_2d):
    """Li et al.'s filter-normalised slices around each variant's final weights: a line plot and contours."""
    plt = runtime.pyplot()
    with_surface = {a: r for a, r in results.items() if r.get("surface")}
    fig, ax = plt.subplots(figsize=FIGSIZE["surface_1d"])
    for arch, res in with_surface.items():
        s = res["surface"]
        ax.plot(s["alphas"], np.asarray(s["loss_1d"], dtype=float), color=COLORS[arch],
                label=f"{VARIANTS[arch]} (lr {s['lr']:g})")
    _label(ax, "alpha (filter-normalised random direction)", "training loss", "1D loss slice around the final weights")
    _save(fig, path_1d)
    fig, axes = plt.subplots(1, len(with_surface), figsize=FIGSIZE["surface_2d"], squeeze=False)
    for ax, (arch, res) in zip(axes[0], with_surface.items()):
        s = res["surface"]
        z = np.asarray(s["loss_2d"], dtype=float)
        # levels at quantiles of the values: a steep rim would otherwise leave the centre without contours
        levels = np.unique(np.nanquantile(z, np.linspace(0, 1, 16)))
        cs = ax.contour(s["grid"], s["grid"], z, levels=levels if len(levels) > 1 else 2, cmap="viridis")
        ax.clabel(cs, fontsize=7, fmt="%.2f")
        ax.plot([0], [0], "k+", ms=10)
        _label(ax, "direction 1", "direction 2", f"{VARIANTS[arch]} (lr {s['lr']:g}, {s['images']} images)", False)
        ax.set_aspect("equal")
    fig.suptitle("2D loss slice (filter-normalised directions, Li et al. 2018)", fontsize=10)
    return _save(fig, path_2d)


def result_lrs(results):
    """Every lr with a run in results, highest first: a curves figure each."""
    return sorted({r["lr"] for res in results.values() for r in res["runs"]}, reverse=True)


def figure_names(results):
    """The files plot_all draws for these results (it draws what this lists, so a check of the names before drawing
    sees every file written): loss_landscape.png, measures.png where plot_measures has a measured run, a
    curves_lr<lr>.png per lr, the surfaces where a variant has them."""
    lr = measures_lr(results)
    measured = any((r := run_at(res, lr)) and r["measure"]["step"] for res in results.values())
    surfaces = any(r.get("surface") for r in results.values())
    return (["loss_landscape.png"] + ["measures.png"] * measured
            + [f"curves_lr{lr:g}.png" for lr in result_lrs(results)] + ["surface_1d.png", "surface_2d.png"] * surfaces)


def check_ours(ap, out, names, then):
    """Refuse (exit 2) a file in out under one of these names that no script here wrote (a PNG without the mark, a
    summary.json that is no landscape.py summary): the user's, which drawing the report would replace."""
    for path in (os.path.join(out, n) for n in names):
        summary = path.endswith(".json")
        if os.path.isfile(path) and not (is_summary(path) if summary else runfiles.drawn_by_us(path)):
            whose = "a file of yours" if summary else "a file of yours, or a figure from before the mark"
            ap.error(f"{path} is not landscape.py's ({whose}); move it, {then}")


def is_summary(path):
    """Whether the JSON file at path is a summary landscape.py wrote: an object of its variants."""
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(summary, dict) and bool(summary) and set(summary) <= set(VARIANTS)


def plot_all(results, out):
    """Every figure of figure_names for the variants in `results` (one or both); returns the paths written."""
    names = figure_names(results)
    paths = [plot_loss_landscape(results, os.path.join(out, "loss_landscape.png"))]
    if "measures.png" in names:
        paths.append(plot_measures(results, os.path.join(out, "measures.png")))
    paths += [plot_curves(results, lr, os.path.join(out, f"curves_lr{lr:g}.png")) for lr in result_lrs(results)]
    if "surface_1d.png" in names:
        paths += [os.path.join(out, "surface_1d.png"), os.path.join(out, "surface_2d.png")]
        plot_surface(results, *paths[-2:])
    return paths


# ----------------------------------------------------------------------------- command line

def get_parser():
    ap = runtime.OneLineParser(description="VGG-A with and without BatchNorm at several learning rates: the training "
                                         "loss band and Santurkar et al.'s landscape measures (report 003).")
    which = ap.add_mutually_exclusive_group()  # --bn --both: one says instead of VGG-A, the other with it
    which.add_argument("--bn", action="store_true", help="train VGG-A with BatchNorm (vgg_a_bn) instead of without")
    which.add_argument("--both", action="store_true", help="train both variants, VGG-A and VGG-A with BatchNorm")
    ap.add_argument("--lrs", type=float, nargs="+", default=DEFAULT_LRS, help="Adam learning rates, one run each")
    ap.add_argument("--epochs", type=int, default=20, help="epochs of each run (one per variant and lr)")
    ap.add_argument("--batch-size", type=int, default=128, help="training images per step")
    ap.add_argument("--measure-every", type=int, default=10, metavar="K",
                    help="the three measures every K steps (0 = never); each costs probes + 1 fp32 forward/backward")
    ap.add_argument("--probes", type=int, default=4, help="probe distances per measurement")
    ap.add_argument("--probe-range", type=float, nargs=2, default=[0.5, 4.0], metavar=("LO", "HI"),
                    help="probe distances evenly spaced over [LO, HI] x the length of Adam's update at that step")
    ap.add_argument("--init", default="xavier", choices=["xavier", "kaiming"],
                    help="initial weights: Xavier-normal as the course code of 003, or build_model's Kaiming-normal")
    ap.add_argument("--norm", default="half", choices=["half", "data"],
                    help="input normalisation: mean and std 0.5 per channel as the course code, or the training "
                         "images' own statistics")
    ap.add_argument("--augment", action="store_true",
                    help="random crop (--crop-pad, default 4) and flip; default none, as the course code of 003")
    data.add_data_args(ap, helps={
        "val": "hold out N training images for the per-epoch accuracy (0 = train on all, evaluate on the test set, "
               "as the course code)",
        "crop_pad": "random crop with this padding (default: 4 with --augment, else 0 = off)"})
    ap.set_defaults(crop_pad=None)
    ap.add_argument("--subset", type=int, default=None, help="use only the first N train (and test) images")
    ap.add_argument("--seed", type=runtime.seed_arg, default=0,
                    help="initial weights (the same for every lr) and batch order")
    runtime.add_amp_arg(ap, default="off", help="autocast for the training steps (the measures are always fp32): "
                                                "off = fp32 as the course code, auto = bf16 on CUDA and CPU")
    ap.add_argument("--surface", action="store_true",
                    help="also Li et al.'s filter-normalised 1D and 2D loss slices around the final weights")
    ap.add_argument("--surface-lr", type=float, default=None,
                    help=f"the lr whose final weights the surface is drawn around (default {REPORT_LR:g} if in "
                         f"--lrs, else the first)")
    ap.add_argument("--surface-res", type=int, default=21, metavar="R",
                    help="2D grid R x R, 1D slice 2R-1 points, on [-1, 1]")
    ap.add_argument("--surface-images", type=int, default=1024, metavar="N",
                    help="training images the surface loss uses")
    ap.add_argument("--out", type=runtime.path_arg, default="landscape",
                    help="folder for the JSON results and the PNGs")
    ap.add_argument("--force", action="store_true", help="overwrite a variant's existing results")
    ap.add_argument("--plot-only", action="store_true", help="redraw the figures from the JSON in --out, no training")
    ap.add_argument("--no-progress", action="store_true",
                    help="one line per epoch only: no bar on a terminal, no line a minute into a pipe or log")
    return ap


def check_args(ap, args):
    """Refuse bad values before anything is created; resolve the defaults that depend on others."""
    runtime.check_ranges(ap, args, positive=("epochs", "batch_size", "probes", "surface_images", "subset"),
                         nonnegative=("measure_every", "val"))
    if args.surface_res < 2:
        ap.error(f"--surface-res must be >= 2, got {args.surface_res}")
    if any(not (lr > 0 and math.isfinite(lr)) for lr in args.lrs):
        ap.error(f"--lrs must be positive, got {' '.join(f'{lr:g}' for lr in args.lrs)}")
    if len(set(args.lrs)) != len(args.lrs):
        ap.error("--lrs has a repeated value")
    lo, hi = args.probe_range
    if not 0 < lo <= hi or not math.isfinite(hi):
        ap.error(f"--probe-range needs 0 < LO <= HI, got {lo:g} {hi:g}")
    args.crop_pad = (4 if args.augment else 0) if args.crop_pad is None else args.crop_pad
    args.no_flip = args.no_flip or not args.augment
    if args.surface_lr is None:
        args.surface_lr = REPORT_LR if REPORT_LR in args.lrs else args.lrs[0]
    elif args.surface_lr not in args.lrs:
        ap.error(f"--surface-lr {args.surface_lr:g} is not one of --lrs")
    if args.plot_only and args.surface:
        ap.error("--surface needs the trained weights: drop --plot-only (saved surfaces are redrawn anyway)")
    runfiles.check_output_folder(ap, "--out", args.out, not_a_run=True)  # found before the training, not after


COURSE_NORM = ([0.5] * 3, [0.5] * 3)  # the course code's transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def train_variants(ap, args, asked, paths):
    """Train every asked variant into its JSON; returns 130 when interrupted, else None."""
    for a in asked:
        if os.path.exists(paths[a]) and not args.force:
            held = lrs_held(paths[a])  # a partial result says so: there is no resuming, --force trains every lr again
            ap.error(f"{paths[a]} holds {held} lrs of an interrupted run; use --force to start over, --plot-only to "
                     f"redraw them, or another --out" if held else
                     f"{paths[a]} exists; use --force to overwrite it, --plot-only to redraw, or another --out")
    device = runtime.pick_device()
    amp_dtype = runtime.resolve_amp(args.amp, device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 on purpose: no TF32
    try:
        train_loader, val_loader, test_loader, info = data.build_loaders(
            args, device, args.batch_size, seed=args.seed, eval_batch_size=500, subset=args.subset,
            mean_std=COURSE_NORM if args.norm == "half" else None)
    except data.DataError as e:
        ap.error(str(e))
    try:  # only once the data is found: a refused run leaves no empty --out behind
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        ap.error(f"cannot create --out {args.out}: {e.strerror}")
    split = "val" if val_loader is not None else "test"
    loaders = (train_loader, val_loader or test_loader, split, len(info["classes"]))
    print(f"{' and '.join(VARIANTS[a] for a in asked)} | Adam at lr {', '.join(f'{lr:g}' for lr in args.lrs)} | "
          f"{args.epochs} epochs, batch {args.batch_size}, {info['n_train']:,} train / "
          f"{info['n_val'] or info['n_test']:,} {split} | {args.init} init, {args.norm} normalisation | "
          f"{runtime.device_name(device)}, training {amp_dtype or 'fp32'}, measures fp32 | out {args.out}")
    for i, a in enumerate(asked):
        saved = []  # what this run wrote: a file there before it is an earlier run's, never named as this run's
        try:
            run_variant(a, args, loaders, info, device, amp_dtype, paths[a], saved)
        except KeyboardInterrupt:
            done = f"{saved[-1]} of {len(args.lrs)}" if saved and saved[-1] < len(args.lrs) else "all"
            said = [f"{VARIANTS[b]}: all lrs finished, saved in {paths[b]}" for b in asked[:i]] + [
                f"{VARIANTS[a]}: {done} lrs finished, saved in {paths[a]}" if saved else
                f"{VARIANTS[a]}: no lr finished, nothing written"]
            print(f"landscape.py: interrupted; {'; '.join(said)}", file=sys.stderr)
            return 130


def check_plot_only(ap, args, asked, paths):
    missing = [paths[a] for a in asked if not os.path.exists(paths[a])]
    if (args.bn or args.both) and missing:
        ap.error(f"--plot-only: no results at {', '.join(missing)}; train first (drop --plot-only)")
    if not any(os.path.exists(p) for p in paths.values()):
        ap.error(f"--plot-only: no results in {args.out} ({', '.join(os.path.basename(p) for p in paths.values())}); "
                 f"train first (drop --plot-only) or point --out at a run")


def report(ap, args, paths):
    """Load whatever results --out holds, draw every figure, print and save the summary."""
    results = {}
    for a in [a for a in VARIANTS if os.path.exists(paths[a])]:
        try:
            results[a] = load_results(paths[a])
        except ValueError as e:
            ap.error(str(e))
    if len(results) == 2:
        c0, c1 = (results[a]["config"] for a in VARIANTS)
        differ = [k for k in ("lrs", "epochs", "batch_size", "subset", "seed", "init", "norm", "amp", "probe_range")
                  if c0.get(k) != c1.get(k)]
        if differ:
            print(f"note: the two variants were run with different {', '.join(differ)}; compare with care")
    for a, r in [(a, r) for a, r in results.items() if not r.get("complete")]:
        print(f"note: {paths[a]} is incomplete ({len(r['runs'])} of {len(r['config']['lrs'])} lrs)")
    check_ours(ap, args.out, figure_names(results) + ["summary.json"],
               "then run again" if args.plot_only else "then draw the saved results with --plot-only")
    written, lr = plot_all(results, args.out), measures_lr(results)
    print(("comparison" if len(results) == 2 else f"{VARIANTS[next(iter(results))]} only") + " figures:")
    print("\n".join(f"  {p}" for p in written))
    stale = remove_stale_figures(args.out, written)  # an earlier run's would pass for this one's
    if (measures := os.path.join(args.out, "measures.png")) not in written:
        kept = "; the one there has no mark of landscape.py (yours, or older): left as it is"
        print(f"  no measures.png: no measurements at lr {lr:g} (--measure-every 0)"
              + ("; an earlier run's removed" if "measures.png" in stale else kept if os.path.exists(measures) else ""))
    if stale := [n for n in stale if n != "measures.png"]:
        print(f"  removed {', '.join(stale)}: figures of results no longer in {args.out}")
    summary_path = os.path.join(args.out, "summary.json")
    runfiles.write_text(summary_path, runfiles.json_text({a: summarize(r, lr) for a, r in results.items()}, indent=1))
    print(f"{summary_table(results)}\nsummary: {summary_path}")
    return 0


def main(argv=None):
    ap = get_parser()
    args = ap.parse_args(argv)
    idle = args.surface_lr is not None and not args.surface  # (as evaluate.py warns of a TTA share it cannot use)
    check_args(ap, args)
    asked = list(VARIANTS) if args.both else ["vgg_a_bn"] if args.bn else ["vgg_a"]
    paths = {a: os.path.join(args.out, f"{a}.json") for a in VARIANTS}
    if args.plot_only:
        check_plot_only(ap, args, asked, paths)
    else:  # what the report will draw (measures.png: at step 0 every run measures), checked before the training too
        check_ours(ap, args.out, ["loss_landscape.png", "summary.json"] + [f"curves_lr{lr:g}.png" for lr in args.lrs]
                   + ["measures.png"] * (args.measure_every > 0) + ["surface_1d.png", "surface_2d.png"] * args.surface,
                   "or give another --out")
        if train_variants(ap, args, asked, paths) is not None:
            return 130
    code = report(ap, args, paths)
    if idle:  # said after the work: an error before it comes as its one line
        print("warning: --surface-lr had no effect without --surface", file=sys.stderr)
    return code


if __name__ == "__main__":
    runtime.run_main(main, "landscape.py")
