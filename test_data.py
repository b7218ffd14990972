"""data.py: loading, errors, splits, augmentation, reproducibility, sharding.

Synthetic pickles (data.make_synthetic) always; the real copy too when $CIFAR10_DIR is set
(the folder that contains cifar-10-batches-py).
"""
import argparse
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

import data

REAL = os.environ.get("CIFAR10_DIR")
real_only = pytest.mark.skipif(not REAL, reason="set CIFAR10_DIR to the folder holding cifar-10-batches-py")
RAW = dict(mean=[0.0, 0.0, 0.0], std=[1 / 255] * 3)  # normalisation that leaves the 0..255 pixel values as they are


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Parent folder of a synthetic cifar-10-batches-py: 1000 train, 200 test images."""
    root = str(tmp_path_factory.mktemp("synth"))
    data.make_synthetic(root, n_train=1000, n_test=200)
    return root


@pytest.fixture(scope="module")
def real():
    if not REAL:
        pytest.skip("set CIFAR10_DIR to the folder holding cifar-10-batches-py")
    return data.load_cifar10(REAL)


def args_for(root, *flags):
    ap = argparse.ArgumentParser()
    data.add_data_args(ap, resize=True)
    return ap.parse_args(["--data", root, *flags])


def batches(loader, epoch=0):
    loader.set_epoch(epoch)
    return list(loader)


def position_image():
    """One image whose pixels say where they are: ch0 = 100 + row, ch1 = 100 + column, ch2 = 200."""
    i = torch.arange(32)
    return torch.stack([(100 + i)[:, None].expand(32, 32), (100 + i)[None, :].expand(32, 32),
                        torch.full((32, 32), 200)]).to(torch.uint8)


# ----------------------------------------------------------------------------- loading and errors

def test_load_synthetic(synth):
    d = data.load_cifar10(synth)
    x, y = d["train"]
    assert x.shape == (1000, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [100] * 10 and torch.bincount(d["test"][1]).tolist() == [20] * 10
    assert d["test"][0].shape == (200, 3, 32, 32) and d["classes"][0] == "airplane" and len(d["classes"]) == 10
    same = data.load_cifar10(os.path.join(synth, "cifar-10-batches-py"))  # the folder itself works too
    assert torch.equal(same["train"][0], x)


@real_only
def test_load_real(real):
    (x, y), (tx, ty) = real["train"], real["test"]
    assert x.shape == (50000, 3, 32, 32) and tx.shape == (10000, 3, 32, 32)
    assert x.dtype == tx.dtype == torch.uint8 and y.dtype == ty.dtype == torch.int64
    assert torch.bincount(y).tolist() == [5000] * 10 and torch.bincount(ty).tolist() == [1000] * 10
    assert real["classes"] == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    mean, std = data.channel_stats(x)
    assert torch.allclose(mean, torch.tensor([0.4913, 0.4821, 0.4465]), atol=2e-4)
    assert torch.allclose(std, torch.tensor([0.2452, 0.2428, 0.2606]), atol=2e-4)


def assert_helpful(err, folder):
    msg = str(err.value)
    assert "\n" not in msg and folder in msg and "--download" in msg and "unpack" in msg, msg
    assert "README.md, section Data" in msg and "unpack.py" not in msg, msg  # no script the repo does not hold


def test_every_command_that_reads_cifar10_takes_the_download_the_advice_names(monkeypatch):
    """DataError's one line says "fetch the official files with --download": every script and subcommand with a
    --data flag takes --download too (bench.py's data, epoch and race, visualize.py's subcommands among them)."""
    from test_runtime import every_scripts_parser  # each script's parser and its subcommands'
    lacking = {p.prog.split()[-1] for p in every_scripts_parser(monkeypatch)
               if "--data" in p._option_string_actions and "--download" not in p._option_string_actions}
    assert not lacking, lacking


def test_broken_files_in_data_itself_get_advice_that_works(tmp_path):
    """--data DIR may hold the batch files itself: a broken one is not fixed by unpacking into DIR's parent, and a
    --download beside it (into DIR/cifar-10-batches-py) must be what the next run reads."""
    own = tmp_path / "own"
    os.rename(data.make_synthetic(str(tmp_path)), own)
    (own / "data_batch_2").write_bytes((own / "data_batch_2").read_bytes()[:1000])
    (own / data.FOLDER).mkdir()  # an empty subfolder does not hide the files in --data itself
    with pytest.raises(data.DataError) as e:
        data.load_cifar10(str(own))
    assert "data_batch_2 is truncated" in str(e.value) and "put the official files over these" in str(e.value)
    assert "unpack a local copy" not in str(e.value)
    data.make_synthetic(str(own))  # what --download writes there
    assert len(data.load_cifar10(str(own))["train"][1]) == 500


def test_missing_folder(tmp_path):
    with pytest.raises(data.DataError) as e:
        data.load_cifar10(str(tmp_path / "nowhere"))
    assert_helpful(e, str(tmp_path / "nowhere"))


@pytest.mark.parametrize("download", [False, True])
def test_an_archive_given_as_data_is_told_to_be_unpacked(tmp_path, download):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b")
    with pytest.raises(data.DataError) as e:
        data.load_cifar10(str(archive), download=download)
    assert str(e.value) == (f"--data {archive} is a file, not a folder: unpack it (tar xzf {archive} -C DIR) and "
                            "give --data DIR (README.md, section Data)")
    batch = tmp_path / "data_batch_1"  # one of the unpacked files: its folder is what --data wants
    batch.write_bytes(b"")
    with pytest.raises(data.DataError, match=f"is a file, not a folder: give the folder that holds it, {tmp_path}$"):
        data.load_cifar10(str(batch), download=download)


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "wrong_shape"])
def test_damaged_folder(synth, tmp_path, damage):
    folder = str(tmp_path / "cifar-10-batches-py")
    shutil.copytree(os.path.join(synth, "cifar-10-batches-py"), folder)
    path = os.path.join(folder, "data_batch_3")
    if damage == "missing":
        os.remove(path)
    elif damage == "truncated":
        os.truncate(path, os.path.getsize(path) // 2)
    elif damage == "garbage":
        open(path, "wb").write(b"not a pickle at all")
    else:
        import pickle
        pickle.dump({"data": torch.zeros(200, 1000, dtype=torch.uint8).numpy(), "labels": [0] * 200}, open(path, "wb"))
    with pytest.raises(data.DataError) as e:
        data.load_cifar10(str(tmp_path))
    assert_helpful(e, folder)
    assert "data_batch_3" in str(e.value)
    assert e.value.__context__ is None  # no pickle traceback riding along


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    import torchvision

    def offline(root, **k):  # as torchvision: the folder made, then the fetch fails
        os.makedirs(root, exist_ok=True)
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(data.DataError) as e:
        data.load_cifar10(str(tmp_path), download=True)
    assert str(tmp_path) in str(e.value) and "unpack" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(data.DataError):  # the folders it made for the download are gone again
        data.load_cifar10(str(tmp_path / "new" / "sub"), download=True)
    assert os.listdir(tmp_path) == []
    assert "README.md, section Data" in str(e.value) and "unpack.py" not in str(e.value)


# ----------------------------------------------------------------------------- split and statistics

def with_ids(images):
    """A copy whose first two pixels hold the image's index, to check splits by content."""
    x = images.clone()
    i = torch.arange(len(x))
    x[:, 0, 0, 0], x[:, 0, 0, 1] = (i // 256).to(torch.uint8), (i % 256).to(torch.uint8)
    return x


def ids(images):
    return (images[:, 0, 0, 0].long() * 256 + images[:, 0, 0, 1].long()).tolist()


def check_split(x, y, n_val, per_class):
    tx, ty, vx, vy = data.split_val(with_ids(x), y, n_val, seed=3)
    assert len(vx) == n_val and len(tx) == len(x) - n_val and len(ty) == len(tx) and len(vy) == len(vx)
    assert torch.bincount(vy, minlength=10).tolist() == [per_class] * 10
    assert not set(ids(tx)) & set(ids(vx)) and len(set(ids(tx)) | set(ids(vx))) == len(x)
    again = data.split_val(with_ids(x), y, n_val, seed=3)
    assert torch.equal(again[2], vx) and not torch.equal(data.split_val(with_ids(x), y, n_val, seed=4)[2], vx)


def test_split_val_synthetic(synth):
    x, y = data.load_cifar10(synth)["train"]
    check_split(x, y, 100, 10)
    tx, ty, vx, vy = data.split_val(x, y, 0)
    assert len(tx) == 1000 and len(vx) == 0 and len(vy) == 0
    for bad in (-1, 1000):
        with pytest.raises(data.DataError):
            data.split_val(x, y, bad)


@real_only
def test_split_val_real(real):
    check_split(*real["train"], 5000, 500)


def test_channel_stats_exact():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    mean, std = data.channel_stats(x)
    f = x.double() / 255
    assert torch.allclose(mean.double(), f.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(std.double(), f.transpose(0, 1).reshape(3, -1).std(1, unbiased=False), atol=1e-6)


# ----------------------------------------------------------------------------- augmentation

@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
def test_crop_moves_at_most_4_and_pads(pad_mode):
    x = position_image().expand(512, 3, 32, 32).contiguous()
    loader = data.Loader(x, torch.zeros(512, dtype=torch.int64), 512, train=True, flip=False, crop=4,
                         pad_mode=pad_mode, **RAW)
    (out, _), = batches(loader)
    out = out.round().long()
    rows, cols = torch.arange(32).view(32, 1), torch.arange(32).view(1, 32)
    shifts = set()
    for img in out:
        inside = img[2] == 200
        if pad_mode == "zeros":  # outside the image: all channels 0, and a border of at most 4
            assert (img[:, ~inside] == 0).all() and inside[4:28, 4:28].all()
            dy, dx = (img[0] - 100 - rows)[inside].unique(), (img[1] - 100 - cols)[inside].unique()
            assert len(dy) == len(dx) == 1
        else:  # reflect: never a zero, and every pixel is the reflection of a shift of at most 4
            assert inside.all()
            dy, dx = img[0, 4, 0] - 100 - 4, img[1, 0, 4] - 100 - 4
            src_r = (rows + dy).abs()
            src_r = torch.where(src_r > 31, 62 - src_r, src_r)
            src_c = (cols + dx).abs()
            src_c = torch.where(src_c > 31, 62 - src_c, src_c)
            assert torch.equal(img[0], (100 + src_r).expand(32, 32))
            assert torch.equal(img[1], (100 + src_c).expand(32, 32))
        assert abs(int(dy)) <= 4 and abs(int(dx)) <= 4
        shifts.add((int(dy), int(dx)))
    assert len(shifts) > 70  # 81 possible, all about equally likely


def test_flip_about_half():
    x = position_image().expand(4000, 3, 32, 32).contiguous()
    loader = data.Loader(x, torch.zeros(4000, dtype=torch.int64), 4000, train=True, crop=0, **RAW)
    (out, _), = batches(loader)
    flipped = out[:, 1, 0, 0] == 131
    assert ((out[:, 1, 0, 0] == 100) | flipped).all()
    assert 0.45 < flipped.float().mean() < 0.55
    assert torch.equal(out[flipped][:, 1].flip(-1), out[~flipped][:1, 1].expand(int(flipped.sum()), 32, 32))


@pytest.mark.parametrize("crop,pad_mode", [(0, "zeros"), (2, "reflect"), (4, "zeros")])
def test_clean_images_are_the_first_images_normalised_unaugmented(synth, crop, pad_mode):
    x, y = data.load_cifar10(synth)["train"]
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    want = (x[:30] / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    for train in (True, False):
        loader = data.Loader(x, y, 64, mean=mean, std=std, train=train, crop=crop, pad_mode=pad_mode,
                             dtype=torch.bfloat16)
        got = loader.clean_images(30)
        assert got.dtype == torch.float32 and got.shape == (30, 3, 32, 32)
        assert torch.allclose(got, want, atol=0.03)  # bf16 rounding of the normalised values


def test_alternate_flip_mirrors_each_image_every_other_epoch():
    n = 2000
    x = position_image().expand(n, 3, 32, 32).contiguous()
    alternate = data.Loader(x, torch.arange(n), 500, train=True, crop=0, flip="alternate", **RAW)
    coin = data.Loader(x, torch.arange(n), 500, train=True, crop=0, flip=True, **RAW)

    def flipped(loader, epoch):  # by image (the label is the image's index)
        out = batches(loader, epoch)
        xs, ys = torch.cat([b for b, _ in out]), torch.cat([t for _, t in out])
        f = torch.empty(n, dtype=torch.bool)
        f[ys] = xs[:, 1, 0, 0] == 131
        return f

    f0, f1, f2 = flipped(alternate, 0), flipped(alternate, 1), flipped(alternate, 2)
    assert 0.45 < f0.float().mean() < 0.55
    assert torch.equal(f1, ~f0) and torch.equal(f2, f0)  # both ways in any two epochs
    assert not torch.equal(flipped(coin, 1), ~flipped(coin, 0))  # a coin per epoch does not alternate


def test_image_sizes_resize_each_epochs_batches_and_leave_eval_alone(synth):
    x = position_image().expand(100, 3, 32, 32).contiguous()
    y = torch.zeros(100, dtype=torch.int64)
    loader = data.Loader(x, y, 50, train=True, crop=0, flip=False, sizes=[16, 24], **RAW)
    assert [b.shape[-1] for b, _ in batches(loader, 0)] == [16, 16]
    assert [b.shape[-1] for b, _ in batches(loader, 1)] == [24, 24]
    assert [b.shape[-1] for b, _ in batches(loader, 5)] == [24, 24]  # the last size holds
    (small, _), _ = batches(loader, 0)
    want = F.interpolate(x[:1].float(), size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(small[:1], want, atol=1e-4)  # the whole picture, smoothed: not a crop of it
    assert small[0, 0, 0, 0] < 102 and small[0, 0, -1, 0] > 129
    test = data.Loader(x, y, 50, sizes=[16], **RAW)
    assert [b.shape[-1] for b, _ in test] == [32, 32]
    with pytest.raises(data.DataError, match="--image-sizes must lie in 8..32 .* got 16 40"):
        data.build_loaders(args_for(synth, "--image-sizes", "16", "40"), "cpu", 50)
    tr, *_ = data.build_loaders(args_for(synth, "--image-sizes", "16", "24"), "cpu", 50)
    assert tr.sizes == [16, 24]


def test_eval_loader_keeps_order_and_pixels(synth):
    x, y = data.load_cifar10(synth)["test"]
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    out = batches(data.Loader(x, y, 64, mean=mean, std=std))
    assert [len(b) for b, _ in out] == [64, 64, 64, 8]
    xs, ys = torch.cat([b for b, _ in out]), torch.cat([t for _, t in out])
    assert torch.equal(ys, y) and torch.allclose(xs, (x / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1), atol=1e-5)


def test_jitter_changes_colours_within_range():
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    plain = batches(data.Loader(x, torch.zeros(256, dtype=torch.int64), 256, train=True, **RAW))[0][0]
    jit = batches(data.Loader(x, torch.zeros(256, dtype=torch.int64), 256, train=True, jitter=0.4, **RAW))[0][0]
    assert jit.min() >= -1e-3 and jit.max() <= 255 + 1e-3
    # the same crop and flip (draws come in a fixed order), different colours, mean brightness ratio within [0.6, 1.4]
    assert not torch.allclose(plain, jit)
    ratio = jit.mean((1, 2, 3)) / plain.mean((1, 2, 3))
    assert ratio.min() > 0.5 and ratio.max() < 1.5 and ratio.std() > 0.05


def test_cutout_square():
    x = torch.full((500, 3, 32, 32), 255, dtype=torch.uint8)
    out = batches(data.Loader(x, torch.zeros(500, dtype=torch.int64), 500, train=True, crop=0, cutout=8, **RAW))[0][0]
    holes = out[:, 0] == 0
    assert ((out == 0) == holes[:, None]).all()  # all channels zeroed together
    area = holes.sum((1, 2))
    assert (area > 0).all() and (area <= 64).all() and (area == 64).float().mean() > 0.5
    h, w = holes.any(2).sum(1), holes.any(1).sum(1)
    assert torch.equal(h * w, area) and (h <= 8).all() and (w <= 8).all()  # a (clipped) square


# ----------------------------------------------------------------------------- epochs, reproducibility, shards

def make_loader(n=600, **kw):
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    kw = {"batch_size": 128, "train": True, "mean": [0.5] * 3, "std": [0.25] * 3, **kw}
    return data.Loader(x, torch.arange(n), kw.pop("batch_size"), **kw)


def test_epoch_visits_every_image_once_keep_or_drop_last():
    keep = make_loader(drop_last=False)
    out = batches(keep, 1)
    assert len(keep) == len(out) == 5 and len(out[-1][0]) == 600 - 4 * 128 and keep.num_samples == 600
    assert sorted(torch.cat([y for _, y in out]).tolist()) == list(range(600))
    drop = make_loader(drop_last=True)
    out = batches(drop, 1)
    assert len(drop) == len(out) == 4 and all(len(x) == 128 for x, _ in out)
    assert len(set(torch.cat([y for _, y in out]).tolist())) == 512


def test_each_batch_names_its_images():
    """Loader.indices holds which training images the batch just yielded (selection.LastLoss keys its table by
    them), on every rank's shard: with no augmentation the batch is those images, and the labels here are the
    indices themselves."""
    plain = torch.cat([x for x, _ in make_loader(train=False, batch_size=600)])
    for rank in (0, 1):
        loader = make_loader(rank=rank, world_size=2, crop=0, flip=False)
        loader.set_epoch(2)
        for x, y in loader:
            assert torch.equal(loader.indices, y) and torch.equal(x, plain[loader.indices])


def test_same_seed_same_batches_other_epoch_or_seed_differs():
    a = batches(make_loader(seed=1, jitter=0.2, cutout=6), 3)
    b = batches(make_loader(seed=1, jitter=0.2, cutout=6), 3)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    c = batches(make_loader(seed=1, jitter=0.2, cutout=6), 4)
    d = batches(make_loader(seed=2, jitter=0.2, cutout=6), 3)
    assert not torch.equal(a[0][1], c[0][1]) and not torch.equal(a[0][1], d[0][1])
    loader = make_loader(seed=1)
    first = batches(loader, 5)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, list(loader)))  # no set_epoch: replays the last


def test_bf16_and_channels_last():
    f32 = batches(make_loader())[0][0]
    x = batches(make_loader(dtype=torch.bfloat16, channels_last=True))[0][0]
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x.float(), f32, atol=0.05)


@pytest.mark.parametrize("mix", ["cutmix", "mixup", "both"])
def test_mix_soft_targets_reproducible(mix):
    def run():
        x = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        loader = data.Loader(x, torch.arange(300) % 10, 64, train=True, mix=mix, mix_alpha=1.0, mean=[0.5] * 3,
                             std=[0.25] * 3, seed=7, dtype=torch.bfloat16, channels_last=True)
        return batches(loader, 2)
    state = torch.random.get_rng_state()
    a, b = run(), run()
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    for (x1, y1), (x2, y2) in zip(a, b):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert y1.shape == (len(x1), 10) and y1.dtype == torch.float32
        assert torch.allclose(y1.sum(1), torch.ones(len(x1))) and x1.is_contiguous(memory_format=torch.channels_last)
    assert any((y.max(1).values < 1).any() for _, y in a)  # something was mixed


def test_mix_off_for_last_epochs():
    loader = make_loader(mix="cutmix", mix_off_epochs=2, epochs=5, num_classes=1000)
    assert batches(loader, 2)[0][1].ndim == 2 and loader.mix == "cutmix"
    assert batches(loader, 3)[0][1].ndim == 1 and loader.mix == "none"
    loader = make_loader(mix="mixup", num_classes=1000)
    loader.mix = "none"  # what train.py may do by hand
    assert batches(loader, 0)[0][1].ndim == 1


def test_rank_shards_disjoint_and_covering():
    world = 3
    loaders = [make_loader(n=1000, world_size=world, rank=r, seed=5) for r in range(world)]
    shards = [torch.cat([y for _, y in batches(loader, 2)]).tolist() for loader in loaders]
    assert all(len(s) == 333 and loader.num_samples == 333 for s, loader in zip(shards, loaders))
    assert len({len(loader) for loader in loaders}) == 1
    union = set().union(*shards)
    assert len(union) == 999 and not set(shards[0]) & set(shards[1]) and union <= set(range(1000))
    # one common permutation: the shards interleave it, and differ epoch to epoch
    again = torch.cat([y for _, y in batches(make_loader(n=1000, world_size=world, rank=1, seed=5), 3)]).tolist()
    assert again != shards[1]


# ----------------------------------------------------------------------------- build_loaders and flags

def test_build_loaders_synthetic(synth):
    tr, val, te, info = data.build_loaders(args_for(synth), "cpu", 100)
    assert val is None and info["select_split"] == "test"
    assert info["n_train"] == 1000 and info["n_test"] == 200 and info["n_val"] == 0 and len(tr) == 10
    tr, val, te, info = data.build_loaders(args_for(synth, "--val", "200", "--mix", "both", "--mix-off-epochs", "1"),
                                           "cpu", 100, epochs=3, eval_batch_size=150, subset=900)
    assert info["select_split"] == "val"
    assert (info["n_train"], info["n_val"], info["n_test"]) == (700, 200, 200)
    assert len(tr) == 7 and len(val) == 2 and len(te) == 2 and len(info["mean"]) == len(info["std"]) == 3
    x, y = next(iter(val))
    assert x.shape == (150, 3, 32, 32) and y.dtype == torch.int64
    tr.set_epoch(2)
    assert next(iter(tr))[1].ndim == 1
    for flags in (["--val", "1000"], ["--cutout", "-1"], ["--cutout", "33"], ["--crop-pad", "-2"]):
        with pytest.raises(data.DataError):
            data.build_loaders(args_for(synth, *flags), "cpu", 100)


def test_add_data_args_defaults():
    a = args_for("./data")
    assert (a.data, a.download, a.val, a.crop_pad, a.pad_mode, a.no_flip, a.jitter, a.cutout, a.mix, a.mix_alpha,
            a.mix_off_epochs) == (os.path.abspath("data"), False, 0, 4, "zeros", False, 0.0, 0, "none", 1.0, 0)


@real_only
def test_build_loaders_real():
    tr, val, te, info = data.build_loaders(args_for(REAL, "--val", "5000"), "cpu", 512)
    assert (info["n_train"], info["n_val"], info["n_test"]) == (45000, 5000, 10000) and len(tr) == 88
    assert torch.bincount(val.labels).tolist() == [500] * 10 and torch.bincount(tr.labels).tolist() == [4500] * 10
    x, y = next(iter(tr))
    assert x.shape == (512, 3, 32, 32) and x.dtype == torch.float32 and -2.1 < x.mean() < 1.0 and 0.5 < x.std() < 1.5


def test_data_is_kept_as_an_absolute_path(tmp_path, monkeypatch):
    """A run folder records its --data; a relative one would break a resume or evaluate.py from another folder."""
    monkeypatch.chdir(tmp_path)
    ap = argparse.ArgumentParser()
    data.add_data_args(ap)
    assert ap.parse_args(["--data", "cifar"]).data == str(tmp_path / "cifar")
    assert ap.parse_args([]).data == str(tmp_path / "data")
    assert ap.parse_args(["--data=~/cifar"]).data == os.path.expanduser("~/cifar")  # no shell expands it there


def test_mixing_switched_off_for_every_epoch_is_named():
    assert data.augment_warnings(args_for("d", "--mix", "cutmix", "--mix-off-epochs", "5"), 5) == [
        "--mix-off-epochs 5 covers every epoch (--epochs 5): --mix cutmix never mixes"]
    assert data.augment_warnings(args_for("d", "--mix", "cutmix", "--mix-off-epochs", "4"), 5) == []
    assert data.augment_warnings(args_for("d", "--mix-off-epochs", "9"), 5) == []  # no mixing asked for
