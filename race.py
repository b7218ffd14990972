"""The race behind `python bench.py race`: pip airbench's train94 against `train.py --recipe fast` (or --recipe R).

On a CPU a machine's speed drifts (up to 2x within an hour), so two runs one after the other compare two
machines. Here both run at once, each pinned to its own core with one thread, in two lanes: the fast
lane trains --seeds one after another, the airbench lane trains airbench94 (the same seeds, then more)
one after another until the fast lane has done its seeds; the fast lane then goes on with the next seeds
until airbench94's last run ends, which stops the fast run in progress (its accuracy not counted). So both cores
are loaded for the whole race, a slowdown of the machine hits both lanes alike, and every counted run ran
entirely beside the other lane. Three pace ratios: airbench94's mean whole-process time over fast's, the same by
the time each counts itself, and the one drift cannot bend, which the bar reads: fast's runs per airbench94 run over
the same stretch of time (window_ratio; the first two are bent when the machine speeds up or slows down after fast's
runs have ended but airbench94's have not). The bar reads fast's --seeds only: the later seeds fill the lane.
On CUDA (one GPU) the runs go one after another instead, airbench94 and fast in turn per seed, and airbench94 runs
as published.

airbench is an optional package (`pip install airbench`), for this race only. Its CifarLoader reads
cifar10/{train,test}.pt below its working folder, which the race writes from --data, so both train and
test on the same images (a copy there that no race wrote is refused, not replaced). On a CPU a shim
(airbench_on_cpu) changes only what a CPU needs.

This module is bench.py's (add_race_args, bench_race) and, run as a script, the airbench94 worker
process the race starts; it is not meant to be called by hand.
"""
import importlib.metadata
import itertools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time

import torch

import data
import runfiles
import runtime
from recipes import RECIPES, parse_args

HERE = os.path.dirname(os.path.abspath(__file__))
class RaceError(Exception):
    """A one-line reason the race cannot run (code 2: the input or the setup) or did not finish (code 1)."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


INSTALL_HINT = "the race needs pip's airbench (an optional extra, for this benchmark only): pip install airbench"


# ----------------------------------------------------------------------------- the airbench94 worker

INTERVALS = []  # every time airbench reads off its timer: whitening init, each epoch, the TTA evaluation


class CpuEvent:
    """torch.cuda.Event's timing interface on the CPU clock."""

    def __init__(self, enable_timing=True):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def elapsed_time(self, end):
        INTERVALS.append(end.t - self.t)
        return 1e3 * (end.t - self.t)


def log_cuda_intervals():
    """On CUDA, airbench's own events, their readings also logged into INTERVALS."""
    class Event(torch.cuda.Event):
        def elapsed_time(self, end):
            ms = super().elapsed_time(end)
            INTERVALS.append(ms / 1e3)
            return ms
    torch.cuda.Event = Event


def airbench_on_cpu(airbench):
    """What a CPU needs and nothing else; algorithm, network, hyperparameters and data order stay airbench's:
    - tensors stay on the CPU: no .cuda(), the loaders (also the test loader train() builds) load to the CPU;
    - precision as train.py's recipes on a CPU: fp32 weights, the forward under bf16 autocast (its output
      cast to fp32 for the loss). On the GPU airbench trains fp16 weights; CPUs have no fast fp16, and bf16
      weights would silently turn off its lookahead (which averages only fp16 and fp32 tensors);
    - the loaders hold the images in fp32 (fp16 on the GPU, the same values), as CPU fp16 arithmetic is slow;
    - CUDA events become CPU clocks;
    - (in airbench_worker) freed memory stays mapped, the allocator setting train.py's CPU runs get."""
    import airbench.utils as utils
    import airbench.lib_airbench94 as lib
    init = utils.CifarLoader.__init__

    def init_cpu(self, *args, **kwargs):  # also the test loader train() builds itself (with gpu=0)
        init(self, *args, **{**kwargs, "gpu": "cpu"})
        self.images = self.images.float()
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
    ap = runtime.OneLineParser(prog="race.py", description="the airbench94 worker that `python bench.py race` starts; "
                               "not meant to be run by hand")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    import airbench
    import airbench.utils as utils
    torch.manual_seed(args.seed)
    if args.device == "cpu":
        runtime.keep_freed_memory()  # the allocator setting train.py's CPU runs get (runtime.pick_device)
        kwargs = {"make_net": airbench_on_cpu(airbench)}
    else:
        kwargs = {}
        log_cuda_intervals()
    seen = {}
    show = utils.print_training_details

    def record(variables, is_final_entry):  # train94 prints its figures but returns only the model
        seen.update({k: variables.get(k) for k in ("val_acc", "tta_val_acc", "total_time_seconds")})
        show(variables, is_final_entry)
    utils.print_training_details = record
    airbench.train94(**kwargs)  # builds its loaders from cifar10/ below the working folder
    runfiles.write_text(args.out, json.dumps({
        "seed": args.seed, "tta_acc": seen["tta_val_acc"], "acc": seen["val_acc"],
        "counted_s": seen["total_time_seconds"], "epoch_times": INTERVALS[1:-1], "threads": torch.get_num_threads(),
        "process_s": time.perf_counter() - t0, "airbench": importlib.metadata.version("airbench")}))


