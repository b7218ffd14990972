"""Train any network of models.py on CIFAR-10, resumably, with a run folder you can report from.

    python train.py --arch resnet34 --epochs 200
    python train.py --resume runs/resnet34-20261125-101500        # continue where it stopped
    torchrun --nproc-per-node 4 train.py --arch resnet50           # DistributedDataParallel

The whole dataset sits on the device as uint8 and is augmented batch-wise there (data.py),
so the loop below is only: step, (periodically) sync the metrics, evaluate, checkpoint.
A run folder holds config.json, metrics.jsonl/.csv, last.pt, best.pt and summary.json.
"""
import argparse
import contextlib
import csv
import ctypes
import datetime
import io
import json
import math
import os
import platform
import random
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import data
from models import ARCHS, build_model, count_flops, count_params

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- command line

class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def get_parser():
    ap = OneLineParser(description="Train a CIFAR-10 network. Every flag has a default; see README.md.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--recipe", default=None, help="take every default from a named recipe (--list-recipes)")
    ap.add_argument("--list-recipes", action="store_true", help="print the recipes with their source and result")
    ap.add_argument("--arch", default="resnet18", help=f"network: {', '.join(ARCHS)}")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=128, help="per process (per GPU under torchrun)")
    ap.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    ap.add_argument("--optimizer", default="sgd",
                    help="sgd, adam, adamw, or muon (Muon for conv filters at --lr, Nesterov SGD for the rest)")
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--betas", type=float, nargs=2, default=[0.9, 0.999], help="Adam/AdamW betas")
    ap.add_argument("--nesterov", action="store_true")
    ap.add_argument("--aux-lr", type=float, default=0.01, help="muon: peak lr of the parameters that are not conv filters")
    ap.add_argument("--aux-momentum", type=float, default=0.9, help="muon: their (Nesterov) momentum")
    ap.add_argument("--bias-lr-scale", type=float, default=1.0, metavar="S",
                    help="biases and BN parameters at S x the lr, with weight decay / S (airbench's bias scaler)")
    ap.add_argument("--wd", type=float, default=5e-4, help="weight decay")
    ap.add_argument("--no-wd-bn-bias", action="store_true", help="exempt BatchNorm and bias parameters from weight decay")
    ap.add_argument("--schedule", default="cosine", choices=["cosine", "linear", "step", "onecycle", "constant"],
                    help="lr shape, stepped every iteration")
    ap.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up from 0 (onecycle: the rising part)")
    ap.add_argument("--milestones", type=float, nargs="+", default=[0.5, 0.75],
                    help="step schedule: epochs (or fractions of --epochs if all < 1) where lr *= --gamma")
    ap.add_argument("--gamma", type=float, nargs="+", default=[0.1],
                    help="step schedule: lr *= GAMMA at every milestone; or one value per milestone: lr = --lr x that value")
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--zero-init-residual", action="store_true", help="last BN of every residual branch starts at 0")
    data.add_data_args(ap)
    ap.add_argument("--subset", type=int, default=None, help="use only the first N train and test images (quick runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                    help="autocast: auto = bf16 on CUDA and CPU, off on MPS")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                    help="evaluate and select an exponential moving average of the weights (e.g. 0.999); 0 = off")
    ap.add_argument("--ema-every", type=int, default=4, metavar="K",
                    help="update the EMA every K steps with decay DECAY**K (the update costs a fifth of a resnet18 "
                         "step on an H100 when done every step)")
    ap.add_argument("--lookahead", type=float, default=0.0, metavar="ALPHA",
                    help="lookahead as airbench94: every K steps the weights restart from a slow average that keeps "
                         "ALPHA**K * (progress)**3 of itself (e.g. 0.95); 0 = off")
    ap.add_argument("--lookahead-k", type=int, default=5, metavar="K", help="lookahead: steps between syncs")
    ap.add_argument("--eval-batch-size", type=int, default=1000)
    ap.add_argument("--tta", default="none", choices=["none", "flip", "translate"],
                    help="final test figure also with test-time augmentation: flip, or flip + 1-pixel translations")
    ap.add_argument("--save-every", type=int, default=0, metavar="STEPS", help="also write last.pt every N steps")
    ap.add_argument("--scale-lr", default="linear", choices=["linear", "none"],
                    help="under torchrun: linear = --lr times the number of processes (--batch-size is per process)")
    ap.add_argument("--sync-bn", action="store_true", help="under torchrun: BatchNorm statistics over all processes")
    ap.add_argument("--skip-nonfinite", type=int, default=0, metavar="N", help="skip up to N steps with NaN/Inf loss instead of stopping")
    ap.add_argument("--out", default=None, help="run folder (default runs/<arch>-<timestamp>)")
    ap.add_argument("--force", action="store_true", help="allow writing into a folder that holds another run")
    ap.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    ap.add_argument("--no-progress", action="store_true", help="plain lines even on a terminal")
    return ap


# Every report's setting as its report describes it (../shared/seeds), and our own. `--recipe NAME` makes
# these the defaults; flags given on the command line still win. Keys are train.py's argument names.
RECIPES = {
    "report000-resnet50": dict(
        source="000: ResNet-50, SGD 0.1 momentum 0.9 wd 5e-4, cosine, batch 256, crop+flip, 200 epochs",
        expect="95.33% (official data, best epoch on test)",
        arch="resnet50", epochs=200, batch_size=256, lr=0.1, optimizer="sgd", wd=5e-4, schedule="cosine"),
    "report001-resnet34": dict(
        source="001: ResNet-34, SGD 5e-3 momentum 0.9 no wd, cosine, batch 128, crop+flip+jitter 0.4, 500 epochs",
        expect="93.65% (official data, best epoch on test)",
        arch="resnet34", epochs=500, batch_size=128, lr=5e-3, optimizer="sgd", wd=0.0, schedule="cosine", jitter=0.4),
    "report001-resnet34-mix": dict(
        source="001: the report001-resnet34 setting plus CutMix or MixUp (random choice per batch)",
        expect="96.47% (official data, best epoch on test)",
        arch="resnet34", epochs=500, batch_size=128, lr=5e-3, optimizer="sgd", wd=0.0, schedule="cosine", jitter=0.4,
        mix="both"),
    "report002-resnet9": dict(
        source="002: ResNet-9, SGD 5e-3 momentum 0.9 wd 5e-4 x batch (0.032), cosine, batch 64, crop+flip, 24 epochs",
        expect="88% (official data)",
        arch="resnet9", epochs=24, batch_size=64, lr=5e-3, optimizer="sgd", wd=5e-4 * 64, schedule="cosine"),
    "report003-rescnn9": dict(
        source="003: 9-block residual CNN, Adam 1e-4, cosine, 180 epochs (its table; batch and augmentation "
               "not stated: 128, crop+flip)",
        expect="90.29% (official data, best epoch on test)",
        arch="rescnn9", epochs=180, batch_size=128, lr=1e-4, optimizer="adam", wd=0.0, schedule="cosine"),
    "report004-dainet7": dict(
        source="004: DaiNet7, Adam 1e-3 betas (0.9, 0.99) wd 5e-4, lr x0.5/0.3/0.1/0.01/0.001 from epochs "
               "50/100/150/200/230, batch 128, crop+flip, 250 epochs",
        expect="91.91% (official data, best epoch on test)",
        arch="dainet7", epochs=250, batch_size=128, lr=1e-3, optimizer="adam", betas=[0.9, 0.99], wd=5e-4,
        schedule="step", milestones=[50, 100, 150, 200, 230], gamma=[0.5, 0.3, 0.1, 0.01, 0.001]),
    "report004-resnet50": dict(
        source="004: ResNet-50 with DaiNet7's setting (Adam 1e-3, step decay, batch 128, crop+flip, 250 epochs)",
        expect="92.50% (official data, best epoch on test)",
        arch="resnet50", epochs=250, batch_size=128, lr=1e-3, optimizer="adam", betas=[0.9, 0.99], wd=5e-4,
        schedule="step", milestones=[50, 100, 150, 200, 230], gamma=[0.5, 0.3, 0.1, 0.01, 0.001]),
    # ---- ours
    "resnet18-fast": dict(
        source="ours: ResNet-18 in 40 epochs, batch 512, Nesterov SGD 0.2, 2 warm-up epochs, cosine, label "
               "smoothing 0.1, weight EMA 0.999",
        expect="90.63% on the JPEG copy in 74 s on an H100 (EMA updated every step then); to match report000's "
               "ResNet-50 in 200 epochs on the same copy: not yet measured",
        arch="resnet18", epochs=40, batch_size=512, lr=0.2, nesterov=True, label_smoothing=0.1, warmup_epochs=2,
        channels_last=True, ema=0.999),
    "fast": dict(
        source="ours: fastnet (airbench-style), 7 epochs at batch 500, Muon for the filters, Nesterov SGD for "
               "the rest, linear decay, label smoothing 0.2, lookahead 0.95, alternating flip + 2-pixel translate, "
               "flip+translate TTA",
        expect="90.68% with its TTA (89.73% without) on the JPEG copy after 281 s of training + TTA on a 2-core CPU "
               "with bf16 (airbench94 there: 90.4% in 591 s); seeds 0-5: 90.52-90.68%",
        arch="fastnet", epochs=7, batch_size=500, optimizer="muon", lr=0.12, momentum=0.6, aux_lr=0.005125,
        aux_momentum=0.85, bias_lr_scale=5170, wd=0.195, schedule="linear", label_smoothing=0.2, crop_pad=2,
        pad_mode="reflect", alt_flip=True, lookahead=0.95, channels_last=True, tta="translate"),
}
RECIPES["fast-long"] = dict(RECIPES["fast"], epochs=21, source="ours: the fast recipe for 21 epochs (15 minutes "
                            "of a 2-core CPU)", expect="91.44% with its TTA (90.18% without) on the JPEG copy after 795 s of "
                            "training + TTA on a 2-core CPU with bf16")


def list_recipes():
    lines = []
    for name, r in RECIPES.items():
        flags = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {' '.join(map(str, v))}"
                                                        if isinstance(v, list) else f" {v}")
                         for k, v in r.items() if k not in ("source", "expect"))
        lines += [f"{name}", f"    from   {r['source']}", f"    result {r['expect']}", f"    flags  {flags}"]
    return "\n".join(lines)


