"""The race behind `python bench.py race`: pip airbench's train94 against `train.py --recipe fast`.

On a CPU a machine's speed drifts (up to 2x within an hour), so two runs one after the other compare two
machines. Here both run at once, each pinned to its own core with one thread, in two lanes: the fast
lane trains --seeds one after another, the airbench lane trains airbench94 with the same seeds one after
another until the fast lane is done (its run in progress then finishes). Both cores stay loaded for the
whole race, so a slowdown of the machine hits both lanes alike; the pace ratio is airbench94's mean
whole-process time over fast's. On CUDA (one GPU) the runs go one after another instead, airbench94
and fast in turn per seed, and airbench94 runs as published.

airbench is an optional package (`pip install airbench`), for this race only. Its CifarLoader reads
cifar10/{train,test}.pt below its working folder, which the race writes from --data, so both train and
test on the same images. On a CPU the shim (airbench_on_cpu) changes only what a CPU needs.

This module is bench.py's (add_race_args, bench_race) and, run as a script, the airbench94 worker
process the race starts; it is not meant to be called by hand.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

import data
import runtime

HERE = os.path.dirname(os.path.abspath(__file__))
class RaceError(Exception):
    """A one-line reason the race cannot run (code 2: the input or the setup) or did not finish (code 1)."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


INSTALL_HINT = "the race needs pip's airbench (an optional extra, for this benchmark only): pip install airbench"


# ----------------------------------------------------------------------------- the airbench94 worker

class CpuEvent:
    """torch.cuda.Event's timing interface on the CPU clock; every elapsed_time() is also logged in
    CpuEvent.intervals (airbench times its whitening init, each epoch and the TTA evaluation with it)."""
    intervals = []

    def __init__(self, enable_timing=True):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def elapsed_time(self, end):
        ms = 1e3 * (end.t - self.t)
        CpuEvent.intervals.append(ms / 1e3)
        return ms


