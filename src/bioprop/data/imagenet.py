"""ImageNet (ILSVRC-2012) in the class-folder layout, streamed from disk through a DataLoader.

Layout: ``<root>/imagenet/train/<wnid>/*.JPEG`` and ``<root>/imagenet/val/<wnid>/*.JPEG``
(the ``ImageFolder`` layout; the official flat ``val/`` folder must first be sorted into class
folders, e.g. with the widely used ``valprep.sh``). Classes are the sorted folder names and must
be the same set in ``train`` and ``val``. Files ending in .jpeg/.jpg/.png (any case) are used.

Transforms, with torchvision's semantics for PIL images (bilinear, Pillow's antialiasing resize):

* training (``augment=True``): ``RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3))``
  (crop, then resize to 224x224) and a random flip with probability 1/2 (``flip``);
* evaluation: ``Resize(256)`` (shorter side to 256, the longer one ``int(256 * long / short)``),
  then ``CenterCrop(224)``.

The random crop and flip of each image come from its own seed, drawn in the main process from
the global batch's generator (:meth:`~bioprop.data.batching.PlannedBatch.augment_generator`: one
seed per example of the global batch, each rank keeping its rows), so the images are the same for
any number of workers, for any ``start`` and for any number of processes sharing the batch.

Decoding: Pillow by default. ``draft="train"`` or ``"all"`` lets JPEGs be decoded at 1/2, 1/4 or
1/8 size (libjpeg's DCT scaling, Pillow's ``Image.draft``) whenever the region that is resized
still has at least as many pixels as the output in each direction; this changes pixel values by
a few levels (see bench/README.md) but not the geometry. ``decoder="simplejpeg"`` or
``"turbojpeg"`` (the ``fast-jpeg`` extra; ``"auto"`` takes the first one installed) decodes
JPEGs with that library, falling back to Pillow for anything it cannot read (PNG, CMYK, ...);
both use libjpeg-turbo's default accurate DCT and fancy upsampling, like Pillow.

Workers return uint8 tensors (pinned when the target device is CUDA); normalisation happens on
the target device as for the in-memory splits. A file that cannot be read or decoded stops the
iteration with a :class:`BiopropError` naming it, also from inside a worker.
"""

from __future__ import annotations

import importlib
import io
import math
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from bioprop.data.batching import PlannedBatch, Split
from bioprop.data.info import DatasetInfo, FolderData
from bioprop.data.sources import Attempts, FileCheck, data_roots
from bioprop.errors import BiopropError

EXTENSIONS = (".jpeg", ".jpg", ".png")
CROP, RESIZE = 224, 256
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
DECODERS = ("pillow", "simplejpeg", "turbojpeg", "auto")
FAST_DECODERS = ("simplejpeg", "turbojpeg")
DRAFT_MODES = ("off", "train", "all")
_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR
_FLIPS = {"horizontal": getattr(Image, "Transpose", Image).FLIP_LEFT_RIGHT,
          "vertical": getattr(Image, "Transpose", Image).FLIP_TOP_BOTTOM}


def scan(folder: Path) -> dict[str, list[str]]:
    """{class folder name: sorted image paths} for one of train/ or val/."""
    out: dict[str, list[str]] = {}
    loose = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                with os.scandir(entry.path) as files:
                    out[entry.name] = sorted(f.path for f in files
                                             if f.name.lower().endswith(EXTENSIONS) and f.is_file())
            elif entry.name.lower().endswith(EXTENSIONS):
                loose.append(entry.name)
    if loose and not out:
        raise BiopropError(f"imagenet folder {str(folder)!r} holds images directly (e.g. "
                           f"{loose[0]}); expected one sub-folder per class (<wnid>/*.JPEG), "
                           "e.g. sorted with valprep.sh")
    return dict(sorted(out.items()))


# ---------------------------------------------------------------- geometry (torchvision's)

def random_resized_box(width: int, height: int, rng: random.Random,
                       scale=SCALE, ratio=RATIO) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop, as torchvision's RandomResizedCrop draws it:
    up to 10 tries of an area fraction uniform in ``scale`` and a log-uniform aspect ratio in
    ``ratio``, else the largest centred crop within the ratio range."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def shorter_side_size(width: int, height: int, size: int = RESIZE) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(size)``: the shorter side becomes ``size``."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def centre_box(width: int, height: int, crop: int = CROP) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's ``CenterCrop(crop)``."""
    left, top = round((width - crop) / 2), round((height - crop) / 2)
    return left, top, left + crop, top + crop


