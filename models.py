"""Every network of the course reports, behind one registry.

    model = build_model("resnet18", num_classes=10)
    python models.py            # table: name, parameters, FLOPs per 32x32 image, source report

The ResNets and the VGG-A feature stack come from torchvision's builders with
the CIFAR changes applied (3x3 stride-1 stem, no max-pool, small classifier);
only what no library has (LeNet, the reports' small residual nets, DaiNet7) is
written by hand. Report numbers refer to ../shared/seeds/00N_*.txt.
"""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg


# ----------------------------------------------------------------------------- hand-written nets

class LeNet(nn.Module):
    """The PyTorch tutorial net (002's baseline = 003's "simple CNN"): 62,006 parameters."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class ResCNN(nn.Module):
    """003's residual nets: 16-channel stem, three stride-2 stages of 32/64/128 channels.

    The blocks are exactly torchvision's BasicBlock (bias-free convs, BN, 1x1 conv + BN
    shortcut), which reproduces the report's counts: 692,122 (2 per stage) and 1,080,090 (3).
    """

    def __init__(self, blocks_per_stage, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        stages, cin = [], 16
        for cout in (32, 64, 128):
            blocks = []
            for i in range(blocks_per_stage):
                stride = 2 if i == 0 else 1
                down = None
                if stride != 1 or cin != cout:
                    down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                blocks.append(tv_resnet.BasicBlock(cin, cout, stride, down))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class DaiNet7(nn.Module):
    """004's DaiNet7 as its code gives it: six 3x3 convs (with bias), each Conv -> ReLU -> BN (-> pool) (-> Dropout)."""

    def __init__(self, num_classes=10):
        super().__init__()

        def layer(cin, cout, pool=None, drop=0.0):
            mods = [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(cout)]
            if pool is not None:
                mods.append(pool)
            if drop:
                mods.append(nn.Dropout(drop))
            return nn.Sequential(*mods)

        self.layer1 = layer(3, 64, drop=0.1)
        self.layer2 = layer(64, 64, nn.MaxPool2d(2, 2), 0.1)
        self.layer3 = layer(64, 128)
        self.layer4 = layer(128, 128, nn.MaxPool2d(2, 2), 0.5)
        self.layer5 = layer(128, 256, drop=0.5)
        self.layer6 = layer(256, 256, nn.AvgPool2d(8, 8))
        self.fc1 = nn.Linear(256, num_classes)

    def forward(self, x):
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4, self.layer5, self.layer6):
            x = layer(x)
        return self.fc1(torch.flatten(x, 1))