def parse_args(ap, argv=None):
    """Parse the command line; --recipe NAME first makes the recipe's values the defaults."""
    args = ap.parse_args(argv)
    if args.list_recipes:
        print(list_recipes())
        sys.exit(0)
    if args.recipe:
        if args.recipe not in RECIPES:
            ap.error(f"unknown --recipe {args.recipe!r}; choose from: {', '.join(RECIPES)} (--list-recipes)")
        ap.set_defaults(**{k: v for k, v in RECIPES[args.recipe].items() if k not in ("source", "expect")})
        args = ap.parse_args(argv)
    return args


RESUME_MAY_CHANGE = {"resume", "data", "download", "no_progress"}  # the rest must match the run being resumed


def check_args(ap, args):
    """Refuse bad values before anything is created."""
    if args.arch not in ARCHS:
        ap.error(f"unknown --arch {args.arch!r}; choose from: {', '.join(ARCHS)}")
    if args.optimizer not in ("sgd", "adam", "adamw", "muon"):
        ap.error(f"unknown --optimizer {args.optimizer!r}; choose from: sgd, adam, adamw, muon")
    for name in ("epochs", "batch_size", "lr", "eval_batch_size", "aux_lr", "bias_lr_scale"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.val < 0:
        ap.error(f"--val must be >= 0, got {args.val}")
    if args.subset is not None and args.subset <= 0:
        ap.error(f"--subset must be positive, got {args.subset}")
    if len(args.gamma) not in (1, len(args.milestones)):
        ap.error(f"--gamma takes one value or one per milestone ({len(args.milestones)}), got {len(args.gamma)}")
    if args.save_every < 0 or args.skip_nonfinite < 0:
        ap.error("--save-every and --skip-nonfinite must be >= 0")
    if args.ema_every < 1 or args.lookahead_k < 1:
        ap.error(f"--ema-every and --lookahead-k must be positive, got {args.ema_every} and {args.lookahead_k}")
    if args.wd < 0 or not 0 <= args.label_smoothing < 1 or not 0 <= args.ema < 1 or not 0 <= args.lookahead < 1:
        ap.error("--wd must be >= 0, --label-smoothing, --ema and --lookahead in [0, 1)")


# ----------------------------------------------------------------------------- device, precision, distributed

def pick_device(log=print):
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    log("warning: no GPU found, running on the CPU (expect it to be ~100x slower than on a modern GPU)")
    if sys.platform.startswith("linux"):
        keep_freed_memory()
    return torch.device("cpu")


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def sync(device):
    """Wait for queued device work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def keep_freed_memory():
    """glibc (Linux): keep freed blocks in the heap instead of handing them back to the OS. A training step frees and
    re-allocates activations of 100+ MB; by default glibc maps such blocks fresh each time and every step then pays
    a page fault per 4 KiB to touch them: a fastnet step at batch 2000 on the 2-core CPU went from 2.68 to 1.60 s
    with this (0 page faults per step instead of 766,000). pick_device calls it for CPU runs on Linux."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX = 0: big blocks come from the heap too
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD: keep up to 1 GiB free at the top of the heap
    except (OSError, AttributeError):
        pass


def resolve_amp(amp, device, log=print):
    """Map --amp to an autocast dtype (or None), falling back with a warning where unsupported."""
    if amp == "auto":
        amp = "off" if device.type == "mps" else "bf16"
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log("warning: this GPU has no bf16; using fp16 autocast with a gradient scaler")
        amp = "fp16"
    if amp == "fp16" and device.type != "cuda":
        log(f"warning: --amp fp16 needs CUDA; using bf16 autocast on {device.type}")
        amp = "bf16"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def setup_distributed():
    """(rank, world_size); initialises the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)


def all_sum(t):
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def any_rank(flag, device):
    """True on every rank if `flag` is true on any (a collective: every rank must call it at the same step)."""
    if not dist.is_initialized():
        return bool(flag)
    return all_sum(torch.tensor(float(bool(flag)), device=device)).item() > 0


def ranks_agree(model, device):
    """Whether every rank holds the same weights (a float64 fingerprint of the parameters, compared; BN running
    stats may differ between ranks after a step, DDP re-broadcasts rank 0's before every forward)."""
    if not dist.is_initialized():
        return True
    fp = sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(model.parameters())).to(device).view(1)
    lo, hi = fp.clone(), fp.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return lo.item() == hi.item()


# ----------------------------------------------------------------------------- optimisation

def orthogonalise(g, steps=3):
    """The nearest semi-orthogonal matrix to g (U V^T of its SVD), approximately, by a quintic Newton-Schulz
    iteration in bf16 (Muon's, Jordan et al. 2024; 3 steps as in airbench94_muon)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    x = x / (x.norm() + 1e-7)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        m = x @ x.T
        x = a * x + (b * m + c * m @ m) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for conv filters, Nesterov SGD for the rest, in one optimizer (so one scheduler and one state_dict).
    Groups with muon=True: Nesterov momentum, then each filter bank's update (out x in*k*k) orthogonalised, the
    weights rescaled to norm sqrt(out) before the step, as in airbench94_muon. Written here because
    torch.optim.Muon (torch >= 2.9) takes 2-D matrices only and our filters are 4-D."""

    def __init__(self, groups, lr, momentum):
        super().__init__(groups, dict(lr=lr, momentum=momentum, weight_decay=0.0, muon=False))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if not wd else p.grad.add(p, alpha=wd)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(g))
                buf.mul_(mom).add_(g)
                g = g.add(buf, alpha=mom)  # Nesterov
                if group["muon"]:
                    p.mul_(len(p) ** 0.5 / p.norm())
                    g = orthogonalise(g.reshape(len(g), -1)).view_as(p)
                p.add_(g, alpha=-lr)


