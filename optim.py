"""Optimisers and learning-rate schedules of train.py: the optimizer a run's flags ask for (SGD, Adam, AdamW,
or Muon for conv filters), one per-iteration schedule for every lr shape, the EMA warm-up and lookahead, and the
training step that drives them all (train.py runs it, bench.py times it).
Written here only what torch lacks (Muon for 4-D filters, lookahead, a warming EMA decay)."""
import math
import warnings

import torch
import torch.nn as nn

from runtime import GraphedStep, autocast


# ----------------------------------------------------------------------------- Muon

def orthogonalise(g, steps=3):
    """The nearest semi-orthogonal matrix to g (U V^T of its SVD), approximately, by a quintic Newton-Schulz
    iteration in bf16 (Muon's, Jordan et al. 2024; 3 steps as in airbench94_muon). Each step maps x to q(m) x, q a
    polynomial of the Gram matrix m = x x^T, so every iterate is a product of such polynomials times the first x:
    the steps run on the small Gram matrix (out x out) alone and x is multiplied once at the end: 2 products of x's
    size where the plain iteration takes 2 a step, for 3 (steps - 1) more products of the small one: the cheaper once
    x is 1.5 times as wide as tall, used from twice (conv banks: out x in*k*k)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    x = x / (x.norm() + 1e-7)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    if x.size(1) < 2 * x.size(0) or steps < 1:  # near square, the Gram matrix about x's size: the plain iteration
        for _ in range(steps):
            m = x @ x.T
            x = a * x + (b * m + c * m @ m) @ x
    else:
        m = x @ x.T
        eye = torch.eye(len(m), dtype=m.dtype, device=m.device)
        poly = None  # the product of the steps' polynomials, the latest on the left
        for i in range(steps):
            q = a * eye + b * m + c * m @ m
            poly = q if poly is None else q @ poly
            if i + 1 < steps:
                m = q @ m @ q  # the Gram matrix of q x (q is symmetric)
        x = poly @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for conv filters, Nesterov SGD for the rest, in one optimizer (so one scheduler and one state_dict).
    Groups with muon=True: Nesterov momentum, then each filter bank's update (out x in*k*k) orthogonalised, the
    weights rescaled to norm sqrt(out) before the step, as in airbench94_muon. Written here because
    torch.optim.Muon (torch >= 2.9) takes 2-D matrices only and our filters are 4-D."""

    def __init__(self, groups, lr, momentum):
        super().__init__(groups, dict(lr=lr, momentum=momentum, weight_decay=0.0, muon=False))
        self.device_lr = None

    def use_device_lr(self, device):
        """From now on read each group's lr from a tensor on `device`; call load_lr() before every step to fill
        it from the group's lr (the schedule's). A CUDA graph replays the kernels it captured, so a Python
        float lr would stay the one of the captured step."""
        self.device_lr = [torch.zeros((), device=device) for _ in self.param_groups]
        self.load_lr()

    def load_lr(self):
        for t, group in zip(self.device_lr, self.param_groups):
            t.fill_(group["lr"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # as torch's optimizers: re-evaluate the model, with gradients, before the step
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):  # foreach calls: a few launches a group, not a few a tensor
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            mom, wd = group["momentum"], group["weight_decay"]
            grads = [p.grad for p in params]
            if wd:
                grads = torch._foreach_add(grads, params, alpha=wd)
            for p, g in zip(params, grads):
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(g)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_mul_(bufs, mom)
            torch._foreach_add_(bufs, grads)
            updates = list(torch._foreach_add(grads, bufs, alpha=mom))  # Nesterov
            if group["muon"]:
                for j, p in enumerate(params):
                    p.mul_(len(p) ** 0.5 / p.norm())
                    updates[j] = orthogonalise(updates[j].reshape(len(p), -1)).view_as(p)
            if self.device_lr is None:
                torch._foreach_add_(params, updates, alpha=-group["lr"])
            else:  # a tensor lr cannot be an alpha: lr x update, then subtracted (rounds apart from the line above)
                torch._foreach_sub_(params, torch._foreach_mul(updates, self.device_lr[i]))
        return loss


# ----------------------------------------------------------------------------- the optimizer and schedule of a run

def check_optimizer_args(ap, args):
    """Refuse (exit 2, one line) an unknown --optimizer, the values torch's optimizers would refuse with a traceback
    and a schedule's flags lr_factor cannot follow, for the scripts' check_args, before anything is created."""
    if args.optimizer not in ("sgd", "adam", "adamw", "muon"):
        ap.error(f"unknown --optimizer {args.optimizer!r}; choose from: sgd, adam, adamw, muon")
    if not (0 <= args.momentum < 1 and 0 <= args.aux_momentum < 1):
        ap.error(f"--momentum and --aux-momentum must be in [0, 1), got {args.momentum:g} and {args.aux_momentum:g}")
    if args.optimizer == "sgd" and args.nesterov and args.momentum == 0:
        ap.error("--nesterov needs a --momentum above 0")
    if not all(0 <= b < 1 for b in args.betas):
        ap.error(f"--betas must be in [0, 1), got {' '.join(f'{b:g}' for b in args.betas)}")
    if hasattr(args, "milestones"):  # a script with a schedule (train.py's): the flags lr_factor follows
        check_schedule_args(ap, args)


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


def milestone_epochs(args):
    """--milestones in epochs: fractions of --epochs if all are below 1, else epochs as given."""
    return [m * args.epochs if all(x < 1 for x in args.milestones) else m for m in args.milestones]


def check_schedule_args(ap, args):
    """Refuse (exit 2, one line) schedule flags lr_factor cannot follow (check_optimizer_args calls it)."""
    if len(args.gamma) not in (1, len(args.milestones)) or min(args.gamma) <= 0:  # each lr step multiplies by it
        ap.error(f"--gamma takes one positive value or one per milestone ({len(args.milestones)}), got {args.gamma}")
    if args.warmup_epochs < 0 or min(args.milestones) < 0:
        ap.error(f"--warmup-epochs and --milestones must be >= 0, got {args.warmup_epochs:g} and "
                 f"{' '.join(f'{m:g}' for m in args.milestones)}")


def schedule_warnings(args):
    """Schedule flags that never take effect in a run of --epochs: warned, not refused (a short trial of a long
    recipe is meant, and a resumed run checks its saved flags again)."""
    late = [f"{m:g}" for m in milestone_epochs(args) if m >= args.epochs]
    lines = [f"--milestones {' '.join(late)} at or past the last epoch ({args.epochs}): the lr never steps there"
             ] if args.schedule == "step" and late else []
    if args.warmup_epochs >= args.epochs:
        lines.append(f"--warmup-epochs {args.warmup_epochs:g} is not shorter than the run (--epochs {args.epochs}): "
                     "the lr only rises")
    return lines


def build_scheduler(optimizer, args, steps_per_epoch):
    total = args.epochs * steps_per_epoch
    warmup = int(args.warmup_epochs * steps_per_epoch)
    ms = [int(m * steps_per_epoch) for m in milestone_epochs(args)]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, args.schedule, ms, args.gamma))


