"""Forward hooks on named modules, which is how visualize.py sees into any network of models.py without code of
its own for one: what every module returns (trace), where a network's stages end (stages), and Grad-CAM.
"""
import torch
import torch.nn.functional as F


def is_map(shape):
    """A (C, H, W) output with more than one pixel: a feature map (not a vector, not a globally pooled 1x1)."""
    return shape is not None and len(shape) == 3 and shape[1] * shape[2] > 1


def trace(model, x, keep=()):
    """Run model(x) once (eval mode, no grad) with a forward hook on every submodule.

    Returns {name: {"shape", "in", "calls", "type"[, "out"]}} ordered by when each module finished (a container
    after its children; a module called several times, like LeNet's pool, at its last call): output and input
    shape without the batch dimension, number of calls, and for names in `keep` the output of the last call
    (cloned, so later in-place ops such as ReLU(inplace=True) do not change it).
    """
    info, handles = {}, []

    def hook(name):
        def fn(module, inputs, out):
            rec = info.pop(name, {"calls": 0, "type": type(module).__name__})
            rec["calls"] += 1
            rec["shape"] = tuple(out.shape[1:]) if torch.is_tensor(out) else None
            rec["in"] = tuple(inputs[0].shape[1:]) if inputs and torch.is_tensor(inputs[0]) else None
            if name in keep and torch.is_tensor(out):
                rec["out"] = out.detach().float().clone()
            info[name] = rec
        return fn

    for name, m in model.named_modules():
        if name:
            handles.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return info


def stages(model, info=None, image_size=32):
    """Default --layers: the first conv, then the end of every stage; the last name is Grad-CAM's layer.

    One rule for every network, from a traced forward pass: along the top-level modules (opening a container inside
    which the resolution changes more than once, like VGG's `features`), the last one before each change of spatial
    size, with the last module that still has a spatial output ending the last stage. Modules called more than once
    (LeNet's pool, a block's shared ReLU) are skipped. This finds ResNet's layer1-4, ResCNN's stem and layers, VGG's
    ReLU before each max-pool, LeNet's conv1/conv2 and fastnet's whitening and groups with no list to keep up to date.
    """
    if info is None:
        info = trace(model, torch.zeros(1, 3, image_size, image_size))
    order = {n: i for i, n in enumerate(info)}

    def sizes_inside(name):
        inner = {r["shape"][1:] for n, r in info.items() if n.startswith(name + ".") and is_map(r["shape"])}
        if name in info and is_map(info[name]["in"]):
            inner.add(info[name]["in"][1:])
        return inner

    def spine(module, prefix):
        for child_name, child in module.named_children():
            name = prefix + child_name
            inside = [n for n in info if n.startswith(name + ".")]
            if name not in info and not inside:  # defined but never called
                continue
            if len(sizes_inside(name)) > 2 and next(child.children(), None) is not None:
                yield from spine(child, name + ".")
            else:  # a container never called itself (fastnet's ModuleList, ModuleDicts): its last module stands for it
                yield name if name in info else max(inside, key=order.get)

    once = [n for n, r in info.items() if r["calls"] == 1 and is_map(r["shape"])]
    if not once:
        return []
    cands = sorted(set(spine(model, "")) & set(once) | {once[-1]}, key=order.get)
    cands = cands[:cands.index(once[-1]) + 1]
    ends = [n for i, n in enumerate(cands)
            if i + 1 == len(cands) or info[cands[i + 1]]["shape"][1:] != info[n]["shape"][1:]]
    convs = [n for n, r in info.items() if r["type"] == "Conv2d"]
    first = [convs[0]] if convs and convs[0] not in ends else []
    return first + ends


def grad_cam(model, x, layer, target=None):
    """Grad-CAM (Selvaraju et al. 2017) of module `layer` for one image x (1,3,H,W).

    The channel weights are the spatial means of d(logit of target)/d(activation); the map is the ReLU of the
    weighted sum of the activation's channels. Returns (map at the layer's resolution, map upsampled bilinearly
    to H x W and scaled to [0, 1], probabilities, target)."""
    module = dict(model.named_modules())[layer]
    saved = {}

    def hook(m, inputs, out):
        saved["a"] = out
        return out.clone()  # what runs downstream (in-place ReLUs included) works on a copy, saved["a"] stays intact

    handle = module.register_forward_hook(hook)
    was_training = model.training
    try:
        with torch.enable_grad():
            logits = model.eval()(x)
            target = int(logits.argmax(1)) if target is None else target
            grad, = torch.autograd.grad(logits[0, target], saved["a"])
    finally:
        handle.remove()
        model.train(was_training)
    a = saved["a"].detach()
    cam = F.relu((grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    up = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    up = up / up.max() if up.max() > 0 else up
    return cam[0, 0], up, logits.detach().float().softmax(1)[0], target
