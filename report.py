"""How runs went, read from their folders: the training curves (`visualize.py curves`) and the report page
(`visualize.py report`): report.md and a self-contained report.html of one or several runs, with their results,
settings, curves, per-class test accuracy and confusion matrices.

visualize.py runs both subcommands and imports this module only then: the page builds on visualize.py's figures and
on its opening of a checkpoint, so this module imports visualize.py, not the other way round.

Given one run, both write into its folder; given several, into figures/<their names joined by +> (runs_folder), so a
comparison of other runs never replaces this one's page, curves or confusion matrices, while drawing the same runs
again refreshes them in place. Into any other --out the names carry the runs' (set_tag: curves_a-1f2e3d.png,
report_a-1f2e3d+b-4c5d6e.md, confusion_a-1f2e3d.png), so pages of other runs there stay too. The page carries
runfiles.MARK (report.md's first line, report.html's generator tag, the PNGs' text chunk): a page or figure without it
is the user's, which both subcommands refuse to replace; only what one run's report draws into that run's own folder is
marked as the run's, which train.py --force replacing the run removes.
"""
import argparse
import base64
import csv
import datetime
import hashlib
import html
import json
import os

from evaluate import is_own_folder, per_class, run_tag, safe_name
from runfiles import check_no_folders_at, check_ours_to_replace, checkpoint_file, html_mark, md_mark, write_text
from runtime import pyplot
from visualize import open_source, pct, predict_test_set, save, save_confusion

CURVES_W, CURVES_H, LEGEND_ROW = 15, 4.4, 0.3  # inches; at visualize.DPI these give the pixel sizes the tests check
# train.py flags that say where a run went, not how it trained: left out of labels, comparisons and settings
SKIP_IN_LABEL = {"out", "data", "resume", "download", "no_progress", "force"}
MAX_RUNS = 20  # plot_curves gives each run its own tab20 colour
BY = "visualize.py report"  # what the page's mark names as its writer


# ----------------------------------------------------------------------------- run folders

def read_metrics(ap, run):
    """A run folder's per-epoch rows (metrics.jsonl, else metrics.csv); a folder without any is a one-line exit 2."""
    if not os.path.isdir(run):
        ap.error(f"{run}: {'a file, not a run folder' if os.path.exists(run) else 'no such run folder'}")
    run_config(ap, run)  # a foreign config.json too is refused here, before anything reads or writes
    found = [p for p in (os.path.join(run, n) for n in ("metrics.jsonl", "metrics.csv")) if os.path.exists(p)]
    if not found:
        ap.error(f"{run} has no metrics.jsonl or metrics.csv (not a train.py run folder, or no epoch finished)")
    path = found[0]  # metrics.jsonl where both are
    try:  # train.py writes them whole; a hand-edited or damaged one is the user's to mend, not a traceback
        with open(path) as f:
            rows = ([json.loads(line) for line in f if line.strip()] if path.endswith(".jsonl")
                    else [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)])
        if not all(isinstance(r, dict) and isinstance(r.get("epoch"), (int, float)) for r in rows):
            raise ValueError('a row that is not a JSON object with a numeric "epoch"')
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
        ap.error(f"{path} is not train.py's metrics ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:80]})")
    if not rows:
        ap.error(f"{run}: no epoch finished yet")
    return rows


