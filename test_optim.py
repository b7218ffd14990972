"""optim.py: the lr schedules' shapes, the EMA's warm-up, lookahead, and Muon (its groups, one exact step, a
tensor lr for CUDA graphs, a gradient scaler, a closure)."""
import pytest
import torch
import torch.nn as nn

import optim
import train


# ----------------------------------------------------------------------------- schedules and weight averages

def test_lr_schedule_shapes():
    f = optim.lr_factor
    total = 1000
    assert f(0, total, 0, "cosine") == 1.0
    assert f(500, total, 0, "cosine") == pytest.approx(0.5)
    assert f(total, total, 0, "cosine") == pytest.approx(0.0)
    assert [f(s, total, 100, "cosine") for s in (0, 49, 99)] == pytest.approx([0.01, 0.5, 1.0])
    assert f(100, total, 100, "cosine") == 1.0 and f(550, total, 100, "cosine") == pytest.approx(0.5)
    assert [f(s, total, 0, "step", [500, 750], 0.1) for s in (0, 499, 500, 750, 999)] == \
        pytest.approx([1, 1, 0.1, 0.01, 0.01])
    assert f(0, total, 0, "onecycle") == pytest.approx(1 / 25)
    assert f(300, total, 0, "onecycle") == pytest.approx(1.0)  # peak after 30% by default
    assert f(total, total, 0, "onecycle") == pytest.approx(1 / 25e4)
    assert f(777, total, 50, "constant") == 1.0


def test_scheduler_steps_per_iteration_and_milestones_in_fractions():
    args = train.get_parser().parse_args(["--epochs", "4", "--schedule", "step", "--milestones", "0.5", "0.75"])
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=args.lr)
    sched = optim.build_scheduler(opt, args, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[19] == pytest.approx(0.1) and lrs[20] == pytest.approx(0.01) and lrs[30] == pytest.approx(0.001)


def test_schedule_flags_that_never_take_effect_are_named():
    """A milestone at or past the last epoch never steps the lr; a warm-up as long as the run never lets it fall."""
    def warnings(*flags):
        return optim.schedule_warnings(train.get_parser().parse_args(["--epochs", "10", *flags]))
    assert warnings("--schedule", "step", "--milestones", "5", "10", "12") == [
        "--milestones 10 12 at or past the last epoch (10): the lr never steps there"]
    assert warnings("--schedule", "step", "--milestones", "0.5", "0.99") == []  # fractions of --epochs
    assert warnings("--milestones", "12") == []  # a cosine schedule takes no milestones
    assert warnings("--warmup-epochs", "10") == [
        "--warmup-epochs 10 is not shorter than the run (--epochs 10): the lr only rises"]
    assert warnings("--warmup-epochs", "9.5") == [] and warnings() == []


def test_wd_exemption_for_bn_and_bias():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    args = train.get_parser().parse_args(["--no-wd-bn-bias"])
    groups = optim.build_optimizer(model, args).param_groups
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(1, 5e-4), (3, 0.0)]


def test_per_milestone_factors():
    f = optim.lr_factor
    ms, g = [50, 100, 150], [0.5, 0.3, 0.1]
    assert [f(s, 200, 0, "step", ms, g) for s in (0, 49, 50, 100, 150, 199)] == [1.0, 1.0, 0.5, 0.3, 0.1, 0.1]


def test_linear_schedule():
    f = optim.lr_factor
    assert [f(s, 100, 0, "linear") for s in (0, 50, 99)] == [1.0, 0.5, pytest.approx(0.01)]
    assert [f(s, 100, 10, "linear") for s in (0, 9, 10, 55)] == [0.1, 1.0, 1.0, 0.5]


