"""The recipes behind `python train.py --recipe NAME`: every course report's setting as its report describes
it (../shared/seeds), and our own. A recipe makes its values train.py's defaults; flags given on the command
line still win. What each recipe gave us, with commands, commits and machines: RESULTS.md."""
import sys
import textwrap

from runtime import OneLineParser

# Keys are train.py's argument names, except source (where the setting comes from), report (the figure the
# report published) and assumes (where the report is silent or its run differs from ours).
EVERY_REPORT = ("bf16 autocast (the reports trained in fp32: --amp off for that); Kaiming-normal conv init (PyTorch's "
                "default init where a report's code built its own layers); inputs normalised by the training images' "
                "own channel statistics; random crop with 4-pixel zero padding and a coin-flip mirror")
PER_ITERATION = "; the schedule stepped every iteration (the report's stepped once an epoch)"
RECIPES = {
    "report000-resnet50": dict(
        source="000: ResNet-50, SGD 0.1 momentum 0.9 wd 5e-4, cosine, batch 256, crop+flip, 200 epochs",
        report="95.33% (official data, best epoch on test)", assumes=EVERY_REPORT + PER_ITERATION,
        arch="resnet50", epochs=200, batch_size=256, lr=0.1, optimizer="sgd", wd=5e-4, schedule="cosine"),
    "report001-resnet34": dict(
        source="001: ResNet-34, SGD 5e-3 momentum 0.9 no wd, cosine, batch 128, crop+flip+jitter 0.4, 500 epochs",
        report="93.65% (official data, best epoch on test)", assumes=EVERY_REPORT + PER_ITERATION,
        arch="resnet34", epochs=500, batch_size=128, lr=5e-3, optimizer="sgd", wd=0.0, schedule="cosine", jitter=0.4),
    "report001-resnet34-mix": dict(
        source="001: the report001-resnet34 setting plus CutMix or MixUp (random choice per batch)",
        report="96.47% (official data, best epoch on test)", assumes=EVERY_REPORT + PER_ITERATION,
        arch="resnet34", epochs=500, batch_size=128, lr=5e-3, optimizer="sgd", wd=0.0, schedule="cosine", jitter=0.4,
        mix="both"),
    "report002-resnet9": dict(
        source="002: ResNet-9, SGD 5e-3 momentum 0.9 wd 5e-4 x batch (0.032), cosine, batch 64, crop+flip, 24 epochs",
        report="88% (official data)",
        assumes=EVERY_REPORT + "; the cosine schedule stepped every iteration (the report does not show its "
                               "scheduler); data statistics where the report normalised with mean and std 0.5",
        arch="resnet9", epochs=24, batch_size=64, lr=5e-3, optimizer="sgd", wd=5e-4 * 64, schedule="cosine"),
    "report003-rescnn9": dict(
        source="003: 9-block residual CNN, Adam 1e-4, cosine, 180 epochs (its table)",
        report="90.29% (official data, best epoch on test)",
        assumes=EVERY_REPORT + "; batch 128 and that augmentation (the report states neither); the cosine "
                               "schedule stepped every iteration",
        arch="rescnn9", epochs=180, batch_size=128, lr=1e-4, optimizer="adam", wd=0.0, schedule="cosine"),
    "report004-dainet7": dict(
        source="004: DaiNet7, Adam 1e-3 betas (0.9, 0.99) wd 5e-4, lr x0.5/0.3/0.1/0.01/0.001 from epochs "
               "50/100/150/200/230, batch 128, crop+flip, 250 epochs",
        report="91.91% (official data, best epoch on test)",
        assumes=EVERY_REPORT + "; data statistics where the report normalised with fixed CIFAR-10 means and stds",
        arch="dainet7", epochs=250, batch_size=128, lr=1e-3, optimizer="adam", betas=[0.9, 0.99], wd=5e-4,
        schedule="step", milestones=[50, 100, 150, 200, 230], gamma=[0.5, 0.3, 0.1, 0.01, 0.001]),
    "report004-resnet50": dict(
        source="004: ResNet-50 (the report gives no setting for it: 'with some of my parameters')",
        report="92.50% (official data, best epoch on test)",
        assumes="the whole setting: DaiNet7's (Adam 1e-3, step decay, batch 128, crop+flip, 250 epochs) is our "
                "guess; " + EVERY_REPORT,
        arch="resnet50", epochs=250, batch_size=128, lr=1e-3, optimizer="adam", betas=[0.9, 0.99], wd=5e-4,
        schedule="step", milestones=[50, 100, 150, 200, 230], gamma=[0.5, 0.3, 0.1, 0.01, 0.001]),
    # ---- ours
    "resnet18-fast": dict(
        source="ours: ResNet-18 in 40 epochs, batch 512, Nesterov SGD 0.2, 2 warm-up epochs, cosine, label "
               "smoothing 0.1, weight EMA 0.999",
        arch="resnet18", epochs=40, batch_size=512, lr=0.2, nesterov=True, label_smoothing=0.1, warmup_epochs=2,
        channels_last=True, ema=0.999),
    "fast": dict(
        source="ours: fastnet (airbench-style), 7 epochs at batch 500, Muon for the filters, Nesterov SGD for "
               "the rest, linear decay, label smoothing 0.2, lookahead 0.95, alternating flip + 2-pixel translate, "
               "flip+translate TTA (the mirror for the least sure 30% of the test images, the shifted views for the "
               "least sure 15%), the test set read once, after the last epoch",
        arch="fastnet", epochs=7, batch_size=500, optimizer="muon", lr=0.12, momentum=0.6, aux_lr=0.005125,
        aux_momentum=0.85, bias_lr_scale=5170, wd=0.195, schedule="linear", label_smoothing=0.2, crop_pad=2,
        pad_mode="reflect", alt_flip=True, lookahead=0.95, channels_last=True, tta="translate", tta_frac=0.15,
        tta_mirror_frac=0.3, eval_every=0),
}
RECIPES["fast-long"] = dict(RECIPES["fast"], epochs=21, eval_every=1, tta_frac=1.0, tta_mirror_frac=1.0,
                            source="ours: the fast recipe for 21 epochs, the test set read after every epoch, "
                                   "all six TTA views for every test image")
