"""Speed, measured side by side in one run.

    python bench.py data  [--quick] [--data DIR] [--batch-size 512]
    python bench.py step  [--quick] [--arch resnet18] [--batch-size 128] [--no-compile]
    python bench.py epoch [--quick] [--arch resnet18] [--batch-size 128] [--data DIR] [--subset N]
    python bench.py race  [--seeds 0 1 2 3 4] [--data DIR] [--cores 0 1] [--recipe fast-cpu] [--fast-args='FLAGS']  # pip install airbench

`data`: data.py's on-device Loader (random crop with padding 4, flip, normalise) against the usual
torchvision pipeline with the same transforms applied per image (Dataset + v2 transforms +
DataLoader with 2 workers), both delivering batches on the same device.

`step`: train.py's step function (optim.make_train_step, with the optimizer, schedule and loss that
train.py builds from its defaults) against the bare minimum loop written below, on one fixed random
batch already on the device, so data loading is out and what differs is the step function itself.
Every setting of {fp32, bf16 autocast} x {channels_last off, on} x {torch.compile off, on} the device
supports; train.py's overhead must stay under 5% (PASS/FAIL per row).

`epoch`: one epoch of train.py end to end (data.build_loaders, optim.make_train_step, evaluate.evaluate on the
test split), its time split into data, compute and evaluation, with images/s and peak memory.

`race`: `train.py --recipe fast` (plus --fast-args) against pip airbench's train94, both at once, each pinned
to its own core with one thread, so the machine's drift hits both (race.py says how, and holds the CPU shim);
on CUDA one after the other.

Timings exclude warm-up, repeat several times, and report the median and the spread
((max - min) / median); the race reports means over its runs and each lane's drift (slowest / fastest).
Every subcommand adds its section to one JSON file (--out, default bench.json) next to the device and
versions, keeping the sections other subcommands wrote.

Every subcommand is a function `bench_<name>(args) -> dict` plus an `add_<name>_args(parser)`,
listed in SUBCOMMANDS.
"""
import argparse
import copy
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time

import torch
import torchvision
from torchvision.transforms import v2

import data
import evaluate
import optim
import race
import runfiles
import runtime
import train
from models import ARCHS, build_model, count_params

OVERHEAD_LIMIT_PCT = 5.0  # train.py's step may cost at most 5% over the bare loop


# ----------------------------------------------------------------------------- shared helpers

def device_name(device):
    return runtime.device_name(device) + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")


def summarize(rates):
    """Median, min, max and relative spread ((max - min) / median) of a list of rates."""
    med = statistics.median(rates)
    return {"median": med, "min": min(rates), "max": max(rates),
            "spread": (max(rates) - min(rates)) / med if med else 0.0, "runs": list(rates)}


def speed_ratio(ours, theirs):
    """How many times faster `ours` is than `theirs` (rates, or summaries from summarize)."""
    ours, theirs = (r["median"] if isinstance(r, dict) else r for r in (ours, theirs))
    if theirs <= 0 or ours < 0:
        raise ValueError(f"rates must be positive, got {ours} and {theirs}")
    return ours / theirs


def time_passes(passes, n_images, repeats, device, warmup=1, budget_s=float("inf")):
    """images/s of each callable in `passes` (each one full pass over n_images), as one list per pass.

    After `warmup` untimed calls of each, every round times each pass once in turn (A B A B ...), so a
    change in machine load during the run hits all contenders alike instead of whichever ran last.
    No new round starts after budget_s seconds: a machine that slowed down gives fewer rounds, not hours.
    """
    for one_pass in passes:
        for _ in range(warmup):
            one_pass()
    runtime.sync(device)
    rates = [[] for _ in passes]
    start = time.perf_counter()
    for k in range(repeats):
        if k and time.perf_counter() - start > budget_s:
            break
        for one_pass, r in zip(passes, rates):
            t = time.perf_counter()
            one_pass()
            runtime.sync(device)
            r.append(n_images / (time.perf_counter() - t))
    return rates


def add_common_args(p, batch_size, batch_help):
    p.add_argument("--quick", action="store_true", help="fewer images and repeats (under 2 minutes on a laptop CPU)")
    p.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    p.add_argument("--device", default="auto", help="auto = cuda, else mps, else cpu")
    p.add_argument("--out", type=runtime.path_arg, default="bench.json", help="JSON file the figures are added to")


