"""The ImageNet folder pipeline: torchvision transform semantics, reduced-size (draft) JPEG
decoding, the optional fast decoders (real if installed, else faked), broken files, workers."""

import io
import random
import sys
import types
from itertools import islice

import numpy as np
import pytest
import torch
from PIL import Image

from bioprop.data import DataConfig, FolderSplit, load_data
from bioprop.data import imagenet
from bioprop.data.imagenet import (CROP, centre_box, get_decoder, load_image, random_resized_box,
                                   reduction_factor, shorter_side_size)
from bioprop.errors import BiopropError

BILINEAR = getattr(Image, "Resampling", Image).BILINEAR


def natural_image(width, height, seed=0) -> np.ndarray:
    """Smooth colour fields plus a little noise: compresses and decodes like a photograph."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), float)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def write_photo(path, width, height, seed=0, quality=90):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(natural_image(width, height, seed)).save(path, "JPEG", quality=quality)
    return str(path)


@pytest.fixture(autouse=True)
def fresh_decoders(monkeypatch):
    """Each test builds its own decoder instances (fakes must not leak into other tests)."""
    monkeypatch.setattr(imagenet, "_decoders", {})


def _u8(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


# ---------------------------------------------------------------- transform semantics

def test_train_transform_is_crop_then_resize(tmp_path):
    path = write_photo(tmp_path / "a.jpg", 500, 375)
    img = Image.open(path).convert("RGB")
    for seed in range(6):
        rng = random.Random(seed)
        box = random_resized_box(500, 375, rng)
        mirror = rng.random() < 0.5
        expected = img.crop(box).resize((CROP, CROP), BILINEAR)
        if mirror:
            expected = expected.transpose(Image.FLIP_LEFT_RIGHT)
        assert torch.equal(load_image(path, True, seed, "horizontal"), _u8(expected))


def test_eval_geometry_matches_torchvision_rules():
    assert shorter_side_size(500, 375) == (int(256 * 500 / 375), 256) == (341, 256)
    assert shorter_side_size(375, 500) == (256, 341)
    assert shorter_side_size(300, 300) == (256, 256)
    assert centre_box(341, 256) == (58, 16, 282, 240)  # round((341 - 224) / 2) = 58
    assert centre_box(256, 256) == (16, 16, 240, 240)


def test_random_resized_box_distribution():
    rng = random.Random(1)
    fractions, ratios = [], []
    for _ in range(2000):
        left, top, right, bottom = random_resized_box(500, 375, rng)
        w, h = right - left, bottom - top
        fractions.append(w * h / (500 * 375))
        ratios.append(w / h)
    assert 0.075 < min(fractions) and max(fractions) <= 1.0
    assert 0.74 < min(ratios) and max(ratios) < 1.35
    # torchvision's procedure, vectorised independently: first of 10 tries that fits
    g = np.random.default_rng(0)
    area = 500 * 375 * g.uniform(0.08, 1, (20000, 10))
    aspect = np.exp(g.uniform(np.log(3 / 4), np.log(4 / 3), (20000, 10)))
    w, h = np.round(np.sqrt(area * aspect)), np.round(np.sqrt(area / aspect))
    fits = (w <= 500) & (h <= 375)
    first = fits.argmax(1)[fits.any(1)]
    expected = (w * h)[fits.any(1), first].mean() / (500 * 375)
    assert abs(np.mean(fractions) - expected) < 0.02
    # a strip too thin for any ratio in range: the central crop of ratio 4/3, full height
    assert random_resized_box(1000, 10, random.Random(0)) == (493, 0, 506, 10)


def test_reduction_factor():
    assert reduction_factor(500, 375, 341, 256) == 1
    assert reduction_factor(1000, 750, 341, 256) == 2
    assert reduction_factor(4000, 3000, 224, 224) == 8
    assert reduction_factor(447, 900, 224, 224) == 1  # 447 / 2 < 224: no upsampling after draft


# ---------------------------------------------------------------- draft (reduced-size decoding)

def test_draft_decodes_big_jpegs_smaller_with_the_same_geometry(tmp_path, monkeypatch):
    path = write_photo(tmp_path / "big.jpg", 1200, 900)
    factors = []
    real = imagenet._decode

    def spy(data, decoder, factor, where):
        img, used = real(data, decoder, factor, where)
        factors.append((used, img.size))
        return img, used

    monkeypatch.setattr(imagenet, "_decode", spy)
    full = load_image(path, False, 0, "none").float()
    drafted = load_image(path, False, 0, "none", draft=True).float()
    assert factors == [(1, (1200, 900)), (2, (600, 450))]
    diff = (full - drafted).abs()
    assert diff.mean() < 1.5 and diff.max() < 40  # same picture, a few levels apart
    for seed in range(10):  # train: only large enough crops are drafted
        factors.clear()
        a = load_image(path, True, seed, "horizontal").float()
        b = load_image(path, True, seed, "horizontal", draft=True).float()
        box = random_resized_box(1200, 900, random.Random(seed))
        assert factors[1][0] == reduction_factor(box[2] - box[0], box[3] - box[1], CROP, CROP)
        assert (a - b).abs().mean() < 2.5


def test_draft_leaves_small_images_and_pngs_exact(tmp_path):
    jpeg = write_photo(tmp_path / "small.jpg", 500, 375)
    png = tmp_path / "big.png"
    Image.fromarray(natural_image(1200, 900)).save(png)
    for path in (jpeg, str(png)):
        for train in (False, True):
            assert torch.equal(load_image(path, train, 3, "horizontal"),
                               load_image(path, train, 3, "horizontal", draft=True))


def test_draft_modes_of_the_split(tmp_path, fmt):
    path = write_photo(tmp_path / "imagenet" / "train" / "n01" / "a.JPEG", 1200, 900)
    write_photo(tmp_path / "imagenet" / "val" / "n01" / "b.JPEG", 64, 64)
    items = [(path, 0)]
    mean, std = [0.5] * 3, [0.25] * 3
    off, train_only, every = (FolderSplit(items, mean, std, draft=mode) for mode in ("off", "train", "all"))
    x_off = next(off.uint8_batches(1, shuffle=False))[0]
    assert torch.equal(next(train_only.uint8_batches(1, shuffle=False))[0], x_off)
    assert not torch.equal(next(every.uint8_batches(1, shuffle=False))[0], x_off)
    with pytest.raises(BiopropError, match="draft='yes'; expected one of off, train, all"):
        FolderSplit(items, mean, std, draft="yes")


# ---------------------------------------------------------------- fast decoders

def fake_simplejpeg(calls):
    """A stand-in for simplejpeg built on Pillow (same header/decode contract)."""
    module = types.ModuleType("simplejpeg")

    def decode_jpeg_header(data, **kw):
        if data[:2] != b"\xff\xd8":
            raise ValueError("not a JPEG")
        with Image.open(io.BytesIO(data)) as img:
            return img.size[1], img.size[0], "YCbCr", "420"

    def decode_jpeg(data, colorspace="RGB", min_width=0, min_height=0, strict=True, **kw):
        calls.append((min_width, min_height))
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
        factor = next(f for f in (8, 4, 2, 1)  # the largest reduction meeting the minimum
                      if all(got >= least for got, least in
                             zip(imagenet.reduced_size(*size, f), (min_width, min_height))))
        return np.asarray(imagenet.PILLOW.decode(data, factor)[0])

    module.decode_jpeg_header, module.decode_jpeg = decode_jpeg_header, decode_jpeg
    return module


def fake_turbojpeg(calls):
    module = types.ModuleType("turbojpeg")

    class TurboJPEG:
        def decode_header(self, data):
            height, width, _, _ = fake_simplejpeg([]).decode_jpeg_header(data)
            return width, height, 0, 1  # TJSAMP_444, TJCS_YCbCr

        def decode(self, data, pixel_format=None, scaling_factor=None):
            calls.append(scaling_factor)
            assert pixel_format == module.TJPF_RGB
            factor = 1 if scaling_factor is None else scaling_factor[1]
            return np.asarray(imagenet.PILLOW.decode(data, factor)[0])

    module.TurboJPEG, module.TJPF_RGB = TurboJPEG, 0
    return module


@pytest.mark.parametrize("name,fake", [("simplejpeg", fake_simplejpeg), ("turbojpeg", fake_turbojpeg)])
def test_fake_fast_decoder_is_used_and_matches_pillow(tmp_path, monkeypatch, name, fake):
    calls = []
    monkeypatch.setitem(sys.modules, name, fake(calls))
    big = write_photo(tmp_path / "big.jpg", 1200, 900)
    png = tmp_path / "p.png"
    Image.fromarray(natural_image(300, 200)).save(png)
    for path in (big, str(png)):
        for train, draft in [(False, False), (True, False), (False, True), (True, True)]:
            assert torch.equal(load_image(path, train, 7, "horizontal", draft=draft),
                               load_image(path, train, 7, "horizontal", draft=draft, decoder=name))
    assert len(calls) == 4  # the JPEG went through the fake decoder, the PNG through Pillow
    assert calls[2] in [(600, 450), (1, 2)]  # eval with draft: half size


def test_decoder_auto_and_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # import fails
    monkeypatch.setitem(sys.modules, "turbojpeg", None)
    with pytest.raises(BiopropError, match=r"decoder='simplejpeg' is not usable.*fast-jpeg"):
        get_decoder("simplejpeg")
    with pytest.raises(BiopropError, match="decoder='jpeg2'; expected one of pillow, simplejpeg"):
        get_decoder("jpeg2")
    assert FolderSplit([], [0.0] * 3, [1.0] * 3, decoder="auto").decoder == "pillow"
    monkeypatch.setitem(sys.modules, "turbojpeg", fake_turbojpeg([]))
    monkeypatch.setattr(imagenet, "_decoders", {})
    assert FolderSplit([], [0.0] * 3, [1.0] * 3, decoder="auto").decoder == "turbojpeg"


def test_real_simplejpeg_is_bit_identical_to_pillow(tmp_path):
    pytest.importorskip("simplejpeg")
    paths = [write_photo(tmp_path / f"{i}.jpg", w, h, seed=i)
             for i, (w, h) in enumerate([(500, 375), (1200, 900), (333, 500)])]
    for mode in ("L", "CMYK"):  # greyscale decoded by simplejpeg, CMYK handed to Pillow
        paths.append(str(tmp_path / f"{mode}.jpg"))
        Image.fromarray(natural_image(1200, 900)).convert(mode).save(paths[-1], quality=90)
    for path in paths:
        for train, draft in [(False, False), (True, False), (False, True), (True, True)]:
            for seed in range(3):
                assert torch.equal(load_image(path, train, seed, "horizontal", draft=draft),
                                   load_image(path, train, seed, "horizontal", draft=draft,
                                              decoder="simplejpeg"))


# ---------------------------------------------------------------- broken files

def _folder_with_broken_file(tmp_path, fmt, damage):
    root = tmp_path / "imagenet"
    fmt.write_imagenet(root)
    victim = root / "train" / "n02" / "n02_1.JPEG"
    damage(victim)
    return victim


DAMAGES = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "garbage": lambda p: p.write_bytes(b"this is not an image" * 10),
    "empty": lambda p: p.write_bytes(b""),
}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_broken_file_is_named_in_a_biopropError(tmp_path, fmt, workers, damage):
    victim = _folder_with_broken_file(tmp_path, fmt, DAMAGES[damage])
    bundle = load_data(DataConfig("imagenet", data_dir=str(tmp_path), val_size=0,
                                  num_workers=workers), seed=0)
    for augment in (False, True):
        with pytest.raises(BiopropError) as err:
            list(bundle.train.batches(4, shuffle=True, augment=augment))
        message = str(err.value)
        assert str(victim) in message and "could not be decoded" in message
        assert "Traceback" not in message and "worker" not in message and "\n" not in message
    bundle.train.close()


def test_broken_file_with_fast_decoder(tmp_path, fmt):
    pytest.importorskip("simplejpeg")
    victim = _folder_with_broken_file(tmp_path, fmt, DAMAGES["truncated"])
    bundle = load_data(DataConfig("imagenet", data_dir=str(tmp_path), val_size=0), seed=0)
    split = FolderSplit(bundle.train.files.items, [0.5] * 3, [0.25] * 3, decoder="simplejpeg")
    with pytest.raises(BiopropError, match=str(victim)):
        list(split.batches(4, shuffle=False))


def test_missing_file_is_named(tmp_path):
    split = FolderSplit([(str(tmp_path / "gone.JPEG"), 0)], [0.5] * 3, [0.25] * 3)
    with pytest.raises(BiopropError, match=r"gone.JPEG' could not be read \(No such file"):
        list(split.batches(1, shuffle=False))


# ---------------------------------------------------------------- workers and loaders

def test_persistent_workers_serve_every_epoch(tmp_path, fmt):
    fmt.write_imagenet(tmp_path / "imagenet")
    bundle = load_data(DataConfig("imagenet", data_dir=str(tmp_path), val_size=0), seed=0)
    serial = {e: list(bundle.train.batches(4, shuffle=True, epoch=e, augment=True)) for e in (0, 1)}
    train = bundle.train
    train.num_workers = 2
    list(islice(train.batches(4, shuffle=True, epoch=0, augment=True), 1))  # abandoned early
    loader = train._loader
    assert loader is not None and loader.persistent_workers and loader.prefetch_factor == 2
    for e in (0, 1, 0):
        got = list(train.batches(4, shuffle=True, epoch=e, augment=True))
        assert all(torch.equal(a[0], b[0]) for a, b in zip(got, serial[e])) and len(got) == 3
    assert train._loader is loader  # the same workers
    pairs = list(zip(train.batches(4, shuffle=True, epoch=1, augment=True),
                     train.batches(4, shuffle=True, epoch=0, augment=True)))  # two at once
    assert all(torch.equal(a[0], s[0]) and torch.equal(b[0], t[0])
               for (a, b), s, t in zip(pairs, serial[1], serial[0]))
    train.close()
    assert train._loader is None


def test_loader_pins_memory_only_for_cuda(tmp_path, fmt, monkeypatch):
    fmt.write_imagenet(tmp_path / "imagenet")
    split = load_data(DataConfig("imagenet", data_dir=str(tmp_path), val_size=0), seed=0).train
    seen = []
    real = split._new_loader
    monkeypatch.setattr(split, "_new_loader",
                        lambda sampler, pin, persistent: seen.append(pin) or real(sampler, False, persistent))
    list(split.uint8_batches(6, shuffle=False))
    list(split.uint8_batches(6, shuffle=False, device="cuda"))  # not moved: stays uint8 on CPU
    assert seen == [False, True]


@pytest.mark.gpu
def test_cuda_folder_batches_match_cpu(tmp_path, fmt):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    fmt.write_imagenet(tmp_path / "imagenet")
    split = load_data(DataConfig("imagenet", data_dir=str(tmp_path), val_size=0, num_workers=2),
                      seed=0).train
    raw = next(split.uint8_batches(4, shuffle=True, augment=True, device="cuda"))[0]
    assert raw.is_pinned()
    cpu = list(split.batches(4, shuffle=True, augment=True))
    gpu = list(split.batches(4, shuffle=True, augment=True, device="cuda", start=1))
    for (a, ya), (b, yb) in zip(cpu[1:], gpu):
        assert b.device.type == "cuda" and torch.allclose(a, b.cpu()) and torch.equal(ya, yb.cpu())
    split.close()


def test_configure_changes_loader_settings(tmp_path, fmt, monkeypatch):
    fmt.write_imagenet(tmp_path / "imagenet")
    split = load_data(DataConfig("imagenet", data_dir=str(tmp_path), val_size=0), seed=0).train
    before = list(split.uint8_batches(4, shuffle=True, augment=True))
    calls = []
    monkeypatch.setitem(sys.modules, "simplejpeg", fake_simplejpeg(calls))
    assert split.configure(decoder="simplejpeg", num_workers=1) is split
    assert (split.decoder, split.draft, split.num_workers) == ("simplejpeg", "off", 1)
    after = list(split.uint8_batches(4, shuffle=True, augment=True))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(before, after))
    split.configure(num_workers=0)  # the fake lives in this process only; workers see it by fork
    list(split.uint8_batches(4, shuffle=False))
    assert len(calls) == 12
    for bad, match in [(dict(num_workers=-1), "num_workers=-1; expected an integer >= 0"),
                       (dict(prefetch_factor=0), "prefetch_factor=0; expected an integer >= 1"),
                       (dict(draft="on"), "draft='on'"), (dict(decoder="cv2"), "decoder='cv2'")]:
        with pytest.raises(BiopropError, match=match):
            split.configure(**bad)