class VGG(nn.Module):
    """VGG-A for 32x32 inputs (Santurkar et al. 2018, report 003): torchvision's VGG-A
    feature stack (cfg "A", optionally with BN after every conv) ending at 512x1x1,
    then 512 -> 512 -> 512 -> classes. torchvision's VGG class itself is not used because
    its 25088 -> 4096 head (100M parameters) would be built only to be thrown away."""

    def __init__(self, batch_norm=False, num_classes=10):
        super().__init__()
        self.features = tv_vgg.make_layers(tv_vgg.cfgs["A"], batch_norm=batch_norm)
        self.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(inplace=True),
            nn.Linear(512, 512), nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class FastNet(nn.Module):
    """Ours, for time-to-accuracy (recipe `fast`), after Keller Jordan's airbench94: a frozen 2x2 conv
    that whitens image patches (set from data by init_from_data), then three groups of
    conv-pool-BN-GELU-conv-BN-GELU (64/256/256 channels), a global max and a linear head.
    Few layers at low resolution, because here compute, not depth, is the budget. BatchNorm has no
    learnable scale (its bias only) and convs start as identities on their first input channels,
    both as in airbench. 1,972,792 parameters, 1,440 of them frozen (whitening filters, BN scales)."""

    # then the whitening bias stays put, and backward stops before the first conv; airbench trains it for 3 epochs,
    # but here the 2 epochs after the first paid for that backward step and bought no accuracy (RESULTS.md)
    whiten_bias_epochs = 1

    def __init__(self, num_classes=10, widths=(64, 256, 256)):
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, bias=True)  # 12 eigen-patches of 2x2x3 and their negatives
        self.whiten.weight.requires_grad_(False)
        groups, cin = [], 24
        for w in widths:
            groups.append(nn.ModuleDict(dict(
                conv1=nn.Conv2d(cin, w, 3, padding=1, bias=False), norm1=nn.BatchNorm2d(w, eps=1e-12, momentum=0.4),
                conv2=nn.Conv2d(w, w, 3, padding=1, bias=False), norm2=nn.BatchNorm2d(w, eps=1e-12, momentum=0.4))))
            cin = w
        self.groups = nn.ModuleList(groups)
        self.head = nn.Linear(cin, num_classes, bias=False)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(False)

    def reset_parameters(self):
        """Convs: PyTorch's default, with the first in_channels filters the identity (dirac); head std 1/width."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                m.reset_parameters()
            if isinstance(m, nn.Conv2d) and m is not self.whiten:
                nn.init.dirac_(m.weight[:m.in_channels])
        nn.init.normal_(self.head.weight, std=1 / self.head.in_features)
        return self

    @torch.no_grad()
    def init_from_data(self, images, eps=5e-4):
        """Whitening filters from normalised training images (N,3,H,W): the eigenvectors of the 2x2-patch
        covariance scaled by 1/sqrt(eigenvalue), and their negatives (so the GELU after keeps both signs)."""
        k = self.whiten.kernel_size[0]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * k * k)
        cov = patches.T @ patches / len(patches)
        eigval, eigvec = torch.linalg.eigh(cov)
        filters = (eigvec.T / (eigval + eps).sqrt()[:, None]).reshape(-1, 3, k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))

    def set_epoch(self, epoch):
        """Called by train.py at the start of every epoch (single process: under DDP every parameter must
        keep its gradient)."""
        self.whiten.bias.requires_grad_(epoch < self.whiten_bias_epochs)

    def forward(self, x):
        x = F.gelu(self.whiten(x))
        for g in self.groups:
            x = F.gelu(g.norm1(F.max_pool2d(conv3x3(g.conv1, x), 2)))
            x = F.gelu(g.norm2(conv3x3(g.conv2, x)))
        return self.head(torch.amax(x, dim=(2, 3)))


# ----------------------------------------------------------------------------- small maps: weight gradients by matmuls

# On only where measured faster (RESULTS.md): CPUs with AMX, whose oneDNN weight gradient on small maps is slow
SMALL_MAPS_BY_MATMUL = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()


CHUNK_PIXELS = 16384  # conv3x3_weight_grad's matmuls take up to this many pixels each: 75 MB of windows at 256 channels


def conv3x3_weight_grad(x, grad):
    """The weight gradient of a 3x3, stride-1, pad-1 conv (O, C, 3, 3) as matmuls: for each chunk of images, the
    output gradient (O x pixels) times the input's 9 shifted windows (pixels x 9C); the chunks summed in float32."""
    B, C, H, W = x.shape
    windows = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).contiguous()  # (B, H+2, W+2, C)
    # (O, pixels), copied row-major: the matmul reads a channels_last gradient's transposed view much more slowly
    g = grad.permute(1, 0, 2, 3).reshape(grad.shape[1], B * H * W).contiguous()
    n = max(1, CHUNK_PIXELS // (H * W))  # images per matmul
    cols = x.new_empty(n, H, W, 3, 3 * C)
    total = x.new_zeros(g.shape[0], 9 * C, dtype=torch.promote_types(x.dtype, torch.float32))
    # Pixel (h, w)'s 3 windows in row i are 3C contiguous values of the padded image (row h + i, from column w): one
    # strided view gathers all 9 in one copy, where a copy per window moved runs of only C values
    image, row = (H + 2) * (W + 2) * C, (W + 2) * C
    for b in range(0, B, n):
        m = min(n, B - b)
        cols[:m].copy_(windows.as_strided((m, H, W, 3, 3 * C), (image, row, C, row, 1),
                                            windows.storage_offset() + b * image))
        total += g[:, b * H * W:(b + m) * H * W] @ cols[:m].view(m * H * W, 9 * C)
    return total.view(-1, 3, 3, C).permute(0, 3, 1, 2)  # the channels_last layout of (O, C, 3, 3)


class SmallConv3x3(torch.autograd.Function):
    """F.conv2d(x, weight, padding=1) for a small feature map on a CPU, its weight gradient by matmuls (above), for
    fastnet: there oneDNN's weight gradient is slow, with few pixels per image to tile (RESULTS.md)."""

    @staticmethod
    def forward(ctx, x, weight):
        y = F.conv2d(x, weight, padding=1)  # under autocast, in its dtype
        ctx.dtypes = x.dtype, weight.dtype
        ctx.save_for_backward(x.to(y.dtype), weight.to(y.dtype))
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False])[0]
            grad_x = grad_x.to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            cl = weight.is_contiguous(memory_format=torch.channels_last)  # the gradient takes the weight's layout
            grad_w = conv3x3_weight_grad(x, grad).to(ctx.dtypes[1])
            grad_w = grad_w.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        return grad_x, grad_w