def train_args(arch, batch_size, *flags):
    """train.py's flags with its defaults (optimizer, lr, schedule, loss), as a run with these flags has them."""
    return train.get_parser().parse_args(["--arch", arch, "--batch-size", str(batch_size), *flags])


def place(model, device, channels_last, compile_):
    """(raw model, model to call), in train.py's order: move, channels_last, compile. The optimizer takes the raw one."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, torch.compile(model) if compile_ else model


def amp_name(amp_dtype):
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]


# ----------------------------------------------------------------------------- data

class PerImageSet(torch.utils.data.Dataset):
    """The classic pipeline: one uint8 image at a time through torchvision transforms."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def torchvision_loader(images, labels, mean, std, batch_size, workers, device):
    transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean.tolist(), std.tolist())])
    return torch.utils.data.DataLoader(PerImageSet(images, labels, transform), batch_size=batch_size, shuffle=True,
                                       num_workers=workers, persistent_workers=workers > 0,
                                       pin_memory=device.type == "cuda")


def bench_images(root, n, download=False):
    """n training images (uint8 CPU) from root, or synthetic ones when root is None (a bad root: DataError)."""
    if root is not None:
        x, y = data.load_cifar10(root, download=download)["train"]
        return x[:n], y[:n], root
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g), "synthetic")


def add_data_args(p):
    add_common_args(p, 512, "images per batch (default 512)")
    p.add_argument("--data", type=runtime.path_arg, default=None, metavar="DIR",
                   help="CIFAR-10 folder (default: synthetic images in memory)")
    p.add_argument("--download", action="store_true", help="as train.py --download (with --data)")
    p.add_argument("--images", type=int, default=None, help=argparse.SUPPRESS)   # images per pass
    p.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)


def bench_data(args):
    device = args.device
    n = args.images or (10_000 if args.quick else 50_000)
    repeats = args.repeats or (3 if args.quick else 5)
    x, y, source = bench_images(args.data, n, args.download)
    mean, std = data.channel_stats(x)

    ours = data.Loader(x, y, args.batch_size, device=device, mean=mean, std=std, train=True, crop=4, flip=True)
    epoch = [0]

    def ours_pass():
        ours.set_epoch(epoch[0])
        epoch[0] += 1
        for xb, yb in ours:
            pass

    theirs = torchvision_loader(x, y, mean, std, args.batch_size, args.workers, device)

    def theirs_pass():
        for xb, yb in theirs:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)

    print(f"data: {len(x):,} images ({source}), batch {args.batch_size}, {repeats} repeats, {device_name(device)}")
    busy = runtime.warn_if_busy()
    res_ours, res_theirs = map(summarize, time_passes([ours_pass, theirs_pass], len(x), repeats, device))
    ratio = speed_ratio(res_ours, res_theirs)
    for name, r in (("data.py Loader (on device)", res_ours),
                    (f"torchvision per image ({args.workers} workers)", res_theirs)):
        print(f"  {name:34s} {r['median']:>12,.0f} images/s  (spread {100 * r['spread']:.0f}%)")
    print(f"  ratio {ratio:.1f}x")
    return {"source": source, "cpu_busy_before": busy, "images": len(x), "batch_size": args.batch_size,
            "repeats": repeats, "workers": args.workers,
            "transforms": "random crop (pad 4) + horizontal flip + normalise, float32",
            "ours_images_per_s": res_ours["median"], "torchvision_images_per_s": res_theirs["median"],
            "ratio": ratio, "ours": res_ours, "torchvision_pipeline": res_theirs}


# ----------------------------------------------------------------------------- step

def overhead_pct(train_rate, bare_rate):
    """How much slower train.py's step is than the bare loop, in % (rates or summaries; negative = faster)."""
    return (speed_ratio(bare_rate, train_rate) - 1) * 100


def paired_overhead_pct(train_runs, bare_runs):
    """Median of the overheads of each A B pair of repeats: steadier than the medians' when the load drifts."""
    return statistics.median(overhead_pct(t, b) for t, b in zip(train_runs, bare_runs))


