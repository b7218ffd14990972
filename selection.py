"""Hard-example selection for train.py (--select-frac F): each training step trains on the share F of its batch that
scores hardest, so a step costs about F of a full one. Two scores (--select-by):

- proxy: a small proxy network scores every batch, at the cost of its forward pass (and a backward one on every
  --select-every-th batch). This is airbench96_faster's data filtering (Keller Jordan, 2024), there shown to keep a
  run's accuracy at half the backward passes. Under torchrun each process picks from its own share of the batch
  with a proxy of its own; last.pt keeps rank 0's, which every process resumes from.
- loss: each image's loss when the model last trained on it, plus a little for every epoch since, at no extra
  cost: the first epoch trains on every image to fill the table. One process only (a process sees only its shard).

Written here because torch has nothing like either."""
import math

import torch
import torch.nn.functional as F

from models import FastNet, init_from_data
from optim import set_schedule, training_parts
from runtime import autocast

PROXY_WIDTHS = (32, 64, 64)  # airbench96_faster's proxy: a seventh of our fastnet's multiply-adds per image
AGE = 0.25  # --select-by loss: score added per epoch since an image was trained on, so none is left out for long


def make_selector(args, train_loader, device, amp_dtype, num_classes):
    """train.py's selector for its flags, or None (--select-frac 1)."""
    if args.select_frac >= 1:
        return None
    if args.select_by == "loss":
        return LastLoss(args.select_frac, train_loader.n, device)
    return HardExamples(args, train_loader, device, amp_dtype, num_classes)


class HardExamples:
    """Called on each training batch, returns its hardest `frac` (by the proxy's loss, highest first). The proxy
    is a fastnet of PROXY_WIDTHS whitened from the same images as the model; it trains with the run's own
    optimizer, schedule and loss on its own pick of every `every`-th batch (scoring costs a forward pass, training
    it a backward one as well), so it keeps up with what the model still gets wrong. Its lr is --lr unscaled under
    torchrun: each process's proxy learns from that process's batch alone."""

    def __init__(self, args, train_loader, device, amp_dtype, num_classes):
        self.frac, self.every, self.device, self.amp_dtype = args.select_frac, args.select_every, device, amp_dtype
        self.proxy = FastNet(num_classes, PROXY_WIDTHS).reset_parameters().to(device)
        init_from_data(self.proxy, train_loader)
        if args.channels_last:
            self.proxy = self.proxy.to(memory_format=torch.channels_last)
        self.optimizer, self.scheduler, self.scaler, self.loss = training_parts(
            self.proxy, args, device, amp_dtype, len(train_loader) / self.every)
        self.loss.reduction = "none"  # a loss per image, to rank them
        self.batches = 0

    def describe(self):
        return (f"each step trains on the {self.frac:.0%} of its batch that a proxy network (fastnet "
                f"{'-'.join(map(str, PROXY_WIDTHS))}) finds hardest; the proxy learns from one batch in {self.every}")

    def __call__(self, x, y, idx=None, epoch=None):
        learn = self.batches % self.every == 0
        self.batches += 1
        self.proxy.train()
        with torch.set_grad_enabled(learn), autocast(self.device, self.amp_dtype):
            losses = self.loss(self.proxy(x), y)
        hard = losses.detach().float().topk(max(1, round(len(x) * self.frac))).indices
        if learn:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses[hard].mean()).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        return x[hard], y[hard]

    def trained(self, logits, y):
        """(The proxy keeps no record of the model's steps.)"""

    def move_to(self, batches):
        """Continue as if `batches` batches had been seen (a run resumed with another number of processes)."""
        self.batches = batches
        set_schedule(self.optimizer, self.scheduler, math.ceil(batches / self.every), self.scheduler.base_lrs)

    def state_dict(self):
        return {"proxy": self.proxy.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "batches": self.batches}

    def load_state_dict(self, state):
        self.proxy.load_state_dict(state["proxy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.batches = state["batches"]


class LastLoss:
    """Called on each training batch with its images' indices (Loader.indices) and the epoch, returns the hardest
    `frac` by each image's loss when last trained on plus AGE per epoch since; in the first epoch, the whole batch.
    trained() records the losses of the step just taken. The table is one float per training image and its epoch,
    on the device, and is saved in last.pt."""

    def __init__(self, frac, n_images, device):
        self.frac = frac
        self.loss = torch.zeros(n_images, device=device)
        self.epoch = torch.zeros(n_images, device=device)  # when each image was last trained on
        self.picked = self.now = None

    def describe(self):
        return (f"from the second epoch each step trains on the {self.frac:.0%} of its batch with the highest loss "
                f"when last trained on (+{AGE:g} per epoch since)")

    def __call__(self, x, y, idx, epoch):
        self.picked, self.now = idx, epoch
        if epoch == 0:
            return x, y
        score = self.loss[idx] + AGE * (epoch - self.epoch[idx])
        hard = score.topk(max(1, round(len(x) * self.frac))).indices
        self.picked = idx[hard]
        return x[hard], y[hard]

    def trained(self, logits, y):
        """Record the step's per-image losses (plain cross-entropy, whatever the run's loss; under --mix, of each
        mixed image against its soft target, kept for the batch's own image)."""
        self.loss[self.picked] = F.cross_entropy(logits.detach().float(), y, reduction="none")
        self.epoch[self.picked] = float(self.now)

    def move_to(self, batches):
        raise RuntimeError("--select-by loss runs in one process only")

    def state_dict(self):
        return {"loss": self.loss.cpu(), "epoch": self.epoch.cpu()}

    def load_state_dict(self, state):
        self.loss.copy_(state["loss"])
        self.epoch.copy_(state["epoch"])