def conv3x3(conv, x):
    """conv(x), through SmallConv3x3 where that is faster: training on a CPU with AMX (SMALL_MAPS_BY_MATMUL), feature
    maps of 8x8 or less and 256 input channels or more (oneDNN's own is faster at 15x15, and at 7x7 with 64 channels,
    as in selection.py's proxy), eager mode, and no hooks on the conv (they would not run)."""
    if (SMALL_MAPS_BY_MATMUL and x.device.type == "cpu" and x.shape[-1] * x.shape[-2] <= 64 and x.shape[1] >= 256
            and torch.is_grad_enabled() and conv.weight.requires_grad and not torch.compiler.is_compiling()
            and not (conv._forward_hooks or conv._forward_pre_hooks)):
        assert (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.bias) == (
            (3, 3), (1, 1), (1, 1), (1, 1), 1, None), "SmallConv3x3 is a 3x3, stride-1, pad-1 conv without bias"
        return SmallConv3x3.apply(x, conv.weight)
    return conv(x)


# ----------------------------------------------------------------------------- torchvision ResNets, CIFAR stem

def cifar_resnet(block, layers, num_classes=10, maxpool=False, zero_init_residual=False):
    """torchvision's ResNet with the CIFAR stem: 3x3 stride-1 first conv, max-pool removed
    (kept only where a report kept it: 002's ResNet-9)."""
    model = tv_resnet.ResNet(block, layers, num_classes=num_classes, zero_init_residual=zero_init_residual)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    if not maxpool:
        model.maxpool = nn.Identity()
    return model


# ----------------------------------------------------------------------------- registry

B, NECK = tv_resnet.BasicBlock, tv_resnet.Bottleneck

# name -> (builder(num_classes), report it comes from)
REGISTRY = {
    "lenet": (LeNet, "002/003: PyTorch tutorial CNN"),
    "rescnn6": (lambda n: ResCNN(2, n), "003: 6 residual blocks"),
    "rescnn9": (lambda n: ResCNN(3, n), "003: 9 residual blocks"),
    "dainet7": (DaiNet7, "004: DaiNet7"),
    "resnet9": (lambda n: cifar_resnet(B, [1, 1, 1, 1], n, maxpool=True), "002: ResNet-9 (3x3 stem + max-pool)"),
    "resnet18": (lambda n: cifar_resnet(B, [2, 2, 2, 2], n), "000/001: ResNet-18, CIFAR stem"),
    "resnet34": (lambda n: cifar_resnet(B, [3, 4, 6, 3], n), "000/001: ResNet-34, CIFAR stem"),
    "resnet50": (lambda n: cifar_resnet(NECK, [3, 4, 6, 3], n), "000/001/004: ResNet-50, CIFAR stem"),
    "resnet101": (lambda n: cifar_resnet(NECK, [3, 4, 23, 3], n), "001: ResNet-101, CIFAR stem"),
    "resnet152": (lambda n: cifar_resnet(NECK, [3, 8, 36, 3], n), "001: ResNet-152, CIFAR stem"),
    "vgg_a": (lambda n: VGG(False, n), "003: VGG-A (Santurkar et al. 2018)"),
    "vgg_a_bn": (lambda n: VGG(True, n), "003: VGG-A with BatchNorm"),
    "fastnet": (FastNet, "ours: airbench-style net for time-to-accuracy"),
}
ARCHS = list(REGISTRY)


