"""Evaluate a trained run on the CIFAR-10 test set.

    python evaluate.py runs/resnet18-20261125-101500            # best.pt of that run
    python evaluate.py runs/.../last.pt --tta --json result.json

Prints test accuracy and per-class accuracy (the layout of report 002), writes a
confusion-matrix PNG beside the checkpoint (or into --out), and measures inference images/s. The PNG is
confusion_matrix.png for a run's best.pt and confusion_matrix_<name>.png for any other checkpoint (..._last.png for
last.pt), so evaluating last.pt does not replace the figure of best.pt; evaluating the same checkpoint again
refreshes its own. In an --out other than the run's folder the name also carries the run's folder name and a short
hash of its full path (figs/confusion_matrix_a-1f2e3d.png, figs/confusion_matrix_a-1f2e3d_last.png), so runs evaluated
into one folder keep a figure each, two runs both called seed0 (expA/seed0, expB/seed0) too. Only the figure in the
run's own folder is marked as the run's: train.py --force replacing the run removes it, never a figure of another run.
A PNG at that path that these tools did not draw (the user's) is refused before the work, not replaced.
Checkpoints are read with torch.load(weights_only=True): a crafted file cannot run code.

The evaluation loop, the accuracy count and test-time augmentation live here; train.py (its per-epoch
evaluations and final report), lr_finder.py and landscape.py use them from this file.
"""
import hashlib
import math
import os
import re
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
from models import build_model
from runfiles import (check_ours_to_replace, check_output_file, check_output_folder, checkpoint_file, eval_weights,
                      json_text, load_checkpoint, run_folder, save_figure, write_text)
from runtime import (OneLineParser, add_amp_arg, autocast, check_ranges, path_arg, pick_device, pyplot, resolve_amp,
                     run_main, sync)


# ----------------------------------------------------------------------------- evaluation loop and TTA

def n_correct(logits, y):
    """Correct predictions; soft (mixed) targets count their largest share as the label."""
    return (logits.argmax(1) == (y if y.ndim == 1 else y.argmax(1))).sum()


