"""CIFAR-10 held on the device as uint8 and augmented there a whole batch at a time (airbench style).

load_cifar10 reads the official `cifar-10-batches-py` pickles (or fetches them with --download),
split_val holds out a stratified validation set, channel_stats gives the normalisation, and Loader
turns uint8 images into normalised float batches: random crop, flip, colour jitter, Cutout and
CutMix/MixUp, every image its own draw, reproducible from (seed, epoch, rank), no per-image Python
and no worker processes. build_loaders wires all of it to the command-line flags of add_data_args.
"""
import contextlib
import os
import pickle

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
ALL_FILES = TRAIN_FILES + ["test_batch", "batches.meta"]  # what cifar-10-batches-py holds
GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


class DataError(Exception):
    """A user-fixable problem with the data or the data flags; the message is one line."""


# ----------------------------------------------------------------------------- loading

def _folder(root: str) -> str:
    """DIR may be the parent of cifar-10-batches-py or hold its files itself (unless such a subfolder holds them too:
    one that --download made beside broken files is read from then on)."""
    root = os.path.expanduser(root)
    sub = os.path.join(root, FOLDER)
    if os.path.basename(os.path.normpath(root)) == FOLDER or (os.path.isfile(os.path.join(root, "batches.meta"))
                                                              and not os.path.isfile(os.path.join(sub, "batches.meta"))):
        return root
    return sub


def _read(folder: str) -> dict:
    def fail(what):
        parent = os.path.dirname(os.path.normpath(folder)) or "."
        local = (f"unpack a local copy into {parent}" if os.path.basename(os.path.normpath(folder)) == FOLDER
                 else "put the official files over these")  # the files sit in --data itself
        raise DataError(f"CIFAR-10 in {folder}: {what}; fetch the official files with --download, "
                        f"or {local} (README.md, section Data)")

    missing = [f for f in ALL_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        fail("folder not found" if not os.path.isdir(folder) else f"missing {', '.join(missing)}")
    raw = {}
    for name in ALL_FILES:
        try:
            with open(os.path.join(folder, name), "rb") as f:
                raw[name] = pickle.load(f, encoding="latin1")
        except Exception as e:  # truncated or corrupt: pickle/numpy raise anything from EOFError to ValueError
            raw[name] = type(e).__name__
        if isinstance(raw[name], str):  # outside the except block, so no pickle traceback rides along
            fail(f"{name} is truncated or corrupt ({raw[name]})")
    classes = raw["batches.meta"].get("label_names") if isinstance(raw["batches.meta"], dict) else None
    if not isinstance(classes, list) or len(classes) != 10:
        fail("batches.meta has no list of 10 label_names")
    per_batch = raw["batches.meta"].get("num_cases_per_batch")
    out = {"classes": classes}
    for split, names in (("train", TRAIN_FILES), ("test", ["test_batch"])):
        xs, ys = [], []
        for name in names:
            d = raw[name]
            x = np.asarray(d.get("data")) if isinstance(d, dict) else np.empty(0)
            y = np.asarray(d.get("labels", []), dtype=np.int64) if isinstance(d, dict) else np.empty(0)
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(x) == 0 or len(y) != len(x):
                fail(f"{name} holds {x.dtype} data of shape {x.shape} and {len(y)} labels, "
                     "not Nx3072 uint8 and N labels")
            if split == "train" and per_batch and len(x) != per_batch:
                fail(f"{name} holds {len(x)} images, batches.meta says {per_batch}")
            if y.min() < 0 or y.max() > 9:
                fail(f"{name} has labels outside 0..9")
            xs.append(x)
            ys.append(y)
        out[split] = torch.from_numpy(np.concatenate(xs)).view(-1, 3, 32, 32), torch.from_numpy(np.concatenate(ys))
    return out


def load_cifar10(root: str, download: bool = False) -> dict:
    """{"train": (x uint8 (N,3,32,32), y int64 (N,)), "test": (x, y), "classes": [10 names]}, on the CPU."""
    if os.path.isfile(os.path.expanduser(root)):  # the downloaded archive itself, or one of the batch files
        raise DataError(f"--data {root} is a file, not a folder: " + (
            f"give the folder that holds it, {os.path.dirname(root) or '.'}" if os.path.basename(root) in ALL_FILES
            else f"unpack it (tar xzf {root} -C DIR) and give --data DIR (README.md, section Data)"))
    folder = _folder(root)
    try:
        return _read(folder)
    except DataError:
        if not download:
            raise
    # torchvision verifies the md5 sums and (re)fetches what is missing or damaged
    folder = os.path.normpath(folder)
    dl_root = (os.path.dirname(folder) or ".") if os.path.basename(folder) == FOLDER else folder
    made, above = [], os.path.abspath(dl_root)  # the folders the download makes: a failed one leaves none behind
    while not os.path.exists(above):
        made, above = made + [above], os.path.dirname(above)
    try:
        import torchvision
        torchvision.datasets.CIFAR10(dl_root, train=True, download=True)
    except Exception as e:
        for new in made:  # the deepest first, each only if the download left it empty
            with contextlib.suppress(OSError):
                os.rmdir(new)
        msg = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"--download into {dl_root} failed ({type(e).__name__}: {msg}); without internet, "
                        f"unpack a local copy into {dl_root} (README.md, section Data)") from None
    return _read(os.path.join(dl_root, FOLDER))


