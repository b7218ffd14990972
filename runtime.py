"""The plumbing every script shares: the command line (one-line errors, range checks), device and precision,
torchrun's processes, memory and progress lines. The run folder and its files: runfiles.py.

Nothing here knows about training: train.py tells the story of a run, this file holds what it stands on.
"""
import argparse
import contextlib
import ctypes
import importlib.util
import math
import os
import platform
import select
import sys
import time

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
AMP_CHOICES = ["auto", "bf16", "fp16", "off"]


# ----------------------------------------------------------------------------- command line

class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each flag's default after its text, unless the text tells it in words or there is none to tell
    (None; False for a switch; an empty string or list, which "(default: )" would only show as nothing)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default in ("", [], ()) \
                or "default" in (action.help or ""):  # (is False: a default of 0 is one to tell)
            return action.help
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit code 2 (no usage dump), and which refuses a non-finite
    number: NaN passes every range check a script makes after, and inf is no lr, size or count."""

    def __init__(self, *a, **kw):  # every flag's help shows its default (a flag without help text shows nothing)
        super().__init__(*a, **{"formatter_class": DefaultsFormatter, **kw})

    def error(self, message):
        self.exit(2, None if quiet_rank() else f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        for name, value in vars(ns).items():
            if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
                self.error(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        return ns, rest


def quiet_rank():
    """Under torchrun every rank meets the same mistake or Ctrl-C: rank 0 alone says it."""
    return "TORCHELASTIC_RUN_ID" in os.environ and not launched_rank0()


def launched_rank0():
    """Whether this process is rank 0 by what any env:// launch sets (RANK), before a process group exists."""
    return os.environ.get("RANK", "0") == "0"


LATE_IMPORTS = ("tqdm", "matplotlib")  # of requirements.txt, imported where first used: late in a long run


def run_main(main, name):
    """sys.exit(main()): a Ctrl-C that the script does not handle itself (while it loads, tests, plots) ends in one
    line and exit code 130, not a traceback, and so does output cut by a pipe's reader (| head) without the line;
    a package of LATE_IMPORTS missing is said before any work."""
    missing = [m for m in LATE_IMPORTS if importlib.util.find_spec(m) is None]
    if missing:
        if not quiet_rank():
            print(f"{name}: {' and '.join(missing)} not installed; install every requirement: pip install -r "
                  "requirements.txt", file=sys.stderr)
        sys.exit(1)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        if not quiet_rank():
            print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        if not reader_left(sys.stdout):
            raise  # another pipe or socket: a fault, not the reader's choice
        # piped into a reader that stopped (| head): quiet, as other commands end there
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a command ended so


