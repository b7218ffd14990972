"""Hard-example selection for train.py (--select-frac F): a small proxy network scores every training batch and
the model trains on the share F that the proxy finds hardest, so a step costs about F of a full one. This is
airbench96_faster's data filtering (Keller Jordan, 2024), there shown to keep a run's accuracy at half the
backward passes. Written here because torch has nothing like it. Under torchrun each process picks from its own
share of the batch with a proxy of its own; last.pt keeps rank 0's, which every process resumes from."""
import torch
import torch.nn as nn

from models import FastNet, init_from_data
from optim import build_optimizer, build_scheduler
from runtime import autocast

PROXY_WIDTHS = (32, 64, 64)  # a fastnet at a sixteenth of the model's compute per image (airbench96_faster's proxy)


class HardExamples:
    """Called on each training batch, returns its hardest `frac` (by the proxy's loss, highest first). The proxy
    is a fastnet of PROXY_WIDTHS whitened from the same images as the model; it trains with the run's own
    optimizer, schedule and loss on its own pick of every `every`-th batch (scoring costs a forward pass, training
    it a backward one as well), so it keeps up with what the model still gets wrong."""

    def __init__(self, args, train_loader, device, amp_dtype, num_classes):
        self.frac, self.every, self.device, self.amp_dtype = args.select_frac, args.select_every, device, amp_dtype
        self.proxy = FastNet(num_classes, PROXY_WIDTHS).reset_parameters().to(device)
        init_from_data(self.proxy, train_loader)
        if args.channels_last:
            self.proxy = self.proxy.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.proxy, args)
        self.scheduler = build_scheduler(self.optimizer, args, len(train_loader) / self.every)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.loss = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing, reduction="none")
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

    def state_dict(self):
        return {"proxy": self.proxy.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "batches": self.batches}

    def load_state_dict(self, state):
        self.proxy.load_state_dict(state["proxy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.batches = state["batches"]