def build_optimizer(model, args, lr=None):
    """SGD/Adam/AdamW/Muon at `lr` (default --lr). Weight decay on all weights, or (--no-wd-bn-bias) not on
    BN/bias; --bias-lr-scale S runs 1-D parameters (biases, BN) at S x lr with weight decay / S, so their decay
    per step stays that of the weights. muon: 4-D conv filters by Muon at lr and --momentum, the rest by
    Nesterov SGD at --aux-lr (x lr / --lr under torchrun's scaling) and --aux-momentum."""
    lr = args.lr if lr is None else lr
    base_lr = args.aux_lr * lr / args.lr if args.optimizer == "muon" else lr
    weights, vectors, filters = [], [], []
    for p in model.parameters():
        if p.requires_grad:
            (filters if args.optimizer == "muon" and p.ndim == 4 else vectors if p.ndim <= 1 else weights).append(p)
    s = args.bias_lr_scale
    groups = [{"params": weights, "lr": base_lr, "weight_decay": args.wd},
              {"params": vectors, "lr": base_lr * s, "weight_decay": 0.0 if args.no_wd_bn_bias else args.wd / s}]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=args.momentum, nesterov=args.nesterov)
    if args.optimizer == "adam":
        # torch's Adam adds L2 to the gradient (as report 004's Adam(weight_decay=5e-4) did); adamw decouples it
        return torch.optim.Adam(groups, lr=lr, betas=tuple(args.betas))
    if args.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(args.betas))
    for g in groups:
        g["momentum"] = args.aux_momentum
    return Muon([{"params": filters, "muon": True}] + groups, lr=lr, momentum=args.momentum)


