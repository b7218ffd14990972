"""Train any network of models.py on CIFAR-10, resumably, with a run folder you can report from.

    python train.py --arch resnet34 --epochs 200
    python train.py --resume runs/resnet34-20261125-101500        # continue where it stopped
    torchrun --nproc-per-node 4 train.py --arch resnet50           # DistributedDataParallel

The whole dataset sits on the device as uint8 and is augmented batch-wise there (data.py),
so the loop below is only: step, (periodically) sync the metrics, evaluate, checkpoint.
A run folder holds config.json, metrics.jsonl/.csv, last.pt, best.pt and summary.json.
"""
import argparse
import datetime
import math
import os
import platform
import random
import shlex
import signal
import sys
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

import data
from evaluate import TTA, evaluate, n_correct
from models import ARCHS, build_model, check_arch, check_image_size, count_flops, count_params, init_from_data
from optim import (Lookahead, check_optimizer_args, ema_warmup, make_train_step, schedule_warnings, set_schedule,
                   training_parts)
from recipes import parse_args
from runfiles import (MetricsLog, clear_run, eval_weights, git_commit, json_text, load_checkpoint, make_run_dir,
                      prepare_run_dir, remove_stale_temps, rng_state, save_checkpoint, set_rng_state, write_text)
from runtime import (OneLineParser, Progress, add_amp_arg, all_sum, any_rank, check_ranges, device_name, eta, path_arg,
                     launched_rank0, pick_device, progress_style, ranks_agree, resolve_amp, rss_mib, run_main, seed_arg,
                     setup_distributed, sync)
from selection import make_selector


# ----------------------------------------------------------------------------- command line