def reader_left(stream):
    """Whether stream is a pipe whose reading end is closed: poll reports an error (Linux) or a hang-up (macOS) on its
    writing end. Where that cannot be asked (no poll on Windows, no file descriptor), assumed so."""
    try:
        poll = select.poll()
        poll.register(stream.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def add_amp_arg(ap, default="auto", help="autocast: auto = bf16 on CUDA and CPU, off on MPS"):
    ap.add_argument("--amp", default=default, choices=AMP_CHOICES, help=help)


def pyplot():
    """matplotlib's pyplot on the Agg backend: files only, no window, works without a display."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


RANGES = {"positive": (lambda v: v > 0, "positive"), "nonnegative": (lambda v: v >= 0, ">= 0"),
          "below_one": (lambda v: 0 <= v < 1, "in [0, 1)"), "fraction": (lambda v: 0 < v <= 1, "in (0, 1]")}


def check_ranges(ap, args, **rules):
    """Refuse (one line, exit 2) the first flag outside its range, naming it and its value. rules: a range of RANGES
    = the dests it holds for (a flag left at None, or one this (sub)command does not have, is not checked)."""
    for rule, names in rules.items():
        holds, words = RANGES[rule]
        for name in names:
            value = getattr(args, name, None)
            if value is not None and not holds(value):
                ap.error(f"--{name.replace('_', '-')} must be {words}, got {value}")


def path_arg(text):
    """argparse type of a path: ~ expanded, which a shell leaves alone in --out=~/x."""
    return os.path.expanduser(text)


def seed_arg(text):
    """argparse type of --seed: a signed 64-bit integer (torch takes no other; numpy gets it modulo 2**32)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not -2**63 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be from -2**63 to 2**63 - 1, got {text}")
    return value


# ----------------------------------------------------------------------------- device, precision, distributed

def pick_device(log=print, name="auto"):
    """auto: CUDA (this process's GPU under torchrun), else MPS, else the CPU with a warning; or the named device.
    A CPU run on Linux keeps freed memory in the heap, whichever way it was chosen."""
    if name != "auto":
        device = torch.device(name)
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        log("warning: no GPU found, running on the CPU (expect it to be ~100x slower than on a modern GPU)")
        device = torch.device("cpu")
    if device.type == "cpu" and sys.platform.startswith("linux"):
        keep_freed_memory()
    return device


def cpu_model():
    """The CPU's model name as lscpu gives it (Linux: /proc/cpuinfo); elsewhere what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({cpu_model()}, {os.cpu_count()} cores)"


def cpu_busy(seconds=0.5):
    """Fraction of all CPU time other processes used over a short look (Linux; None elsewhere).

    A busy CPU ruins CPU timings far beyond its share: torch's 2-thread ops wait for a core held by someone
    else (a single busy process can cut a CPU figure many times over), and in bench.py's race it slows one lane
    more than the other; so the figures get flagged.
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


def warn_if_busy():
    busy = cpu_busy()
    if busy is not None and busy > 0.2:
        print(f"warning: other processes keep {100 * busy:.0f}% of the CPU busy; these figures are unreliable "
              f"(torch's threads then wait on each other; OMP_NUM_THREADS=1 suffers less)", file=sys.stderr)
    return busy


def sync(device):
    """Wait for queued device work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def keep_freed_memory():
    """glibc (Linux): keep freed blocks in the heap instead of handing them back to the OS. A training step frees and
    re-allocates activations of 100+ MB; by default glibc maps such blocks fresh each time and every step then pays
    a page fault per 4 KiB to touch them, which can cost a CPU step much of its time (RESULTS.md). pick_device calls
    it for CPU runs on Linux."""
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


def autocast(device, dtype, cache=True):
    """cache=False for a step captured as a CUDA graph, as torch's CUDA-graph notes ask of autocast there
    (the cache only saves recasting a weight used twice in one forward pass)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


class Uncaptured:
    """torch.cuda.CUDAGraph's part in GraphedStep on a CPU: each replay calls the function on the static
    inputs and writes its results into the same output tensors, so a CPU runs the graphed path (tests cover it)."""

    def __init__(self, fn, inputs):
        self.fn, self.inputs, self.outputs = fn, inputs, None

    def replay(self):
        new = self.fn(*self.inputs)
        if self.outputs is None:
            self.outputs = new
        else:
            for out, t in zip(self.outputs, new):
                out.copy_(t)


class GraphedStep:
    """fn(x, y) -> tensors, captured as one CUDA graph per input shape and replayed: a small network's step
    is hundreds of small kernels, which Python may launch more slowly than the GPU runs them; a replay
    launches them all at once. fn must not sync with the host and must read what changes between steps (the lr)
    from tensors it updates in place. The first `warmup` calls, and the first of each new shape or key,
    run eagerly (on a side stream, as torch's CUDA-graph notes ask): lazy initialisation and cuDNN's
    autotuning must not happen inside a capture. A change of key() (which parameters train) drops the graphs;
    until then each shape's graph (and its memory) is kept, one per image size under progressive resizing."""

    def __init__(self, fn, device, key=lambda: None, warmup=3):
        self.fn, self.cuda, self.key, self.warmup = fn, device.type == "cuda", key, warmup
        self.graphs, self.graphs_key, self.seen, self.captures = {}, None, set(), 0
        self.side = torch.cuda.Stream(device) if self.cuda else None

    def __call__(self, x, y):
        key = (self.key(), x.shape, x.dtype, y.shape, y.dtype)
        if self.warmup > 0 or key not in self.seen:
            self.warmup = max(0, self.warmup - 1)
            self.seen.add(key)
            return self.eager(x, y)
        if key[0] != self.graphs_key:
            self.graphs, self.graphs_key = {}, key[0]
        if key not in self.graphs:
            self.graphs[key] = self.capture(x.clone(), y.clone())
            self.captures += 1
        g = self.graphs[key]
        g.inputs[0].copy_(x)
        g.inputs[1].copy_(y)
        g.replay()
        return g.outputs

    def eager(self, x, y):
        if not self.cuda:
            return self.fn(x, y)
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            out = self.fn(x, y)
        torch.cuda.current_stream().wait_stream(self.side)
        return out

    def capture(self, x, y):
        if not self.cuda:
            return Uncaptured(self.fn, (x, y))
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            g.outputs = self.fn(x, y)
        g.inputs = (x, y)
        return g


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


def rank0_value(value):
    """Rank 0's `value` on every rank (a collective under torchrun; the value itself in a single process)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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


# ----------------------------------------------------------------------------- progress

def eta(started, done, left):
    """'  eta 1h02m' for `left` more units at the mean pace of the `done` since `started` (time.time()); '' at the end.
    For a log read without the bar (nohup, a file), where a long run's end is otherwise anyone's guess."""
    if not left or not done:
        return ""
    s = round((time.time() - started) / done * left)
    return f"  eta {s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"  eta {s // 60}m{s % 60:02d}s" if s >= 60 \
        else f"  eta {s}s"


PROGRESS_EVERY = 60.0  # seconds between the plain progress lines of an epoch written to a pipe or a log


def progress_style(no_progress, main_proc=True):
    """Progress's (bar, every): a tqdm bar on a terminal; into a pipe or a log, where a bar's redraws would pile up,
    a plain line every PROGRESS_EVERY seconds; neither under --no-progress, nor on a process but rank 0."""
    if no_progress or not main_proc:
        return False, 0.0
    return (True, 0.0) if sys.stdout.isatty() else (False, PROGRESS_EVERY)


class Progress:
    """One plain line per epoch and, while the epoch runs, a tqdm bar (bar: gone when the epoch's line comes: as the
    bar's suffix the line would be cut to the terminal's width) or a plain line every `every` seconds (0: none), so
    a long epoch in a log shows how far it got."""

    def __init__(self, total, epoch, epochs, bar, every=0.0):
        self.bar, self.total, self.done, self.every, self.postfix = None, total, 0, every, {}
        self.desc, self.last = f"epoch {epoch + 1}/{epochs}", time.time()
        if bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=self.desc, file=sys.stdout, leave=False, dynamic_ncols=True)

    def update(self, n, **postfix):
        self.done += n
        self.postfix.update(postfix)
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
        elif n and self.every and (now := time.time()) - self.last >= self.every:  # (n 0: new figures, no step)
            self.last = now
            print(f"  {self.desc}  step {self.done}/{self.total}"
                  + "".join(f"  {k} {v}" for k, v in self.postfix.items()), flush=True)

    def close(self, line):
        if self.bar is not None:
            self.bar.close()
        print(line, flush=True)