def read_json(run, name):
    """A run folder's JSON file (config.json, summary.json), or None where it is missing or unreadable."""
    try:
        with open(os.path.join(run, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_config(ap, run, required=False):
    """A run folder's config.json: {} where there is none (required: a one-line exit 2, as for augment, which takes its
    data flags from it); one that is unreadable, not JSON, or not a JSON object with an "args" object of train.py's
    flags is a one-line exit 2 that says which."""
    path = os.path.join(run, "config.json")
    if not os.path.isfile(path):
        if required:
            ap.error(f"{run}: no train.py config.json (not a train.py run folder)")
        return {}
    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError as e:
        ap.error(f"{path} is unreadable ({e.strerror})")
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        ap.error(f"{path} is not JSON ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:80]}); damaged?")
    flags = cfg.get("args", None if required else {}) if isinstance(cfg, dict) else None  # absent: {} unless required
    if not isinstance(flags, dict):
        ap.error(f"{path} is not train.py's config (not a JSON object of its flags)")
    return cfg


def train_args(ap, run):
    """The train.py flags of a run folder's config.json, which must be there (augment takes its data flags from it)."""
    return run_config(ap, run, required=True)["args"]


def run_names(runs):
    """Folder names, with as many folders above them as tell the runs apart (they name the report's sections and
    confusion files); one folder given twice: numbered."""
    parts = [tuple(os.path.abspath(r).split(os.sep)) for r in runs]
    names = [os.path.join(*p[-1:]) for p in parts]
    for depth in range(2, max(map(len, parts)) + 1):
        if len(set(names)) == len(set(parts)):  # apart, but for a folder given twice
            break
        names = [os.path.join(*p[-depth:]) for p in parts]
    return names if len(set(names)) == len(names) else [f"{n} #{k + 1}" for k, n in enumerate(names)]


def cut(name, runs, key):
    """name, or past 100 characters its first 80, the number of runs and a hash of the bytes key, which keeps sets of
    runs whose names begin alike apart."""
    return name if len(name) <= 100 else f"{name[:80]}+{len(runs)}runs-{hashlib.sha1(key).hexdigest()[:8]}"


def runs_folder(runs):
    """figures/<the runs' names joined by +>: the default --out of curves and report given several runs, one folder per
    set of runs (a name too long for a folder is cut, and a hash of the runs' paths keeps it apart)."""
    return os.path.join("figures", cut("+".join(safe_name(n) for n in run_names(runs)), runs,
                                       b"\0".join(os.fsencode(os.path.abspath(r)) for r in runs)))


def natural_folder(runs, out):
    """Whether out is where the runs' curves and report go by default: one run's own folder, or runs_folder."""
    home = runs[0] if len(runs) == 1 else runs_folder(runs)
    return os.path.realpath(out) == os.path.realpath(home)


def set_tag(runs, out):
    """What the names of curves.png, report.md and report.html add for the runs drawn: nothing in their default
    folder (natural_folder), else each run's run_tag joined by + (cut, and a hash of them all added, past 100
    characters), so that the curves or page of other runs in one --out stay."""
    if natural_folder(runs, out):
        return ""
    tag = "+".join(run_tag(r)[1:] for r in runs)  # (natural_folder: out is no run's own folder if one run)
    return "_" + cut(tag, runs, tag.encode())


def own_run(runs, out):
    """Whether what is drawn of the runs into out is a run's own (marked so, and removed with it by train.py --force):
    only one run drawn into its own folder."""
    return len(runs) == 1 and is_own_folder(runs[0], out)


def differing_args(runs):
    """(each run's train.py flags from config.json, the names of the flags in which the runs differ); read_metrics
    has refused a config.json that is not train.py's."""
    cfgs = [(read_json(r, "config.json") or {}).get("args", {}) for r in runs]
    keys = sorted({k for c in cfgs for k in c} - SKIP_IN_LABEL)
    return cfgs, [k for k in keys if len({json.dumps(c.get(k)) for c in cfgs}) > 1]


def run_labels(runs):
    """Each run's name plus the training flags in which the runs differ: 'bs128 (batch_size=128)'."""
    names = run_names(runs)
    cfgs, diff = differing_args(runs)
    out = []
    for n, c in zip(names, cfgs):
        extra = ", ".join(f"{k}={c.get(k)}" for k in diff[:4])
        out.append(f"{n} ({extra})" if extra else n)
    return out


def eval_split(rows):
    return "val" if any("val_acc" in r for r in rows) else "test"


# ----------------------------------------------------------------------------- curves

def plot_curves(ap, runs, path, title, own):
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator, PercentFormatter
    plt = pyplot()
    labels = run_labels(runs)
    metrics = [read_metrics(ap, r) for r in runs]
    n_legend = len(runs) + 2
    ncol = min(n_legend, 3)
    legend_rows = -(-n_legend // ncol)
    height = CURVES_H + LEGEND_ROW * legend_rows
    fig, axes = plt.subplots(1, 3, figsize=(CURVES_W, height))
    colours = plt.get_cmap("tab20").colors[::2] + plt.get_cmap("tab20").colors[1::2]  # tab10's first, then lighter
    mark = lambda n: dict(marker="o", markersize=3) if n <= 30 else {}  # noqa: E731 (a dense series reads as a line)
    splits = set()
    for k, (rows, label) in enumerate(zip(metrics, labels)):
        col = colours[k]
        split = eval_split(rows)
        splits.add(split)
        ep = [r["epoch"] for r in rows]
        for ax, key in ((axes[0], "loss"), (axes[1], "acc")):
            ax.plot(ep, [r.get(f"train_{key}") for r in rows], color=col, ls="-", **mark(len(rows)))
            held = [r for r in rows if f"{split}_{key}" in r]  # --eval-every: not every epoch was evaluated
            ax.plot([r["epoch"] for r in held], [r[f"{split}_{key}"] for r in held], color=col, ls="--",
                    **mark(len(held)))  # evaluated only at the end: one point, which only a marker shows
        axes[2].plot(ep, [r.get("lr") for r in rows], color=col, **mark(len(rows)))
    split = "/".join(sorted(splits))
    for ax, what in zip(axes, ("loss", "accuracy", "learning rate (at the end of the epoch)")):
        ax.set_xlabel("epoch")
        ax.set_title(what)
        ax.grid(alpha=0.3)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].yaxis.set_major_formatter(PercentFormatter(1.0))  # as many decimals as the range needs: distinct ticks
    handles = [Line2D([], [], color=colours[k], lw=3) for k in range(len(runs))]
    handles += [Line2D([], [], color="k", ls="-"), Line2D([], [], color="k", ls="--")]
    fig.legend(handles, labels + ["train", split], loc="lower center", ncol=ncol, fontsize=10, frameon=False)
    if title:
        fig.suptitle(title, fontsize=14)
    bottom = (LEGEND_ROW * legend_rows + 0.65) / height
    fig.subplots_adjust(left=0.05, right=0.985, top=1 - (0.75 if title else 0.45) / height, bottom=bottom,
                        wspace=0.22)
    return save(fig, path, own)


def check_runs(ap, runs, out, files, by):
    """Refuse bad run folders, more runs than plot_curves has colours, a folder in the place of a file to write (it
    would fail only after the work) and a file there that no script here wrote (the user's, which it would replace),
    before anything is drawn or written."""
    if len(runs) > MAX_RUNS:
        ap.error(f"at most {MAX_RUNS} runs at once (one colour each in the curves), got {len(runs)}")
    for r in runs:
        read_metrics(ap, r)
    paths = [os.path.join(out, f) for f in files]
    check_no_folders_at(ap, paths)
    check_ours_to_replace(ap, paths, by)


def confusion_files(runs, out):
    """The file names of the runs' confusion matrices in the report: confusion_<run_names>.png in their default
    folder, else confusion<run_tag>.png."""
    if natural_folder(runs, out):
        return [f"confusion_{safe_name(n)}.png" for n in run_names(runs)]
    return [f"confusion{run_tag(r)}.png" for r in runs]


def cmd_curves(ap, args):
    name = f"curves{set_tag(args.runs, args.out)}.png"
    check_runs(ap, args.runs, args.out, [name], "visualize.py curves")
    title = run_labels(args.runs)[0] if len(args.runs) == 1 else f"{len(args.runs)} runs"
    return [plot_curves(ap, args.runs, os.path.join(args.out, name), title,  # visualize.main checked --out
                        own_run(args.runs, args.out))]


# ----------------------------------------------------------------------------- results

def fmt_time(s):
    if s is None:
        return "–"
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def run_results(ap, run):
    """Numbers of one run: from summary.json, or (an unfinished run) from metrics.jsonl and config.json."""
    rows = read_metrics(ap, run)
    cfg = run_config(ap, run)
    summary = read_json(run, "summary.json")
    split = (summary or {}).get("select_split") or eval_split(rows)
    best_row = max(rows, key=lambda r: r.get(f"{split}_acc", -1))
    s = summary or {}
    args = cfg.get("args", {})
    return {
        "arch": s.get("arch") or args.get("arch"), "split": split,
        "epochs": f"{rows[-1]['epoch']}/{s.get('epochs') or args.get('epochs')}",
        "best_epoch": s.get("best_epoch") or best_row["epoch"],
        "best_select": s.get(f"best_{split}_acc", best_row.get(f"{split}_acc")),
        "best_test": s.get("best_test_acc"), "final_test": s.get("final_test_acc", rows[-1].get("test_acc")),
        "time": s.get("total_time_s") or sum(r.get("epoch_time", 0) + r.get("eval_time", 0) for r in rows),
        "epoch_time": s.get("epoch_time_s") or rows[-1].get("epoch_time"),
        "images_per_s": s.get("images_per_s") or rows[-1].get("images_per_s"),
        "params": s.get("params") or cfg.get("params"), "flops": s.get("flops") or cfg.get("flops"),
        "device": s.get("device") or cfg.get("device"), "finished": summary is not None,
    }


RESULT_COLUMNS = ["run", "arch", "epochs", "picked on", "best epoch", "best acc (picked on)",
                  "test acc (best)", "test acc (final)", "time", "s/epoch", "train img/s", "params", "MFLOPs"]


def result_row(name, r):
    return [name + ("" if r["finished"] else " (unfinished)"), r["arch"], r["epochs"], r["split"], str(r["best_epoch"]),
            pct(r["best_select"]), pct(r["best_test"]), pct(r["final_test"]), fmt_time(r["time"]),
            "–" if r["epoch_time"] is None else f"{r['epoch_time']:.1f}",
            "–" if r["images_per_s"] is None else f"{r['images_per_s']:,.0f}",
            "–" if r["params"] is None else f"{r['params']:,}",
            "–" if r["flops"] is None else f"{r['flops'] / 1e6:,.1f}"]


KEY_ARGS = ["arch", "epochs", "batch_size", "optimizer", "lr", "schedule", "wd"]


def config_rows(cfg):
    """The settings worth reading: the key ones, then every other flag the run set away from train.py's default
    (config.json's "changed_args"; a run folder from before train.py wrote that list shows the key ones only)."""
    args = cfg.get("args", {})
    keys = KEY_ARGS + [k for k in cfg.get("changed_args", []) if k not in KEY_ARGS and k not in SKIP_IN_LABEL]
    rows = [[f"--{k.replace('_', '-')}", json.dumps(args[k]) if not isinstance(args[k], str) else args[k]]
            for k in keys if k in args]
    d = cfg.get("data", {})
    if all(isinstance(d.get(k), int) for k in ("n_train", "n_val", "n_test")):
        rows.append(["images", f"{d['n_train']:,} train, {d['n_val']:,} val, {d['n_test']:,} test"])
    for k in ("device", "world_size", "amp", "torch", "git_commit", "started"):
        if cfg.get(k) is not None:
            rows.append([k.replace("_", " "), str(cfg[k])])
    return rows


# ----------------------------------------------------------------------------- the page

class Doc:
    """A small document written both as Markdown and as self-contained HTML (images base64-embedded)."""

    def __init__(self, own):
        self.blocks, self.own = [], own  # own: the page of one run in its own folder (runfiles.mark_text)

    def h(self, level, text):
        self.blocks.append(("h", level, text))

    def p(self, text):
        self.blocks.append(("p", text))

    def table(self, head, rows, numeric=()):
        self.blocks.append(("table", head, rows, set(numeric)))

    def img(self, path, alt):
        self.blocks.append(("img", path, alt))

    def markdown(self, folder):
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "table":
                _, head, rows, num = b
                cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
                out.append("\n".join(["| " + " | ".join(map(cell, head)) + " |",
                                      "|" + "|".join("--:" if i in num else "---" for i in range(len(head))) + "|"]
                                     + ["| " + " | ".join(map(cell, r)) + " |" for r in rows]))
            else:
                out.append(f"![{b[2]}]({os.path.relpath(b[1], folder)})")
        return "\n\n".join(out) + "\n"

    def html(self, title, name):
        """The page as HTML, titled `title`, its mark naming the file `name` it is written to."""
        e = html.escape
        parts = []
        for b in self.blocks:
            if b[0] == "h":
                parts.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                parts.append(f"<p>{e(b[1])}</p>")
            elif b[0] == "table":
                _, head, rows, num = b
                cls = lambda i: ' class="num"' if i in num else ""  # noqa: E731
                th = "".join(f"<th{cls(i)}>{e(str(h))}</th>" for i, h in enumerate(head))
                trs = "".join("<tr>" + "".join(f"<td{cls(i)}>{e(str(c))}</td>" for i, c in enumerate(r)) + "</tr>\n"
                              for r in rows)
                parts.append(f'<div class="scroll"><table>\n<thead><tr>{th}</tr></thead>\n<tbody>\n{trs}'
                             "</tbody></table></div>")
            else:
                with open(b[1], "rb") as f:
                    b64 = base64.b64encode(f.read()).decode()
                parts.append(f'<figure><img src="data:image/png;base64,{b64}" alt="{e(b[2])}">'
                             f"<figcaption>{e(b[2])}</figcaption></figure>")
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{html_mark(BY, self.own, name)}
<title>{e(title)}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; max-width: 1180px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }}
h1 {{ font-size: 1.7em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }}
h2 {{ font-size: 1.35em; margin-top: 1.8em; border-bottom: 1px solid #eee; }}
h3 {{ font-size: 1.1em; margin-top: 1.4em; }}
.scroll {{ overflow-x: auto; }}
table {{ border-collapse: collapse; margin: .8em 0; font-size: .9em; }}
th, td {{ border: 1px solid #ccc; padding: .3em .6em; text-align: left; }}
td {{ white-space: nowrap; }}
th {{ background: #f3f3f3; vertical-align: bottom; }}
tr:nth-child(even) td {{ background: #fafafa; }}
.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
figure {{ margin: 1em 0; }}
img {{ max-width: 100%; height: auto; border: 1px solid #eee; }}
figcaption {{ color: #666; font-size: .85em; }}
</style>
</head>
<body>
{chr(10).join(parts)}
</body>
</html>
"""


def cmd_report(ap, args):
    runs, out, names = args.runs, args.out, run_names(args.runs)  # visualize.main resolved and checked --out
    tag, own, cm_files = set_tag(runs, out), own_run(runs, out), confusion_files(runs, out)
    check_runs(ap, runs, out, [f"curves{tag}.png", f"report{tag}.md", f"report{tag}.html"] + cm_files, BY)
    md, page = os.path.join(out, f"report{tag}.md"), os.path.join(out, f"report{tag}.html")
    results = [run_results(ap, r) for r in runs]
    srcs = [open_source(ap, argparse.Namespace(source=run, arch=None, data=args.data, download=args.download, out=out,
                                               seed=0))
            for run in runs]  # and a run without a checkpoint (its per-class part needs one)
    predicted = [predict_test_set(ap, src)[1:] for src in srcs]  # and missing data: all before anything is written
    os.makedirs(out, exist_ok=True)
    title = f"CIFAR-10 training report: {', '.join(names)}"
    doc = Doc(own)
    doc.h(1, title)
    doc.p(f"Generated by visualize.py on {datetime.datetime.now():%Y-%m-%d %H:%M} from "
          + ", ".join(os.path.abspath(r) for r in runs) + ". The best epoch is picked on the split in 'picked on' "
          "(val when the run held one out; test flatters the result); 'test acc (best)' is that epoch's checkpoint "
          "on the test set, 'test acc (final)' the last epoch's weights.")
    doc.h(2, "Results" if len(runs) == 1 else "Comparison")
    doc.table(RESULT_COLUMNS, [result_row(n, r) for n, r in zip(names, results)], numeric=range(4, 13))
    cfgs, keys = differing_args(runs)
    if keys:
        doc.p("The runs differ in:")
        doc.table(["run"] + [f"--{k.replace('_', '-')}" for k in keys],
                  [[n] + [str(c.get(k, "–")) for k in keys] for n, c in zip(names, cfgs)])
    doc.h(2, "Training curves")
    doc.img(plot_curves(ap, runs, os.path.join(out, f"curves{tag}.png"), None, own),
            "loss, accuracy and learning rate against epoch (solid: train, dashed: " + "/".join(
                sorted({r["split"] for r in results})) + ")")
    per_class_cols, cms, tested = [], [], []
    for run, name, src, (y, probs, acc), cm_file in zip(runs, names, srcs, predicted, cm_files):
        pred = probs.argmax(1)
        per_class_cols.append(per_class(pred, y, len(src.classes)))
        tested.append((name, acc, len(y), os.path.basename(checkpoint_file(run))))
        cms.append(save_confusion(pred, y, src.classes, acc, name, os.path.join(out, cm_file), own))
        classes = src.classes
    doc.h(2, "Per-class test accuracy")
    doc.p("Recomputed from " + "; ".join(f"{name}'s {ck} on {k:,} test images ({pct(a)})"
                                         for name, a, k, ck in tested) + ".")
    rows = [[c] + ["n/a" if col[i] is None else f"{100 * col[i]:.1f}%" for col in per_class_cols]
            for i, c in enumerate(classes)]
    rows.append(["all"] + [pct(a) for _, a, _, _ in tested])
    doc.table(["class"] + names, rows, numeric=range(1, len(names) + 1))
    for run, name, cm in zip(runs, names, cms):
        doc.h(2, f"Run {name}")
        cfg = read_json(run, "config.json") or {}
        doc.h(3, "Configuration")
        doc.table(["setting", "value"], config_rows(cfg))
        doc.h(3, "Confusion matrix")
        doc.img(cm, f"{name}: confusion matrix on the test set (rows: true class, columns: predicted)")
    write_text(md, md_mark(BY, own, os.path.basename(md)) + doc.markdown(out))
    print(f"wrote {md}")
    write_text(page, doc.html(title, os.path.basename(page)))
    print(f"wrote {page}")
    return [md, page]
