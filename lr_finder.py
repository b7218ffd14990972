"""Learning-rate range test (Smith 2017; as torch-lr-finder and fastai's lr_find): train for a
few hundred steps while the lr grows from --start-lr to --end-lr, record the loss, suggest a peak lr.

    python lr_finder.py --arch resnet18
    python lr_finder.py --recipe report002-resnet9          # a train.py recipe's batch, optimizer, wd, ...
    python lr_finder.py --arch lenet --subset 5000 --suggest steepest

The number of steps follows the range: --steps-per-decade (40) for every factor 10 of lr, so the
default 1e-7 to 10 is 320 steps, fewer when the loss diverges first. A small network needs that
many: with fastai's 100 steps over those eight decades LeNet's loss is still at its start when the
lr gets large enough to push it up again, and there is nothing to suggest.

Same data pipeline, optimizer and loss as train.py. Writes lr_finder.csv, lr_finder.png and suggestions.json
to --out (default lr_finder/<arch>-<timestamp>) and prints the train.py command that uses the pick.
As a library:

    curve = find_lr(model, optimizer, loader)      # model and optimizer come back untouched
    lrs = suggest_lr(curve)                        # {"steepest": .., "valley": .., "min10": ..}
"""
import argparse
import copy
import math
import os
import shlex
import sys

import numpy as np
import torch
import torch.nn as nn

import data
import evaluate
import optim
import recipes
import runfiles
import runtime
import train
from models import ARCHS, build_model, check_arch, init_from_data

SUGGESTIONS = {"steepest": "steepest descent of the smoothed loss",
               "valley": "middle of the longest valley (fastai)",
               "min10": "lr at the smoothed minimum / 10"}


# ----------------------------------------------------------------------------- the range test

def lr_at(i, num_iter, start_lr, end_lr, mode="exp"):
    """The lr of step i: from start_lr (i = 0) to end_lr (i = num_iter - 1), geometric or linear."""
    t = i / max(1, num_iter - 1)
    return start_lr * (end_lr / start_lr) ** t if mode == "exp" else start_lr + (end_lr - start_lr) * t


STEPS_PER_DECADE = 40


def planned_steps(start_lr, end_lr, steps_per_decade=STEPS_PER_DECADE):
    """Steps of a sweep from start_lr to end_lr at steps_per_decade per factor 10 of lr (at least 2)."""
    return max(2, round(steps_per_decade * math.log10(end_lr / start_lr)))