# ----------------------------------------------------------------------------- the race

def add_race_args(p):
    p.add_argument("--data", type=runtime.path_arg, default="./data", metavar="DIR",
                   help="folder holding cifar-10-batches-py")
    p.add_argument("--download", action="store_true", help="fetch the official files into --data through torchvision "
                   "if missing or damaged (once, before the lanes start: they read them from there)")
    p.add_argument("--seeds", type=runtime.seed_arg, nargs="+", default=[0, 1, 2, 3, 4],
                   help="fast's seeds (and airbench94's)")
    p.add_argument("--cores", type=int, nargs=2, default=[0, 1], metavar=("FAST", "AIRBENCH"),
                   help="CPU cores the two lanes are pinned to")
    p.add_argument("--work", type=runtime.path_arg, default="race",
                   help="folder for the runs' folders, logs and airbench's data")
    p.add_argument("--device", default="auto", help="auto = cuda, else cpu")
    p.add_argument("--out", type=runtime.path_arg, default="bench.json", help="JSON file the figures are added to")
    p.add_argument("--force", action="store_true", help="replace an earlier race's section of --out")
    p.add_argument("--recipe", default="fast", choices=[r for r in RECIPES if r.startswith("fast")],
                   help="the fast lane's train.py recipe (fast-cpu: the bar's setting on a CPU; RESULTS.md)")
    p.add_argument("--fast-args", default="", metavar="FLAGS",
                   help="more train.py flags for the fast lane, as one string: --fast-args='--cuda-graph'")


AIRBENCH_COPY = "cifar10"  # below --work: where airbench's CifarLoader reads {train,test}.pt
MARK = "written-by-race.txt"  # beside them: the copy is the race's own, rewritten by every race


def airbench_data(data_dir, work, download=False):
    """Our copy of CIFAR-10 in the layout airbench's CifarLoader reads (uint8 NHWC images), once per race; --work
    made only once --data has loaded (a wrong --data leaves no folder behind). download: fetched into data_dir
    first if missing or damaged, where the fast lane's train.py --data then finds it."""
    d = data.load_cifar10(data_dir, download=download)
    folder = os.path.join(work, AIRBENCH_COPY)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, MARK), "w") as f:  # first: a copy cut off midway is still known as ours
        f.write(f"CIFAR-10 from {data_dir}, in the layout airbench reads; bench.py race rewrites it from --data\n")
    for split, name in (("train", "train.pt"), ("test", "test.pt")):
        x, y = d[split]
        torch.save({"images": x.permute(0, 2, 3, 1).contiguous(), "labels": y, "classes": d["classes"]},
                   os.path.join(folder, name))


class Cancelled(Exception):
    """A run stopped because the race ended (fast's run in progress when airbench94's last one ends) or failed."""


# pins the process to a core, then becomes the command: no preexec_fn, which is unsafe with threads
PIN = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); os.execv(sys.argv[2], sys.argv[2:])"