def make_bare_step(model, optimizer, scheduler, criterion, device, amp_dtype, scaler):
    """The least a training step can do: forward, loss, zero_grad, backward, optimizer step.

    scheduler.step() is in it too: train.py's step does it every iteration and any schedule needs it, so
    the difference to train.py isolates the step function's own cost (its autocast/nullcontext, the calls
    into a disabled gradient scaler, the detached outputs). The scaler is used only where it is needed (fp16).
    """
    scaled = scaler.is_enabled()

    def step(x, y):
        if amp_dtype is None:
            loss = criterion(model(x), y)
        else:
            with torch.autocast(device.type, dtype=amp_dtype):
                loss = criterion(model(x), y)
        # zero_grad where train.py has it, just before backward: where the gradients are freed changes the
        # step's cost on its own, and this bench is after the cost of train.py's wrapper only
        optimizer.zero_grad(set_to_none=True)
        if scaled:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
    return step


def fastest_step(step, x, y, n, device):
    """Run n warm-up steps (compilation, allocator, kernel choice happen here); the fastest one's seconds."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step(x, y)
        runtime.sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def bench_setting(base, targs, batch, device, amp, channels_last, compile_, args):
    """One row: train.py's step and the bare loop, each on its own copy of `base`, timed A B A B."""
    amp_dtype = runtime.resolve_amp(amp, device, log=lambda m: print(m, file=sys.stderr))
    x, y = batch
    if channels_last:  # as data.Loader delivers batches under --channels-last
        x = x.contiguous(memory_format=torch.channels_last)
    if compile_:
        torch._dynamo.reset()  # fresh caches: earlier settings' graphs neither help nor use up the recompile limit
    steps_per_epoch = -(-50_000 // args.batch_size)  # a CIFAR-10 epoch, for the schedule's length
    steps = []
    for make_step in (optim.make_train_step, make_bare_step):
        raw, model = place(copy.deepcopy(base), device, channels_last, compile_)
        optimizer, scheduler, scaler, criterion = optim.training_parts(raw, targs, device, amp_dtype, steps_per_epoch)
        steps.append(make_step(model, optimizer, scheduler, criterion, device, amp_dtype, scaler))
    # both warm up untimed; the faster one's step time sizes each timed repeat to about --seconds
    per_step = min(fastest_step(s, x, y, args.warmup, device) for s in steps)
    n = max(1, round(args.seconds / per_step))

    def repeat(step):
        def one_pass():
            for _ in range(n):
                step(x, y)
        return one_pass

    budget = 4 * args.repeats * len(steps) * n * per_step  # 4x the plan
    ours, bare = map(summarize, time_passes([repeat(s) for s in steps], n * len(x), args.repeats, device, warmup=0,
                                            budget_s=budget))
    overhead = overhead_pct(ours, bare)
    return {"amp": amp_name(amp_dtype), "channels_last": channels_last, "compile": compile_, "steps_per_repeat": n,
            "train_images_per_s": ours["median"], "bare_images_per_s": bare["median"], "overhead_pct": overhead,
            "overhead_paired_pct": paired_overhead_pct(ours["runs"], bare["runs"]), "pass": overhead < OVERHEAD_LIMIT_PCT,
            # the verdict is within the noise when a contender's own repeats vary more than the limit
            "noisy": max(ours["spread"], bare["spread"]) * 100 > OVERHEAD_LIMIT_PCT,
            "train": ours, "bare": bare}


def add_step_args(p):
    add_common_args(p, 128, "images per step (default 128, as train.py)")
    p.add_argument("--arch", default="resnet18", choices=ARCHS, metavar="NAME", help=f"network: {', '.join(ARCHS)}")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per contender (default 15, --quick 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per contender before timing")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile settings")
    p.add_argument("--seconds", type=float, default=None, help=argparse.SUPPRESS)  # per timed repeat


def bench_step(args):
    device = args.device
    args.repeats = args.repeats or (10 if args.quick else 15)
    # many short repeats rather than a few long ones: A and B then alternate faster than the load changes
    args.seconds = args.seconds or (0.15 if args.quick else 0.5)
    skip = None  # why the compile settings are left out, if they are
    if args.no_compile:
        skip = "--no-compile"
    elif device.type == "mps":
        skip = "torch.compile is not supported on MPS (train.py runs eagerly there too)"
    elif args.quick and device.type == "cpu":
        skip = ("--quick on the CPU (inductor builds C++ for 8 models, tens of seconds each on a few cores); "
                "run without --quick")
    targs = train_args(args.arch, args.batch_size)
    torch.manual_seed(0)
    base = build_model(args.arch)  # every contender starts from a copy of these weights
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device),
             torch.randint(0, 10, (args.batch_size,), generator=g).to(device))

    print(f"step: {args.arch}, batch {args.batch_size}, {args.repeats} repeats per contender of ~{args.seconds:g} s "
          f"or one step if longer, {args.warmup} warm-up steps, {device_name(device)}")
    print(f"  train.py step = optim.make_train_step with train.py's defaults ({targs.optimizer}, lr {targs.lr}, "
          f"{targs.schedule} schedule); bare = forward, loss, zero_grad, backward, optimizer and scheduler step")
    if skip:
        print(f"  compile settings skipped: {skip}")
    busy = runtime.warn_if_busy()
    print(f"  {'amp':4s}  {'ch-last':7s}  {'compile':7s}  {'train.py img/s':>19s}  {'bare img/s':>19s}  "
          f"{'overhead':>8s}  limit {OVERHEAD_LIMIT_PCT:g}%")
    rows = []
    for compile_ in (False,) if skip else (False, True):
        for amp, label in (("off", "fp32"), ("bf16", "bf16")):
            for channels_last in (False, True):
                head = f"  {label:4s}  {'on' if channels_last else 'off':7s}  {'on' if compile_ else 'off':7s}"
                try:
                    row = bench_setting(base, targs, batch, device, amp, channels_last, compile_, args)
                except Exception as e:  # a setting this device or build cannot run (no compiler, no bf16 kernels)
                    msg = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
                    rows.append({"amp": label, "channels_last": channels_last, "compile": compile_, "error": msg})
                    print(f"{head}  not run: {msg}")
                    continue
                finally:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                rows.append(row)
                verdict = ("PASS" if row["pass"] else "FAIL") + (" (noisy)" if row["noisy"] else "")
                rounds = len(row["train"]["runs"])
                verdict += f" ({rounds} of {args.repeats} rounds: out of time)" if rounds < args.repeats else ""
                print(f"{head}  {row['train']['median']:>12,.0f} ({100 * row['train']['spread']:>3.0f}%)  "
                      f"{row['bare']['median']:>12,.0f} ({100 * row['bare']['spread']:>3.0f}%)  "
                      f"{row['overhead_pct']:>+7.1f}%  {verdict}")
    timed = [r for r in rows if "error" not in r]
    all_pass = bool(timed) and all(r["pass"] for r in timed)
    print(f"  (spread) = (max - min) / median of the repeats; overhead = bare / train.py - 1, positive = train.py "
          f"slower; {'all PASS' if all_pass else 'FAIL: see the rows above'}")
    return {"arch": args.arch, "params": count_params(base), "batch_size": args.batch_size, "repeats": args.repeats,
            "seconds_per_repeat": args.seconds, "warmup_steps": args.warmup, "cpu_busy_before": busy,
            "train_flags": {k: getattr(targs, k) for k in ("optimizer", "lr", "momentum", "wd", "schedule",
                                                           "label_smoothing", "ema")},
            "limit_overhead_pct": OVERHEAD_LIMIT_PCT, "compile_skipped": skip, "all_pass": all_pass, "rows": rows}


