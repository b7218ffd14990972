"""Li et al. 2018 ("Visualizing the Loss Landscape of Neural Nets"): filter-normalised 1D and 2D slices of the
training loss around a network's weights, for landscape.py --surface (which draws them).
"""
import numpy as np
import torch
import torch.nn.functional as F


def filter_normalized_direction(model, generator):
    """A random direction shaped like the parameters, each filter (output unit: slice along dim 0 of a conv or linear
    weight) rescaled to the norm of the same filter of the weights; biases and BN parameters get 0 (Li et al.'s
    default of ignoring them)."""
    d = []
    for p in model.parameters():
        if p.dim() <= 1:
            d.append(torch.zeros_like(p))
            continue
        r = torch.randn(p.shape, generator=generator).to(p)
        shape = (-1,) + (1,) * (p.dim() - 1)
        d.append(r * (p.detach().flatten(1).norm(dim=1) / r.flatten(1).norm(dim=1).clamp(min=1e-12)).view(shape))
    return d


@torch.no_grad()
def batches_loss(model, batches):
    """Mean cross-entropy over fixed batches in train mode (BN uses each batch's statistics: the objective training
    minimises); running statistics are left as they were."""
    buffers = [b.clone() for b in model.buffers()]
    was_training = model.training
    model.train()
    total, n = 0.0, 0
    for x, y in batches:
        total += float(F.cross_entropy(model(x).float(), y, reduction="sum"))
        n += len(y)
    for b, s in zip(model.buffers(), buffers):
        b.copy_(s)
    model.train(was_training)
    return total / n


@torch.no_grad()
def loss_surface(model, batches, res=21, span=1.0, seed=0):
    """Li et al.'s 1D slice (2*res - 1 points on [-span, span] along one filter-normalised direction) and 2D slice
    (res x res grid over two directions) around the current weights, in fp32; the weights are restored exactly."""
    g = torch.Generator().manual_seed(seed)
    d1, d2 = filter_normalized_direction(model, g), filter_normalized_direction(model, g)
    params = list(model.parameters())
    w0 = [p.detach().clone() for p in params]

    def at(a, b):
        for p, w, x, y in zip(params, w0, d1, d2):
            p.copy_(w + a * x + b * y)
        return batches_loss(model, batches)

    try:
        line = np.linspace(-span, span, 2 * res - 1).tolist()
        grid = np.linspace(-span, span, res).tolist()
        loss_1d = [at(a, 0.0) for a in line]
        loss_2d = [[at(a, b) for a in grid] for b in grid]  # row = second direction (contour's y)
    finally:
        for p, w in zip(params, w0):
            p.copy_(w)
    return {"alphas": line, "loss_1d": loss_1d, "grid": grid, "loss_2d": loss_2d,
            "images": sum(len(y) for _, y in batches), "span": span, "seed": seed}


def surface_batches(train_loader, n_images):
    """The first n_images of epoch 0's training batches, kept fixed for every point of the surface."""
    train_loader.set_epoch(0)
    out, n = [], 0
    for x, y in train_loader:
        out.append((x[:n_images - n], y[:n_images - n]))
        n += len(out[-1][1])
        if n >= n_images:
            break
    return out
