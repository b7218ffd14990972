"""Hard-example selection for train.py (--select-frac F): a small proxy network scores every training batch and
the model trains on the share F that the proxy finds hardest, so a step costs F of a full one plus the proxy's
forward pass (and a backward one on every --select-every-th batch). This is airbench96_faster's data filtering
(Keller Jordan, 2024), there shown to keep a run's accuracy at half the backward passes. Written here because
torch has nothing like it. Under torchrun each process picks from its own share of the batch with a proxy of its
own; last.pt keeps rank 0's, which every process resumes from."""
import math

import torch

from models import FastNet, init_from_data
from optim import set_schedule, training_parts
from runtime import autocast

PROXY_WIDTHS = (32, 64, 64)  # airbench96_faster's proxy: a seventh of our fastnet's multiply-adds per image


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

    def __call__(self, x, y):
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