def launch(cmd, log_path, core, cwd, env=None, stopped=lambda: False):
    """Run cmd to its end, pinned to `core` with one thread (core None: unpinned, threads as the environment
    says); returns its wall time. RaceError if it fails; Cancelled (after stopping it) once stopped() is true."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if core is not None:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        cmd = [sys.executable, "-c", PIN, str(core), *cmd]
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if stopped():
                    proc.terminate()
                    proc.wait()
                    raise Cancelled() from None
    if rc != 0:  # its last line says why (train.py refusing what only the data could check: --val beyond the images)
        with open(log_path, errors="replace") as f:
            said = ([line.strip() for line in f if line.strip()] or [""])[-1][:300]
        raise RaceError(f"a run exited with {rc} ({said}); its output: {log_path}", code=1)
    return time.perf_counter() - t0


def race_flags(recipe, data_dir, seed, out):
    """The train.py flags the race sets on every fast run (--fast-args adds to them and may not repeat them)."""
    return ["--recipe", recipe, "--data", data_dir, "--seed", str(seed), "--out", out, "--force", "--no-progress"]


def fast_run(args, seed, core, started, stopped):
    out = os.path.join(args.work, f"fast-seed{seed}")
    t0 = time.time()
    t = t0 - started
    try:
        wall = launch([sys.executable, os.path.join(HERE, "train.py"), *race_flags(args.recipe, args.data, seed, out),
                       *args.fast_flags], out + ".log", core, None, args.lane_env, stopped)
    except Cancelled as e:  # how far the run got: window_ratio counts it
        e.epoch_times = epoch_times(out, since=t0)
        e.part = part_epoch(out + ".log", len(e.epoch_times))
        raise
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    epochs = epoch_times(out)
    # what airbench's count holds (train.py's TTA time includes the test pass whose logits it reuses)
    counted = s["init_time_s"] + s["train_time_s"] + s.get("tta_eval_s", 0.0)
    return {"seed": seed, "tta_acc": s.get("tta_test_acc"), "acc": s["final_test_acc"], "whole_s": wall,
            "counted_s": counted, "epoch_times": epochs, "start_s": t, "end_s": time.time() - started}


def epoch_times(run_dir, since=0.0):
    """The time of every epoch a train.py run folder's metrics.jsonl holds (train.py rewrites it whole after each
    epoch); [] when there is none or it is older than `since` (an earlier race's, in a folder the run reuses)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path) or os.path.getmtime(path) < since - 1:  # 1 s: file clocks can tick coarsely
        return []
    with open(path) as f:
        return [json.loads(line)["epoch_time"] for line in f if line.strip()]


def part_epoch(log_path, finished):
    """The share of its next epoch a run stopped after `finished` epochs had done, from train.py's log (its "N
    steps/epoch" and "stopped by signal ... at epoch E, step S", S counted from the run's start); 0 where the log
    says neither or names another epoch."""
    try:
        with open(log_path, errors="replace") as f:
            text = f.read()
    except OSError:
        return 0.0
    per = re.search(r"(\d+) steps/epoch", text)
    at = re.search(r"stopped by signal \w+ at epoch (\d+), step (\d+)", text)
    if not per or not at or int(at[1]) != finished + 1:
        return 0.0
    n = int(per[1])
    return min(max(int(at[2]) - finished * n, 0), n) / n


def airbench_run(args, seed, core, started, stopped):
    out = os.path.join(args.work, f"airbench94-seed{seed}.json")
    t = time.time() - started
    wall = launch([sys.executable, os.path.abspath(__file__), "--seed", str(seed), "--device", args.device.type,
                   "--out", out], out[:-5] + ".log", core, args.work, args.lane_env, stopped)
    with open(out) as f:
        r = json.load(f)
    return {**r, "whole_s": wall, "start_s": t, "end_s": time.time() - started}


def announce(name, r):
    print(f"race: {name} seed {r['seed']}: {100 * r['tta_acc']:.2f}% in {r['whole_s']:.0f}s", flush=True)


def run_lanes(args):
    """(fast runs, airbench94 runs, each fast run cut at the end: its epoch times and the part of its next epoch):
    the two lanes at once on a CPU (the module's docstring says how), in turn on CUDA. Any failure stops both
    lanes; so does Ctrl-C (RaceError, code 130)."""
    fast, air, cut, errors, started = [], [], [], [], time.time()
    if args.device.type == "cuda":
        for seed in args.seeds:
            air.append(airbench_run(args, seed, None, started, lambda: False))
            announce("airbench94", air[-1])
            fast.append(fast_run(args, seed, None, started, lambda: False))
            announce("fast", fast[-1])
        return fast, air, cut
    fast_done, air_done, abort = threading.Event(), threading.Event(), threading.Event()

    def lane(body, done):
        try:
            body()
        except Cancelled as e:
            cut.append({"epoch_times": getattr(e, "epoch_times", []), "part": getattr(e, "part", 0.0)})
        except Exception as e:  # the main thread reports it
            errors.append(e)
            abort.set()
        finally:
            done.set()

    def fast_lane():
        for seed in args.seeds:
            fast.append(fast_run(args, seed, args.cores[0], started, abort.is_set))
            announce("fast", fast[-1])
        fast_done.set()
        seeds, stop = itertools.count(max(args.seeds) + 1), lambda: air_done.is_set() or abort.is_set()
        while not stop():  # more seeds, the last one stopped when airbench94's last run ends
            fast.append(fast_run(args, next(seeds), args.cores[0], started, stop))
            announce("fast", fast[-1])

    def air_lane():
        for seed in itertools.chain(args.seeds, itertools.count(max(args.seeds) + 1)):
            if fast_done.is_set():
                break
            air.append(airbench_run(args, seed, args.cores[1], started, abort.is_set))
            announce("airbench94", air[-1])
    threads = [threading.Thread(target=lane, args=(fast_lane, fast_done)),
               threading.Thread(target=lane, args=(air_lane, air_done))]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
    except KeyboardInterrupt:
        abort.set()
        for t in threads:
            t.join()
        raise RaceError(f"interrupted; the finished runs are in {args.work}", code=130) from None
    if errors:
        raise errors[0]
    return fast, air, cut


def _mean(runs, key):
    return statistics.mean(r[key] for r in runs)


def drift(runs):
    """How much a lane's speed moved during the race: slowest over fastest run, and slowest over fastest
    epoch (each run's first and last epochs left out: the first holds warm-up, and with --select-frac trains on
    every image; airbench94's last is a fraction of one). 1.0 = none."""
    times = [r["whole_s"] for r in runs]
    epochs = [t for r in runs for t in r["epoch_times"][1:-1]]
    return {"runs": max(times) / min(times) if times else None,
            "epochs": max(epochs) / min(epochs) if epochs else None}


def window_ratio(fast, air, cut):
    """Fast's runs per airbench94 run from the race's start to airbench94's last end, a stretch both lanes spent
    loaded, so drift slows or speeds both alike. The fast run cut at that end counts the share of a run that its
    whole epochs and the done part of its next take in the finished runs (their mean): a lower bound, its start-up
    counting nothing (unless the speed changed within the finished runs, which shifts their shares a little)."""
    if not fast or not air:
        return None

    def share(r, c):
        k, times = len(c["epoch_times"]), r["epoch_times"]
        return (sum(times[:k]) + (c["part"] * times[k] if k < len(times) else 0.0)) / r["whole_s"]
    part = sum(statistics.mean(share(r, c) for r in fast) for c in cut)
    return (len(fast) + part) / len(air)


def raced(fast, seeds):
    """The fast runs of the race's --seeds: the bar's. The seeds after them only keep the lane loaded while
    airbench94 finishes; their figures are kept, not judged."""
    return [r for r in fast if r["seed"] in seeds]


def bar(s):
    """The issue's bar on a race's figures (fast's --seeds only). "At least airbench94's accuracy in the same race"
    is read both ways: each fast seed against airbench94's run of the same seed (seeds airbench94 did not run are
    left out), and every fast seed against airbench94's mean. The pace is window_ratio's where there is one (a CPU
    race)."""
    eps = 1e-6  # a tie is a tie: accuracies are counts over 10,000 images, airbench94's handed over as float32
    air = {r["seed"]: r["tta_acc"] for r in s["airbench94"]}
    paired = [(r["tta_acc"], air[r["seed"]]) for r in raced(s["fast"], s["seeds"]) if r["seed"] in air]
    return {"every_seed_90.4": s["fast_min_tta_acc"] >= 0.904 - eps,
            "every_seed_at_least_airbench94_same_seed": bool(paired) and all(f >= a - eps for f, a in paired),
            "every_seed_at_least_airbench94_mean": s["fast_min_tta_acc"] >= s["airbench94_mean_tta_acc"] - eps,
            "pace_2x": (s["ratio_whole"] if s.get("ratio_window") is None else s["ratio_window"]) >= 2}


def check_fast_args(args):
    """--fast-args split into args.fast_flags, and refused in one line before any run if train.py would refuse
    them (its own check, exit code 2) or they name a flag the race sets itself."""
    import train  # the fast lane's script, for its flag check only
    try:
        args.fast_flags = shlex.split(args.fast_args)
    except ValueError as e:
        raise RaceError(f"--fast-args {args.fast_args!r}: {e}") from None
    sets = [f for f in race_flags("", "", 0, "") if f.startswith("--")] + ["--resume"]  # --resume: not a fresh run
    taken = [f for f in args.fast_flags if f.split("=")[0] in sets]
    if taken:
        raise RaceError(f"--fast-args cannot set {', '.join(taken)}: the race sets {', '.join(sets)} itself")
    printing = [f for f in args.fast_flags if f in ("-h", "--help", "--list-recipes")]
    if printing:  # train.py would print and exit 0: a race with no fast run
        raise RaceError(f"--fast-args cannot hold {printing[0]}: train.py prints and exits, with no run")
    ap = train.get_parser()
    ap.prog, ap.allow_abbrev = "bench.py race --fast-args", False  # '--see 3' would be --seed 3 in the lane
    fast = parse_args(ap, ["--recipe", args.recipe, *args.fast_flags])
    train.check_args(ap, fast)
    if fast.tta == "none":  # the race compares TTA accuracies, as airbench94 reports its own
        raise RaceError("--fast-args cannot set --tta none: the race compares both lanes' TTA accuracy")


def check_race(args):
    """RaceError (one line, code 2) for what would stop the race before it starts; resolves the paths."""
    try:
        import airbench  # noqa: F401
    except ImportError:
        raise RaceError(INSTALL_HINT) from None
    device = args.device
    if device.type not in ("cpu", "cuda"):
        raise RaceError(f"the race runs on a CPU or CUDA, not {device.type}")
    # (the lanes go on with the seeds after the largest: those must be seeds too)
    if len(set(args.seeds)) != len(args.seeds) or not 0 <= min(args.seeds) <= max(args.seeds) < 2**62:
        raise RaceError(f"--seeds must be different and from 0 to 2**62 - 1, got {' '.join(map(str, args.seeds))}")
    if device.type == "cpu":
        if not hasattr(os, "sched_setaffinity"):
            raise RaceError("pinning each lane to a core needs Linux (os.sched_setaffinity)")
        if args.cores[0] == args.cores[1] or not set(args.cores) <= os.sched_getaffinity(0):
            raise RaceError(f"--cores needs two different cores of this machine's {sorted(os.sched_getaffinity(0))}")
    check_fast_args(args)
    # CPU: train.py must not find a GPU; CUDA: both on the chosen one (its index counts the GPUs this process sees)
    visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    index = device.index or 0
    gpu = "" if device.type == "cpu" else visible[index] if visible else str(index)
    args.lane_env = {"CUDA_VISIBLE_DEVICES": gpu}
    args.work, args.data = os.path.abspath(args.work), os.path.abspath(args.data)
    try:  # bench.py has checked that --work can be made and written; airbench_data makes it
        earlier = sorted(n for n in os.listdir(args.work) if re.match(r"(fast|airbench94)-seed\d", n)) \
            if os.path.isdir(args.work) else []
    except OSError as e:
        raise RaceError(f"cannot read --work {args.work}: {e.strerror}") from None
    if earlier:  # the lanes write their runs and logs under these names: an earlier race's would be replaced
        raise RaceError(f"--work {args.work} holds an earlier race's runs ({', '.join(earlier[:3])}"
                        f"{', ...' if len(earlier) > 3 else ''}); move them, or give another --work")
    copy = os.path.join(args.work, AIRBENCH_COPY)
    theirs = [n for n in ("train.pt", "test.pt") if os.path.lexists(os.path.join(copy, n))]
    if theirs and not os.path.exists(os.path.join(copy, MARK)):  # e.g. airbench's own official copy: kept
        raise RaceError(f"{copy} holds {' and '.join(theirs)} that no race wrote, and the race writes its own copy "
                        f"of --data there; move them, or give another --work")


def bench_race(args):
    check_race(args)
    airbench_data(args.data, args.work, args.download)
    busy = runtime.warn_if_busy() if args.device.type == "cpu" else None  # it would slow one lane more than the other
    lane = f"--recipe {args.recipe}" + (f" ({args.fast_args})" if args.fast_args else "")
    print(f"race: {lane} seeds {args.seeds} against airbench94 on {runtime.device_name(args.device)}"
          + (f", lanes pinned to cores {args.cores[0]} and {args.cores[1]}, one thread each"
             if args.device.type == "cpu" else ""), flush=True)
    # a run's lines come only when it ends (a CPU run takes 10-30 minutes): its epochs are in its log meanwhile
    print(f"race: each run's epochs as they go: {os.path.join(args.work, 'fast-seed<S>.log')} and "
          f"{os.path.join(args.work, 'airbench94-seed<S>.log')} (tail -f)", flush=True)
    started = time.time()
    fast, air, cut = run_lanes(args)
    section = {"seeds": args.seeds, "recipe": args.recipe, "fast_args": args.fast_args, "cpu_busy_before": busy,
               "cores": args.cores if args.device.type == "cpu" else None,
               "race_s": time.time() - started, "fast": fast, "airbench94": air, "fast_runs_cut": len(cut),
               "fast_cut_epoch_times": [c["epoch_times"] for c in cut],
               "fast_cut_part_epoch": [c["part"] for c in cut],
               "ratio_whole": _mean(air, "whole_s") / _mean(fast, "whole_s"),
               "ratio_counted": _mean(air, "counted_s") / _mean(fast, "counted_s"),
               "ratio_window": window_ratio(fast, air, cut) if args.device.type != "cuda" else None,
               "drift": {"fast": drift(fast), "airbench94": drift(air)},
               "threads_per_lane": 1 if args.device.type == "cpu" else None,
               "fast_min_tta_acc": min(r["tta_acc"] for r in raced(fast, args.seeds)),
               "airbench94_mean_tta_acc": _mean(air, "tta_acc")}
    section["bar"] = bar(section)
    print_race(section)
    return section


def print_race(s):
    for name in ("airbench94", "fast"):
        for r in s[name]:
            ep = ", ".join(f"{t:.0f}" for t in r["epoch_times"]) or "n/a"
            print(f"  {name:10s} seed {r['seed']}: TTA {100 * r['tta_acc']:.2f}%  whole process {r['whole_s']:.0f}s  "
                  f"counted {r['counted_s']:.0f}s  epochs {ep} s  (from {r['start_s']:.0f}s to {r['end_s']:.0f}s)"
                  + ("  [after --seeds: not in the bar]" if name == "fast" and r["seed"] not in s["seeds"] else ""))
    d = {k: " / ".join(f"{v:.2f}x" if v else "n/a" for v in s["drift"][k].values()) for k in ("fast", "airbench94")}
    print(f"drift (slowest / fastest run, and epoch): fast {d['fast']}, airbench94 {d['airbench94']}")
    print(f"pace: fast is {s['ratio_whole']:.2f}x airbench94 by whole-process time ({s['ratio_counted']:.2f}x by the "
          f"time each counts); fast's lowest TTA accuracy over --seeds {100 * s['fast_min_tta_acc']:.2f}%, "
          f"airbench94's mean {100 * s['airbench94_mean_tta_acc']:.2f}%")
    if s.get("ratio_window") is not None:
        print(f"pace in the same stretch of time (drift cannot bend it; the bar reads it): fast trained "
              f"{s['ratio_window'] * len(s['airbench94']):.2f} runs to airbench94's {len(s['airbench94'])}, "
              f"{s['ratio_window']:.2f}x")
    print("bar: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in s["bar"].items()))


if __name__ == "__main__":
    if len(sys.argv) == 1:  # by hand
        print("race.py is the worker that bench.py's race starts, not a script of its own: python bench.py race",
              file=sys.stderr)
        sys.exit(2)
    airbench_worker(sys.argv[1:])
