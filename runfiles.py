"""The run folder and the files in it, which every script shares: atomic writes, JSON, checkpoints, the folder a run
claims (and what --force clears of the run it replaces), the metrics log, and the checks that an output path can be
written before the work that fills it.

Nothing here knows about training: train.py tells the story of a run, this file holds what it writes on.
"""
import atexit
import contextlib
import csv
import datetime
import errno
import glob
import io
import itertools
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import zipfile

import numpy as np
import torch
import torch.distributed as dist

from runtime import HERE, rank0_value


def atomic_write(path, write):
    """Write via a temp file + fsync + os.replace, so a kill never leaves a half-written file."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a failed write leaves nothing behind, not even its temp file
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


def json_text(obj, **kw):
    """json.dumps with every non-finite float as null: json would write NaN or Infinity, which no JSON reader takes
    (a diverged run's loss)."""
    def clean(v):
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return [clean(x) for x in v] if isinstance(v, (list, tuple)) else v
    return json.dumps(clean(obj), allow_nan=False, **kw)


def check_output_folder(ap, flag, folder, not_a_run=False):
    """Refuse (exit 2) a folder the script writes into only at the end of its work when it is a file or cannot be
    written (read-only, no permission): found now, before the work, not in a traceback after it. A folder still to be
    made is judged by the nearest one above it that exists. not_a_run: refuse a train.py run folder too (for a script
    whose files, such as summary.json, would replace the run's)."""
    if not_a_run:
        taken = [n for n in run_files_in(folder) if n != "summary.json"]
        if taken:
            ap.error(f"{flag} {folder} holds a train.py run ({taken[0]}); name another folder")
    above = os.path.abspath(folder)
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        ap.error(f"{flag} {folder}: {above} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=above).close()
    except OSError as e:
        ap.error(f"{flag} {folder}: cannot write in {above} ({e.strerror})")


def check_no_folders_at(ap, paths):
    """Refuse (exit 2) a folder standing where one of these files is to be written: --force cannot replace it, and the
    save would fail only after the work."""
    for path in paths:
        if os.path.isdir(path):
            ap.error(f"{path} is a folder, not a file; move it, or use another --out")


def check_output_file(ap, flag, path, overwrite=True):
    """check_output_folder for a file the script writes at the end of its work: its folder must exist already, the
    path must not be a folder, and (overwrite=False) not an existing file: a mistyped path must not eat a checkpoint."""
    if not os.path.basename(path):  # "" or a path ending in a separator: no file name, found only at the save
        ap.error(f"{flag} {path!r} names no file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        ap.error(f"{flag} {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        ap.error(f"{flag} {path} is a folder; name a file")
    if not overwrite and os.path.exists(path):
        ap.error(f"{flag} {path} exists; use --force to overwrite it, or another path")
    check_output_folder(ap, flag, folder)


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


def checkpoint_file(path):
    """The checkpoint a path names: a run folder's best.pt, else its last.pt; any other path as it is."""
    if os.path.isdir(path):
        for name in ("best.pt", "last.pt"):
            if os.path.exists(os.path.join(path, name)):
                return os.path.join(path, name)
    return path


def run_folder(path):
    """The run folder of a checkpoint argument: the folder itself, or the folder a .pt file sits in."""
    return path if os.path.isdir(path) else (os.path.dirname(path) or ".")


def load_checkpoint(path):
    """Load a checkpoint safely (weights_only=True: a crafted pickle cannot run code).
    Raises ValueError with a one-line reason for a missing or unreadable file."""
    path = checkpoint_file(path)
    if os.path.isdir(path):
        raise ValueError(f"no best.pt or last.pt in {path}")
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a checkpoint, or a pickle that wants to run code
        why = (str(e).splitlines() or [type(e).__name__])[0][:200]  # an empty file's EOFError has no message
        if isinstance(e, OSError) and e.errno != errno.EINVAL:  # unreadable: the OS says why
            why = e.strerror or why  # (torch reads a cut-off zip as EINVAL: the zip check below names that)
        elif not zipfile.is_zipfile(path):  # torch.save writes a zip archive (a text file is no unsafe pickle)
            why = "not a whole torch.save archive (cut off, empty, or another kind of file than a train.py .pt)"
        elif "Weights only load failed" in why:  # torch's advice (weights_only=False) is the unsafe way
            why = "it holds objects other than tensors and plain values; refused, as loading them could run code"
        raise ValueError(f"cannot read checkpoint {path}: {why}") from None
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


# what a run writes in its folder (and TensorBoard's tb/): any of them there means the folder holds a run
RUN_FILES = ("config.json", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt", "summary.json")


# what evaluate.py, visualize.py and report.py draw from a run into its folder: a run replaced with --force takes
# those of them whose mark says they were drawn from the run of that folder (mark_is_own); a user's file with such a
# name stays, and so does a figure of another run drawn into the folder (errors_<other run>-<hash>.png), or anything
# drawn into an --out before a run was trained there
DRAWN_FILES = ("confusion_matrix.png", "confusion_matrix_*.png", "errors.png", "errors_*.png", "errors-confusion.png",
               "errors-confusion_*.png", "per_class.png", "per_class_*.png", "augment.png", "curves.png", "report.md",
               "report.html", "features_*_*.png", "filters_*.png", "cam_*_*.png", "confusion_*.png")

# the mark of this toolkit in every figure and report it draws, so that --force and a redrawn report replace only
# files of its own: a PNG text chunk MARK_KEY (matplotlib writes its own "Software" key into every PNG, a user's too),
# report.md's first line, report.html's <meta name="generator">. Its text is "MARK <script> (<file name>)", or
# "MARK <script> (own run: <file name>)" when the file was drawn from the run whose folder it was written into: only
# those go with the run (clear_run), and only under the name they were drawn as, not a copy a user kept under another.
MARK, MARK_KEY = "cifar10-toolkit", "Generator"


def mark_text(by, own, name):
    """The mark of the file `name` drawn by `by`; own: drawn from the run whose folder it is written into."""
    return f"{MARK} {by} ({'own run: ' if own else ''}{name})"


def md_mark(by, own, name):
    """report.md's first line: an HTML comment, which Markdown does not show."""
    why = "redraw the page, and train.py --force remove it with the run" if own else "redraw the page"
    return f"<!-- {mark_text(by, own, name)}; this mark lets it {why} -->\n"


def html_mark(by, own, name):
    return f'<meta name="generator" content="{mark_text(by, own, name)}">'


def save_figure(fig, path, dpi, by, own):
    """fig as a PNG at path, written whole or not at all (atomic_write), with mark_text in its text chunk MARK_KEY."""
    mark = mark_text(by, own, os.path.basename(path))
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, metadata={MARK_KEY: mark}))


def png_text(f, key):
    """The value of the PNG's tEXt chunk `key` (each chunk: 4-byte big-endian length, type, data, CRC; tEXt's data:
    keyword, NUL, latin-1 text), or None; read chunk by chunk up to the image data, which is skipped, not read."""
    if f.read(8) != b"\x89PNG\r\n\x1a\n":
        return None
    while True:
        head = f.read(8)
        if len(head) < 8 or head[4:] == b"IEND":
            return None
        size, kind = int.from_bytes(head[:4], "big"), head[4:]
        if kind != b"tEXt":
            f.seek(size + 4, os.SEEK_CUR)  # the data and its CRC
            continue
        keyword, _, value = f.read(size).partition(b"\0")
        f.seek(4, os.SEEK_CUR)
        if keyword == key.encode("latin-1"):
            return value.decode("latin-1")


def read_mark(path):
    """The text of the mark (mark_text) in the file at path where these tools put it (save_figure's PNG chunk,
    md_mark's first line, html_mark's generator tag), or None: a user's own file, a plain matplotlib PNG, one drawn
    before the mark existed, or one that cannot be read."""
    ext = os.path.splitext(path)[1]
    try:
        with open(path, "rb") as f:
            if ext == ".png":
                text = png_text(f, MARK_KEY)
            elif ext == ".md":
                found = re.match(r"<!-- (.*?)(?:; | -->)", f.readline().decode("utf-8", "replace"))
                text = found and found.group(1)
            elif ext == ".html":  # the generator tag is in <head>, before the embedded images
                found = re.search(r'<meta name="generator" content="([^"]*)">', f.read(1 << 16).decode("utf-8",
                                                                                                        "replace"))
                text = found and found.group(1)
            else:
                return None
    except OSError:
        return None
    return text if text and text.startswith(MARK + " ") else None


def drawn_by_us(path):
    """Whether the file at path carries any mark of these tools (read_mark)."""
    return read_mark(path) is not None


def mark_is_own(path):
    """Whether the file at path carries the mark of a file drawn from the run whose folder it lies in, under its
    name (or the mark of such a file drawn before marks named their file, when the name could not be told)."""
    return (read_mark(path) or "").endswith((f" (own run: {os.path.basename(path)})", " (own run)"))


def check_ours_to_replace(ap, paths, by):
    """Refuse (exit 2) a file at one of these paths that `by` did not write (a report.md of the user's): the save
    would replace it."""
    for path in paths:
        if os.path.isfile(path) and not drawn_by_us(path):
            ap.error(f"{path} has no mark of {by} (a file of yours, or one from before the mark); move it, or give "
                     "another --out")


def run_files_in(folder):
    """The run files (RUN_FILES) that folder holds."""
    return [n for n in RUN_FILES if os.path.exists(os.path.join(folder, n))]


def prepare_run_dir(args, ap):
    """Pick and check the run folder; refuse (exit 2) rather than overwrite another run."""
    if args.resume:
        return args.resume
    if not args.out:  # rank 0 makes it; under torchrun every rank takes rank 0's folder (clocks differ) or error
        folder = error = None
        if not dist.is_initialized() or dist.get_rank() == 0:
            try:
                folder = claim_run_dir(args.arch)
            except OSError as e:
                error = f"cannot write to run folder runs/: {e.strerror}"
        folder, error = rank0_value((folder, error))
        if error:
            ap.error(error)
        return folder
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        ap.error(f"--out {out} exists and is not a folder")
    taken = run_files_in(out)
    if taken and not args.force:
        again = (f"use --resume {shlex.quote(out)} to continue it, --force to overwrite it" if "last.pt" in taken else
                 "it has no checkpoint (last.pt) to resume: use --force to start it again")
        ap.error(f"{out} already holds a run ({taken[0]}); {again}, or another --out")
    return out


def claim_run_dir(arch, parent="runs"):
    """A new folder <parent>/<arch>-<timestamp>, made now, so that runs started in the same second get one each (-2,
    -3, ... after the first); removed at exit if the run wrote nothing to it (refused before it began)."""
    base = os.path.join(parent, f"{arch}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    os.makedirs(parent, exist_ok=True)
    for k in itertools.count(1):
        out = base if k == 1 else f"{base}-{k}"
        try:
            os.mkdir(out)
        except FileExistsError:
            continue
        atexit.register(remove_if_empty, out)
        return out


def clear_run(folder):
    """The files of a run that a new one replaces (--force), removed as the new one starts writing, so that no summary,
    checkpoint, TensorBoard event or figure of the old run sits beside it. Of the figures and reports, only those the
    tools drew from this folder's run (DRAWN_FILES whose mark says own: mark_is_own) go; other files in the folder are
    left as they are: a user's own report.md or an unmarked errors_x.png, a figure of another run drawn into this
    folder (errors_<other run>-<hash>.png), a copy kept under another name, and figures in a folder that held no run.
    Returns the names of the figures and reports removed."""
    replaced = bool(run_files_in(folder))
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))
    shutil.rmtree(os.path.join(folder, "tb"), ignore_errors=True)
    remove_stale_temps(folder)
    found = {p for pattern in DRAWN_FILES for p in glob.glob(os.path.join(glob.escape(folder), pattern))}
    drawn = sorted(os.path.basename(p) for p in found if mark_is_own(p)) if replaced else []
    for name in drawn:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))
    return drawn


def remove_if_empty(folder):
    with contextlib.suppress(OSError):
        os.rmdir(folder)
        os.rmdir(os.path.dirname(folder))  # its parent (runs/) too, if nothing else is in it


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
        write_text(os.path.join(self.out, "metrics.jsonl"), "".join(json_text(r) + "\n" for r in self.rows))
        # the columns in the order of the fullest row (an evaluated epoch's), so an epoch left unevaluated
        # (--eval-every) moves no column
        keys = list(dict.fromkeys(k for r in sorted(self.rows, key=len, reverse=True) for k in r))
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