@torch.no_grad()
def evaluate(model, loader, device, amp_dtype=None, return_outputs=False, criterion=None):
    """Mean loss (cross-entropy, or `criterion`: a mean-reducing loss) and accuracy over a loader (and the
    logits, if asked), in eval mode. Restores the caller's mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    outs, n = [], 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast(device, amp_dtype):
            out = model(x)
        out = out.float()
        loss_sum += (F.cross_entropy(out, y, reduction="sum") if criterion is None
                     else criterion(out, y).double() * len(y))
        correct += n_correct(out, y)
        n += len(y)
        if return_outputs:
            outs.append(out)
    model.train(was_training)
    res = {"loss": loss_sum.item() / n, "acc": correct.item() / n}
    if return_outputs:
        res["logits"] = torch.cat(outs)
    return res


class TTA(nn.Module):
    """Test-time augmentation: average the logits of the image and its mirror; with translate,
    also of copies shifted by `shift` pixels up-left and down-right (reflect-padded), weighted half and
    half as in airbench. A sure prediction rarely changes, so views can go to the least sure images only (the
    smallest margin between the top two probabilities): mirror_frac < 1, the mirror only for that share of each
    batch, least sure under the plain view; frac < 1, the shifted views (twice the mirror pair's cost) only for
    that share, least sure under what came before. plain: the model's (N, classes) logits of the loader's images
    in order, as evaluate() returns them, if already computed (train.py's last test pass): each batch takes its
    next rows instead of a pass of its own."""

    def __init__(self, model, translate=False, shift=1, frac=1.0, plain=None, mirror_frac=1.0):
        super().__init__()
        self.model, self.translate, self.shift, self.frac, self.mirror_frac = model, translate, shift, frac, mirror_frac
        self.plain, self.seen = plain, 0

    def both(self, x, plain=None):
        mirrored = self.model(x.flip(3))
        # evaluate() keeps logits in float32: back to the model's dtype is exact, so the sum is the one recomputed
        return 0.5 * ((self.model(x) if plain is None else plain.to(mirrored.dtype)) + mirrored)

    def shifted(self, x):
        k = self.shift
        p = F.pad(x, (k, k, k, k), mode="reflect")
        h, w = x.shape[-2:]
        return 0.5 * (self.both(p[..., :h, :w]) + self.both(p[..., 2 * k:, 2 * k:]))

    def forward(self, x):
        plain = None
        if self.plain is not None:
            plain, self.seen = self.plain[self.seen:self.seen + len(x)], self.seen + len(x)
            if len(plain) != len(x):
                raise ValueError(f"TTA was given {len(self.plain)} plain logits, fewer than the images it scores")
        if self.mirror_frac >= 1:
            out = self.both(x, plain)
        else:  # in float32 throughout, so given plain logits (bf16 ones held in float32) score as recomputed ones
            out = (self.model(x) if plain is None else plain).float()
            unsure = least_sure(out, self.mirror_frac)
            out[unsure] = self.both(x[unsure], out[unsure]).float()
        if not self.translate:
            return out
        if self.frac >= 1:
            return 0.5 * out + 0.5 * self.shifted(x)
        unsure = least_sure(out, self.frac)
        out = out.clone()
        out[unsure] = 0.5 * out[unsure] + 0.5 * self.shifted(x[unsure]).to(out.dtype)
        return out


def least_sure(logits, frac):
    """Row indices of the share frac of logits whose top-two probability margin is smallest."""
    top2 = logits.float().softmax(1).topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]).argsort()[:math.ceil(frac * len(logits))]


# ----------------------------------------------------------------------------- per class, confusion, speed

def per_class(pred, labels, n):
    """Each class's accuracy; None for a class with no images among these (a small --subset)."""
    correct, total = torch.bincount(labels[pred == labels], minlength=n), torch.bincount(labels, minlength=n)
    return [c / t if t else None for c, t in zip(correct.tolist(), total.tolist())]


def confusion(pred, labels, n):
    return torch.bincount(labels * n + pred, minlength=n * n).reshape(n, n)


def plot_confusion(cm, classes, path, title, own):
    """The confusion-matrix figure at path; own: drawn from the run whose folder path is in (runfiles.save_figure)."""
    plt = pyplot()
    cm = cm.float()
    frac = cm / cm.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(frac.numpy(), cmap="Blues", vmin=0, vmax=1)
    n = len(classes)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    save_figure(fig, path, 120, "evaluate.py", own)
    plt.close(fig)


def images_per_s(model, loader, device, amp_dtype, repeats=1):
    """Inference throughput over the whole loader (after one warm-up batch)."""
    x0, _ = next(iter(loader))
    with torch.no_grad(), autocast(device, amp_dtype):
        model.eval()(x0)
    sync(device)  # the warm-up's queued work stays out of the timing
    n, t0 = 0, time.perf_counter()
    with torch.no_grad(), autocast(device, amp_dtype):
        for _ in range(repeats):
            for x, _ in loader:
                model(x)
                n += len(x)
    sync(device)
    return n / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- checkpoints and figure names

def read_checkpoint(ap, path):
    """runfiles.load_checkpoint of a run folder or .pt, a ValueError becoming a one-line exit 2."""
    try:
        return load_checkpoint(path)
    except ValueError as e:
        ap.error(str(e))


def safe_name(text):
    """text fit for a file name: every run of characters other than letters, digits, _ . - becomes one _."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def checkpoint_tag(path):
    """What a figure's file name adds for the checkpoint it was drawn from: nothing for a run's best.pt (a run
    folder names it), else _ and the file's stem (_last): figures of one run's different checkpoints keep apart,
    and drawing one again from the same checkpoint refreshes it."""
    stem = os.path.splitext(os.path.basename(checkpoint_file(path)))[0]
    return "" if stem == "best" else "_" + safe_name(stem)


def is_own_folder(path, out):
    """Whether out is the run folder of the checkpoint or run folder at path: figures drawn there are the run's own
    (named as DRAWN_FILES has them, and removed with the run by train.py --force)."""
    return os.path.realpath(out) == os.path.realpath(run_folder(path))


def run_tag(path, out=None):
    """What a figure's file name adds for the run (a run folder, or the folder of a .pt) it was drawn from: nothing in
    the run's own folder out (out None: a figure of several runs, named for each), else _, the folder's name and the
    first 6 hex digits of the SHA-1 of its real path (_seed0-1a2b3c): runs drawn into one --out keep a figure each,
    even two of one name in different folders, and the same run drawn again hits the same file, whatever the working
    folder."""
    if out is not None and is_own_folder(path, out):
        return ""
    folder = os.path.realpath(run_folder(path))
    return f"_{safe_name(os.path.basename(folder))}-{hashlib.sha1(os.fsencode(folder)).hexdigest()[:6]}"


def figure_tag(path, out):
    """run_tag, then checkpoint_tag: the file name's part for the checkpoint at path drawn into the folder out."""
    return run_tag(path, out) + checkpoint_tag(path)


# ----------------------------------------------------------------------------- command line

def get_parser():
    ap = OneLineParser(description="Test accuracy, per-class accuracy, confusion matrix and speed of a trained run.")
    ap.add_argument("checkpoint", type=path_arg, help="a run folder (uses best.pt) or a .pt file written by train.py")
    ap.add_argument("--data", type=path_arg, default=None, help="CIFAR-10 folder (default: the one the run trained on)")
    ap.add_argument("--download", action="store_true", help="fetch the official files through torchvision if missing")
    ap.add_argument("--batch-size", type=int, default=1000, help="images per batch")
    add_amp_arg(ap, default=None, help="autocast (default: the run's own --amp, so the figure matches its summary)")
    ap.add_argument("--tta", action="store_true", help="also report flip test-time augmentation")
    ap.add_argument("--translate", action="store_true",
                    help="TTA with copies shifted 1 pixel up-left and down-right too (implies --tta)")
    ap.add_argument("--tta-frac", type=float, default=None, metavar="F",
                    help="--translate: the shifted copies only for the share F of images least sure after the mirror "
                         "(default: the run's own, so the figure matches its summary)")
    ap.add_argument("--tta-mirror-frac", type=float, default=None, metavar="M",
                    help="--tta: the mirror only for the share M of images least sure without it "
                         "(default: the run's own)")
    ap.add_argument("--subset", type=int, default=None,
                    help="the first N test images (default: those the run was tested on; 10000: all of them)")
    ap.add_argument("--out", type=path_arg, default=None,
                    help="folder for confusion_matrix.png (default: the checkpoint's folder); _<checkpoint> is added "
                         "for one other than best.pt (_last), and _<run>-<hash of its path> before it in a folder "
                         "other than the run's")
    ap.add_argument("--json", type=path_arg, default=None, metavar="PATH",
                    help="write the numbers as JSON (a new file)")
    ap.add_argument("--force", action="store_true", help="let --json overwrite an existing file")
    return ap


def load_run(ap, args):
    """(checkpoint, test images, test labels, class names) of the run to evaluate; bad input is a one-line exit 2."""
    ckpt = read_checkpoint(ap, args.checkpoint)
    try:
        split = data.load_cifar10(args.data or ckpt["args"]["data"], download=args.download)
    except data.DataError as e:
        ap.error(str(e))
    x, y = split["test"]
    subset = args.subset or ckpt["args"].get("subset")  # the test images the run was tested on, unless told
    if subset:
        x, y = x[:subset], y[:subset]
    return ckpt, x, y, ckpt.get("classes") or split["classes"]


def main(argv=None):
    ap = get_parser()
    args = ap.parse_args(argv)
    check_ranges(ap, args, positive=("batch_size", "subset"), fraction=("tta_frac", "tta_mirror_frac"))
    if args.json:
        check_output_file(ap, "--json", args.json, overwrite=args.force)
    out = args.out or run_folder(args.checkpoint)
    check_output_folder(ap, "--out" if args.out else "--out (the run's folder)", out)
    png = os.path.join(out, f"confusion_matrix{figure_tag(args.checkpoint, out)}.png")
    check_ours_to_replace(ap, [png], "evaluate.py")
    args.tta = args.tta or args.translate
    for flag, need, idle in (("--tta-frac", "--translate", args.tta_frac is not None and not args.translate),
                             ("--tta-mirror-frac", "--tta", args.tta_mirror_frac is not None and not args.tta)):
        if idle:  # nothing would use it: said, and (below) not recorded in --json as if it had been
            print(f"warning: {flag} has no effect without {need}", file=sys.stderr)
    ckpt, x, y, classes = load_run(ap, args)
    targs = ckpt["args"]

    device = pick_device(lambda m: print(m, file=sys.stderr))
    amp_dtype = resolve_amp(args.amp or targs.get("amp", "auto"), device, lambda m: print(m, file=sys.stderr))
    model = build_model(targs["arch"], num_classes=len(classes))
    model.load_state_dict(eval_weights(ckpt))
    model = model.to(device)
    if targs.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    loader = data.Loader(x, y, args.batch_size, device=device, mean=torch.tensor(ckpt["mean"]),
                         std=torch.tensor(ckpt["std"]), train=False, channels_last=targs.get("channels_last", False))
    labels = y.to(device)

    print(f"testing {len(y):,} images, then timing a second pass ({device}) ...", file=sys.stderr, flush=True)
    res = evaluate(model, loader, device, amp_dtype, return_outputs=True)
    pred = res["logits"].argmax(1)
    n = len(classes)
    result = {"checkpoint": args.checkpoint, "arch": targs["arch"], "epoch": ckpt.get("epoch"),
              "n_test": len(y), "test_loss": res["loss"], "test_acc": res["acc"],
              "per_class_acc": dict(zip(classes, per_class(pred, labels, n))),
              "confusion_matrix": confusion(pred, labels, n).tolist(), "device": str(device), "amp": str(amp_dtype),
              "batch_size": args.batch_size, "images_per_s": images_per_s(model, loader, device, amp_dtype)}
    print(f"{targs['arch']} ({args.checkpoint}, epoch {ckpt.get('epoch')}) on {len(y)} test images, {device}")
    print(f"Accuracy of the network on the {len(y)} test images: {100 * res['acc']:.2f} %")
    for name, acc in result["per_class_acc"].items():
        print(f"Accuracy of {name:>10s} : " + ("  n/a (no images)" if acc is None else f"{100 * acc:5.1f} %"))
    if args.tta:
        frac, mirror_frac = (targs.get(k, 1.0) if getattr(args, k) is None else getattr(args, k)
                             for k in ("tta_frac", "tta_mirror_frac"))
        tta = TTA(model, args.translate, frac=frac, mirror_frac=mirror_frac)
        kind = "flip+translate" if args.translate else "flip"
        print(f"testing with {kind} TTA, then timing it ...", file=sys.stderr, flush=True)
        r = evaluate(tta, loader, device, amp_dtype)
        result.update(tta=kind, **({"tta_frac": frac} if args.translate else {}), tta_mirror_frac=mirror_frac,
                      tta_test_acc=r["acc"], tta_test_loss=r["loss"],
                      tta_images_per_s=images_per_s(tta, loader, device, amp_dtype))
        print(f"With {kind} TTA: {100 * r['acc']:.2f} % (without: {100 * res['acc']:.2f} %)")
    print(f"Inference: {result['images_per_s']:.0f} images/s at batch size {args.batch_size}"
          + (f" ({result['tta_images_per_s']:.0f} with TTA)" if args.tta else ""))

    os.makedirs(out, exist_ok=True)
    plot_confusion(torch.tensor(result["confusion_matrix"]), classes, png,
                   f"{targs['arch']}: test accuracy {100 * res['acc']:.2f}%", is_own_folder(args.checkpoint, out))
    print(f"wrote {png}")
    if args.json:
        write_text(args.json, json_text(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_main(main, "evaluate.py")