def reduction_factor(region_width: float, region_height: float, out_width: int,
                     out_height: int) -> int:
    """The largest JPEG DCT scaling 1/f (f = 8, 4, 2, else 1) after which the region that is
    resized still has at least ``out_width`` x ``out_height`` pixels: it is never upsampled
    more than it would be from the full-size decode."""
    for factor in (8, 4, 2):
        if region_width >= factor * out_width and region_height >= factor * out_height:
            return factor
    return 1


def reduced_size(width: int, height: int, factor: int) -> tuple[int, int]:
    """The size libjpeg decodes a ``width`` x ``height`` JPEG to at scale 1/``factor``."""
    return -(-width // factor), -(-height // factor)


# ---------------------------------------------------------------- decoders

class PillowDecoder:
    """Pillow (libjpeg-turbo for JPEG); reads every format Pillow reads."""

    name = "pillow"

    def size(self, data: bytes) -> tuple[int, int]:
        with Image.open(io.BytesIO(data)) as img:
            return img.size

    def decode(self, data: bytes, factor: int = 1) -> tuple[Image.Image, int]:
        """(the image as RGB, the scale 1/f it has): JPEGs at 1/``factor``, others at 1/1."""
        with Image.open(io.BytesIO(data)) as img:
            full = img.size
            if factor > 1 and img.format == "JPEG":
                img.draft("RGB", (full[0] // factor, full[1] // factor))
            rgb = img.convert("RGB")
        if rgb.size == full:
            return rgb, 1
        if rgb.size != reduced_size(*full, factor):
            raise ValueError(f"draft mode gave {rgb.size} for {full} at 1/{factor}")
        return rgb, factor


class SimpleJpegDecoder:
    """``simplejpeg`` (bundles libjpeg-turbo); JPEG only, strict about damaged data.

    Only YCbCr and greyscale JPEGs, where it gives Pillow's pixels exactly; CMYK/YCCK ones
    (22 files of the ImageNet training set) are left to Pillow's colour conversion."""

    name = "simplejpeg"
    COLORSPACES = ("YCbCr", "Gray")

    def __init__(self):
        self.module = importlib.import_module("simplejpeg")

    def size(self, data: bytes) -> tuple[int, int]:
        height, width, _, _ = self.module.decode_jpeg_header(data)
        return width, height

    def decode(self, data: bytes, factor: int = 1) -> tuple[Image.Image, int]:
        height, width, colorspace, _ = self.module.decode_jpeg_header(data)
        if colorspace not in self.COLORSPACES:
            raise ValueError(f"colour space {colorspace}: left to Pillow")
        min_width, min_height = reduced_size(width, height, factor)
        array = self.module.decode_jpeg(data, colorspace="RGB", min_width=min_width,
                                        min_height=min_height, strict=True)
        return _checked_array(array, (min_width, min_height)), factor


class TurboJpegDecoder:
    """``PyTurboJPEG`` (needs the libturbojpeg shared library); JPEG only, YCbCr and
    greyscale (TJCS_YCbCr = 1, TJCS_GRAY = 2) as for simplejpeg."""

    name = "turbojpeg"
    COLORSPACES = (1, 2)

    def __init__(self):
        self.module = importlib.import_module("turbojpeg")
        self.jpeg = self.module.TurboJPEG()

    def size(self, data: bytes) -> tuple[int, int]:
        width, height = self.jpeg.decode_header(data)[:2]
        return width, height

    def decode(self, data: bytes, factor: int = 1) -> tuple[Image.Image, int]:
        width, height, _, colorspace = self.jpeg.decode_header(data)[:4]
        if colorspace not in self.COLORSPACES:
            raise ValueError(f"colour space {colorspace}: left to Pillow")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # libjpeg warnings (truncated data) are failures
            array = self.jpeg.decode(data, pixel_format=self.module.TJPF_RGB,
                                     scaling_factor=None if factor == 1 else (1, factor))
        return _checked_array(array, reduced_size(width, height, factor)), factor


def _checked_array(array: np.ndarray, size: tuple[int, int]) -> Image.Image:
    if array.shape != (size[1], size[0], 3) or array.dtype != np.uint8:
        raise ValueError(f"decoded to {array.dtype} {array.shape}; expected uint8 "
                         f"({size[1]}, {size[0]}, 3)")
    return Image.fromarray(array, "RGB")


_DECODER_TYPES = {"pillow": PillowDecoder, "simplejpeg": SimpleJpegDecoder,
                  "turbojpeg": TurboJpegDecoder}
_decoders: dict[str, object] = {}  # one instance per process (workers build their own)
PILLOW = PillowDecoder()


def get_decoder(name: str):
    """The decoder called ``name`` ("pillow", "simplejpeg", "turbojpeg"), imported lazily."""
    if name not in _DECODER_TYPES:
        raise BiopropError(f"decoder={name!r}; expected one of {', '.join(DECODERS)}")
    if name not in _decoders:
        try:
            _decoders[name] = _DECODER_TYPES[name]()
        except (ImportError, OSError, RuntimeError) as e:
            raise BiopropError(f"decoder={name!r} is not usable here ({e}); install it with "
                               "pip install 'bioprop[fast-jpeg]' (turbojpeg also needs "
                               "libturbojpeg) or use decoder='pillow'") from None
    return _decoders[name]


def available_decoders() -> list[str]:
    """The decoders that load in this environment, Pillow first."""
    found = []
    for name in _DECODER_TYPES:
        try:
            get_decoder(name)
        except BiopropError:
            continue
        found.append(name)
    return found


def resolve_decoder(name: str) -> str:
    """``name`` checked (and importable); "auto" becomes the first fast decoder installed."""
    if name == "auto":
        fast = [d for d in available_decoders() if d != "pillow"]
        return fast[0] if fast else "pillow"
    get_decoder(name)
    return name


# ---------------------------------------------------------------- one image

def _decode_error(path: str, error: BaseException) -> BiopropError:
    return BiopropError(f"image {path!r} could not be decoded ({type(error).__name__}: {error}); "
                        "expected an intact JPEG or PNG file (re-copy or remove it)")


def _size(data: bytes, decoder, path: str) -> tuple[int, int]:
    if decoder is not PILLOW:
        try:
            return decoder.size(data)
        except Exception:  # not something it reads (a PNG, CMYK, a damaged file): ask Pillow
            pass
    try:
        return PILLOW.size(data)
    except MemoryError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad files
        raise _decode_error(path, e) from None


def _decode(data: bytes, decoder, factor: int, path: str) -> tuple[Image.Image, int]:
    """(RGB image, the scale 1/f it was decoded at), the fast decoder first if there is one."""
    if decoder is not PILLOW:
        try:
            return decoder.decode(data, factor)
        except Exception:  # the reference decoder decides whether the file is readable
            pass
    try:
        return PILLOW.decode(data, factor)
    except MemoryError:
        raise
    except Exception as e:
        raise _decode_error(path, e) from None


def _scaled(box, factor: int) -> tuple[float, ...]:
    return tuple(v / factor for v in box)


def train_view(data: bytes, rng: random.Random, flip: str, decoder, draft: bool,
               path: str) -> Image.Image:
    """RandomResizedCrop(224) and a random flip (p = 1/2); the box is drawn on the full size."""
    width, height = _size(data, decoder, path)
    box = random_resized_box(width, height, rng)
    mirror = flip != "none" and rng.random() < 0.5
    factor = reduction_factor(box[2] - box[0], box[3] - box[1], CROP, CROP) if draft else 1
    img, factor = _decode(data, decoder, factor, path)
    if factor == 1:
        out = img.crop(box).resize((CROP, CROP), _BILINEAR)
    else:
        out = img.resize((CROP, CROP), _BILINEAR, box=_scaled(box, factor))
    return out.transpose(_FLIPS[flip]) if mirror else out


def eval_view(data: bytes, decoder, draft: bool, path: str) -> Image.Image:
    """Resize(256) then CenterCrop(224)."""
    width, height = _size(data, decoder, path)
    size = shorter_side_size(width, height)
    factor = reduction_factor(width, height, *size) if draft else 1
    img, factor = _decode(data, decoder, factor, path)
    if factor == 1:
        resized = img.resize(size, _BILINEAR)
    else:
        resized = img.resize(size, _BILINEAR, box=(0, 0, width / factor, height / factor))
    return resized.crop(centre_box(*size))


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BiopropError(f"image {path!r} could not be read ({e.strerror or e})") from None


def load_image(path: str, train: bool, seed: int, flip: str, *, decoder: str = "pillow",
               draft: bool = False) -> torch.Tensor:
    """One image as a uint8 (3, 224, 224) tensor; ``train`` selects the augmenting transform,
    whose randomness comes from ``seed`` alone; ``draft`` allows reduced-size JPEG decoding."""
    data = read_file(path)
    codec = PILLOW if decoder == "pillow" else get_decoder(decoder)
    img = (train_view(data, random.Random(seed), flip, codec, draft, path) if train
           else eval_view(data, codec, draft, path))
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------- dataset and loader

@dataclass(frozen=True)
class DecodeFailure:
    """Returned by a worker in place of a batch, so the error crosses the process boundary
    as a message and is raised in the main process as a plain BiopropError."""

    message: str


def collate_images(samples: list):
    """Stack ``(image, label)`` samples; a batch with a failed image becomes that failure."""
    for sample in samples:
        if isinstance(sample, DecodeFailure):
            return sample
    return default_collate(samples)


class ImageFiles(Dataset):
    """The image files of a split, indexed by ``(position, seed, train)``.

    Paths and labels are kept in numpy arrays rather than a list of Python objects, so forked
    workers do not copy them page by page through reference counting (1.28 M paths)."""

    def __init__(self, items: list[tuple[str, int]], flip: str, decoder: str = "pillow",
                 draft: str = "off"):
        self.paths = np.array([os.fsencode(p) for p, _ in items], dtype=bytes)
        self.labels = np.array([label for _, label in items], dtype=np.int64)
        self.flip, self.decoder, self.draft = flip, decoder, draft

    @property
    def items(self) -> list[tuple[str, int]]:
        return [(os.fsdecode(p), int(k)) for p, k in zip(self.paths, self.labels)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int, bool]):
        position, seed, train = key
        path = os.fsdecode(self.paths[position])
        draft = self.draft == "all" or (self.draft == "train" and train)
        try:
            image = load_image(path, train, seed, self.flip, decoder=self.decoder, draft=draft)
        except BiopropError as e:
            return DecodeFailure(str(e))
        return image, int(self.labels[position])


class EpochBatches:
    """A batch sampler whose batches are replaced before each epoch, so one DataLoader with
    persistent workers serves every epoch (the sampler is iterated in the main process)."""

    def __init__(self):
        self.batches: list[list[tuple[int, int, bool]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class FolderSplit(Split):
    """A split of image files, decoded on the fly by ``num_workers`` DataLoader workers.

    ``decoder``: one of :data:`DECODERS`; ``draft``: one of :data:`DRAFT_MODES` (reduced-size
    JPEG decoding for the training transform only, or for both); ``persistent_workers``: keep
    the workers between epochs; ``prefetch_factor``: batches each worker prepares ahead. When
    the target device is CUDA, batches come in pinned memory (``pin_memory=True``) and are
    copied with ``non_blocking=True``."""

    num_workers, prefetch_factor, persistent_workers = 0, 2, True

    def __init__(self, items: list[tuple[str, int]], mean, std, flip: str = "horizontal",
                 num_workers: int = 0, *, decoder: str = "pillow", draft: str = "off",
                 persistent_workers: bool = True, prefetch_factor: int = 2):
        self.files = ImageFiles(items, flip)
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self._sampler = EpochBatches()
        self._loader: DataLoader | None = None  # the persistent one, built on first use
        self._loader_settings: tuple | None = None
        self._busy = False  # an iteration is using the persistent loader
        self.configure(num_workers=num_workers, decoder=decoder, draft=draft,
                       persistent_workers=persistent_workers, prefetch_factor=prefetch_factor)

    def configure(self, *, num_workers: int | None = None, decoder: str | None = None,
                  draft: str | None = None, persistent_workers: bool | None = None,
                  prefetch_factor: int | None = None) -> "FolderSplit":
        """Change loader settings (those given); running workers are stopped, and the next
        iteration starts new ones. E.g. ``bundle.train.configure(decoder="simplejpeg")``."""
        num_workers = self.num_workers if num_workers is None else num_workers
        prefetch_factor = self.prefetch_factor if prefetch_factor is None else prefetch_factor
        draft = self.files.draft if draft is None else draft
        if draft not in DRAFT_MODES:
            raise BiopropError(f"draft={draft!r}; expected one of {', '.join(DRAFT_MODES)}")
        for name, value, least in (("num_workers", num_workers, 0),
                                   ("prefetch_factor", prefetch_factor, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise BiopropError(f"{name}={value!r}; expected an integer >= {least}")
        self.files.decoder = resolve_decoder(self.files.decoder if decoder is None else decoder)
        self.files.draft = draft
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        if persistent_workers is not None:
            self.persistent_workers = persistent_workers
        self.close()
        return self

    @property
    def decoder(self) -> str:
        """The decoder in use ("auto" resolved)."""
        return self.files.decoder

    @property
    def draft(self) -> str:
        return self.files.draft

    def __len__(self) -> int:
        return len(self.files)

    def close(self) -> None:
        """Stop the persistent workers (they also stop when the split is garbage collected)."""
        self._loader = self._loader_settings = None

    def _sample_keys(self, batch: PlannedBatch, augment: bool) -> list[tuple[int, int, bool]]:
        """``(position, seed, augment)`` per image; the seeds come from the global batch's generator
        (this rank's rows of them)."""
        positions = batch.rows.tolist()
        if not augment:
            return [(p, 0, False) for p in positions]
        seeds = batch.mine(torch.randint(0, 2**62, (batch.global_size,), generator=batch.augment_generator()))
        return [(p, s, True) for p, s in zip(positions, seeds.tolist())]

    def _new_loader(self, batch_sampler, pin_memory: bool, persistent: bool) -> DataLoader:
        workers = self.num_workers
        return DataLoader(self.files, batch_sampler=batch_sampler, num_workers=workers,
                          collate_fn=collate_images, pin_memory=pin_memory,
                          persistent_workers=persistent and workers > 0,
                          prefetch_factor=self.prefetch_factor if workers > 0 else None)

    def _persistent_loader(self, pin_memory: bool) -> DataLoader:
        settings = (self.num_workers, self.prefetch_factor, pin_memory)
        if self._loader is None or self._loader_settings != settings:
            self._loader = self._new_loader(self._sampler, pin_memory, persistent=True)
            self._loader_settings = settings
        return self._loader

    def _batches(self, plan, augment, device):
        keys = [self._sample_keys(batch, augment) for batch in plan]
        pin_memory = device.type == "cuda"
        shared = self.persistent_workers and self.num_workers > 0 and not self._busy
        if shared:
            self._busy = True
            self._sampler.batches = keys
            loader = self._persistent_loader(pin_memory)
        else:  # no workers, or a second iteration running alongside the first
            loader = self._new_loader(keys, pin_memory, persistent=False)
        try:
            for batch in loader:
                if isinstance(batch, DecodeFailure):
                    raise BiopropError(batch.message)
                yield batch
        finally:
            loader = None  # a traceback that keeps this frame must not keep the workers alive
            if shared:
                self._busy = False


class ImageNetFolders:
    def __init__(self, info: DatasetInfo):
        self.info = info

    def _find(self, data_dir, attempts: Attempts | None) -> Path | None:
        for label, root in data_roots(data_dir):
            for base in [root / "imagenet"] + ([root] if label != "cache" else []):
                if (base / "train").is_dir() and (base / "val").is_dir():
                    return base
                if attempts is not None:
                    attempts.add(f"{label} {base}", "no train/ and val/ folders")
        return None

    def obtain(self, data_dir=None) -> Path:
        attempts = Attempts()
        base = self._find(data_dir, attempts)
        if base is None:
            raise attempts.error(
                "dataset 'imagenet': could not find the ILSVRC-2012 folders",
                "Expected <data_dir>/imagenet/train/<wnid>/*.JPEG and <data_dir>/imagenet/val/"
                "<wnid>/*.JPEG (pass --data-dir or set $BIOPROP_DATA). ImageNet cannot be "
                "downloaded automatically: get it from https://image-net.org and sort val/ "
                "into class folders.")
        return base

    def verify(self, data_dir=None) -> list[FileCheck]:
        base = self.obtain(data_dir)
        data = self.load(base)  # checks the class sets
        return [FileCheck(str(base / "train"), None, None, True, f"{len(data.train)} images, "
                          f"{len(data.classes)} classes (no published checksum)"),
                FileCheck(str(base / "val"), None, None, True, f"{len(data.test)} images")]

    def load(self, base: Path) -> FolderData:
        train, val = scan(base / "train"), scan(base / "val")
        if set(train) != set(val):
            def first(names):
                return f"{names[:5]}{' ...' if len(names) > 5 else ''}"
            raise BiopropError(
                f"imagenet at {str(base)!r}: the class folders of train/ and val/ differ "
                f"(only in train: {first(sorted(set(train) - set(val)))}; "
                f"only in val: {first(sorted(set(val) - set(train)))}); expected the same set")
        empty = [c for c, files in train.items() if not files]
        if not train or empty:
            raise BiopropError(f"imagenet at {str(base)!r}: train/ has no images"
                               + (f" in class folders {empty[:5]}" if empty else "")
                               + f"; expected files ending in {', '.join(EXTENSIONS)}")
        classes = list(train)
        items = lambda folders: [(p, k) for k, c in enumerate(classes) for p in folders[c]]  # noqa: E731
        return FolderData(items(train), items(val), classes, base)