def airbench_on_cpu(airbench):
    """What a CPU needs and nothing else: tensors stay on the CPU (no .cuda(), no fp16 weights; the
    loaders load to the CPU), the network's forward runs under bf16 autocast as train.py's recipes do
    (its output cast back to fp32 for the loss), CUDA events become CPU clocks. Algorithm, network,
    hyperparameters and data order are airbench's own."""
    import airbench.utils as utils
    import airbench.lib_airbench94 as lib
    init = utils.CifarLoader.__init__

    def init_cpu(self, *args, **kwargs):  # also the test loader train() builds itself (with gpu=0)
        init(self, *args, **{**kwargs, "gpu": "cpu"})
        self.images = self.images.float()  # fp16 on the GPU, the same values; CPU kernels lack some fp16 ops
    utils.CifarLoader.__init__ = init_cpu
    torch.cuda.Event, torch.cuda.synchronize = CpuEvent, lambda *a, **k: None
    make_net = lib.make_net94

    def make_net_cpu(*args, **kwargs):
        half, cuda = torch.nn.Module.half, torch.nn.Module.cuda
        torch.nn.Module.half = torch.nn.Module.cuda = lambda self, *a, **k: self
        try:
            net = make_net(*args, **kwargs)
        finally:
            torch.nn.Module.half, torch.nn.Module.cuda = half, cuda
        forward = net.forward

        def forward_bf16(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return forward(x).float()
        net.forward = forward_bf16
        return net
    return make_net_cpu


def airbench_worker(argv):
    """Train airbench94 once in this process; write its figures as JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    import airbench
    import airbench.utils as utils
    torch.manual_seed(args.seed)
    kwargs = {"make_net": airbench_on_cpu(airbench)} if args.device == "cpu" else {}
    seen = {}
    show = utils.print_training_details

    def record(variables, is_final_entry):  # train94 prints its figures but returns only the model
        seen.update({k: variables.get(k) for k in ("val_acc", "tta_val_acc", "total_time_seconds")})
        show(variables, is_final_entry)
    utils.print_training_details = record
    hyp = airbench.lib_airbench94.hyp
    loader = utils.CifarLoader("cifar10", train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"],
                               altflip=True)  # what train94 builds when given none
    airbench.train94(loader, **kwargs)
    intervals = CpuEvent.intervals if args.device == "cpu" else []
    runtime.write_text(args.out, json.dumps({
        "seed": args.seed, "tta_acc": seen["tta_val_acc"], "acc": seen["val_acc"],
        "counted_s": seen["total_time_seconds"], "epoch_times": intervals[1:-1], "threads": torch.get_num_threads(),
        "process_s": time.perf_counter() - t0, "airbench": getattr(airbench, "__version__", None)}))


# ----------------------------------------------------------------------------- the race

def add_race_args(p):
    p.add_argument("--data", default="./data", metavar="DIR", help="folder holding cifar-10-batches-py")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="fast's seeds (and airbench94's)")
    p.add_argument("--cores", type=int, nargs=2, default=[0, 1], metavar=("FAST", "AIRBENCH"),
                   help="CPU cores the two lanes are pinned to")
    p.add_argument("--work", default="race", help="folder for the runs' folders, logs and airbench's data")
    p.add_argument("--device", default="auto", help="auto = cuda, else cpu")
    p.add_argument("--out", default="bench.json", help="JSON file the figures are added to")


def airbench_data(data_dir, work):
    """Our copy of CIFAR-10 in the layout airbench's CifarLoader reads (uint8 NHWC images), once."""
    folder = os.path.join(work, "cifar10")
    os.makedirs(folder, exist_ok=True)
    d = data.load_cifar10(data_dir)
    for split, name in (("train", "train.pt"), ("test", "test.pt")):
        x, y = d[split]
        torch.save({"images": x.permute(0, 2, 3, 1).contiguous(), "labels": y, "classes": d["classes"]},
                   os.path.join(folder, name))


def launch(cmd, log_path, core, cwd):
    """Run cmd to the end, pinned to `core` (None = anywhere) with one thread; returns its wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    if core is None:
        env.pop("OMP_NUM_THREADS"), env.pop("MKL_NUM_THREADS")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, preexec_fn=pin).returncode
    if rc != 0:
        raise RaceError(f"{os.path.basename(cmd[1])} exited with {rc}; its output: {log_path}", code=1)
    return time.perf_counter() - t0


def fast_run(args, seed, core, started):
    out = os.path.join(args.work, f"fast-seed{seed}")
    t = time.time() - started
    wall = launch([sys.executable, os.path.join(HERE, "train.py"), "--recipe", "fast", "--data", args.data,
                   "--seed", str(seed), "--out", out, "--force", "--no-progress"], out + ".log", core, None)
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        epochs = [json.loads(line)["epoch_time"] for line in f if line.strip()]
    counted = s["init_time_s"] + s["train_time_s"] + s.get("tta_eval_s", 0.0)  # what airbench's count holds
    return {"seed": seed, "tta_acc": s.get("tta_test_acc"), "acc": s["final_test_acc"], "whole_s": wall,
            "counted_s": counted, "epoch_times": epochs, "start_s": t, "end_s": time.time() - started}


def airbench_run(args, seed, core, started, device):
    out = os.path.join(args.work, f"airbench94-seed{seed}.json")
    t = time.time() - started
    wall = launch([sys.executable, os.path.abspath(__file__), "--seed", str(seed), "--device", device, "--out", out],
                  out[:-5] + ".log", core, args.work)
    with open(out) as f:
        r = json.load(f)
    return {**r, "whole_s": wall, "start_s": t, "end_s": time.time() - started}


def run_lanes(args, device):
    """The two lanes at once on a CPU (see the module's docstring); in turn on CUDA."""
    fast, air, errors, started = [], [], [], time.time()
    if device == "cuda":
        for seed in args.seeds:
            air.append(airbench_run(args, seed, None, started, device))
            fast.append(fast_run(args, seed, None, started))
        return fast, air
    fast_done = threading.Event()
    more_seeds = list(args.seeds) + list(range(max(args.seeds) + 1, max(args.seeds) + 100))  # until fast is done

    def lane(results, run, seeds, core):
        try:
            for seed in seeds:
                if run is airbench_run and fast_done.is_set():
                    break
                results.append(run(args, seed, core, started) if run is fast_run
                               else run(args, seed, core, started, device))
                print(f"race: {'fast' if run is fast_run else 'airbench94'} seed {seed}: "
                      f"{100 * (results[-1]['tta_acc'] or 0):.2f}% in {results[-1]['whole_s']:.0f}s", flush=True)
        except Exception as e:  # reported by the main thread
            errors.append(e)
        finally:
            if run is fast_run:
                fast_done.set()
    threads = [threading.Thread(target=lane, args=(fast, fast_run, args.seeds, args.cores[0])),
               threading.Thread(target=lane, args=(air, airbench_run, more_seeds, args.cores[1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return fast, air


def _mean(runs, key):
    return statistics.mean(r[key] for r in runs)


def drift(runs, key="whole_s"):
    """How much the lane's run times moved: slowest over fastest (1.0 = none)."""
    times = [r[key] for r in runs]
    return max(times) / min(times) if times else None


def bench_race(args):
    try:
        import airbench  # noqa: F401
    except ImportError:
        raise RaceError(INSTALL_HINT) from None
    device = args.device.type
    if device not in ("cpu", "cuda"):
        raise RaceError(f"the race runs on a CPU or CUDA, not {device}")
    if device == "cpu" and (args.cores[0] == args.cores[1] or not set(args.cores) <= os.sched_getaffinity(0)):
        raise RaceError(f"--cores needs two different cores of this machine's {sorted(os.sched_getaffinity(0))}")
    args.work, args.data = os.path.abspath(args.work), os.path.abspath(args.data)
    os.makedirs(args.work, exist_ok=True)
    airbench_data(args.data, args.work)
    started = time.time()
    print(f"race: fast seeds {args.seeds} against airbench94 on {runtime.device_name(args.device)}"
          + (f", lanes pinned to cores {args.cores[0]} and {args.cores[1]}, one thread each" if device == "cpu" else ""),
          flush=True)
    fast, air = run_lanes(args, device)
    section = {"seeds": args.seeds, "cores": args.cores if device == "cpu" else None, "race_s": time.time() - started,
               "fast": fast, "airbench94": air,
               "ratio_whole": _mean(air, "whole_s") / _mean(fast, "whole_s"),
               "ratio_counted": _mean(air, "counted_s") / _mean(fast, "counted_s"),
               "drift": {"fast": drift(fast), "airbench94": drift(air)},
               "fast_min_tta_acc": min(r["tta_acc"] for r in fast),
               "airbench94_mean_tta_acc": _mean(air, "tta_acc")}
    section["bar"] = {"every_seed_90.4": section["fast_min_tta_acc"] >= 0.904,
                      "every_seed_at_least_airbench94": section["fast_min_tta_acc"] >= section["airbench94_mean_tta_acc"],
                      "pace_2x": section["ratio_whole"] >= 2}
    print_race(section)
    return section


def print_race(s):
    for name in ("airbench94", "fast"):
        for r in s[name]:
            ep = ", ".join(f"{t:.0f}" for t in r["epoch_times"])
            print(f"  {name:10s} seed {r['seed']}: TTA {100 * r['tta_acc']:.2f}%  whole process {r['whole_s']:.0f}s  "
                  f"counted {r['counted_s']:.0f}s  epochs {ep} s  (from {r['start_s']:.0f}s to {r['end_s']:.0f}s)")
    print(f"drift (slowest run / fastest run in a lane): fast {s['drift']['fast']:.2f}x, "
          f"airbench94 {s['drift']['airbench94']:.2f}x")
    print(f"pace: fast is {s['ratio_whole']:.2f}x airbench94 by whole-process time ({s['ratio_counted']:.2f}x by the "
          f"time each counts); fast's lowest TTA accuracy {100 * s['fast_min_tta_acc']:.2f}%, airbench94's mean "
          f"{100 * s['airbench94_mean_tta_acc']:.2f}%")
    print("bar: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in s["bar"].items()))


if __name__ == "__main__":
    airbench_worker(sys.argv[1:])
