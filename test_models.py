"""models.py: exact parameter counts, shapes, FLOPs against a hand count, and the fast paths."""
import pytest
import torch

from conftest import run_script
from models import ARCHS, build_model, count_flops, count_params

# The counts the reports give; dainet7 / resnet9 / vgg_a_bn are what their code gives.
PARAMS = {
    "lenet": 62_006,
    "rescnn6": 692_122,
    "rescnn9": 1_080_090,
    "dainet7": 1_149_770,
    "resnet9": 4_903_242,
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet50": 23_520_842,
    "resnet101": 42_512_970,
    "resnet152": 58_156_618,
    "vgg_a": 9_750_922,
    "vgg_a_bn": 9_756_426,
    "fastnet": 1_972_792,
}


def test_registry_lists_every_name():
    assert sorted(ARCHS) == sorted(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_count_and_output_shape(name):
    model = build_model(name).eval()
    assert count_params(model) == PARAMS[name]
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_num_classes():
    assert build_model("resnet18", num_classes=100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        build_model("resnet17")
    msg = str(e.value)
    assert "resnet17" in msg and all(name in msg for name in ARCHS)


def conv_macs(cin, cout, k, hw):
    return cin * cout * k * k * hw * hw


def test_flops_lenet_hand_count():
    macs = conv_macs(3, 6, 5, 28) + conv_macs(6, 16, 5, 10) + 400 * 120 + 120 * 84 + 84 * 10
    assert macs == 651_720
    assert count_flops(build_model("lenet")) == pytest.approx(2 * macs, rel=0.01)


def test_flops_resnet18_hand_count():
    macs = conv_macs(3, 64, 3, 32)                       # stem
    macs += 4 * conv_macs(64, 64, 3, 32)                 # layer1: two blocks of two convs
    for cin, cout, hw in ((64, 128, 16), (128, 256, 8), (256, 512, 4)):
        macs += conv_macs(cin, cout, 3, hw)              # strided first conv
        macs += 3 * conv_macs(cout, cout, 3, hw)         # the other three convs
        macs += conv_macs(cin, cout, 1, hw)              # 1x1 shortcut
    macs += 512 * 10                                     # fc
    assert macs == 555_422_720
    assert count_flops(build_model("resnet18")) == pytest.approx(2 * macs, rel=0.01)


def test_init_and_zero_init_residual():
    m = build_model("resnet18")
    assert torch.all(m.bn1.weight == 1) and torch.all(m.bn1.bias == 0)
    assert m.layer1[0].bn2.weight.abs().sum() > 0
    z = build_model("resnet18", zero_init_residual=True)
    assert torch.all(z.layer1[0].bn2.weight == 0) and torch.all(z.layer4[1].bn2.weight == 0)
    z = build_model("rescnn6", zero_init_residual=True)
    assert torch.all(z.layer2[1].bn2.weight == 0)
    z = build_model("resnet50", zero_init_residual=True)
    assert torch.all(z.layer3[0].bn3.weight == 0)


@pytest.mark.parametrize("name", ["lenet", "rescnn6", "dainet7", "resnet9", "vgg_a_bn"])
def test_channels_last_and_bf16_autocast(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.to(memory_format=torch.channels_last))
        assert torch.allclose(out, ref, atol=1e-4, rtol=1e-3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model_cl(x.to(memory_format=torch.channels_last))
    assert low.shape == (2, 10) and torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.1


def test_fastnet_whitening_filters_decorrelate_patches():
    """After init_from_data, the first 12 whitening channels of 2x2 patches have identity covariance
    (up to the eps regulariser) and the other 12 are their negatives."""
    torch.manual_seed(0)
    base = torch.nn.functional.avg_pool2d(torch.randn(300, 1, 18, 18), 3, 1)  # smooth, so neighbours correlate
    x = torch.cat([base, 0.8 * base + 0.3 * torch.randn_like(base), base - 0.5 * torch.randn_like(base)], 1)
    model = build_model("fastnet")
    model.init_from_data(x)
    w = model.whiten.weight
    assert not w.requires_grad and torch.equal(w[12:], -w[:12])
    y = torch.nn.functional.conv2d(x, w[:12]).permute(1, 0, 2, 3).reshape(12, -1)
    cov = y @ y.T / y.shape[1]
    assert torch.allclose(cov, torch.eye(12), atol=0.05), cov.diagonal()
    raw = torch.nn.functional.conv2d(x, torch.randn(12, 3, 2, 2)).permute(1, 0, 2, 3).reshape(12, -1)
    assert not torch.allclose(raw @ raw.T / raw.shape[1], torch.eye(12), atol=0.5)  # the test can fail


def test_fastnet_frozen_parts_and_identity_start():
    model = build_model("fastnet")
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["whiten.weight"] + [f"groups.{i}.norm{j}.weight" for i in range(3) for j in (1, 2)]
    conv2 = model.groups[1].conv2.weight  # 256 -> 256: every filter starts as the identity
    assert torch.equal(conv2[:, :, 1, 1], torch.eye(256)) and conv2.abs().sum() == 256


def test_fastnet_whitening_bias_trains_in_the_first_epoch_then_backward_stops_early():
    model = build_model("fastnet")
    x = torch.randn(4, 3, 32, 32)
    for epoch, trains in ((0, True), (1, False), (3, False), (7, False)):
        model.set_epoch(epoch)
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
        assert (model.whiten.bias.grad is not None) == trains
        assert model.groups[0].conv1.weight.grad is not None


@pytest.mark.parametrize("batch, channels, size, memory_format, dtype", [
    (90, 5, 7, torch.channels_last, torch.float32),  # 41 images per matmul: chunks of 41, 41 and 8
    (230, 3, 3, torch.contiguous_format, torch.float32),  # 227 per matmul: a chunk of 3 left over
    (50, 4, 5, torch.contiguous_format, torch.float64),  # 81 per matmul, one chunk
])
def test_small_conv_gradients_match_torchs(batch, channels, size, memory_format, dtype, monkeypatch):
    import models
    monkeypatch.setattr(models, "CHUNK_PIXELS", 2048)  # small chunks, so that small tensors take several
    torch.manual_seed(0)
    x = torch.randn(batch, channels, size, size, dtype=dtype).contiguous(memory_format=memory_format).requires_grad_()
    w = torch.randn(6, channels, 3, 3, dtype=dtype, requires_grad=True)
    up = torch.randn(batch, 6, size, size, dtype=dtype).contiguous(memory_format=torch.channels_last)
    (torch.nn.functional.conv2d(x, w, padding=1) * up).sum().backward()
    ref_x, ref_w, x.grad, w.grad = x.grad, w.grad, None, None
    y = models.SmallConv3x3.apply(x, w)
    assert torch.allclose(y, torch.nn.functional.conv2d(x, w, padding=1))
    (y * up).sum().backward()
    assert torch.allclose(x.grad, ref_x, atol=1e-4, rtol=1e-4)
    assert torch.allclose(w.grad, ref_w, atol=1e-3, rtol=1e-4), (w.grad - ref_w).abs().max()
    assert w.grad.dtype == dtype
    x.requires_grad_(False)
    (g,) = torch.autograd.grad((models.SmallConv3x3.apply(x, w) * up).sum(), w)  # no input gradient asked for
    assert torch.allclose(g, ref_w, atol=1e-3, rtol=1e-4) and g.is_contiguous()  # the weight's own layout


def test_fastnet_trains_its_small_maps_through_the_matmul_weight_gradient(monkeypatch):
    """With SMALL_MAPS_BY_MATMUL (forced on here, whatever this CPU), the three convs on 7x7 and 3x3 maps take
    SmallConv3x3 in training, and under bf16 autocast every weight gradient stays within bf16's rounding of torch's
    own; evaluation and a conv with a hook keep torch's conv."""
    import models
    monkeypatch.setattr(models, "SMALL_MAPS_BY_MATMUL", True)
    torch.manual_seed(0)
    model = build_model("fastnet").to(memory_format=torch.channels_last)
    x, y = torch.randn(90, 3, 32, 32).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (90,))
    calls = []
    apply = models.SmallConv3x3.apply
    monkeypatch.setattr(models.SmallConv3x3, "apply", lambda x, w: calls.append(x.shape[-1]) or apply(x, w))

    def grads():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}

    ours = grads()
    assert sorted(calls) == [3, 7, 7]
    with torch.no_grad():
        model(x)
    assert len(calls) == 3
    seen = []
    hook = model.groups[2].conv2.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    grads()
    hook.remove()
    assert sorted(calls) == [3, 7, 7, 7, 7] and seen == [(90, 256, 3, 3)]
    monkeypatch.setattr(models, "SMALL_MAPS_BY_MATMUL", False)
    torchs = grads()
    assert len(calls) == 5 and ours.keys() == torchs.keys()
    monkeypatch.setattr(models, "SMALL_MAPS_BY_MATMUL", True)
    proxy = models.FastNet(widths=(32, 64, 64))  # selection.py's: 64 channels, where oneDNN's is the faster
    proxy(x).sum().backward()
    assert len(calls) == 5
    for name in ours:
        assert (ours[name] - torchs[name]).norm() <= 5e-3 * torchs[name].norm(), name


def test_models_py_bad_input_is_one_line_exit_2():
    r = run_script("models.py", "extra", timeout=120)
    assert r.returncode == 2 and r.stderr == "models.py: error: unrecognized arguments: extra (see --help)\n", r.stderr