def test_ema_warms_up_then_decays_at_the_given_rate():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=optim.ema_warmup(0.9), use_buffers=True)
    ema.update_parameters(model)  # the first update copies
    w = model[0].weight
    expected = w.detach().clone()
    for n in range(1, 30):
        with torch.no_grad():
            w.add_(1.0)
        model[1].num_batches_tracked += 1
        keep = min(0.9, (1 + n) / (10 + n))  # 0.18, 0.25, ... then 0.9 from n = 80/... (capped)
        expected = keep * expected + (1 - keep) * w.detach()
        ema.update_parameters(model)
        assert torch.allclose(ema.module[0].weight, expected, atol=1e-5), n
    assert ema.module[1].num_batches_tracked == model[1].num_batches_tracked


def test_lookahead_syncs_every_k_steps_with_a_growing_pull_and_at_the_end():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    la = optim.Lookahead(model, alpha=0.5, k=2, total_steps=5)
    slow = model[0].weight.detach().clone()
    for step in range(1, 6):
        with torch.no_grad():
            model[0].weight.add_(1.0)
            model[1].running_mean.add_(1.0)
        model[1].num_batches_tracked += 1
        live = model[0].weight.detach().clone()
        la.step(step)
        if step in (2, 4, 5):  # every 2nd step, and the last (1 step after the previous sync)
            keep = 0.5 ** (1 if step == 5 else 2) * (step / 5) ** 3  # 0.016, 0.128, 0.5
            slow = keep * slow + (1 - keep) * live
            assert torch.allclose(model[0].weight, slow, atol=1e-6), step  # the live weights restart from slow
        else:
            assert torch.equal(model[0].weight, live), step  # between syncs the weights run free
    assert torch.allclose(la.slow[0], slow, atol=1e-6)
    assert torch.equal(model[1].running_mean, la.slow[4])  # BN statistics are in the average too (its 5th tensor)
    assert model[1].num_batches_tracked == 5  # integer buffers are left alone


# ----------------------------------------------------------------------------- Muon

def opt_args(**kw):
    base = dict(optimizer="muon", lr=0.24, momentum=0.6, aux_lr=0.02, aux_momentum=0.85, bias_lr_scale=10.0,
                wd=0.1, no_wd_bn_bias=False, nesterov=True, betas=[0.9, 0.999])
    return train.argparse.Namespace(**{**base, **kw})


def test_orthogonalise_approximates_u_vt():
    torch.manual_seed(0)
    for shape in ((64, 200), (200, 64)):
        g = torch.randn(*shape)
        o = optim.orthogonalise(g).float()
        s = torch.linalg.svdvals(o)
        assert o.shape == g.shape and s.min() > 0.5 and s.max() < 1.3, s
        u, _, vt = torch.linalg.svd(g, full_matrices=False)
        cos = (o * (u @ vt)).sum() / (o.norm() * (u @ vt).norm())
        assert cos > 0.95, cos


def test_orthogonalise_is_the_quintic_iteration(monkeypatch):
    """Both ways, on the Gram matrix (a wide bank: it builds an identity) and plainly (near square: none), give the
    quintic Newton-Schulz iteration's result as float64 computes it, within bf16's rounding; tall matrices as their
    transposes."""
    torch.manual_seed(0)
    eyes, eye = [], torch.eye
    monkeypatch.setattr(torch, "eye", lambda *a, **k: eyes.append(a) or eye(*a, **k))
    for shape, gram in (((64, 576), True), ((576, 64), True), ((48, 64), False), ((64, 48), False)):
        eyes.clear()
        g = torch.randn(*shape) * torch.rand(shape[1]) ** 3  # an uneven spectrum, as a momentum buffer's
        x = g.double().T if shape[0] > shape[1] else g.double()
        x = x / x.norm()
        for _ in range(3):
            m = x @ x.T
            x = 3.4445 * x + (-4.7750 * m + 2.0315 * m @ m) @ x
        want = x.T if shape[0] > shape[1] else x
        got = optim.orthogonalise(g)
        assert got.shape == g.shape and got.dtype == g.dtype
        assert (got.double() - want).norm() / want.norm() < 0.05, shape
        assert bool(eyes) == gram, shape


