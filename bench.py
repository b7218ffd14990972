"""Speed, measured side by side in one run.

    python bench.py data [--quick] [--data DIR] [--batch-size 512] [--out bench.json]

`data`: data.py's on-device Loader (random crop with padding 4, flip, normalise) against the usual
torchvision pipeline with the same transforms applied per image (Dataset + v2 transforms +
DataLoader with 2 workers), both delivering batches on the same device. Warm-up excluded, several
repeats of a full pass; prints median images/s, spread and the ratio, and writes them as JSON.

Every subcommand is a function `bench_<name>(args) -> dict` plus an `add_<name>_args(parser)`,
listed in SUBCOMMANDS; add `step` or `epoch` the same way.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torchvision
from torchvision.transforms import v2

import data


# ----------------------------------------------------------------------------- shared helpers

def pick_device(name="auto"):
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        cpu = platform.processor() or platform.machine()
        return f"CPU ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return str(device)


def sync(device):
    """Wait for queued device work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def cpu_busy(seconds=0.5):
    """Fraction of all CPU time other processes used over a short look (Linux; None elsewhere).

    A busy CPU ruins CPU timings far beyond its share: torch's 2-thread ops wait for a core held by someone
    else (measured here: 680k -> 23k images/s with one other process at 100%), so the figures get flagged.
    """
    def sample():
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total
    try:
        (i0, t0), _, (i1, t1) = sample(), time.sleep(seconds), sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1 - (i1 - i0) / max(t1 - t0, 1)


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


def time_passes(one_pass, n_images, repeats, device, warmup=1):
    """images/s of `repeats` calls of one_pass() (each a full pass over n_images), after `warmup` untimed ones."""
    for _ in range(warmup):
        one_pass()
    sync(device)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        one_pass()
        sync(device)
        rates.append(n_images / (time.perf_counter() - t))
    return rates


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


def bench_images(root, n):
    """n training images (uint8 CPU) from root, or synthetic ones when root is None or unreadable."""
    if root is not None:
        try:
            x, y = data.load_cifar10(root)["train"]
            return x[:n], y[:n], root
        except data.DataError as e:
            print(f"{e}\nusing synthetic images instead", file=sys.stderr)
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g), "synthetic")


def add_data_args(p):
    p.add_argument("--quick", action="store_true", help="fewer images and repeats (under 2 minutes on a laptop CPU)")
    p.add_argument("--data", default=None, metavar="DIR", help="CIFAR-10 folder (default: synthetic images in memory)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto", help="auto = cuda, else mps, else cpu")
    p.add_argument("--out", default="bench.json", help="JSON file for the figures")
    p.add_argument("--images", type=int, default=None, help=argparse.SUPPRESS)   # images per pass
    p.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)


def bench_data(args):
    device = pick_device(args.device)
    n = args.images or (10_000 if args.quick else 50_000)
    repeats = args.repeats or (3 if args.quick else 5)
    x, y, source = bench_images(args.data, n)
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
    busy = cpu_busy()
    if busy is not None and busy > 0.2:
        print(f"warning: other processes keep {100 * busy:.0f}% of the CPU busy; these figures are unreliable",
              file=sys.stderr)
    res_ours = summarize(time_passes(ours_pass, len(x), repeats, device))
    res_theirs = summarize(time_passes(theirs_pass, len(x), repeats, device))
    ratio = speed_ratio(res_ours, res_theirs)
    for name, r in (("data.py Loader (on device)", res_ours),
                    (f"torchvision per image ({args.workers} workers)", res_theirs)):
        print(f"  {name:34s} {r['median']:>12,.0f} images/s  (spread {100 * r['spread']:.0f}%)")
    print(f"  ratio {ratio:.1f}x")
    return {"device": device_name(device), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(), "source": source,
            "cpu_busy_before": busy, "images": len(x), "batch_size": args.batch_size, "repeats": repeats, "workers": args.workers,
            "transforms": "random crop (pad 4) + horizontal flip + normalise, float32",
            "ours_images_per_s": res_ours["median"], "torchvision_images_per_s": res_theirs["median"],
            "ratio": ratio, "ours": res_ours, "torchvision_pipeline": res_theirs}


# ----------------------------------------------------------------------------- command line

SUBCOMMANDS = {"data": (add_data_args, bench_data, "data.py's Loader against torchvision's per-image pipeline")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, (add_args, _, help_) in SUBCOMMANDS.items():
        add_args(sub.add_parser(name, help=help_))
    args = ap.parse_args(argv)
    if getattr(args, "batch_size", 1) <= 0:
        ap.error(f"--batch-size must be positive, got {args.batch_size}")
    result = {"bench": args.cmd, **SUBCOMMANDS[args.cmd][1](args)}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