def training_parts(raw_model, args, device, amp_dtype, steps_per_epoch, lr=None):
    """Optimizer, per-iteration scheduler, gradient scaler (on for fp16 only) and loss of a run with `args`."""
    optimizer = build_optimizer(raw_model, args, lr)
    scheduler = build_scheduler(optimizer, args, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return optimizer, scheduler, scaler, nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)


def lr_factor(step, total, warmup, schedule, milestones=(), gamma=(0.1,)):
    """Multiplier of the peak lr at iteration `step` of `total`. One LambdaLR covers every
    shape (torch's SequentialLR chains of warm-up + decay are awkward to checkpoint)."""
    if schedule == "onecycle":  # as torch's OneCycleLR: cosine up from 1/25 over warm-up, cosine down to 1/25e4
        up = max(1, warmup or int(0.3 * total))
        if step < up:
            return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * step / up))
        t = (step - up) / max(1, total - up)
        return 1 / 25e4 + (1 - 1 / 25e4) * 0.5 * (1 + math.cos(math.pi * t))
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    if schedule == "linear":  # straight down to 0 at the last step
        return 1 - (step - warmup) / max(1, total - warmup)
    if schedule == "step":
        passed = sum(step >= m for m in milestones)
        gamma = [gamma] if isinstance(gamma, (int, float)) else list(gamma)
        if len(gamma) == 1:
            return gamma[0] ** passed
        return gamma[passed - 1] if passed else 1.0
    return 1.0


def build_scheduler(optimizer, args, steps_per_epoch):
    total = args.epochs * steps_per_epoch
    warmup = int(args.warmup_epochs * steps_per_epoch)
    ms = args.milestones
    ms = [m * args.epochs if all(x < 1 for x in ms) else m for m in ms]
    ms = [int(m * steps_per_epoch) for m in ms]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, args.schedule, ms, args.gamma))


def ema_warmup(decay):
    """AveragedModel's multi_avg_fn: an EMA whose decay warms up as min(decay, (1 + n) / (10 + n)) after n updates
    (as timm's EMA). Without it the random initial weights, which under BatchNorm and weight decay are much larger
    than trained ones, dominate the average for thousands of steps: resnet18 with a plain 0.999 EMA over 40 epochs
    evaluated at 10% (H100, measured). The decay is a tensor op on n, so no host sync per step."""
    @torch.no_grad()
    def update(ema_params, params, n):
        if not torch.is_floating_point(ema_params[0]):  # BN's num_batches_tracked: the model's count
            for e, p in zip(ema_params, params):
                e.copy_(p)
            return
        keep = torch.clamp((1 + n) / (10 + n), max=decay).to(ema_params[0].dtype)
        torch._foreach_mul_(ema_params, keep)
        torch._foreach_add_(ema_params, torch._foreach_mul(params, 1 - keep))
    return update


class Lookahead:
    """Lookahead (Zhang et al. 2019) as airbench94 runs it: every k steps the slow weights move 1 - a of the way
    to the live ones and the live ones restart from them, with a = alpha**k * (step / total)**3 growing from 0
    (early training runs free); the last step syncs too, so the model ends on the slow weights. Covers every float
    tensor of the state_dict, BN statistics included. Written here: torch has no lookahead."""

    def __init__(self, model, alpha, k, total_steps):
        self.alpha, self.k, self.total = alpha, k, total_steps
        self.live = [t for t in model.state_dict().values() if t.is_floating_point()]  # views of the weights
        self.slow = [t.clone() for t in self.live]

    @torch.no_grad()
    def step(self, step):
        if step % self.k and step != self.total:
            return
        n = step % self.k or self.k  # steps since the last sync (fewer at the end when k does not divide total)
        torch._foreach_lerp_(self.slow, self.live, 1 - self.alpha ** n * (step / self.total) ** 3)
        torch._foreach_copy_(self.live, self.slow)

    def state_dict(self):
        return {"slow": self.slow}

    def load_state_dict(self, state):
        torch._foreach_copy_(self.slow, state["slow"])


def init_from_data(model, train_loader, n=5000):
    """Data-dependent initialisation, for a model that has one (fastnet's whitening filters), from the first n
    training images unaugmented; returns the seconds it took (0 for other models)."""
    if not hasattr(model, "init_from_data"):
        return 0.0
    t = time.time()
    model.init_from_data(train_loader.clean_images(n))
    return time.time() - t