def split_val(images, labels, n_val: int, seed: int = 0):
    """Hold out n_val images, stratified by class, seeded: (train_x, train_y, val_x, val_y)."""
    n = len(labels)
    if not 0 <= n_val < n:
        raise DataError(f"--val {n_val} must be at least 0 and below the {n} training images")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    lab = labels[perm]
    # rank of each image inside its class (in shuffled order) over the class size: taking the n_val
    # smallest keys takes the same fraction of every class
    counts = torch.bincount(lab, minlength=10)
    order = torch.argsort(lab, stable=True)
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - (torch.cumsum(counts, 0) - counts)[lab[order]]
    key = rank.double() / counts[lab].double()
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[perm[torch.argsort(key, stable=True)[:n_val]]] = True
    return images[~is_val], labels[~is_val], images[is_val], labels[is_val]


def scale_shift(mean, std, device="cpu"):
    """(scale, shift) with x * scale + shift = (x/255 - mean) / std for raw 0..255 values x, shaped (3, 1, 1)."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)
    return 1 / (255 * std), -mean / std


def normalise(x_uint8, mean, std):
    """uint8 images (..., 3, H, W) -> float32 (x/255 - mean) / std, in one pass (as Loader feeds the network)."""
    scale, shift = scale_shift(mean, std, x_uint8.device)
    return x_uint8.float().mul_(scale).add_(shift)


def channel_stats(images):
    """Per-channel mean and std of uint8 images, in [0,1] units (float32, shape (3,))."""
    # from a 256-bin histogram per channel: exact, and far cheaper than summing float copies
    h = torch.stack([torch.bincount(images[:, c].reshape(-1), minlength=256) for c in range(3)]).cpu().double()
    v = torch.arange(256, dtype=torch.float64)
    mean = h @ v / h.sum(1)
    var = h @ v.square() / h.sum(1) - mean.square()
    return (mean / 255).float(), (var.clamp(min=0).sqrt() / 255).float()


def _seed(*parts) -> int:
    """A well-mixed 63-bit seed from a few integers (seed, epoch, rank)."""
    return int(np.random.SeedSequence([p % 2**64 for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


# ----------------------------------------------------------------------------- the loader

class Loader:
    """Batches (x, y) on `device` from uint8 images (N,3,H,W) and int labels.

    train=True: a fresh shuffle and fresh augmentation draws per epoch (set_epoch), crop with padding
    `crop` (0 = off), flip (True: a coin per image and epoch, "alternate": each image mirrored on every other
    epoch), jitter strength, Cutout side, mix ("none"/"cutmix"/"mixup"/"both", soft
    targets (B, num_classes)); rank/world_size give each process its shard of one common permutation.
    sizes: the side per epoch the training batches are resized to (progressive resizing; the last one holds
    for the epochs after; None = the images' own).
    train=False: no shuffle, no augmentation, no mixing, order preserved.
    """

    def __init__(self, images, labels, batch_size, *, device="cpu", mean, std, train=False,
                 crop=4, pad_mode="zeros", flip=True, jitter=0.0, cutout=0,
                 mix="none", mix_alpha=1.0, mix_off_epochs=0, epochs=None, num_classes=10, sizes=None,
                 dtype=torch.float32, channels_last=False, drop_last=False, seed=0, rank=0, world_size=1):
        if batch_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size > 0, 0 <= rank < world_size; got {batch_size}, {rank}, {world_size}")
        if pad_mode not in ("zeros", "reflect") or mix not in ("none", "cutmix", "mixup", "both"):
            raise ValueError(f"pad_mode must be zeros/reflect and mix none/cutmix/mixup/both, got {pad_mode}, {mix}")
        if mix_off_epochs and epochs is None:
            raise ValueError("mix_off_epochs needs epochs")
        self.device, self.batch_size, self.train, self.dtype = torch.device(device), batch_size, train, dtype
        self.crop, self.flip, self.jitter, self.cutout = (crop, flip, jitter, cutout) if train else (0, False, 0.0, 0)
        self.mix, self._mix_on, self.mix_alpha = mix, mix, mix_alpha
        self.mix_off_epochs, self.epochs, self.sizes = mix_off_epochs, epochs, list(sizes or []) if train else []
        self.num_classes, self.channels_last, self.drop_last = num_classes, channels_last, drop_last
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.n, _, self.h, self.w = images.shape
        self.labels = labels.to(self.device, torch.int64)
        mean = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.mean, self.std = mean.to(self.device), std.to(self.device)
        self.scale, self.shift = scale_shift(mean, std, self.device)  # once, not per batch
        if not train:
            self.images = images.to(self.device)
            self.num_samples = len(range(rank, self.n, world_size))  # eval shards keep every image
            return
        self.num_samples = self.n // world_size  # equal shards: DDP steps in lockstep
        # pad (and mirror) the whole uint8 set once, so crop+flip of a batch is a single gather below
        p = crop
        src = images.to(self.device)
        if p and pad_mode == "reflect":
            r = torch.arange(-p, self.h + p, device=self.device).abs()
            r = torch.where(r >= self.h, 2 * (self.h - 1) - r, r)
            src = src.index_select(2, r).index_select(3, r)
        elif p:
            src = F.pad(src, (p, p, p, p))
        if flip:  # mirrored copy at index n + i: costs memory (2x the padded set), saves a flip pass per batch
            src = torch.cat([src, src.flip(-1)])
        self.src = src.contiguous()
        _, c, hp, wp = self.src.shape
        self._img_stride, self._wp = c * hp * wp, wp
        # every output row is w contiguous bytes of the padded buffer: view the buffer as overlapping
        # w-byte windows (one per byte offset) so cropping a batch is one index_select of b*c*h rows
        flat = self.src.view(-1)
        self._windows = flat.as_strided((flat.numel() - self.w + 1, self.w), (1, 1))
        self._rows = (torch.arange(c, device=self.device)[:, None] * hp * wp
                      + torch.arange(self.h, device=self.device)[None, :] * wp).view(1, -1)

    def clean_images(self, n: int):
        """The first n images normalised, without augmentation (float32, on the device): for data-dependent init."""
        if not self.train:
            return self._normalise(self.images[:n]).float()
        p = self.crop
        return self._normalise(self.src[:min(n, self.n), :, p:p + self.h, p:p + self.w]).float()

    def set_epoch(self, epoch: int):
        """Pick the epoch whose draws the next iteration replays; switches mixing off for the last K epochs."""
        self.epoch = epoch
        if self.mix_off_epochs:
            self.mix = "none" if epoch >= self.epochs - self.mix_off_epochs else self._mix_on

    @property
    def size(self):
        """The side of this epoch's training batches."""
        return self.sizes[min(self.epoch, len(self.sizes) - 1)] if self.sizes else self.h

    def __len__(self):
        b = self.batch_size
        return self.num_samples // b if self.drop_last else -(-self.num_samples // b)

    def _normalise(self, x):
        """uint8 -> normalised float32 (one conversion), then the asked dtype."""
        x = x.float().mul_(self.scale).add_(self.shift)
        return x if self.dtype == torch.float32 else x.to(self.dtype)

    def __iter__(self):
        b, n = self.batch_size, len(self)
        if not self.train:  # in order; with world_size > 1 every world_size-th image, none dropped
            idx = torch.arange(self.rank, self.n, self.world_size, device=self.device)
            for i in range(n):
                j = idx[i * b:(i + 1) * b]
                yield self._format(self._normalise(self.images[j])), self.labels[j]
            return
        dev = self.device
        # same permutation on every rank (seed, epoch); each rank its strided shard, remainder dropped
        g = torch.Generator(device=dev).manual_seed(_seed(self.seed, self.epoch))
        shard = torch.randperm(self.n, generator=g, device=dev)[self.rank::self.world_size][:self.num_samples]
        # all of this epoch's augmentation draws at once, always in the same order, from (seed, epoch, rank)
        g = torch.Generator(device=dev).manual_seed(_seed(self.seed, self.epoch, self.rank))
        m, p = self.num_samples, self.crop
        dy = torch.randint(0, 2 * p + 1, (m,), generator=g, device=dev)
        dx = torch.randint(0, 2 * p + 1, (m,), generator=g, device=dev)
        flip = torch.rand(m, generator=g, device=dev) < 0.5
        # (the coins above are drawn in every mode, so the draws after them stay the same)
        if self.flip == "alternate":  # airbench: every image mirrored on every other epoch, from a random start
            g0 = torch.Generator(device=dev).manual_seed(_seed(self.seed, 2**32))  # per image, the same each epoch
            flip = (torch.rand(self.n, generator=g0, device=dev) < 0.5)[shard] ^ bool(self.epoch % 2)
        factors = torch.rand(m, 3, generator=g, device=dev)
        centres = torch.randint(0, max(self.h, self.w), (m, 2), generator=g, device=dev)
        mix_seeds = torch.randint(0, 2**31 - 1, (n,), generator=g, device=dev).tolist()  # one sync an epoch
        k = shard + self.n * flip if self.flip else shard
        starts = k * self._img_stride + dy * self._wp + dx
        mixer = self._mixer()
        for i in range(n):
            s = slice(i * b, (i + 1) * b)
            rows = (starts[s, None] + self._rows).view(-1)
            x = self._windows.index_select(0, rows).view(-1, 3, self.h, self.w)
            y = self.labels[shard[s]]
            self.indices = shard[s]  # which training images this batch holds (selection.LastLoss reads it)
            if self.jitter:
                x = self._color_jitter(x.float().div_(255), factors[s])
                x = ((x - self.mean) / self.std).to(self.dtype)
            else:
                x = self._normalise(x)
            if self.cutout:
                x = self._cutout(x, centres[s])
            if self.size != self.h:  # after the crop, so a shift is the same share of the picture at any size
                x = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear", antialias=True,
                                  align_corners=False).to(x.dtype)
            if mixer is not None:  # v2 draws from the global CPU RNG: fork it and seed from our generator
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(mix_seeds[i])
                    x, y = mixer(x, y)
            yield self._format(x), y

    def _format(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _color_jitter(self, x, u):
        """Brightness, contrast, saturation (this fixed order), factors uniform in [1-s, 1+s] like ColorJitter."""
        f = (1 + self.jitter * (2 * u - 1)).clamp(min=0).view(-1, 3, 1, 1, 1)
        gray = torch.tensor(GRAY, device=x.device).view(1, 3, 1, 1)
        x = (x * f[:, 0]).clamp_(0, 1)
        m = (x * gray).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        x = (f[:, 1] * x + (1 - f[:, 1]) * m).clamp_(0, 1)
        return (f[:, 2] * x + (1 - f[:, 2]) * (x * gray).sum(1, keepdim=True)).clamp_(0, 1)

    def _cutout(self, x, centres):
        """Zero (after normalisation, i.e. the mean colour, as the Cutout paper) a KxK square, clipped at the border."""
        k = self.cutout
        top, left = (centres[:, 0] - k // 2).view(-1, 1, 1, 1), (centres[:, 1] - k // 2).view(-1, 1, 1, 1)
        ys = torch.arange(self.h, device=x.device).view(1, 1, -1, 1)
        xs = torch.arange(self.w, device=x.device).view(1, 1, 1, -1)
        hole = (ys >= top) & (ys < top + k) & (xs >= left) & (xs < left + k)
        return x.masked_fill(hole, 0)

    def _mixer(self):
        if self.mix not in ("none", "cutmix", "mixup", "both"):
            raise ValueError(f"mix must be none/cutmix/mixup/both, got {self.mix!r}")
        if self.mix == "none":
            return None
        cutmix = v2.CutMix(alpha=self.mix_alpha, num_classes=self.num_classes)
        mixup = v2.MixUp(alpha=self.mix_alpha, num_classes=self.num_classes)
        return {"cutmix": cutmix, "mixup": mixup, "both": v2.RandomChoice([cutmix, mixup])}[self.mix]


# ----------------------------------------------------------------------------- command line

def add_data_args(parser, helps=None, resize=False):
    """The data flags (see README); `helps` replaces the help text of some, by dest (a script with other defaults);
    resize: also --image-sizes (train.py's: the other scripts measure at the images' own size)."""
    h = {"data": "folder holding cifar-10-batches-py, or that folder",
         "download": "fetch the official files through torchvision if missing or damaged",
         "val": "hold out N training images (stratified) to pick the best epoch on",
         "crop_pad": "random crop with this padding (0 = off)",
         "pad_mode": "what --crop-pad pads with",
         "no_flip": "no random horizontal flip",
         "alt_flip": "flip every image on every other epoch (random start per image) instead of a coin per epoch: "
                     "each image is seen both ways in any two epochs (airbench)",
         "jitter": "colour jitter: brightness/contrast/saturation factors in [1-S, 1+S] (0 = off)",
         "cutout": "Cutout square side in pixels, up to 32 (0 = off)",
         "mix": "CutMix/MixUp with soft targets; both = a random one of the two per batch",
         "mix_alpha": "mixing ratio ~ Beta(A, A)",
         "mix_off_epochs": "no mixing in the last K epochs",
         "image_sizes": "progressive resizing: train epoch 1 on images resized to S1 x S1, epoch 2 to S2, ...; the "
                        "last S holds for the epochs after (a step's cost follows the pixels; tests stay 32x32)",
         **(helps or {})}
    g = parser.add_argument_group("data")
    # absolute: a run folder records where its data is, for a resume or evaluate.py from another working folder
    g.add_argument("--data", default="./data", type=lambda p: os.path.abspath(os.path.expanduser(p)), metavar="DIR",
                   help=h["data"])
    g.add_argument("--download", action="store_true", help=h["download"])
    g.add_argument("--val", type=int, default=0, metavar="N", help=h["val"])
    g.add_argument("--crop-pad", type=int, default=4, metavar="P", help=h["crop_pad"])
    g.add_argument("--pad-mode", default="zeros", choices=["zeros", "reflect"], help=h["pad_mode"])
    g.add_argument("--no-flip", action="store_true", help=h["no_flip"])
    g.add_argument("--alt-flip", action="store_true", help=h["alt_flip"])
    g.add_argument("--jitter", type=float, default=0.0, metavar="S", help=h["jitter"])
    g.add_argument("--cutout", type=int, default=0, metavar="K", help=h["cutout"])
    g.add_argument("--mix", default="none", choices=["none", "cutmix", "mixup", "both"], help=h["mix"])
    g.add_argument("--mix-alpha", type=float, default=1.0, metavar="A", help=h["mix_alpha"])
    g.add_argument("--mix-off-epochs", type=int, default=0, metavar="K", help=h["mix_off_epochs"])
    if resize:
        g.add_argument("--image-sizes", type=int, nargs="+", default=None, metavar="S", help=h["image_sizes"])


def flip_mode(args):
    """Loader's flip from the flags: False, True (a coin per image and epoch) or "alternate"."""
    return False if args.no_flip else "alternate" if args.alt_flip else True


def check_augment_args(args):
    """DataError for augmentation flags that make no sense on a 32x32 image (NaN fails every comparison): a Cutout
    square over 32 px blanks most of it, one of 63 all of it."""
    for flag, holds, words in (("crop_pad", 0 <= args.crop_pad < 32, "in [0, 32)"), ("cutout", 0 <= args.cutout <= 32,
                               "in [0, 32]"), ("jitter", args.jitter >= 0, ">= 0"), ("mix_alpha", args.mix_alpha > 0,
                               "positive")):
        if not holds:
            raise DataError(f"--{flag.replace('_', '-')} must be {words}, got {getattr(args, flag)}")


def augment_warnings(args, epochs):
    """Augmentation flags that never take effect in a run of `epochs`: warned, not refused (a short trial of a long
    recipe is meant)."""
    if args.mix != "none" and args.mix_off_epochs >= epochs:
        return [f"--mix-off-epochs {args.mix_off_epochs} covers every epoch (--epochs {epochs}): --mix {args.mix} "
                "never mixes"]
    return []


def build_loaders(args, device, batch_size, *, dtype=torch.float32, channels_last=False, seed=0, epochs=None,
                  eval_batch_size=None, rank=0, world_size=1, subset=None, mean_std=None):
    """(train_loader, val_loader or None, test_loader, info) from the flags of add_data_args. Inputs are
    normalised with the training images' per-channel statistics, or with mean_std = (mean, std) if given."""
    check_augment_args(args)
    if args.mix_off_epochs < 0 or (args.mix_off_epochs and epochs is None):
        raise DataError("--mix-off-epochs must be >= 0 (and needs a known number of epochs)")
    sizes = getattr(args, "image_sizes", None)
    if sizes and not all(8 <= s <= 32 for s in sizes):
        raise DataError(f"--image-sizes must lie in 8..32 (the images are 32x32), got {' '.join(map(str, sizes))}")
    d = load_cifar10(args.data, download=args.download)
    (x, y), (tx, ty) = d["train"], d["test"]
    if subset:
        x, y, tx, ty = x[:subset], y[:subset], tx[:subset], ty[:subset]
    x, y, vx, vy = split_val(x, y, args.val, seed=seed)
    mean, std = channel_stats(x) if mean_std is None else (torch.as_tensor(v, dtype=torch.float32) for v in mean_std)
    if len(x) // world_size < 2:  # a batch of 1 is dropped (below), which would leave no batch at all
        raise DataError(f"{len(x)} training image(s) for {world_size} process(es): each needs at least 2")
    common = dict(device=device, mean=mean, std=std, num_classes=len(d["classes"]), dtype=dtype,
                  channels_last=channels_last)
    train = Loader(x, y, batch_size, train=True, crop=args.crop_pad, pad_mode=args.pad_mode, flip=flip_mode(args),
                   jitter=args.jitter, cutout=args.cutout, mix=args.mix, mix_alpha=args.mix_alpha,
                   mix_off_epochs=args.mix_off_epochs, epochs=epochs, sizes=sizes, seed=seed, rank=rank,
                   world_size=world_size,
                   drop_last=(len(x) // world_size) % batch_size == 1,  # a 1-image batch breaks BatchNorm in train mode
                   **common)
    # eval loaders are not sharded: every rank evaluates the whole split
    eb = eval_batch_size or batch_size
    val = Loader(vx, vy, eb, **common) if args.val else None
    test = Loader(tx, ty, eb, **common)
    info = {"classes": d["classes"], "mean": mean.tolist(), "std": std.tolist(), "n_train": len(x),
            "n_val": len(vx), "n_test": len(tx), "select_split": "val" if val is not None else "test"}
    return train, val, test, info


# ----------------------------------------------------------------------------- synthetic data for tests

def make_synthetic(root: str, n_train: int = 500, n_test: int = 100, seed: int = 0) -> str:
    """Write a small fake cifar-10-batches-py under root (official pickle layout); returns its path.

    Each class has its own mean colour plus noise, so a tiny network learns it within an epoch.
    """
    if n_train % 5 or n_train <= 0 or n_test <= 0:
        raise ValueError(f"n_train must be a positive multiple of 5 and n_test positive, got {n_train}, {n_test}")
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(1234).integers(30, 226, (10, 3))
    folder = os.path.join(root, FOLDER)
    os.makedirs(folder, exist_ok=True)

    def batch(n, name):
        labels = rng.permutation(np.arange(n) % 10)
        x = palette[labels][:, :, None] + rng.normal(0, 45, (n, 3, 1024))
        return {"batch_label": name, "labels": labels.tolist(), "filenames": [f"{name}_{i}.png" for i in range(n)],
                "data": x.clip(0, 255).astype(np.uint8).reshape(n, 3072)}

    files = {f: batch(n_train // 5, f) for f in TRAIN_FILES}
    files["test_batch"] = batch(n_test, "test_batch")
    files["batches.meta"] = {"num_cases_per_batch": n_train // 5, "num_vis": 3072,
                             "label_names": ["airplane", "automobile", "bird", "cat", "deer",
                                             "dog", "frog", "horse", "ship", "truck"]}
    for name, obj in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(obj, f, protocol=2)
    return folder