def get_parser():
    ap = OneLineParser(description="Train a CIFAR-10 network. Every flag has a default; see README.md.")
    ap.add_argument("--recipe", default=None, help="take every default from a named recipe (--list-recipes)")
    ap.add_argument("--list-recipes", action="store_true", help="print the recipes: source, report figure, assumptions")
    ap.add_argument("--arch", default="resnet18", help=f"network: {', '.join(ARCHS)}")
    ap.add_argument("--epochs", type=int, default=200, help="passes over the training images")
    ap.add_argument("--batch-size", type=int, default=128, help="per process (per GPU under torchrun)")
    ap.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    ap.add_argument("--optimizer", default="sgd",
                    help="sgd, adam, adamw, or muon (Muon for conv filters at --lr, Nesterov SGD for the rest)")
    ap.add_argument("--momentum", type=float, default=0.9, help="SGD's momentum (muon: the conv filters')")
    ap.add_argument("--betas", type=float, nargs=2, default=[0.9, 0.999], help="Adam/AdamW betas")
    ap.add_argument("--nesterov", action="store_true", help="SGD with Nesterov momentum")
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
    ap.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing (0 = off)")
    ap.add_argument("--zero-init-residual", action="store_true", help="last BN of every residual branch starts at 0")
    data.add_data_args(ap, resize=True)
    ap.add_argument("--subset", type=int, default=None, help="use only the first N train and test images (quick runs)")
    ap.add_argument("--seed", type=seed_arg, default=0, help="seeds the initial weights, data order and augmentation")
    add_amp_arg(ap)
    ap.add_argument("--channels-last", action="store_true", help="NHWC memory layout (faster convs on recent GPUs)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="replay each step as one CUDA graph (muon, one process; a CPU runs the same path uncaptured)")
    ap.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                    help="evaluate and select an exponential moving average of the weights (e.g. 0.999); 0 = off")
    ap.add_argument("--ema-every", type=int, default=4, metavar="K",
                    help="update the EMA every K steps with decay DECAY**K (every step costs much of a fast GPU step)")
    ap.add_argument("--lookahead", type=float, default=0.0, metavar="ALPHA",
                    help="lookahead as airbench94: every K steps the weights restart from a slow average that keeps "
                         "ALPHA**K * (progress)**3 of itself (e.g. 0.95); 0 = off")
    ap.add_argument("--lookahead-k", type=int, default=5, metavar="K", help="lookahead: steps between syncs")
    ap.add_argument("--eval-batch-size", type=int, default=1000, help="images per batch when testing")
    ap.add_argument("--eval-every", type=int, default=1, metavar="K",
                    help="evaluate (and pick the best epoch) every K epochs and after the last (0: after the last "
                         "only); a test pass costs about a fifteenth of an epoch")
    ap.add_argument("--tta", default="none", choices=["none", "flip", "translate"],
                    help="final test figure also with test-time augmentation: flip, or flip + 1-pixel translations")
    ap.add_argument("--tta-frac", type=float, default=1.0, metavar="F",
                    help="translate TTA: the shifted views (twice the mirror's cost) only for the share F least sure")
    ap.add_argument("--tta-mirror-frac", type=float, default=1.0, metavar="M",
                    help="TTA: the mirror only for the share M of test images least sure without it")
    ap.add_argument("--select-frac", type=float, default=1.0, metavar="F",
                    help="train on the share F of each batch that scores hardest (selection.py; 1 = every image)")
    ap.add_argument("--select-by", default="proxy", choices=["proxy", "loss"],
                    help="--select-frac's score: a small proxy network's loss, or each image's loss when last trained on")
    ap.add_argument("--select-every", type=int, default=4, metavar="K",
                    help="--select-frac: the proxy also learns from its pick of every K-th batch")
    ap.add_argument("--save-every", type=int, default=0, metavar="STEPS", help="also write last.pt every N steps")
    ap.add_argument("--scale-lr", default="linear", choices=["linear", "none"],
                    help="under torchrun: linear = --lr times the number of processes (--batch-size is per process)")
    ap.add_argument("--sync-bn", action="store_true", help="under torchrun: BatchNorm statistics over all processes")
    ap.add_argument("--skip-nonfinite", type=int, default=0, metavar="N", help="skip up to N steps with NaN/Inf loss instead of stopping")
    ap.add_argument("--out", type=path_arg, default=None, help="run folder (default runs/<arch>-<timestamp>)")
    ap.add_argument("--force", action="store_true", help="allow writing into a folder that holds another run")
    ap.add_argument("--resume", type=path_arg, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    ap.add_argument("--no-progress", action="store_true",
                    help="one line per epoch only: no bar on a terminal, no line a minute into a pipe or log")
    return ap


# what a resume may give anew, as none of them changes what is trained (the rest must match the run resumed; --force
# is taken and means nothing there)
RESUME_MAY_CHANGE = {"resume", "data", "download", "no_progress", "cuda_graph", "force", "save_every",
                     "eval_batch_size"}


def flags_given(argv):
    """The flags on the command line (their dest names), whatever their values: defaults included."""
    probe, unset = get_parser(), object()
    probe.set_defaults(**{k: unset for k in vars(probe.parse_args([]))})
    return {k for k, v in vars(probe.parse_args(argv)).items() if v is not unset}


def check_args(ap, args):
    """Refuse bad values before anything is created."""
    check_arch(ap, args.arch)
    check_optimizer_args(ap, args)
    check_ranges(ap, args, positive=("epochs", "batch_size", "lr", "eval_batch_size", "aux_lr", "bias_lr_scale",
                                     "ema_every", "lookahead_k", "select_every", "subset"),
                 nonnegative=("val", "save_every", "skip_nonfinite", "eval_every", "wd"),
                 below_one=("label_smoothing", "ema", "lookahead"),
                 fraction=("tta_frac", "tta_mirror_frac", "select_frac"))
    side = min(args.image_sizes or [32])
    nets = [(args.arch, f"--arch {args.arch}")]
    nets += [("fastnet", "the --select-frac proxy (fastnet)")] if args.select_frac < 1 and args.select_by == "proxy" else []
    for arch, name in nets if 8 <= side < 32 else []:  # sizes outside 8..32: data.build_loaders refuses them
        check_image_size(ap, arch, side, name)
    if args.select_by == "loss" and args.select_every != ap.get_default("select_every"):  # (--select-frac 1: no selection)
        ap.error("--select-by loss takes no --select-every (the proxy's)")
    if args.cuda_graph and (args.optimizer != "muon" or args.compile or args.skip_nonfinite or args.amp == "fp16"):
        ap.error("--cuda-graph needs --optimizer muon, and takes no --compile, --skip-nonfinite or --amp fp16")
    try:  # here, with the other values: before the device is picked and warned about
        data.check_augment_args(args)
    except data.DataError as e:
        ap.error(str(e))


def unused_flags(args, given):  # flags given that the run's other flags leave without effect: warned, not refused
    return [f"--{k.replace('_', '-')} has no effect without --tta {need}" for k, need, idle in
            (("tta_frac", "translate", args.tta != "translate"), ("tta_mirror_frac", "flip or translate",
                                                                  args.tta == "none")) if k in given and idle]


# ----------------------------------------------------------------------------- training loop constants

SYNC_EVERY = 20  # read the running loss back every N steps only: each .item() makes the host wait for the GPU


# ----------------------------------------------------------------------------- the run and its set-up

class Run:
    """One run's state: what set_up and build_training make (settings, device, data, model, optimisation) and where
    the run stands (next epoch and batch, steps done, best accuracy so far), which checkpoint() saves and resume()
    restores. The functions below take it in turn; main tells the story."""

    def __init__(self, args, out, rank, world, device, amp_dtype, log):
        self.args, self.out, self.rank, self.world, self.main_proc = args, out, rank, world, rank == 0
        self.device, self.amp_dtype, self.log = device, amp_dtype, log
        self.start_epoch = self.batch = self.step = 0  # the epoch and batch to start from; steps done
        self.best, self.best_epoch = -1.0, None
        self.partial = None  # train sums of an epoch interrupted mid-way
        # seconds, over every invocation of the run: init, training (epochs only), the training loops' wall time
        self.init_time = self.train_time = self.wall_before = 0.0
        self.rows, self.metrics = [], None  # per-epoch rows; their MetricsLog on rank 0
        self.bad_steps, self.stop_signal, self.test_logits = 0, [], None  # logits: the last test pass's, for TTA


class Stop(Exception):
    """Ends training early with an exit code and a message (divergence, SIGINT/SIGTERM)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def read_command_line(ap, argv):
    """(args, the checkpoint to resume or None). With --resume its settings win; a flag contradicting them: refused."""
    args = parse_args(ap, argv)
    resume_ckpt, given = None, flags_given(argv)
    if args.resume:
        try:
            resume_ckpt = load_checkpoint(os.path.join(args.resume, "last.pt"))
        except ValueError as e:
            ap.error(f"--resume {args.resume}: {e}" + ("; give its run folder" if os.path.isfile(args.resume) else ""))
        saved = dict(resume_ckpt["args"])
        for k in sorted(given - RESUME_MAY_CHANGE):  # a flag newer than the run: the run had its default
            if vars(args)[k] != saved.get(k, ap.get_default(k)):
                ap.error(f"--resume {args.resume}: that run has --{k.replace('_', '-')} "
                         f"{saved.get(k, ap.get_default(k))}, not {vars(args)[k]}; drop the flag or start a new run")
        saved.update({k: vars(args)[k] for k in ("data", "download", "save_every", "eval_batch_size")
                      if k in given or k not in saved},
                     resume=args.resume, no_progress=args.no_progress,  # the data where the run found it, unless moved
                     cuda_graph=args.cuda_graph or saved.get("cuda_graph", False))  # the same training, rounded apart
        args = argparse.Namespace(**{**{k: ap.get_default(k) for k in vars(args)}, **saved})  # flags newer than the run
    check_args(ap, args)
    # rank 0 alone (any env:// launch sets RANK); judged by a resumed run's own flags too
    for w in unused_flags(args, given) if launched_rank0() else []:
        print(f"warning: {w}", file=sys.stderr)
    return args, resume_ckpt


def finished(args, ckpt):  # the run to resume trained every epoch and wrote its summary: nothing is left to do
    return ckpt["epoch"] >= args.epochs and not ckpt["batch"] and os.path.exists(os.path.join(args.resume, "summary.json"))


def say(line):
    """A line of rank 0's: a warning to stderr, as the flag warnings and every script's, the rest to stdout."""
    print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout)


def set_up(ap, args):
    """Processes, device, precision, seeds, data and the run folder."""
    rank, world = setup_distributed()
    if world > 1 and args.skip_nonfinite:
        ap.error("--skip-nonfinite works in a single process only (a rank that skips its backward would stall the others)")
    if world > 1 and args.cuda_graph:
        ap.error("--cuda-graph works in a single process only (its graph holds no DDP communication)")
    if world > 1 and args.select_frac < 1 and args.select_by == "loss":
        ap.error("--select-by loss works in a single process only (a process sees only its shard of the images)")
    log = say if rank == 0 else (lambda *a, **k: None)
    for w in schedule_warnings(args) + data.augment_warnings(args, args.epochs):
        log(f"warning: {w}")
    out = prepare_run_dir(args, ap)
    device = pick_device(log)
    torch.set_float32_matmul_precision("high")  # TF32 for what stays fp32 on Ampere+ (a no-op elsewhere)
    # fp16 autocast needs a GradScaler, whose step reads its inf check back on the host: nothing a graph can hold
    if args.cuda_graph and device.type == "cuda" and args.amp != "off" and not torch.cuda.is_bf16_supported():
        ap.error("--cuda-graph needs bf16 autocast or none, and this GPU has no bf16: add --amp off")
    if args.cuda_graph and device.type != "cuda":
        log(f"note: --cuda-graph captures on CUDA only; on {device.type} the step runs the same path uncaptured")
    run = Run(args, out, rank, world, device, resolve_amp(args.amp, device, log), log)
    if args.compile and device.type == "mps":
        log("warning: --compile is not supported on MPS; running eagerly")
        args.compile = False

    torch.manual_seed(args.seed + rank)
    random.seed(args.seed)
    np.random.seed(args.seed % 2**32)  # numpy takes only 0..2**32-1; torch and random take any int
    try:
        run.train_loader, run.val_loader, run.test_loader, run.info = data.build_loaders(
            args, device, args.batch_size, dtype=torch.float32, channels_last=args.channels_last, seed=args.seed,
            epochs=args.epochs, eval_batch_size=args.eval_batch_size, rank=rank, world_size=world, subset=args.subset)
    except data.DataError as e:
        ap.error(str(e))
    if run.main_proc:
        make_run_dir(out, ap)
    run.select = run.info["select_split"]
    if run.select == "test":
        log("warning: no --val split, so the best epoch is picked on the test set, which flatters the reported "
            "accuracy; use --val 5000 for an honest figure")
    return run


def build_training(run, resuming):
    """The model (on the device, with its EMA, DDP wrapper and compilation), optimizer, schedule, loss and step."""
    args, device, world, log = run.args, run.device, run.world, run.log
    torch.manual_seed(args.seed)  # same initial weights on every rank
    raw = build_model(args.arch, num_classes=len(run.info["classes"]), zero_init_residual=args.zero_init_residual)
    run.n_params, run.flops = count_params(raw), count_flops(raw)
    if args.sync_bn and world > 1 and device.type != "cuda":
        log("warning: --sync-bn works on CUDA only (torch's SyncBatchNorm); BatchNorm stays per process")
        args.sync_bn = False
    if args.sync_bn and world > 1:
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    raw = raw.to(device)
    run.init_time = init_from_data(raw, run.train_loader) if not resuming else 0.0  # (resume loads them)
    if args.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    run.ema = None
    if args.ema:
        run.ema = torch.optim.swa_utils.AveragedModel(
            raw, multi_avg_fn=ema_warmup(args.ema ** args.ema_every), use_buffers=True)
    model = raw
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model)
    run.raw_model, run.model = raw, model

    run.lr = args.lr * world if args.scale_lr == "linear" else args.lr  # Goyal et al. 2017: lr grows with the batch
    run.optimizer, run.scheduler, run.scaler, run.criterion = training_parts(
        raw, args, device, run.amp_dtype, len(run.train_loader), run.lr)
    run.lookahead = Lookahead(raw, args.lookahead, args.lookahead_k, args.epochs * len(run.train_loader)) \
        if args.lookahead else None
    run.step_fn = make_train_step(model, run.optimizer, run.scheduler, run.criterion, device, run.amp_dtype,
                                  run.scaler, run.ema, skip_nonfinite=args.skip_nonfinite > 0,
                                  ema_every=args.ema_every, lookahead=run.lookahead, cuda_graph=args.cuda_graph)
    run.eval_model = run.ema.module if run.ema is not None else raw
    run.hard = make_selector(args, run.train_loader, device, run.amp_dtype, len(run.info["classes"]))


def resume(ap, run, ckpt):
    """Put the run back where its last.pt left it: weights, optimizer, schedule, averages, position, metrics, RNG."""
    args, world = run.args, run.world
    if ckpt["args"]["arch"] != args.arch:
        ap.error(f"--resume {args.resume}: checkpoint is a {ckpt['args']['arch']}, not {args.arch}")
    run.raw_model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    fresh_lrs = list(run.scheduler.base_lrs)  # each group's peak lr at this run's world size
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    for part, key in ((run.ema, "ema"), (run.lookahead, "lookahead"), (run.hard, "hard")):
        if part is not None and ckpt.get(key):  # (a checkpoint older than the proxy's state: it starts afresh)
            part.load_state_dict(ckpt[key])
    run.start_epoch, run.batch, run.step = ckpt["epoch"], ckpt["batch"], ckpt["step"]
    run.best, run.best_epoch, run.rows = ckpt["best"], ckpt["best_epoch"], ckpt["metrics"]
    if run.best_epoch not in (None, args.epochs) and not os.path.exists(os.path.join(run.out, "best.pt")):
        ap.error(f"--resume {args.resume}: its best.pt (epoch {run.best_epoch}) is missing; the closing test may need it")
    run.partial, run.bad_steps = ckpt.get("partial"), ckpt.get("bad_steps", 0)  # (0: a checkpoint older than the count)
    times = ckpt.get("times") or {}  # checkpoints written before times were kept: the epochs' own record
    run.init_time = times.get("init", 0.0)
    run.train_time = times.get("train", sum(r.get("epoch_time", 0.0) for r in run.rows))
    run.wall_before = times.get("wall", run.train_time + sum(r.get("eval_time", 0.0) for r in run.rows))
    set_rng_state(ckpt["rng"])
    if ckpt.get("world_size", 1) != world:
        # an epoch has another number of steps now: put the schedule at the same point of the run, at lr
        if run.batch:
            run.log(f"warning: the run stopped mid-epoch with {ckpt.get('world_size', 1)} processes; with "
                    f"{world} the shards differ, so epoch {run.start_epoch + 1} restarts from its first batch")
        run.batch, run.partial, run.step = 0, None, run.start_epoch * len(run.train_loader)
        set_schedule(run.optimizer, run.scheduler, run.step, fresh_lrs)
        if run.hard is not None:
            run.hard.move_to(run.step)
    if run.main_proc:
        remove_stale_temps(run.out)
    run.log(f"resuming {run.out} at epoch {run.start_epoch + 1}, batch {run.batch}, step {run.step}")


def write_config(run):
    """config.json: the run's settings (and which differ from train.py's defaults), versions, device and data."""
    args, info = run.args, run.info
    drawn = clear_run(run.out)  # --force: nothing of the run this one replaces stays beside it
    if drawn:
        run.log(f"--force: removed what was drawn from the run replaced: {', '.join(drawn)}")
    plain = vars(get_parser().parse_args([]))
    config = {"args": vars(args), "git_commit": git_commit(), "torch": torch.__version__,
              "torchvision": __import__("torchvision").__version__, "python": platform.python_version(),
              "device": device_name(run.device), "world_size": run.world, "amp": str(run.amp_dtype),
              "params": run.n_params, "flops": run.flops, "data": {k: v for k, v in info.items() if k != "classes"},
              "classes": info["classes"], "started": datetime.datetime.now().isoformat(timespec="seconds"),
              "changed_args": [k for k, v in vars(args).items() if k in plain and v != plain[k]]}
    write_text(os.path.join(run.out, "config.json"), json_text(config, indent=2))


def announce(run):
    args, info, world = run.args, run.info, run.world
    run.log(f"{args.arch}: {run.n_params:,} parameters, {run.flops / 1e6:,.1f} MFLOPs/image | "
            f"{device_name(run.device)} | amp {args.amp}->{run.amp_dtype} | "
            f"{info['n_train']:,} train, {info['n_val']:,} val, {info['n_test']:,} test | "
            f"batch {args.batch_size}x{world} | {len(run.train_loader)} steps/epoch | run folder {run.out}")
    if run.hard is not None:
        run.log(run.hard.describe())
    if world > 1:
        run.log(f"torchrun: {world} processes, global batch {args.batch_size} x {world} = {args.batch_size * world}, "
                f"lr {args.lr:g} -> {run.lr:g} (--scale-lr {args.scale_lr}), "
                f"BatchNorm {'synced' if args.sync_bn else 'per process'}")


# ----------------------------------------------------------------------------- checkpoints and stops

def checkpoint(run, name, epoch, batch, partial=None, acc=None):
    """Everything resume() needs, written atomically (rank 0 only calls it)."""
    state = {"model": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict(),
             "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
             **{k: getattr(run, k).state_dict() if getattr(run, k) is not None else None for k in ("ema", "lookahead", "hard")},
             "epoch": epoch, "batch": batch, "step": run.step, "best": run.best, "best_epoch": run.best_epoch,
             "partial": partial, "metrics": run.metrics.rows, "rng": rng_state(), "args": vars(run.args),
             "classes": run.info["classes"], "mean": run.info["mean"], "std": run.info["std"], "acc": acc,
             "world_size": run.world, "bad_steps": run.bad_steps,
             "times": {"init": run.init_time, "train": run.train_time,
                       "wall": run.wall_before + time.time() - run.t_run}}
    save_checkpoint(os.path.join(run.out, name), state)


def kept(run):
    """What a run stopped by an error leaves to go on from."""
    return (f"the last good checkpoints are kept in {run.out}" if os.path.exists(os.path.join(run.out, "last.pt"))
            else f"no checkpoint was written yet: start again with --force --out {shlex.quote(run.out)}")


def diverged(run, epoch, value, why="", at=None):  # at: (step, lr) of the first non-finite loss, else those now
    step, lr = at or (run.step, run.scheduler.get_last_lr()[0])
    return Stop(1, f"loss is {value} at epoch {epoch + 1}, step {step}, lr {lr:.3g}"
                   f"{', ' + why if why else ''}: training diverged (try a lower --lr, or "
                   f"{'a larger ' if run.args.skip_nonfinite else ''}--skip-nonfinite N); "
                   f"{kept(run)}")


def stopped(run, where):
    signum = run.stop_signal[0] if run.stop_signal else signal.SIGTERM  # (under torchrun another rank was signalled)
    return Stop(128 + signum, f"stopped by signal {signal.Signals(signum).name} {where}; "
                              f"resume with: python train.py --resume {shlex.quote(run.out)}")


def out_of_memory(run):
    used = f" ({torch.cuda.memory_allocated(run.device) / 2**30:.1f} GiB in use)" if run.device.type == "cuda" else ""
    print(f"train.py: out of memory at --batch-size {run.args.batch_size} (evaluation: --eval-batch-size "
          f"{run.args.eval_batch_size}){used}; try a smaller batch size; {kept(run)}", file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------- training

def train(run):
    """Every epoch left; returns the exit code: 0, or that of a stop (divergence, a signal) or of running out of
    memory. SIGINT/SIGTERM end the run at the next step with a checkpoint it can resume from."""
    old_handlers = {s: signal.signal(s, lambda signum, frame: run.stop_signal.append(signum))
                    for s in (signal.SIGINT, signal.SIGTERM)}
    run.progress = progress_style(run.args.no_progress, run.main_proc)
    run.t_run = time.time()
    try:
        for epoch in range(run.start_epoch, run.args.epochs):
            row, bar, images = train_one_epoch(run, epoch)
            end_epoch(run, epoch, row, bar, images)
        return 0
    except Stop as e:
        if run.main_proc or e.code == 1:  # a signal stops every rank alike: rank 0 says so; a divergence, where seen
            print(f"train.py: {e}", file=sys.stderr)
        return e.code
    except torch.OutOfMemoryError:
        return out_of_memory(run)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)


def epoch_sums(run, acc_loss, acc_correct, seen):
    """Loss sum, correct and images of this epoch so far, over all ranks (float64, on the device)."""
    return all_sum(torch.stack([acc_loss, acc_correct.double(), acc_loss.new_tensor(float(seen))]))


def train_one_epoch(run, epoch):
    """One pass over the training set (from run.batch when resumed mid-epoch); returns (the epoch's row so far,
    its progress bar, the images trained on over all ranks)."""
    args, device, loader = run.args, run.device, run.train_loader
    loader.set_epoch(epoch)
    if hasattr(run.raw_model, "set_epoch") and run.world == 1:  # fastnet: freezes its whitening bias after epoch 1
        run.raw_model.set_epoch(epoch)
    run.model.train()
    acc_loss = torch.zeros((), device=device, dtype=torch.float64)
    acc_correct = torch.zeros((), device=device, dtype=torch.int64)
    seen, before, uncounted = 0, 0.0, 0  # images; the epoch's seconds and uncounted images before a stop
    if run.partial is not None:
        before = run.partial.get("time", 0.0)
        uncounted = 0 if "time" in run.partial else run.partial["seen"]  # older checkpoints kept no time
        if run.main_proc:  # the saved sums are over all ranks: rank 0 carries them
            acc_loss += run.partial["loss"]
            acc_correct += run.partial["correct"]
            seen = run.partial["seen"]
    seen_here, recent = seen, []  # the bar's images/s counts this invocation's images only; recent: losses since a read
    bar = Progress(len(loader), epoch, args.epochs, *run.progress)
    t0 = time.time()
    for i, (x, y) in enumerate(loader):
        if i < run.batch:  # resumed mid-epoch: the loader replays the epoch's draws, skip what was done
            bar.update(1)
            continue
        if run.hard is not None:  # --select-frac: the step sees the batch's hardest part only
            x, y = run.hard(x, y, loader.indices, epoch)
        lr = run.scheduler.get_last_lr()[0]  # the step's own: the schedule moves on inside step_fn
        loss, logits = run.step_fn(x, y)
        run.step += 1
        if args.skip_nonfinite and not torch.isfinite(loss):  # step_fn left the weights alone
            run.bad_steps += 1
            if run.bad_steps > args.skip_nonfinite:
                raise diverged(run, epoch, loss.item(), f"after skipping {args.skip_nonfinite} bad steps", (run.step, lr))
            bar.update(1)
            continue
        if run.hard is not None:
            run.hard.trained(logits, y)
        recent.append((run.step, lr, loss.clone()))  # (a CUDA graph rewrites its loss tensor on every replay)
        acc_loss += loss.double() * len(x)
        acc_correct += n_correct(logits, y)
        seen += len(x)
        at_sync = run.step % SYNC_EVERY == 0 or i == len(loader) - 1
        # under torchrun every rank must stop at the same step, so the ranks vote on it at the sync points
        stopping = (any_rank(run.stop_signal, device) if run.world > 1 and at_sync
                    else bool(run.stop_signal and run.world == 1))
        saving = stopping or bool(args.save_every and run.step % args.save_every == 0)
        if saving or at_sync:
            loss_sum = acc_loss.item()
            if not math.isfinite(loss_sum):  # checked before any save: a NaN model is never written
                s, r, v = next((b for b in recent if not torch.isfinite(b[2])), recent[-1])  # the first bad step
                raise diverged(run, epoch, v.item(), at=(s, r))
            recent.clear()  # all finite so far: only the steps after this read can hold the first bad one
            bar.update(0, loss=loss_text(loss_sum / seen), acc=f"{acc_correct.item() / seen:.3f}",
                       lr=f"{run.scheduler.get_last_lr()[0]:.3g}",
                       img_s=f"{(seen - seen_here) * run.world / (time.time() - t0):.0f}")
        bar.update(1)
        if saving:
            part = epoch_sums(run, acc_loss, acc_correct, seen).tolist()
            if run.main_proc:
                checkpoint(run, "last.pt", epoch, i + 1, partial={
                    "loss": part[0], "correct": int(part[1]), "seen": int(part[2]), "time": before + time.time() - t0})
            if stopping:
                raise stopped(run, f"at epoch {epoch + 1}, step {run.step}")
    run.batch, run.partial = 0, None
    sums = epoch_sums(run, acc_loss, acc_correct, seen)
    run.epoch_time = before + time.time() - t0
    run.train_time += run.epoch_time
    if not sums[2].item():  # --skip-nonfinite skipped every step: no loss to report, the weights never moved
        raise Stop(1, f"every step of epoch {epoch + 1} had a non-finite loss and was skipped ({run.bad_steps} skipped "
                      f"in all): training diverged (try a lower --lr); {kept(run)}")
    row = {"epoch": epoch + 1, "step": run.step, "lr": run.scheduler.get_last_lr()[0],
           "train_loss": sums[0].item() / sums[2].item(), "train_acc": sums[1].item() / sums[2].item(),
           **({"skipped_steps": run.bad_steps} if run.args.skip_nonfinite else {})}  # so far: which epoch had them
    if not math.isfinite(row["train_loss"]):  # another rank diverged
        raise diverged(run, epoch, row["train_loss"])
    return row, bar, sums[2].item() - uncounted


def loss_text(v):  # 4 decimals, and a loss blown up to 1e9 in 5 digits, not 14
    return f"{v:.4f}" if abs(v) < 1e5 else f"{v:.4g}"


def end_epoch(run, epoch, row, bar, images):
    """Evaluate (every --eval-every epochs and after the last), log the epoch's row, keep best.pt and last.pt;
    stop here if a signal came during evaluation."""
    t_eval, sel, k, last = time.time(), run.select, run.args.eval_every, epoch + 1 == run.args.epochs
    if (k and (epoch + 1) % k == 0) or last:
        for split, loader in (("val", run.val_loader), ("test", run.test_loader if sel == "test" else None)):
            if loader is not None:  # the last test pass keeps its logits for the TTA's plain view
                r = evaluate(run.eval_model, loader, run.device, run.amp_dtype,
                             return_outputs=last and split == "test" and run.args.tta != "none")
                row[f"{split}_loss"], row[f"{split}_acc"] = r["loss"], r["acc"]
                run.test_logits = r.get("logits", run.test_logits)  # only the last test pass returns them
    row.update(epoch_time=run.epoch_time, eval_time=time.time() - t_eval,
               images_per_s=images / run.epoch_time, rss_mib=round(rss_mib(), 1))
    improved = row.get(f"{sel}_acc", -1.0) > run.best
    if improved:
        run.best, run.best_epoch = row[f"{sel}_acc"], epoch + 1
    if run.main_proc:
        run.metrics.add(row)
        if improved:
            checkpoint(run, "best.pt", epoch + 1, 0, acc=run.best)
        checkpoint(run, "last.pt", epoch + 1, 0)
        scores = f"{sel} loss {loss_text(row[sel + '_loss'])}  {sel} acc {row[sel + '_acc']:.4f}  " \
            if sel + "_acc" in row else ""
        bar.close(f"epoch {epoch + 1}/{run.args.epochs}  loss {loss_text(row['train_loss'])}  "
                  f"acc {row['train_acc']:.4f}  {scores}lr {row['lr']:.3g}  {row['epoch_time']:.1f}s  "
                  f"{row['images_per_s']:.0f} img/s" + (f"  {run.bad_steps} steps skipped" if run.bad_steps else "")
                  + eta(run.t_run, epoch + 1 - run.start_epoch, run.args.epochs - epoch - 1))
    if any_rank(run.stop_signal, run.device):  # a signal during evaluation
        raise stopped(run, f"after epoch {epoch + 1}")


# ----------------------------------------------------------------------------- final report

def test_figures(run):
    """Test accuracy of the final weights, of best.pt, and of the final weights with TTA (if asked)."""
    model, loader, device, amp_dtype, args = run.eval_model, run.test_loader, run.device, run.amp_dtype, run.args
    last = run.metrics.rows[-1] if run.metrics.rows else {}
    # the last epoch's row already holds the final weights' test accuracy when the test set picks the best epoch
    done = "test_acc" in last and last["epoch"] == args.epochs
    figures = {"final": last["test_acc"] if done else evaluate(model, loader, device, amp_dtype)["acc"]}
    if run.best_epoch == args.epochs:  # best.pt holds the final weights
        figures["best"] = figures["final"]
    else:
        last_state = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(eval_weights(load_checkpoint(os.path.join(run.out, "best.pt"))))
        figures["best"] = evaluate(model, loader, device, amp_dtype)["acc"]
        model.load_state_dict(last_state)
    if args.tta != "none":
        sync(device)
        t = time.time() - (0.0 if run.test_logits is None else last["eval_time"])  # with the pass it reuses
        tta = TTA(model, args.tta == "translate", frac=args.tta_frac, mirror_frac=args.tta_mirror_frac, plain=run.test_logits)
        tta = evaluate(tta, loader, device, amp_dtype)
        sync(device)
        figures.update(tta=args.tta, tta_test_acc=tta["acc"], tta_eval_s=time.time() - t)
    return figures


def final_report(run):
    """Best and last weights on the held-out test set: summary.json and a closing block of lines; the exit code."""
    args, device, select, rows = run.args, run.device, run.select, run.metrics.rows if run.main_proc else []
    summary = {"arch": args.arch, "epochs": args.epochs, "select_split": select, "best_epoch": run.best_epoch,
               f"best_{select}_acc": run.best, "final": rows[-1] if rows else None,
               "params": run.n_params, "flops": run.flops, "device": device_name(device), "world_size": run.world,
               "init_time_s": run.init_time, "train_time_s": run.train_time, "skipped_steps": run.bad_steps,
               "total_time_s": run.wall_before + time.time() - run.t_run}
    if run.world > 1:  # DDP keeps replicas equal by construction; check it, a silent desync would poison the result
        summary["ranks_agree"] = ranks_agree(run.raw_model, device)
        run.log(f"torchrun: weights {'identical' if summary['ranks_agree'] else 'DIFFER'} on all {run.world} processes")
    if not run.main_proc:
        return 0
    try:
        figures = test_figures(run)
    except torch.OutOfMemoryError:
        return out_of_memory(run)
    except KeyboardInterrupt:  # the training is done and saved: only the closing evaluation was cut short
        print(f"train.py: interrupted in the final evaluation; the trained run is in {run.out}", file=sys.stderr)
        return 130
    final_test, best_test = figures.pop("final"), figures.pop("best")
    summary.update(figures, final_test_acc=final_test, best_test_acc=best_test, epoch_time_s=run.train_time / args.epochs,
                   images_per_s=sum(r["images_per_s"] for r in rows) / max(1, len(rows)),
                   peak_gpu_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None)
    write_text(os.path.join(run.out, "summary.json"), json_text(summary, indent=2))
    note = "" if select == "val" else "  (best epoch picked on test: flattering, use --val N for an honest pick)"
    print("\n".join([
        "=" * 72, f"{args.arch} on CIFAR-10, {args.epochs} epochs, {device_name(device)}",
        f"best epoch {run.best_epoch} by {select} acc {run.best:.4f}{note}",
        f"test accuracy: best checkpoint {best_test:.4f}, final weights {final_test:.4f}"
        + (f", final weights with {args.tta} TTA {summary['tta_test_acc']:.4f} ({summary['tta_eval_s']:.1f}s)"
           if args.tta != "none" else ""),
        f"time {summary['total_time_s']:.0f}s total, {summary['epoch_time_s']:.1f}s/epoch, "
        f"{summary['images_per_s']:.0f} train images/s",
        *([f"skipped {run.bad_steps} step(s) with a non-finite loss (--skip-nonfinite {args.skip_nonfinite})"]
          if run.bad_steps else []),
        f"{run.n_params:,} parameters, {run.flops / 1e6:,.1f} MFLOPs/image"
        + (f", peak GPU memory {summary['peak_gpu_mem_gib']:.2f} GiB" if device.type == "cuda" else ""),
        f"run folder {run.out} (summary.json, metrics.csv, best.pt, last.pt); evaluate: python evaluate.py "
        f"{shlex.quote(run.out)}",
        "=" * 72]))
    return 0


# ----------------------------------------------------------------------------- main

def main(argv=None):
    ap = get_parser()
    args, resume_ckpt = read_command_line(ap, argv)
    if resume_ckpt is not None and finished(args, resume_ckpt):
        if launched_rank0():
            print(f"{args.resume} finished all {args.epochs} epochs; nothing to do (its results: summary.json)")
        return 0
    run = set_up(ap, args)
    build_training(run, resuming=resume_ckpt is not None)
    if resume_ckpt is not None:
        resume(ap, run, resume_ckpt)
    if run.main_proc:
        if resume_ckpt is None:
            write_config(run)  # before the metrics log opens tb/ for its events
        run.metrics = MetricsLog(run.out, run.rows)
    announce(run)
    exit_code = train(run)
    if exit_code == 0:
        exit_code = final_report(run)
    if dist.is_initialized():
        dist.destroy_process_group()
    return exit_code


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message=".*TF32.*")
    run_main(main, "train.py")