def make_train_step(model, optimizer, scheduler, criterion, device, amp_dtype, scaler, ema=None, skip_nonfinite=False,
                    ema_every=1, lookahead=None):
    """One optimisation step on a ready batch; returns (loss, logits) still on the device (no sync).
    ema: an AveragedModel updated every `ema_every` steps (counted by the scheduler, so a resumed run keeps the beat).
    lookahead: a Lookahead, stepped after every optimizer step (before the EMA sees the weights).
    skip_nonfinite: a NaN/Inf loss leaves the weights untouched (costs one host sync per step)."""
    def step(x, y):
        with autocast(device, amp_dtype):
            out = model(x)
            loss = criterion(out, y)
        skipped = skip_nonfinite and not torch.isfinite(loss)
        if skipped:
            with warnings.catch_warnings():  # stepping the schedule without the optimizer is meant here
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                scheduler.step()  # keep the schedule on time
        else:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        if lookahead is not None:  # on skipped steps too: its syncs keep their beat and the run ends on one
            lookahead.step(scheduler.last_epoch)
        if ema is not None and not skipped and scheduler.last_epoch % ema_every == 0:
            ema.update_parameters(model)
        return loss.detach(), out.detach()
    return step


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
    half as in airbench."""

    def __init__(self, model, translate=False, shift=1):
        super().__init__()
        self.model, self.translate, self.shift = model, translate, shift

    def both(self, x):
        return 0.5 * (self.model(x) + self.model(x.flip(3)))

    def forward(self, x):
        out = self.both(x)
        if self.translate:
            k = self.shift
            p = F.pad(x, (k, k, k, k), mode="reflect")
            h, w = x.shape[-2:]
            shifted = 0.5 * (self.both(p[..., :h, :w]) + self.both(p[..., 2 * k:, 2 * k:]))
            out = 0.5 * out + 0.5 * shifted
        return out


# ----------------------------------------------------------------------------- run folder and checkpoints

def atomic_write(path, write):
    """Write via a temp file + fsync + os.replace, so a kill never leaves a half-written file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


_saves = [0]