def test_muon_groups_and_one_exact_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 36, 4))
    model[1].weight.requires_grad_(False)  # frozen parameters stay out of the optimizer
    opt = optim.build_optimizer(model, opt_args())
    g = [(len(x["params"]), x["lr"], x["momentum"], x["weight_decay"], x["muon"]) for x in opt.param_groups]
    assert g == [(1, 0.24, 0.6, 0.0, True), (1, 0.02, 0.85, 0.1, False), (2, pytest.approx(0.2), 0.85, 0.01, False)]
    conv, head = model[0].weight, model[3].weight
    w0, h0 = conv.detach().clone(), head.detach().clone()
    model(torch.randn(5, 3, 8, 8)).square().mean().backward()
    gc, gh = conv.grad.clone(), head.grad.clone()
    opt.step()
    # muon: Nesterov on a zero buffer gives g + 0.6 g; the weights rescaled to norm sqrt(8), then the orthogonal step
    want = w0 * (8 ** 0.5 / w0.norm()) - 0.24 * optim.orthogonalise((1.6 * gc).reshape(8, -1)).view_as(w0)
    assert torch.allclose(conv, want, atol=1e-6)
    # the head: plain Nesterov SGD with L2 weight decay, as torch.optim.SGD
    assert torch.allclose(head, h0 - 0.02 * 1.85 * (gh + 0.1 * h0), atol=1e-6)


def test_muon_with_a_device_lr_steps_at_the_lr_that_load_lr_read():
    """use_device_lr: the step reads the lr tensors (a CUDA graph's replay cannot read a Python float), which
    load_lr fills from the groups: a NaN lr set after load_lr does not reach the weights. The tensor lr's
    update rounds apart from the float's (lr x update, then subtracted, against one fused add)."""
    weights = []
    for device_lr in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 36, 4))
        opt = optim.build_optimizer(model, opt_args(lr=0.12))
        if device_lr:
            opt.use_device_lr(torch.device("cpu"))  # reads the groups' lr now, not at the step
            opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = opt.param_groups[2]["lr"] = float("nan")
        model(torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))).square().mean().backward()
        opt.step()
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(*weights))


def test_muon_under_a_gradient_scaler_steps_on_the_unscaled_gradient():
    """fp16 runs (CUDA) scale the loss by 2^16: Muon and its SGD groups must step as an unscaled run does."""
    weights = []
    for scaled in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 36, 4))
        opt = optim.build_optimizer(model, opt_args())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, enabled=scaled)
        step = optim.make_train_step(model, opt, sched, nn.CrossEntropyLoss(), torch.device("cpu"), None, scaler)
        x, y = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3, 0])
        for _ in range(3):
            step(x, y)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert scaler.get_scale() == 2.0 ** 16  # no step was skipped as non-finite
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*weights))


def test_bias_lr_scale_keeps_the_decay_per_step():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    opt = optim.build_optimizer(model, opt_args(optimizer="sgd", lr=0.1, bias_lr_scale=64.0, wd=5e-4))
    (w, wlr, wwd), (v, vlr, vwd) = [(len(x["params"]), x["lr"], x["weight_decay"]) for x in opt.param_groups]
    assert (w, v) == (1, 3) and wlr == 0.1 and vlr == pytest.approx(6.4)
    assert wlr * wwd == pytest.approx(vlr * vwd)


def test_muon_step_takes_a_closure_as_torch_optimizers_do():
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))  # noqa: E731
    a, b = make(), make()
    b.load_state_dict(a.state_dict())
    start = [p.clone() for p in a.parameters()]
    x, y = torch.randn(5, 3, 6, 6), torch.randint(0, 2, (5,))
    args = train.get_parser().parse_args(["--optimizer", "muon", "--lr", "0.05"])
    opt_a, opt_b = optim.build_optimizer(a, args), optim.build_optimizer(b, args)

    def closure():
        opt_a.zero_grad()
        loss = nn.functional.cross_entropy(a(x), y)
        loss.backward()
        return loss
    loss = opt_a.step(closure)
    nn.functional.cross_entropy(b(x), y).backward()
    assert opt_b.step() is None and loss is not None
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not any(torch.equal(p, s) for p, s in zip(a.parameters(), start))  # the closure's step moved them all