# ----------------------------------------------------------------------------- epoch

def peak_memory(device):
    """(bytes, what they are): the device's peak allocation on CUDA, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    return (runtime.peak_rss_bytes(),
            "peak RSS of the whole process, Python, libraries, data and model together (ru_maxrss)")


def timed_epoch(loader, step, device, epoch, split):
    """One pass of train.py's inner loop. split: sync after each batch and each step, to time them apart."""
    loader.set_epoch(epoch)
    acc_loss = torch.zeros((), device=device, dtype=torch.float64)
    acc_correct = torch.zeros((), device=device, dtype=torch.int64)
    t_data = t_compute = 0.0
    seen = 0
    batches = iter(loader)
    # a bar on a terminal only (an epoch of a big network on a CPU takes many minutes); gone once the epoch ends
    from tqdm import tqdm  # here, as the scripts import it: runtime.run_main says first if it is missing
    bar = tqdm(total=len(loader), desc="timed epoch" + ("" if split else " without syncs"), unit="step",
               leave=False, file=sys.stdout, disable=not sys.stdout.isatty(), dynamic_ncols=True)
    runtime.sync(device)
    t_start = time.perf_counter()
    for i in range(len(loader)):
        t0 = time.perf_counter()
        x, y = next(batches)
        if split:
            runtime.sync(device)
        t1 = time.perf_counter()
        loss, out = step(x, y)
        acc_loss += loss.double() * len(x)  # the metrics train.py keeps on the device
        acc_correct += evaluate.n_correct(out, y)
        seen += len(x)
        if (i + 1) % train.SYNC_EVERY == 0:  # as train.py, which reads the loss back every SYNC_EVERY steps
            loss.item()
        if split:
            runtime.sync(device)
        t_data, t_compute = t_data + t1 - t0, t_compute + time.perf_counter() - t1
        bar.update()
    runtime.sync(device)
    bar.close()
    return {"train_s": time.perf_counter() - t_start, "data_s": t_data, "compute_s": t_compute,
            "images": seen, "train_loss": acc_loss.item() / seen, "train_acc": acc_correct.item() / seen}