def save_checkpoint(path, state):
    _saves[0] += 1
    crash_at = os.environ.get("TRAIN_CRASH_IN_SAVE")  # fault injection for the tests: SIGKILL half way through save N

    def write(f):
        if crash_at and int(crash_at) == _saves[0]:
            buf = io.BytesIO()
            torch.save(state, buf)
            f.write(buf.getvalue()[:buf.tell() // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save(state, f)
    atomic_write(path, write)


def remove_stale_temps(folder):
    """Temp files of writes cut short by a kill (the real files were never replaced by them)."""
    for name in os.listdir(folder):
        if re.fullmatch(r".+\.tmp\d+", name):
            os.remove(os.path.join(folder, name))


def peak_rss_bytes():
    """The process's peak resident memory (getrusage: KiB on Linux, bytes on macOS)."""
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def rss_mib():
    """Resident memory of this process in MiB (Linux /proc; elsewhere the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes() / 2**20


def load_checkpoint(path):
    """Load a checkpoint safely (weights_only=True: a crafted pickle cannot run code).
    Raises ValueError with a one-line reason for a missing or unreadable file."""
    if os.path.isdir(path):
        for name in ("best.pt", "last.pt"):
            if os.path.exists(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise ValueError(f"no best.pt or last.pt in {path}")
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a checkpoint, or a pickle that wants to run code
        raise ValueError(f"cannot read checkpoint {path}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "args" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint written by train.py")
    return ckpt


def eval_weights(ckpt):
    """The weights train.py evaluated: the EMA average when the run used --ema, else the model."""
    if ckpt.get("ema"):
        return {k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    return ckpt["model"]


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def rng_state():
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [int(v) for v in np.random.get_state()[1]],
            "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()]}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    if torch.cuda.is_available() and s["cuda"]:
        torch.cuda.set_rng_state_all(s["cuda"])
    np.random.set_state(("MT19937", np.array(s["numpy"], dtype=np.uint32), 624, 0, 0.0))
    version, internal, gauss = s["python"]
    random.setstate((version, tuple(internal), gauss))


def prepare_run_dir(args, ap):
    """Pick and check the run folder; refuse (exit 2) rather than overwrite another run."""
    if args.resume:
        return args.resume
    out = args.out or os.path.join("runs", f"{args.arch}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if os.path.exists(out) and not os.path.isdir(out):
        ap.error(f"--out {out} exists and is not a folder")
    taken = [n for n in ("config.json", "last.pt", "best.pt", "metrics.jsonl") if os.path.exists(os.path.join(out, n))]
    if taken and not args.force:
        ap.error(f"{out} already holds a run ({taken[0]}); use --resume {out} to continue it, "
                 f"--force to overwrite it, or another --out")
    return out


def make_run_dir(out, ap):
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        ap.error(f"cannot write to run folder {out}: {e.strerror}")


class MetricsLog:
    """Per-epoch rows, rewritten atomically as metrics.jsonl and metrics.csv (and TensorBoard scalars if installed).
    The rows also live in the checkpoint, so a resumed run's files equal an uninterrupted run's."""

    def __init__(self, out, rows=()):
        self.out, self.rows = out, list(rows)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional extra
            self.tb = SummaryWriter(os.path.join(out, "tb"))
        except Exception:
            pass

    def add(self, row):
        self.rows.append(row)
        write_text(os.path.join(self.out, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in self.rows))
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.rows)
        write_text(os.path.join(self.out, "metrics.csv"), buf.getvalue())
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()


# ----------------------------------------------------------------------------- progress

class Progress:
    """A tqdm bar per epoch on a terminal; one plain line per epoch otherwise (CI, nohup, log files)."""

    def __init__(self, total, epoch, epochs, enabled):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", file=sys.stdout, leave=True,
                            dynamic_ncols=True)

    def update(self, n, **postfix):
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self, line):
        if self.bar is not None:
            self.bar.set_postfix_str(line, refresh=True)
            self.bar.close()
        else:
            print(line, flush=True)


class Stop(Exception):
    """Ends training early with an exit code and a message (divergence, SIGINT/SIGTERM)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------- main

def main(argv=None):
    ap = get_parser()
    args = parse_args(ap, argv)
    resume_ckpt = None
    if args.resume:
        try:
            resume_ckpt = load_checkpoint(os.path.join(args.resume, "last.pt"))
        except ValueError as e:
            ap.error(f"--resume {args.resume}: {e}")
        saved = dict(resume_ckpt["args"])
        # the run's own settings win; a flag given now that contradicts them is refused
        for k, v in vars(args).items():
            if k not in RESUME_MAY_CHANGE and v != ap.get_default(k) and v != saved.get(k):
                ap.error(f"--resume {args.resume}: that run has --{k.replace('_', '-')} {saved.get(k)}, "
                         f"not {v}; drop the flag or start a new run")
        saved.update(resume=args.resume, data=args.data, download=args.download, no_progress=args.no_progress)
        args = argparse.Namespace(**{**{k: ap.get_default(k) for k in vars(args)}, **saved})  # flags newer than the run
    check_args(ap, args)

    rank, world = setup_distributed()
    main_proc = rank == 0
    if world > 1 and args.skip_nonfinite:
        ap.error("--skip-nonfinite works in a single process only (a rank that skips its backward would stall the others)")
    log = print if main_proc else (lambda *a, **k: None)
    out = prepare_run_dir(args, ap)
    device = pick_device(log)
    torch.set_float32_matmul_precision("high")  # TF32 for what stays fp32 on Ampere+ (a no-op elsewhere)
    amp_dtype = resolve_amp(args.amp, device, log)
    if args.compile and device.type == "mps":
        log("warning: --compile is not supported on MPS; running eagerly")
        args.compile = False

    torch.manual_seed(args.seed + rank)
    random.seed(args.seed)
    np.random.seed(args.seed)
    try:
        train_loader, val_loader, test_loader, info = data.build_loaders(
            args, device, args.batch_size, dtype=torch.float32, channels_last=args.channels_last, seed=args.seed,
            epochs=args.epochs, eval_batch_size=args.eval_batch_size, rank=rank, world_size=world,
            subset=args.subset, log=log)
    except data.DataError as e:
        ap.error(str(e))
    if main_proc:
        make_run_dir(out, ap)
    select = info["select_split"]

    torch.manual_seed(args.seed)  # same initial weights on every rank
    raw_model = build_model(args.arch, num_classes=len(info["classes"]), zero_init_residual=args.zero_init_residual)
    n_params, flops = count_params(raw_model), count_flops(raw_model)
    if args.sync_bn and world > 1 and device.type != "cuda":
        log("warning: --sync-bn works on CUDA only (torch's SyncBatchNorm); BatchNorm stays per process")
        args.sync_bn = False
    if args.sync_bn and world > 1:
        raw_model = nn.SyncBatchNorm.convert_sync_batchnorm(raw_model)
    raw_model = raw_model.to(device)
    init_time = init_from_data(raw_model, train_loader) if resume_ckpt is None else 0.0  # (resume loads them)
    if args.channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    ema = None
    if args.ema:
        ema = torch.optim.swa_utils.AveragedModel(
            raw_model, multi_avg_fn=ema_warmup(args.ema ** args.ema_every), use_buffers=True)
    model = raw_model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model)

    lr = args.lr * world if args.scale_lr == "linear" else args.lr  # Goyal et al. 2017: lr grows with the batch
    optimizer, scheduler, scaler, criterion = training_parts(raw_model, args, device, amp_dtype, len(train_loader), lr)
    lookahead = Lookahead(raw_model, args.lookahead, args.lookahead_k, args.epochs * len(train_loader)) \
        if args.lookahead else None
    step_fn = make_train_step(model, optimizer, scheduler, criterion, device, amp_dtype, scaler, ema,
                              skip_nonfinite=args.skip_nonfinite > 0, ema_every=args.ema_every, lookahead=lookahead)
    eval_model = ema.module if ema is not None else raw_model

    start_epoch, start_batch, step, best, best_epoch = 0, 0, 0, -1.0, None
    partial = None  # train accumulators of an epoch interrupted mid-way
    rows = []
    if resume_ckpt is not None:
        if resume_ckpt["args"]["arch"] != args.arch:
            ap.error(f"--resume {args.resume}: checkpoint is a {resume_ckpt['args']['arch']}, not {args.arch}")
        raw_model.load_state_dict(resume_ckpt["model"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        fresh_lrs = list(scheduler.base_lrs)  # each group's peak lr at this run's world size
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        scaler.load_state_dict(resume_ckpt["scaler"])
        if ema is not None:
            ema.load_state_dict(resume_ckpt["ema"])
        if lookahead is not None:
            lookahead.load_state_dict(resume_ckpt["lookahead"])
        start_epoch, start_batch, step = resume_ckpt["epoch"], resume_ckpt["batch"], resume_ckpt["step"]
        best, best_epoch, rows = resume_ckpt["best"], resume_ckpt["best_epoch"], resume_ckpt["metrics"]
        partial = resume_ckpt.get("partial")
        set_rng_state(resume_ckpt["rng"])
        if resume_ckpt.get("world_size", 1) != world:
            # an epoch has another number of steps now: put the schedule at the same point of the run, at lr
            if start_batch:
                log(f"warning: the run stopped mid-epoch with {resume_ckpt.get('world_size', 1)} processes; with "
                    f"{world} the shards differ, so epoch {start_epoch + 1} restarts from its first batch")
            start_batch, partial, step = 0, None, start_epoch * len(train_loader)
            scheduler.base_lrs = fresh_lrs
            scheduler.last_epoch = step
            for g, f, peak in zip(optimizer.param_groups, scheduler.lr_lambdas, fresh_lrs):
                g["initial_lr"], g["lr"] = peak, peak * f(step)
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        if main_proc:
            remove_stale_temps(out)
        log(f"resuming {out} at epoch {start_epoch + 1}, batch {start_batch}, step {step}")

    metrics = MetricsLog(out, rows) if main_proc else None
    if main_proc and resume_ckpt is None:
        config = {"args": vars(args), "git_commit": git_commit(), "torch": torch.__version__,
                  "torchvision": __import__("torchvision").__version__, "python": platform.python_version(),
                  "device": device_name(device), "world_size": world, "amp": str(amp_dtype), "params": n_params,
                  "flops": flops, "data": {k: v for k, v in info.items() if k != "classes"},
                  "classes": info["classes"], "started": datetime.datetime.now().isoformat(timespec="seconds")}
        write_text(os.path.join(out, "config.json"), json.dumps(config, indent=2))
    log(f"{args.arch}: {n_params:,} parameters, {flops / 1e6:,.1f} MFLOPs/image | {device_name(device)} | "
        f"amp {args.amp}->{amp_dtype} | {info['n_train']:,} train, {info['n_val']:,} val, {info['n_test']:,} test | "
        f"batch {args.batch_size}x{world} | {len(train_loader)} steps/epoch | run folder {out}")
    if world > 1:
        log(f"torchrun: {world} processes, global batch {args.batch_size} x {world} = {args.batch_size * world}, "
            f"lr {args.lr:g} -> {lr:g} (--scale-lr {args.scale_lr}), BatchNorm {'synced' if args.sync_bn else 'per process'}")

    def checkpoint(name, epoch, batch, partial=None, acc=None):
        state = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                 "ema": ema.state_dict() if ema is not None else None,
                 "lookahead": lookahead.state_dict() if lookahead is not None else None,
                 "epoch": epoch, "batch": batch, "step": step, "best": best, "best_epoch": best_epoch,
                 "partial": partial, "metrics": metrics.rows, "rng": rng_state(), "args": vars(args),
                 "classes": info["classes"], "mean": info["mean"], "std": info["std"], "acc": acc,
                 "world_size": world}
        save_checkpoint(os.path.join(out, name), state)

    def diverged(epoch, step, value, why=""):
        return Stop(1, f"loss is {value} at epoch {epoch + 1}, step {step}, lr {scheduler.get_last_lr()[0]:.3g}"
                       f"{', ' + why if why else ''}: training diverged; the last good checkpoints are kept in {out} "
                       f"(try a lower --lr, or --skip-nonfinite N)")

    def out_of_memory():
        used = f" ({torch.cuda.memory_allocated(device) / 2**30:.1f} GiB in use)" if device.type == "cuda" else ""
        print(f"train.py: out of memory at --batch-size {args.batch_size} (evaluation: --eval-batch-size "
              f"{args.eval_batch_size}){used}; try a smaller batch size (last.pt in {out} is kept)", file=sys.stderr)
        return 1

    def stopped(where):
        signum = stop_signal[0] if stop_signal else signal.SIGTERM  # (under torchrun another rank was signalled)
        return Stop(128 + signum, f"stopped by signal {signal.Signals(signum).name} {where}; "
                                  f"resume with: python train.py --resume {out}")

    def epoch_sums(acc_loss, acc_correct, seen):
        """Loss sum, correct and images of this epoch so far, over all ranks (float64, on the device)."""
        return all_sum(torch.stack([acc_loss, acc_correct.double(),
                                    torch.tensor(float(seen), device=device, dtype=torch.float64)]))

    stop_signal = []
    old_handlers = {s: signal.signal(s, lambda signum, frame: stop_signal.append(signum))
                    for s in (signal.SIGINT, signal.SIGTERM)}
    show_bar = main_proc and sys.stdout.isatty() and not args.no_progress
    t_run, train_time, bad_steps = time.time(), 0.0, 0
    exit_code = 0
    try:
        for epoch in range(start_epoch, args.epochs):
            train_loader.set_epoch(epoch)
            if hasattr(raw_model, "set_epoch") and world == 1:  # fastnet: freezes its whitening bias after epoch 3
                raw_model.set_epoch(epoch)
            model.train()
            acc_loss = torch.zeros((), device=device, dtype=torch.float64)
            acc_correct = torch.zeros((), device=device, dtype=torch.int64)
            seen = 0
            if partial is not None and main_proc:  # the saved sums are over all ranks: rank 0 carries them
                acc_loss += partial["loss"]
                acc_correct += partial["correct"]
                seen = partial["seen"]
            bar = Progress(len(train_loader), epoch, args.epochs, show_bar)
            t0 = time.time()
            for i, (x, y) in enumerate(train_loader):
                if i < start_batch:  # resumed mid-epoch: the loader replays the epoch's draws, skip what was done
                    bar.update(1)
                    continue
                loss, out_logits = step_fn(x, y)
                step += 1
                if args.skip_nonfinite and not torch.isfinite(loss):  # step_fn left the weights alone
                    bad_steps += 1
                    if bad_steps > args.skip_nonfinite:
                        raise diverged(epoch, step, loss.item(), f"after skipping {args.skip_nonfinite} bad steps")
                    bar.update(1)
                    continue
                acc_loss += loss.double() * len(x)
                acc_correct += n_correct(out_logits, y)
                seen += len(x)
                at_sync = step % 20 == 0 or i == len(train_loader) - 1  # sync only now and then: .item() stalls the GPU
                # under torchrun every rank must stop at the same step, so the ranks vote on it at the sync points
                stopping = any_rank(stop_signal, device) if world > 1 and at_sync else bool(stop_signal and world == 1)
                saving = stopping or bool(args.save_every and step % args.save_every == 0)
                if saving or at_sync:
                    loss_sum = acc_loss.item()
                    if not math.isfinite(loss_sum):  # checked before any save: a NaN model is never written
                        raise diverged(epoch, step, loss.item())
                    bar.update(0, loss=f"{loss_sum / seen:.3f}", acc=f"{acc_correct.item() / seen:.3f}",
                               lr=f"{scheduler.get_last_lr()[0]:.3g}", img_s=f"{seen * world / (time.time() - t0):.0f}")
                bar.update(1)
                if saving:
                    part = epoch_sums(acc_loss, acc_correct, seen).tolist()
                    if main_proc:
                        checkpoint("last.pt", epoch, i + 1, partial={
                            "loss": part[0], "correct": int(part[1]), "seen": int(part[2])})
                    if stopping:
                        raise stopped(f"at epoch {epoch + 1}, step {step}")
            start_batch, partial = 0, None
            sums = epoch_sums(acc_loss, acc_correct, seen)
            epoch_time = time.time() - t0
            train_time += epoch_time
            row = {"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
                   "train_loss": sums[0].item() / sums[2].item(), "train_acc": sums[1].item() / sums[2].item()}
            if not math.isfinite(row["train_loss"]):  # another rank diverged
                raise diverged(epoch, step, row["train_loss"])
            t_eval = time.time()
            for split, loader in (("val", val_loader), ("test", None if val_loader is not None else test_loader)):
                if loader is not None:
                    r = evaluate(eval_model, loader, device, amp_dtype)
                    row[f"{split}_loss"], row[f"{split}_acc"] = r["loss"], r["acc"]
            row.update(epoch_time=epoch_time, eval_time=time.time() - t_eval,
                       images_per_s=sums[2].item() / epoch_time, rss_mib=round(rss_mib(), 1))
            improved = row[f"{select}_acc"] > best
            if improved:
                best, best_epoch = row[f"{select}_acc"], epoch + 1
            if main_proc:
                metrics.add(row)
                if improved:
                    checkpoint("best.pt", epoch + 1, 0, acc=best)
                checkpoint("last.pt", epoch + 1, 0)
                bar.close(f"epoch {epoch + 1}/{args.epochs}  loss {row['train_loss']:.4f}  acc {row['train_acc']:.4f}  "
                          f"{select} loss {row[select + '_loss']:.4f}  {select} acc {row[select + '_acc']:.4f}  "
                          f"lr {row['lr']:.3g}  {row['epoch_time']:.1f}s  {row['images_per_s']:.0f} img/s")
            if any_rank(stop_signal, device):  # a signal during evaluation
                raise stopped(f"after epoch {epoch + 1}")
    except Stop as e:
        print(f"train.py: {e}", file=sys.stderr)
        exit_code = e.code
    except torch.OutOfMemoryError:
        exit_code = out_of_memory()
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
    if exit_code:
        if dist.is_initialized():
            dist.destroy_process_group()
        return exit_code

    # ---- final report: best and last weights on the held-out test set
    summary = {"arch": args.arch, "epochs": args.epochs, "select_split": select, "best_epoch": best_epoch,
               f"best_{select}_acc": best, "final": metrics.rows[-1] if main_proc and metrics.rows else None,
               "params": n_params, "flops": flops, "device": device_name(device), "world_size": world,
               "init_time_s": init_time, "train_time_s": train_time, "total_time_s": time.time() - t_run}
    if world > 1:  # DDP keeps replicas equal by construction; check it, a silent desync would poison the result
        summary["ranks_agree"] = ranks_agree(raw_model, device)
        log(f"torchrun: weights {'identical' if summary['ranks_agree'] else 'DIFFER'} on all {world} processes")
    if main_proc:
        try:
            final_test = evaluate(eval_model, test_loader, device, amp_dtype)["acc"]
            last_state = {k: v.clone() for k, v in eval_model.state_dict().items()}
            eval_model.load_state_dict(eval_weights(load_checkpoint(os.path.join(out, "best.pt"))))
            best_test = evaluate(eval_model, test_loader, device, amp_dtype)["acc"]
            eval_model.load_state_dict(last_state)
            if args.tta != "none":
                sync(device)
                t = time.time()
                tta = evaluate(TTA(eval_model, args.tta == "translate"), test_loader, device, amp_dtype)
                sync(device)
                summary.update(tta=args.tta, tta_test_acc=tta["acc"], tta_eval_s=time.time() - t)
        except torch.OutOfMemoryError:
            return out_of_memory()
        epochs_run = max(1, args.epochs - start_epoch)
        summary.update(final_test_acc=final_test, best_test_acc=best_test,
                       epoch_time_s=train_time / epochs_run,
                       images_per_s=sum(r["images_per_s"] for r in metrics.rows[start_epoch:]) / epochs_run,
                       peak_gpu_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None)
        write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=2))
        note = "" if select == "val" else "  (best epoch picked on test: flattering, use --val N for an honest pick)"
        print("\n".join([
            "=" * 72,
            f"{args.arch} on CIFAR-10, {args.epochs} epochs, {device_name(device)}",
            f"best epoch {best_epoch} by {select} acc {best:.4f}{note}",
            f"test accuracy: best checkpoint {best_test:.4f}, final weights {final_test:.4f}"
            + (f", final weights with {args.tta} TTA {summary['tta_test_acc']:.4f} ({summary['tta_eval_s']:.1f}s)"
               if args.tta != "none" else ""),
            f"time {summary['total_time_s']:.0f}s total, {summary['epoch_time_s']:.1f}s/epoch, "
            f"{summary['images_per_s']:.0f} train images/s",
            f"{n_params:,} parameters, {flops / 1e6:,.1f} MFLOPs/image"
            + (f", peak GPU memory {summary['peak_gpu_mem_gib']:.2f} GiB" if device.type == "cuda" else ""),
            f"run folder {out} (summary.json, metrics.csv, best.pt, last.pt); evaluate: python evaluate.py {out}",
            "=" * 72]))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message=".*TF32.*")
    sys.exit(main())