def set_schedule(optimizer, scheduler, step, peaks):
    """Put a per-iteration schedule at `step`, each group at its peak lr in `peaks` times the schedule's factor
    (a run resumed with another number of processes, whose epochs have another number of steps)."""
    scheduler.base_lrs = list(peaks)
    scheduler.last_epoch = step
    for g, f, peak in zip(optimizer.param_groups, scheduler.lr_lambdas, peaks):
        g["initial_lr"], g["lr"] = peak, peak * f(step)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


# ----------------------------------------------------------------------------- weight averages: EMA and lookahead

def ema_warmup(decay):
    """AveragedModel's multi_avg_fn: an EMA whose decay warms up as min(decay, (1 + n) / (10 + n)) after n updates
    (as timm's EMA). Without it the random initial weights, which under BatchNorm and weight decay are much larger
    than trained ones, dominate the average for thousands of steps (a plain 0.999 EMA of a short resnet18 run
    evaluates near chance). The decay is a tensor op on n, so no host sync per step."""
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


# ----------------------------------------------------------------------------- one training step

def make_train_step(model, optimizer, scheduler, criterion, device, amp_dtype, scaler, ema=None, skip_nonfinite=False,
                    ema_every=1, lookahead=None, cuda_graph=False):
    """One optimisation step on a ready batch; returns (loss, logits) still on the device (no sync).
    ema: an AveragedModel updated every `ema_every` steps (counted by the scheduler, so a resumed run keeps the beat).
    lookahead: a Lookahead, stepped after every optimizer step (before the EMA sees the weights).
    skip_nonfinite: a NaN/Inf loss leaves the weights untouched (costs one host sync per step).
    cuda_graph: forward, backward and Muon's step replayed as one CUDA graph (runtime.GraphedStep); the
    schedule, lookahead and EMA stay outside it."""
    def forward(x, y):
        with autocast(device, amp_dtype, cache=not cuda_graph):
            out = model(x)
            return criterion(out, y), out

    def learn(loss):
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def whole(x, y):
        loss, out = forward(x, y)
        learn(loss)
        return loss.detach(), out.detach()
    if cuda_graph:
        optimizer.use_device_lr(device)
        whole = GraphedStep(whole, device, key=lambda: tuple(p.requires_grad for p in model.parameters()))

    def step(x, y):
        skipped = False
        if skip_nonfinite:
            loss, out = forward(x, y)
            skipped = not torch.isfinite(loss)
            if not skipped:
                learn(loss)
            loss, out = loss.detach(), out.detach()
        else:
            if cuda_graph:
                optimizer.load_lr()
            loss, out = whole(x, y)
        if skipped:
            with warnings.catch_warnings():  # stepping the schedule without the optimizer is meant here
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                scheduler.step()  # keep the schedule on time
        else:
            scheduler.step()
        if lookahead is not None:  # on skipped steps too: its syncs keep their beat and the run ends on one
            lookahead.step(scheduler.last_epoch)
        if ema is not None and not skipped and scheduler.last_epoch % ema_every == 0:
            ema.update_parameters(model)
        return loss, out
    step.graphed = whole if cuda_graph else None
    return step