def add_epoch_args(p):
    add_common_args(p, 128, "images per step (default 128, as train.py)")
    p.add_argument("--arch", default="resnet18", choices=ARCHS, metavar="NAME", help=f"network: {', '.join(ARCHS)}")
    p.add_argument("--data", type=runtime.path_arg, default=None, metavar="DIR",
                   help="CIFAR-10 folder (default: synthetic pickles)")
    p.add_argument("--download", action="store_true", help="as train.py --download (with --data)")
    p.add_argument("--subset", type=int, default=None, metavar="N",
                   help="first N train and test images, as train.py --subset (default all; --quick 5000)")
    runtime.add_amp_arg(p, help="as train.py --amp")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory layout")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (and one evaluation batch) before the epoch")


def bench_epoch(args):
    device = args.device
    n = args.subset or (5000 if args.quick else None)
    flags = ["--amp", args.amp] + [f"--{k.replace('_', '-')}" for k in ("channels_last", "compile", "download")
                                   if getattr(args, k)]
    with tempfile.TemporaryDirectory() as tmp:  # the loaders hold every image, the pickles can go afterwards
        if args.data is None:  # as many synthetic images as the real set gives under the same --subset
            n_train = -(-min(n or 50_000, 50_000) // 5) * 5
            data.make_synthetic(tmp, n_train=n_train, n_test=min(n_train, 10_000))
        targs = train_args(args.arch, args.batch_size, "--data", args.data or tmp, *flags)
        loader, _, test_loader, info = data.build_loaders(
            targs, device, args.batch_size, dtype=torch.float32, channels_last=targs.channels_last, seed=targs.seed,
            epochs=targs.epochs, eval_batch_size=targs.eval_batch_size, subset=n)
    amp_dtype = runtime.resolve_amp(targs.amp, device, log=lambda m: print(m, file=sys.stderr))
    torch.manual_seed(targs.seed)
    raw, model = place(build_model(args.arch, num_classes=len(info["classes"])), device, args.channels_last,
                       args.compile)
    optimizer, scheduler, scaler, criterion = optim.training_parts(raw, targs, device, amp_dtype, len(loader))
    step = optim.make_train_step(model, optimizer, scheduler, criterion, device, amp_dtype, scaler)

    source = args.data or "synthetic"
    print(f"epoch: {args.arch}, {info['n_train']:,} train + {info['n_test']:,} test images ({source}), "
          f"batch {args.batch_size} ({len(loader)} steps), amp {amp_name(amp_dtype)}, channels_last "
          f"{'on' if args.channels_last else 'off'}, compile {'on' if args.compile else 'off'}, {device_name(device)}")
    busy = runtime.warn_if_busy()
    # one-time costs (compilation, allocator growth, kernel choice) stay out: warm up on a batch of each split.
    # The last warm-up step has the size of an epoch's last, shorter batch, whose new shape makes a compiled
    # model compile again (tens of seconds), in the order an epoch meets them.
    x, y = next(iter(loader))
    last = loader.num_samples - (len(loader) - 1) * args.batch_size
    for i in range(args.warmup):
        b = last if i == args.warmup - 1 else len(x)
        step(x[:b], y[:b])
    evaluate.evaluate(raw, [next(iter(test_loader))], device, amp_dtype)
    del x, y

    res = timed_epoch(loader, step, device, 0, split=True)
    t = time.perf_counter()
    test = evaluate.evaluate(raw, test_loader, device, amp_dtype)  # train.py evaluates the raw (uncompiled) model
    runtime.sync(device)
    res["eval_s"] = time.perf_counter() - t
    total = res["train_s"] + res["eval_s"]
    if device.type != "cpu":  # syncs cost GPU idle time: the same loop once more without them, for the total
        res["train_s_nosync"] = timed_epoch(loader, step, device, 1, split=False)["train_s"]
    mem, mem_kind = peak_memory(device)

    for name, s in (("data", res["data_s"]), ("compute", res["compute_s"]), ("evaluation", res["eval_s"])):
        print(f"  {name:12s} {s:8.2f} s  {100 * s / total:5.1f}%")
    print(f"  {'total':12s} {total:8.2f} s  {res['images'] / total:,.0f} images/s counting evaluation, "
          f"{res['images'] / res['train_s']:,.0f} training alone (as train.py's img/s)")
    if "train_s_nosync" in res:
        print(f"  without the per-batch syncs that split data from compute, training takes {res['train_s_nosync']:.2f} s")
    else:
        print("  (device syncs are no-ops on the CPU: data + compute is the whole training time)")
    print(f"  peak memory  {mem / 2**20:,.0f} MiB: {mem_kind}")
    print(f"  train loss {res['train_loss']:.3f}, acc {res['train_acc']:.3f}; test acc {test['acc']:.3f}")
    return {"arch": args.arch, "params": count_params(raw), "source": source, "n_train": info["n_train"],
            "n_test": info["n_test"], "batch_size": args.batch_size, "steps": len(loader), "amp": amp_name(amp_dtype),
            "channels_last": args.channels_last, "compile": args.compile, "warmup_steps": args.warmup,
            "cpu_busy_before": busy, **res, "total_s": total,
            "train_images_per_s": res["images"] / res["train_s"], "total_images_per_s": res["images"] / total,
            "test_acc": test["acc"], "peak_memory_bytes": mem, "peak_memory_kind": mem_kind,
            "syncs": "after every batch and every step, so data_s and compute_s add up honestly on a GPU"}


# ----------------------------------------------------------------------------- command line and results file

SUBCOMMANDS = {
    "data": (add_data_args, bench_data, "data.py's Loader against torchvision's per-image pipeline"),
    "step": (add_step_args, bench_step, "train.py's step function against a bare loop, per precision/layout/compile"),
    "epoch": (add_epoch_args, bench_epoch, "one epoch of train.py end to end: data, compute, evaluation, memory"),
    "race": (race.add_race_args, race.bench_race, "--recipe fast against airbench94, at once on one core each"),
}


def resolve_device(ap, name):
    try:
        device = runtime.pick_device(log=lambda *a: None, name=name)  # auto: train.py's choice
    except RuntimeError:
        ap.error(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {name}: no CUDA device is available here (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        ap.error(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        ap.error(f"--device {name}: MPS is not available here (use --device cpu)")
    if device.type not in ("cpu", "cuda", "mps"):
        ap.error(f"--device {name}: only cpu, cuda and mps are supported")
    torch.set_float32_matmul_precision("high")  # as train.py: TF32 for what stays fp32 on Ampere+
    return device


GENERATOR = runfiles.MARK + " bench.py"  # bench.json's "generator": a JSON file without it is another's (config.json)


def read_out(path):
    """The sections already in --out: {} when it does not exist yet. A file that is not a bench.py's JSON object (a
    user's notes, a half-written file, a run's config.json or summary.json) raises ValueError: it is left as it is,
    never replaced."""
    try:
        with open(path) as f:
            old = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} exists and is not a bench.json ({type(e).__name__}); pass another --out") from None
    if not isinstance(old, dict):
        raise ValueError(f"{path} exists and is not a bench.json (not a JSON object); pass another --out")
    if old.get("generator") != GENERATOR and not older_bench(old):
        raise ValueError(f"{path} exists and is not a bench.json (no \"generator\": \"{GENERATOR}\" in it: a file "
                         "of yours); pass another --out")
    return old


def older_bench(old):
    """Whether a JSON object is a bench.json written before the "generator" mark: bench.py's environment at the top
    and in a section of one of its subcommands."""
    env = {"device", "torch", "torchvision", "python", "threads", "measured"}
    return env <= set(old) and any(isinstance(old.get(c), dict) and env <= set(old[c]) for c in SUBCOMMANDS)


def check_out(ap, path, name, force):
    """Before any timing: --out must be a bench.json or a new file in an existing folder, so no work is lost at the end,
    and must not hold a race's section already (it took hours) unless force."""
    runfiles.check_output_file(ap, "--out", path)  # also a folder given for it
    try:
        old = read_out(path)
    except ValueError as e:
        ap.error(str(e))
    if name == "race" and name in old and not force:  # (the others are reruns of minutes)
        when = old[name].get("measured", "") if isinstance(old[name], dict) else ""
        ap.error(f"--out {path} already holds a {name!r} section{f' (measured {when})' if when else ''}; "
                 f"use --force to replace it, or another --out")


def save_section(path, name, section, environment):
    """Add `section` under `name` to the JSON file at path, keeping every other key in it (other subcommands'
    sections, anything a user added). Written atomically (runfiles.write_text), so an interrupted run never leaves
    half a file; if the file stopped being a bench.json while this ran, the figures go to path + ".new" instead."""
    try:
        old = read_out(path)
    except ValueError as e:
        print(f"warning: {e}; writing {path}.new instead", file=sys.stderr)
        path, old = path + ".new", {}
    # the top reflects the latest run; sections carry their own
    merged = {**old, "generator": GENERATOR, **environment, name: section}
    runfiles.write_text(path, runfiles.json_text(merged, indent=2))
    return merged


def main(argv=None):
    ap = runtime.OneLineParser(description=__doc__.splitlines()[0])  # errors: one line, exit code 2
    sub = ap.add_subparsers(dest="cmd", required=True, help="what to measure (each has its --help)")
    for name, (add_args, _, help_) in SUBCOMMANDS.items():
        add_args(sub.add_parser(name, help=help_))
    args = ap.parse_args(argv)
    runtime.check_ranges(ap, args, positive=("batch_size", "repeats", "subset", "images"), nonnegative=("workers",))
    if getattr(args, "warmup", 1) < (1 if args.cmd == "step" else 0):
        ap.error(f"--warmup must be at least {1 if args.cmd == 'step' else 0}, got {args.warmup}")
    if getattr(args, "download", False) and args.data is None:  # synthetic images: nothing to fetch
        ap.error("--download fetches CIFAR-10 into --data: give --data DIR (without it, the images are synthetic)")
    check_out(ap, args.out, args.cmd, getattr(args, "force", False))  # --force: race's alone
    if getattr(args, "work", None) is not None:  # race: its runs' folder, made and written later
        runfiles.check_output_folder(ap, "--work", args.work)
    args.device = resolve_device(ap, args.device)
    try:
        section = SUBCOMMANDS[args.cmd][1](args)
    except data.DataError as e:
        ap.error(str(e))
    except race.RaceError as e:
        if e.code == 2:
            ap.error(str(e))
        print(f"bench.py race: {e}", file=sys.stderr)
        sys.exit(e.code)
    environment = {"device": device_name(args.device), "torch": torch.__version__,
                   "torchvision": torchvision.__version__, "python": platform.python_version(),
                   "threads": torch.get_num_threads(), "measured": datetime.datetime.now().isoformat(timespec="seconds")}
    result = save_section(args.out, args.cmd, {**environment, **section}, environment)
    print(f"wrote section {args.cmd!r} of {args.out}")
    return result


if __name__ == "__main__":
    runtime.run_main(lambda: main() and 0, "bench.py")  # (main returns bench.json's content: exit code 0)