RECIPES["fast-cpu"] = dict(RECIPES["fast"], epochs=9, batch_size=400, lr=0.1073, aux_lr=0.0041, select_by="loss",
                           select_frac=0.58, image_sizes=[24, 32],
                           source="ours: the fast recipe where a step's cost grows with its images (a CPU): 9 epochs "
                                  "at batch 400, the first on every image at 24x24 px, each later one on the 58% of "
                                  "each batch with the highest loss when last trained on")
NOT_FLAGS = ("source", "report", "assumes")  # recipe keys that are not train.py arguments


def list_recipes():
    """Every recipe with its source, the report's figure, what it assumes and its flags (--list-recipes)."""
    lines = []
    for name, r in RECIPES.items():
        flags = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {' '.join(map(str, v))}"
                                                        if isinstance(v, list) else f" {v}")
                         for k, v in r.items() if k not in NOT_FLAGS)
        fields = [("from", r["source"]), ("report", r.get("report", "(ours: no report figure)")),
                  *([("assumes", r["assumes"])] if "assumes" in r else []), ("flags", flags)]
        lines += [name] + [textwrap.fill(text, 116, initial_indent=f"    {key:8s}", subsequent_indent=" " * 12,
                                         break_on_hyphens=False)
                           for key, text in fields]
    return "\n".join(lines + ["what these recipes gave us, with commands, commits and machines: RESULTS.md"])


def written_out(ap, argv):
    """argv with each abbreviated long option (--epo 3) written out in full where ap takes abbreviations and it names
    one of ap's options only; others stay, for ap to refuse. Done here: a parser of the two options alone would read
    --l (--lr? --lookahead?) as --list-recipes."""
    if not ap.allow_abbrev:
        return argv
    names = {s for a in ap._actions for s in a.option_strings if s.startswith("--")}
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":  # what follows is no option
            return out + argv[i:]
        flag, eq, value = arg.partition("=")
        hits = [n for n in names if n.startswith(flag)] if flag.startswith("--") and flag not in names else []
        out.append(hits[0] + eq + value if len(hits) == 1 else arg)
    return out


def parse_args(ap, argv=None):
    """Parse train.py's command line; --recipe NAME first makes the recipe's values the defaults, so explicit flags
    win and --help shows the recipe's. Any parser that takes --recipe and --list-recipes may use it (lr_finder.py
    does): it takes the recipe's values of the flags it has and leaves the rest to the train.py command that names
    the recipe."""
    argv = sys.argv[1:] if argv is None else list(argv)
    first = OneLineParser(prog=ap.prog, add_help=False, allow_abbrev=False)  # these two alone, before --help prints
    first.add_argument("--recipe")  # any default; abbreviations are ap's, written out first (written_out)
    first.add_argument("--list-recipes", action="store_true")
    pre = first.parse_known_args(written_out(ap, argv))[0]
    if pre.list_recipes:
        print(list_recipes())
        sys.exit(0)
    if pre.recipe:
        if pre.recipe not in RECIPES:
            ap.error(f"unknown --recipe {pre.recipe!r}; choose from: {', '.join(RECIPES)} (--list-recipes)")
        ours = vars(ap.parse_known_args([])[0])
        ap.set_defaults(**{k: v for k, v in RECIPES[pre.recipe].items() if k not in NOT_FLAGS and k in ours})
    return ap.parse_args(argv)