def cycled(loader, device):
    """The loader's batches on `device`, epoch after epoch (a fresh epoch's draws each time), without end."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        n = 0
        for x, y in loader:
            n += 1
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if n == 0:
            raise ValueError("find_lr: the loader yields no batches")
        epoch += 1


def cut_short(curve):
    """Mark a curve whose sweep was interrupted, keeping only its whole steps (Ctrl-C can land
    between the appends of a step's lr, loss and smoothed loss)."""
    n = min(len(curve[key]) for key in ("lr", "loss", "smooth"))
    for key in ("lr", "loss", "smooth"):
        del curve[key][n:]
    curve["stopped"] = "interrupted"


def find_lr(model, optimizer, loader, criterion=None, *, start_lr=1e-7, end_lr=10.0, num_iter=None,
            steps_per_decade=STEPS_PER_DECADE, mode="exp", smooth=0.05, diverge=5.0, val_loader=None,
            amp_dtype=None, progress=False, keep_on_interrupt=False):
    """Run the range test and return the curve: a dict of lists lr, loss, smooth (per step) and
    stopped ("diverged", "nonfinite", "interrupted" or None). num_iter steps, by default planned_steps() of the
    range at steps_per_decade. One optimizer step per batch of `loader` (cycled
    as needed) with every param group at lr_at(step); the recorded loss is that batch's, or the
    mean over `val_loader` after the step when one is given. Stops early once the smoothed loss
    passes `diverge` x its best. Model weights, buffers, gradients, train/eval mode and the
    optimizer's state and param groups (lrs included) are restored exactly, even on Ctrl-C, which
    propagates, or with keep_on_interrupt=True ends the sweep: stopped "interrupted", the steps done.
    progress=True shows a tqdm bar on a terminal, a line every 10% of the steps otherwise."""
    device = next(model.parameters()).device
    num_iter = num_iter or planned_steps(start_lr, end_lr, steps_per_decade)
    criterion = criterion or nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(optimizer.state_dict())
    saved_grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    was_training = model.training
    curve = {"lr": [], "loss": [], "smooth": [], "stopped": None, "num_iter": num_iter, "smooth_factor": smooth,
             "kind": "val" if val_loader is not None else "train"}
    bar, every = None, max(1, num_iter // 10)
    if progress and sys.stdout.isatty():
        from tqdm import tqdm
        bar = tqdm(total=num_iter, desc="lr range test", file=sys.stdout, dynamic_ncols=True)

    # every group keeps its ratio to the swept lr (--bias-lr-scale, muon's --aux-lr)
    ratios = [g["lr"] / optimizer.param_groups[0]["lr"] if optimizer.param_groups[0]["lr"] else 1.0
              for g in optimizer.param_groups]
    try:
        model.train()
        avg, best, beta = 0.0, math.inf, 1.0 - smooth
        for i, (x, y) in zip(range(num_iter), cycled(loader, device)):
            lr = lr_at(i, num_iter, start_lr, end_lr, mode)
            for group, r in zip(optimizer.param_groups, ratios):
                group["lr"] = lr * r
            with runtime.autocast(device, amp_dtype):
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss = (loss.item() if val_loader is None
                    else evaluate.evaluate(model, val_loader, device, amp_dtype, criterion=criterion)["loss"])
            if math.isfinite(loss):
                avg = beta * avg + (1 - beta) * loss
                smoothed = avg / (1 - beta ** (i + 1))  # bias correction: the average starts at 0
                best = min(best, smoothed)
                if smoothed > diverge * best:
                    curve["stopped"] = "diverged"
            else:
                smoothed, curve["stopped"] = math.inf, "nonfinite"
            for key, value in (("lr", lr), ("loss", loss), ("smooth", smoothed)):
                curve[key].append(value)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(lr=f"{lr:.2g}", loss=f"{smoothed:.3f}", refresh=False)
            elif progress and (i + 1) % every == 0:  # a log file gets a line every 10%
                print(f"step {i + 1}/{num_iter}  lr {lr:.2g}  loss {loss:.4f}  smoothed {smoothed:.4f}", flush=True)
            if curve["stopped"]:
                break
    except KeyboardInterrupt:
        if not keep_on_interrupt:
            raise
        cut_short(curve)
    finally:
        if bar is not None:
            bar.close()
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_opt)
        for p, g in zip(model.parameters(), saved_grads):
            p.grad = g
        model.train(was_training)
    return curve


# ----------------------------------------------------------------------------- suggestions

MIN_STEPS = 4  # the fewest steps in which usable_window() can find a descent
MIN_FALL = 0.02  # a descent counts once the smoothed loss falls 2% below its value where the window starts


class NoDescent(ValueError):
    """The curve has no stretch where the loss clearly falls: nothing sensible to suggest."""


def usable_window(curve, skip_start=0.1):
    """(first, last) step indices the suggestions may use: after the first skip_start of the
    planned steps (early high-loss steps) up to the smoothed minimum (the rising and diverged
    tail is dropped). Raises NoDescent with a readable reason when there is no clear descent."""
    lr, sm = np.asarray(curve["lr"]), np.asarray(curve["smooth"])
    first = int(skip_start * curve.get("num_iter", len(lr)))
    cut = curve.get("stopped") == "interrupted"  # the sweep never got further: its hints do not apply
    if len(lr) < first + MIN_STEPS:
        if cut:
            raise NoDescent(f"interrupted after {len(lr)} steps, too few to see a descent: it takes "
                            f"{first + MIN_STEPS}, the first {first} skipped")
        if curve.get("stopped"):
            raise NoDescent(f"the loss diverged after {len(lr)} steps, already at lr {lr[-1]:.2g}: "
                            f"lower --start-lr and --end-lr")
        raise NoDescent(f"{len(lr)} steps are too few to see a descent: raise --steps-per-decade or --num-iter")
    last = first + int(np.argmin(sm[first:]))
    if last - first < 3:
        raise NoDescent(f"the smoothed loss only rose after step {first} (lr {lr[first]:.2g}): "
                        f"no usable descent; lower --start-lr" + (", or let the sweep run longer" if cut else ""))
    if sm[last] > (1 - MIN_FALL) * sm[first]:
        # the range reached the blow-up: too coarse, not too short (a cut-short sweep: only a clear rise, not noise)
        rose = curve.get("stopped") in ("diverged", "nonfinite") or sm[-1] > sm[first] * (1 + (MIN_FALL if cut else 0))
        hint = ("give it more steps per decade: raise --steps-per-decade (or --num-iter), or narrow the range "
                "with a higher --start-lr" if rose else "interrupted before it fell" if cut else "raise --end-lr")
        raise NoDescent(f"the smoothed loss never fell below {1 - MIN_FALL:g}x its start ({sm[first]:.4f} -> "
                        f"best {sm[last]:.4f}) between lr {lr[first]:.2g} and {lr[-1]:.2g}: no usable descent; {hint}")
    return first, last


def longest_valley(y, tol=0.0):
    """fastai's valley as (start, end): the longest decreasing subsequence of y (each member more
    than tol below the one before), read, as fastai does, as the stretch of that length ending
    where the subsequence ends; a noisy plateau then adds little to it."""
    length = [1] * len(y)
    for i in range(len(y)):
        for j in range(i):
            if y[j] - y[i] > tol:
                length[i] = max(length[i], length[j] + 1)
    end = max(range(len(y)), key=lambda i: (length[i], -i))  # the earliest end on ties
    return max(0, end - length[end]), end


def suggest_lr(curve, skip_start=0.1):
    """The three usual picks, computed on the smoothed loss inside usable_window():
    steepest: where d(loss)/d(log lr) is most negative (np.gradient);
    valley:   the middle of fastai's longest valley, where drops under 1% of the window's total
              fall do not count (so a smooth, slowly drifting plateau is no valley);
    min10:    the lr of the minimum over 10.
    Raises NoDescent when the curve has nothing to suggest."""
    first, last = usable_window(curve, skip_start)
    lr, sm = np.asarray(curve["lr"][first:last + 1]), np.asarray(curve["smooth"][first:last + 1])
    steep = int(np.argmin(np.gradient(sm, np.log(lr))))
    a, b = longest_valley(sm, tol=0.01 * (sm[0] - sm[-1]))
    return {"steepest": float(lr[steep]), "valley": float(lr[a + (b - a) // 2]), "min10": float(lr[-1] / 10)}


# ----------------------------------------------------------------------------- outputs

def write_csv(curve, path):
    rows = [f"{i},{lr!r},{loss!r},{sm!r}" for i, (lr, loss, sm) in
            enumerate(zip(curve["lr"], curve["loss"], curve["smooth"]))]
    runfiles.write_text(path, "step,lr,loss,smooth_loss\n" + "".join(r + "\n" for r in rows))


def plot_curve(curve, suggestions, path, chosen=None, title="LR range test", skip_start=0.1):
    """Raw and smoothed loss against lr (log axis), each suggestion marked, the chosen one solid;
    the steps the suggestions ignore are shaded."""
    plt = runtime.pyplot()

    lr, loss, sm = (np.asarray(curve[k], dtype=float) for k in ("lr", "loss", "smooth"))
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(lr, loss, color="C0", alpha=0.3, lw=1, label=f"{curve.get('kind', 'train')} loss")
    ax.plot(lr, sm, color="C0", lw=2, label=f"smoothed (EMA {curve.get('smooth_factor', 0.05):g}, bias-corrected)")
    try:
        first, last = usable_window(curve, skip_start)
        ax.axvspan(lr[0], lr[first], color="0.92", zorder=0, label="not used for suggestions")
        ax.axvspan(lr[last], lr[-1], color="0.92", zorder=0)
    except NoDescent:
        pass
    for k, (name, value) in enumerate(suggestions.items()):
        at = np.interp(np.log(value), np.log(lr), sm)
        pick = name == chosen
        ax.axvline(value, color=f"C{k + 1}", ls="-" if pick else "--", lw=1.5 if pick else 1)
        ax.plot([value], [at], "o", color=f"C{k + 1}", ms=8 if pick else 6,
                label=f"{name} {value:.2g}" + (" (chosen)" if pick else ""))
    finite = loss[np.isfinite(loss)]
    if len(finite):  # keep the diverged tail from squashing the interesting part
        lo, start = finite.min(), sm[0]
        hi = min(finite.max(), start + 0.6 * max(start - lo, 0.05 * abs(start)))
        if hi > lo:  # a single step (an early Ctrl-C) has no range: matplotlib's own limits, no warning
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    # whole or not at all (a second Ctrl-C leaves no half png), with lr_finder.py's mark; not own: not drawn from a run
    runfiles.save_figure(fig, path, dpi=120, by="lr_finder.py", own=False)
    plt.close(fig)


def train_command(args, lr):
    """The train.py command line with `lr` and every train.py flag given here that differs from
    train.py's default, or with --recipe NAME and the flags that differ from the recipe (--subset,
    --out and --force stay here: they shape this test, not training). Under muon, --aux-lr is
    scaled by the pick as the sweep scaled it: --aux-lr x lr / the recipe's (or default) --lr."""
    tp = train.get_parser()
    defaults = vars(recipes.parse_args(tp, ["--recipe", args.recipe] if args.recipe else []))
    parts = ["python", "train.py"] + (["--recipe", args.recipe] if args.recipe else [])
    if not args.recipe or args.arch != defaults["arch"]:
        parts += ["--arch", args.arch]
    lr = float(f"{lr:.2g}")
    values = dict(vars(args))
    if args.optimizer == "muon":
        values["aux_lr"] = float(f"{args.aux_lr * lr / args.lr:.4g}")
    for dest, value in values.items():
        if (dest in ("recipe", "list_recipes", "arch", "lr", "subset", "out", "force") or dest not in defaults
                or value == defaults[dest]):
            continue
        flag = "--" + dest.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    parts += ["--lr", f"{lr:g}"]
    return " ".join(shlex.quote(p) for p in parts)


# ----------------------------------------------------------------------------- command line

def get_parser():
    d = train.get_parser().get_default  # training flags keep train.py's defaults
    ap = runtime.OneLineParser(description="LR range test: find a peak --lr for train.py.")
    ap.add_argument("--recipe", default=None,
                    help="take the training flags below (batch size, optimizer, weight decay, data augmentation, ...) "
                         "from a train.py recipe (--list-recipes); flags given here still win")
    ap.add_argument("--list-recipes", action="store_true", help="print train.py's recipes")
    ap.add_argument("--arch", default=d("arch"), help=f"network: {', '.join(ARCHS)}")
    ap.add_argument("--start-lr", type=float, default=1e-7, help="lr of the first step")
    ap.add_argument("--end-lr", type=float, default=10.0, help="lr of the last step")
    ap.add_argument("--steps-per-decade", type=float, default=STEPS_PER_DECADE,
                    help="steps (one batch each) per factor 10 of lr; the sweep stops early once the loss diverges")
    ap.add_argument("--num-iter", type=int, default=None,
                    help="steps from --start-lr to --end-lr, instead of --steps-per-decade x the decades "
                         f"({planned_steps(1e-7, 10.0)} for 1e-7 to 10)")
    ap.add_argument("--mode", default="exp", choices=["exp", "linear"], help="how the lr grows per step")
    ap.add_argument("--smooth", type=float, default=0.05, help="weight of the new loss in the moving average")
    ap.add_argument("--diverge", type=float, default=5.0,
                    help="stop once the smoothed loss passes this multiple of its best")
    ap.add_argument("--suggest", default="valley", choices=list(SUGGESTIONS),
                    help="which suggestion goes into the train.py command")
    ap.add_argument("--val-loss", action="store_true",
                    help="record the loss on the held-out --val images (1000 if --val is 0) after each step: "
                         "slower, smoother")
    ap.add_argument("--batch-size", type=int, default=d("batch_size"), help="as in train.py: the best lr depends on it")
    ap.add_argument("--optimizer", default=d("optimizer"),
                    help="sgd, adam, adamw, or muon (the swept lr is Muon's, for the conv filters)")
    ap.add_argument("--momentum", type=float, default=d("momentum"), help="sgd (muon: Muon's) momentum")
    ap.add_argument("--nesterov", action="store_true", help="sgd with Nesterov momentum")
    ap.add_argument("--betas", type=float, nargs=2, default=d("betas"), help="adam/adamw betas")
    ap.add_argument("--aux-lr", type=float, default=d("aux_lr"),
                    help="muon: lr of the parameters that are not conv filters, as train.py's --aux-lr goes with its "
                         "--lr (the recipe's, else train.py's default): the sweep keeps that ratio, and the train.py "
                         "command scales --aux-lr with the pick")
    ap.add_argument("--aux-momentum", type=float, default=d("aux_momentum"),
                    help="muon: their (Nesterov) momentum")
    ap.add_argument("--wd", type=float, default=d("wd"), help="weight decay")
    ap.add_argument("--no-wd-bn-bias", action="store_true",
                    help="exempt BatchNorm and bias parameters from weight decay")
    ap.add_argument("--bias-lr-scale", type=float, default=d("bias_lr_scale"), metavar="S",
                    help="biases and BN parameters at S x the swept lr, with weight decay / S")
    ap.add_argument("--label-smoothing", type=float, default=d("label_smoothing"), help="of the cross-entropy loss")
    ap.add_argument("--zero-init-residual", action="store_true", help="last BN of every residual branch starts at 0")
    data.add_data_args(ap, helps={"val": "hold out N training images (stratified): the sweep trains on the rest, "
                                         "--val-loss reads the loss on them"})
    ap.add_argument("--subset", type=int, default=None, help="use only the first N train and test images")
    ap.add_argument("--seed", type=runtime.seed_arg, default=d("seed"), help="initial weights and batch order")
    runtime.add_amp_arg(ap, default=d("amp"))
    ap.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    ap.add_argument("--out", type=runtime.path_arg, default=None,
                    help="output folder (default lr_finder/<arch>-<timestamp>)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing lr_finder.csv in --out")
    ap.set_defaults(lr=d("lr"))  # no flag: the train.py --lr that --aux-lr goes with (a recipe sets it)
    return ap


def check_args(ap, args):
    """Refuse bad values before anything is created."""
    check_arch(ap, args.arch)
    optim.check_optimizer_args(ap, args)
    if not 0 < args.start_lr < args.end_lr:
        ap.error(f"need 0 < --start-lr < --end-lr, got {args.start_lr:g} and {args.end_lr:g}")
    runtime.check_ranges(ap, args, positive=("num_iter", "steps_per_decade", "batch_size", "subset", "aux_lr",
                                             "bias_lr_scale"),
                         nonnegative=("val", "wd"), below_one=("label_smoothing",), fraction=("smooth",))
    steps = args.num_iter or planned_steps(args.start_lr, args.end_lr, args.steps_per_decade)
    if steps < MIN_STEPS:
        ap.error(f"{steps} steps can never give a suggestion (it takes at least {MIN_STEPS}): raise "
                 + ("--num-iter" if args.num_iter else "--steps-per-decade"))
    if args.diverge <= 1:
        ap.error(f"--diverge must be > 1, got {args.diverge:g}")


OUTPUTS = ("lr_finder.csv", "lr_finder.png", "suggestions.json")  # what report() writes in --out


def report(args, curve, num_iter, out):
    """Why the test stopped, the curve (lr_finder.csv, lr_finder.png) and the suggestions: printed, and with the
    chosen lr and its train.py command in suggestions.json, for scripts. The exit code: 1 when nothing is suggested.
    A sweep cut short by Ctrl-C (stopped "interrupted", at least one step) is written the same way, marked as such."""
    csv_path, png_path, json_path = (os.path.join(out, name) for name in OUTPUTS)
    n, lr_end, cut = len(curve["lr"]), curve["lr"][-1], curve["stopped"] == "interrupted"
    summary = {"arch": args.arch, "optimizer": args.optimizer, "batch_size": args.batch_size, "steps": n,
               "planned_steps": num_iter, "stopped": curve["stopped"] or None, "interrupted": cut,
               "loss": curve["kind"]}
    if curve["stopped"] and not cut:
        print(f"stopped after {n} of {num_iter} steps at lr {lr_end:.2g}: " +
              ("the loss is not finite" if curve["stopped"] == "nonfinite" else
               f"the smoothed loss passed {args.diverge:g}x its best ({min(curve['smooth']):.4f})"))
    else:
        print((f"interrupted after {n} of {num_iter} steps" if cut else f"ran all {n} steps") +
              f"; smoothed loss {curve['smooth'][0]:.4f} -> best {min(curve['smooth']):.4f} "
              f"-> last {curve['smooth'][-1]:.4f} at lr {lr_end:.2g}")
    os.makedirs(out, exist_ok=True)
    write_csv(curve, csv_path)
    title = f"LR range test: {args.arch}, {args.optimizer}, batch {args.batch_size}"
    title += f"\n(interrupted after {n} of {num_iter} steps)" if cut else ""  # a line of its own: fits the width
    try:
        suggestions = suggest_lr(curve)
    except NoDescent as e:
        plot_curve(curve, {}, png_path, title=title + " (no usable descent)")
        runfiles.write_text(json_path, runfiles.json_text({**summary, "suggestions": {}, "no_suggestion": str(e)},
                                                          indent=2))
        print(f"wrote {csv_path}, {png_path} and {json_path}")
        print(f"no suggestion: {e}")
        return 1
    plot_curve(curve, suggestions, png_path, chosen=args.suggest, title=title)
    lr = suggestions[args.suggest]
    command = train_command(args, lr)
    runfiles.write_text(json_path, runfiles.json_text({**summary, "suggestions": suggestions, "suggest": args.suggest,
                                                       "chosen_lr": lr, "train_command": command}, indent=2))
    print(f"wrote {csv_path}, {png_path} and {json_path}")
    print(f"suggestions (smoothed {curve['kind']} loss, first {usable_window(curve)[0]} steps and the part "
          f"after the minimum left out):")
    for name, value in suggestions.items():
        print(f"  {name:<9} {value:9.2e}   {SUGGESTIONS[name]}" + ("   <- --suggest" if name == args.suggest else ""))
    if curve["stopped"] in (None, "interrupted") and int(np.argmin(curve["smooth"])) == n - 1:
        print(f"note: the loss was still falling where the sweep was interrupted (lr {lr_end:.2g}); the picks only "
              f"see the curve up to there" if cut else f"note: the loss was still falling at --end-lr "
              f"{args.end_lr:g}; a higher --end-lr shows the whole curve")
    print(f"chosen ({args.suggest}): {lr:.2g}")
    print("train with:")
    print(f"  {command}")
    return 0


def sweep(ap, args, num_iter):
    """Data, model and optimizer as train.py builds them, then the range test; a Ctrl-C during it ends it with
    the steps done (stopped "interrupted")."""
    device = runtime.pick_device()
    amp_dtype = runtime.resolve_amp(args.amp, device)
    torch.manual_seed(args.seed)
    # --mix-off-epochs only matters at the end of a training run; it still goes into the train.py command
    data_args = argparse.Namespace(**{**vars(args), "mix_off_epochs": 0})
    if args.val_loss and not args.val:
        data_args.val = 1000
    try:
        train_loader, val_loader, _, info = data.build_loaders(
            data_args, device, args.batch_size, channels_last=args.channels_last, seed=args.seed,
            eval_batch_size=1000, subset=args.subset)
    except data.DataError as e:
        ap.error(str(e) + (" (--val-loss holds out 1000 when no --val is given)" if data_args.val != args.val else ""))
    torch.manual_seed(args.seed)  # the same initial weights as train.py --seed
    model = build_model(args.arch, num_classes=len(info["classes"]), zero_init_residual=args.zero_init_residual)
    model = model.to(device)
    init_from_data(model, train_loader)  # fastnet's whitening filters, as train.py sets them
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = optim.build_optimizer(model, args, lr=args.start_lr)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    print(f"lr range test: {args.arch}" + (f" (recipe {args.recipe})" if args.recipe else "") +
          f", {args.optimizer}, batch {args.batch_size}, {num_iter} steps "
          f"from {args.start_lr:g} to {args.end_lr:g} ({args.mode}) | {info['n_train']:,} train images"
          + (f", loss on {info['n_val']:,} held-out" if args.val_loss else "") + f" | {device} amp {amp_dtype}")
    return find_lr(model, optimizer, train_loader, criterion, start_lr=args.start_lr, end_lr=args.end_lr,
                   num_iter=num_iter, mode=args.mode, smooth=args.smooth, diverge=args.diverge,
                   val_loader=val_loader if args.val_loss else None, amp_dtype=amp_dtype, progress=True,
                   keep_on_interrupt=True)


def main(argv=None):
    ap = get_parser()
    args = recipes.parse_args(ap, argv)
    check_args(ap, args)
    num_iter = args.num_iter or planned_steps(args.start_lr, args.end_lr, args.steps_per_decade)
    try:  # the default folder is made now, one per run, as train.py's (two runs in one second do not share it)
        out = args.out or runfiles.claim_run_dir(args.arch, "lr_finder")
    except OSError as e:
        ap.error(f"cannot write to folder lr_finder/: {e.strerror}")
    runfiles.check_output_folder(ap, "--out", out)  # written after the test: a place that cannot be is found now
    taken = [os.path.join(out, name) for name in OUTPUTS if os.path.exists(os.path.join(out, name))]
    runfiles.check_no_folders_at(ap, taken)
    if taken and not args.force:
        ap.error(f"{taken[0]} exists; use --force to overwrite it, or another --out")
    try:
        curve = sweep(ap, args, num_iter)
    except KeyboardInterrupt:  # before the sweep began (loading the data, building the model)
        curve = {"lr": []}
    if not curve["lr"]:
        print("lr_finder.py: interrupted before the first step; nothing written", file=sys.stderr)
        return 130
    try:
        code = report(args, curve, num_iter, out)
    except KeyboardInterrupt:  # a second Ctrl-C: each file is whole (written atomically), but some may be missing
        print(f"lr_finder.py: interrupted while writing to {out}; some of its files may be missing or left from an "
              "earlier run", file=sys.stderr)
        return 130
    if curve["stopped"] != "interrupted":
        return code
    print(f"lr_finder.py: interrupted after {len(curve['lr'])} of {num_iter} steps; wrote the steps done to {out}"
          + ("" if code == 0 else ", with no suggestion"), file=sys.stderr)
    return 130


if __name__ == "__main__":
    runtime.run_main(main, "lr_finder.py")  # a Ctrl-C that main() does not handle: one line, exit 130