def init_weights(model, zero_init_residual=False):
    """Kaiming-normal convs (fan_out, as torchvision's ResNet), zero conv biases, BN weight 1 / bias 0.
    Linear layers keep PyTorch's default. With zero_init_residual the last BN of every residual
    branch starts at 0, so each block begins as the identity (Goyal et al. 2017)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, NECK):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, B):
                nn.init.zeros_(m.bn2.weight)
    return model


def xavier_init(model):
    """Xavier-normal conv and linear weights, zero biases (BN keeps build_model's weight 1 / bias 0): the
    initialisation of the course code behind report 003 (its VGG-A runs), which landscape.py uses by default."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def build_model(name, num_classes=10, zero_init_residual=False):
    """Build a registered network with standard initialisation (or its own, where it has reset_parameters).
    Unknown names raise ValueError."""
    if name not in REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; choose from: {', '.join(ARCHS)}")
    model = REGISTRY[name][0](num_classes)
    if hasattr(model, "reset_parameters"):
        return model.reset_parameters()
    return init_weights(model, zero_init_residual)


def check_arch(ap, name):
    """Refuse an unknown network name in one line, exit code 2, through the script's argument parser."""
    if name not in ARCHS:
        ap.error(f"unknown --arch {name!r}; choose from: {', '.join(ARCHS)}")


def check_image_size(ap, arch, side, name):
    """Refuse through ap.error, in one line, a network that cannot take side x side images: its pooling or
    fixed-size layers set the smallest image it takes."""
    try:
        with torch.no_grad():
            build_model(arch).eval()(torch.zeros(1, 3, side, side))
    except RuntimeError:
        ap.error(f"{name} cannot take {side}x{side} images (--image-sizes)")


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def count_flops(model, image_size=32):
    """Forward FLOPs for one image, counted by torch.utils.flop_counter (1 multiply-add = 2 FLOPs;
    convolutions and matrix products only, as every published count does)."""
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters())
    x = torch.zeros(1, 3, image_size, image_size, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops()


def init_from_data(model, train_loader, n=5000):
    """Data-dependent initialisation, for a model that has one (fastnet's whitening filters), from the first n
    training images unaugmented; returns the seconds it took (0 for other models)."""
    if not hasattr(model, "init_from_data"):
        return 0.0
    t = time.time()
    model.init_from_data(train_loader.clean_images(n))
    return time.time() - t


def main():
    from runtime import OneLineParser  # errors in one line, as every script's (imported here: models.py is a library)
    ap = OneLineParser(description="List the registered networks: parameters and forward FLOPs per 32x32 image.")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (as in RESULTS.md)")
    args = ap.parse_args()
    rows = []
    for name in ARCHS:
        model = build_model(name)
        flops = count_flops(model)
        rows.append((name, f"{count_params(model):,}", f"{flops / 1e6:,.1f}", f"{flops / 2e6:,.1f}", REGISTRY[name][1]))
    head = ("name", "params", "MFLOPs", "MMACs", "from")
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join(["---", "--:", "--:", "--:", "---"]) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        for r in [head, *rows]:
            print("  ".join(str(x).rjust(w) if i in (1, 2, 3) else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths))))
        print("FLOPs: forward pass of one 32x32 image, 1 multiply-add = 2 FLOPs (torch.utils.flop_counter).")


if __name__ == "__main__":
    main()
