"""ImageNet class-folder layout (generated tiny JPEGs) and the downsampled .npz batches."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from bioprop.data import DataConfig, FolderSplit, load_data, verify
from bioprop.data.imagenet import load_image, random_resized_box
from bioprop.errors import BiopropError


def _imagenet(root, **kw):
    kw.setdefault("val_size", 0)
    return load_data(DataConfig("imagenet", data_dir=str(root), **kw), seed=0)


def test_folder_layout_classes_and_shapes(tmp_path, fmt):
    fmt.write_imagenet(tmp_path / "imagenet")
    b = _imagenet(tmp_path)
    assert b.classes == ["n01", "n02", "n03"]  # sorted folder names
    assert isinstance(b.train, FolderSplit) and len(b.train) == 12 and len(b.test) == 6
    assert b.info.has_top5 and b.info.input_shape == (3, 224, 224)
    assert b.normalization["mean"] == [0.485, 0.456, 0.406]
    labels = [label for _, label in b.train.files.items]
    assert labels == [0] * 4 + [1] * 4 + [2] * 4
    assert all(f"/n0{label + 1}/" in path for path, label in b.train.files.items)
    x, y = next(iter(b.test.batches(6, shuffle=False)))
    assert x.shape == (6, 3, 224, 224) and x.dtype == torch.float32 and y.tolist() == [0, 0, 1, 1, 2, 2]
    # class n03 is colour (20, 255, 90): check it survived decoding and normalisation
    pixel = x[4, :, 100, 100] * torch.tensor([0.229, 0.224, 0.225]) + torch.tensor([0.485, 0.456, 0.406])
    assert torch.allclose(pixel * 255, torch.tensor([20.0, 255.0, 90.0]), atol=4)


def test_val_split_comes_from_train_files(tmp_path, fmt):
    fmt.write_imagenet(tmp_path / "imagenet")
    b = _imagenet(tmp_path, val_size=3)
    train, val = {p for p, _ in b.train.files.items}, {p for p, _ in b.val.files.items}
    assert len(train) == 9 and len(val) == 3 and not train & val
    assert all("/train/" in p for p in val)


def test_train_batches_deterministic_and_augmented(tmp_path, fmt):
    fmt.write_imagenet(tmp_path / "imagenet")
    b = _imagenet(tmp_path)
    run = lambda epoch, workers=0: list(b.train.batches(4, shuffle=True, seed=1, epoch=epoch,  # noqa: E731
                                                         augment=True))
    a, again, other = run(0), run(0), run(1)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, again))
    assert not all(torch.equal(y1, y2) for (_, y1), (_, y2) in zip(a, other))
    assert all(x.shape == (4, 3, 224, 224) for x, _ in a)
    b.train.num_workers = 1
    with_worker = run(0)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, with_worker))


def test_eval_transform_is_resize_256_centre_crop(tmp_path):
    path = tmp_path / "half.png"  # 512 wide, 256 high: left half red, right half blue
    img = np.zeros((256, 512, 3), np.uint8)
    img[:, :256, 0] = 255
    img[:, 256:, 2] = 255
    Image.fromarray(img).save(path)
    out = load_image(str(path), train=False, seed=0, flip="none")
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    # crop spans columns 144..367 of the 512: column 111 is the last red, 112 the first blue
    assert out[0, :, :111].min() == 255 and out[2, :, :111].max() == 0
    assert out[2, :, 113:].min() == 255 and out[0, :, 113:].max() == 0
    small = tmp_path / "small.png"
    Image.fromarray(img[:100, :50]).save(small)  # smaller than the crop: upsampled
    assert load_image(str(small), train=False, seed=0, flip="none").shape == (3, 224, 224)


def test_train_flip_mirrors_exactly(tmp_path):
    path = tmp_path / "ramp.png"
    ramp = np.tile((np.arange(300) % 256).astype(np.uint8)[None, :, None], (200, 1, 3))
    Image.fromarray(ramp).save(path)
    flipped = 0
    for seed in range(8):
        plain = load_image(str(path), True, seed, "none")
        out = load_image(str(path), True, seed, "horizontal")
        if not torch.equal(out, plain):
            assert torch.equal(out, plain.flip(-1))
            flipped += 1
    assert 0 < flipped < 8


def test_random_resized_box_within_image():
    rng = random.Random(0)
    for w, h in [(500, 375), (64, 480), (1000, 10), (224, 224)]:
        for _ in range(20):
            left, top, right, bottom = random_resized_box(w, h, rng)
            assert 0 <= left < right <= w and 0 <= top < bottom <= h


def test_class_mismatch_and_flat_val(tmp_path, fmt):
    fmt.write_imagenet(tmp_path / "imagenet")
    fmt.write_jpeg(tmp_path / "imagenet" / "val" / "n09" / "x.JPEG", (32, 32), (0, 0, 0))
    with pytest.raises(BiopropError, match=r"differ \(only in train: \[\]; only in val: \['n09'\]\)"):
        _imagenet(tmp_path)
    flat = tmp_path / "flat"
    fmt.write_imagenet(flat / "imagenet", n_val=0)  # no val/<wnid>/ folders
    fmt.write_jpeg(flat / "imagenet" / "val" / "ILSVRC2012_val_00000001.JPEG", (32, 32), (0, 0, 0))
    with pytest.raises(BiopropError, match="holds images directly.*valprep"):
        _imagenet(flat)
    with pytest.raises(BiopropError, match="could not find the ILSVRC-2012 folders"):
        _imagenet(tmp_path / "flat" / "imagenet" / "val")


def test_imagenet_verify_counts(tmp_path, fmt):
    fmt.write_imagenet(tmp_path / "imagenet")
    report = verify("imagenet", tmp_path)
    assert [r.ok for r in report] == [True, True] and "12 images, 3 classes" in report[0].note


@pytest.mark.parametrize("layout", ["flat", "subfolders", "root"])
def test_downsampled_npz(tmp_path, fmt, layout):
    where = {"flat": ("imagenet32", ".", "."),
             "subfolders": ("imagenet32", "Imagenet32_train", "Imagenet32_val"),
             "root": (".", "Imagenet32_train_npz", "Imagenet32_val_npz")}[layout]
    train, val = fmt.write_downsampled(tmp_path / where[0], 32, train_dir=where[1], val_dir=where[2])
    b = load_data(DataConfig("imagenet32", data_dir=str(tmp_path), val_size=0), seed=0)
    assert b.train.x.shape == (30, 3, 32, 32) and b.test.x.shape == (5, 3, 32, 32)
    assert b.train.y[0] == 0 and b.train.y[2] == 999  # labels 1 and 1000 shifted to 0-based
    assert b.test.y.tolist() == [label - 1 for label in val[1]]
    row = train[1][0][2]  # batch 2, third image = image 5 overall
    assert b.train.x[5, 2, 3, 4] == row[2 * 1024 + 3 * 32 + 4]  # blue plane, row 3, column 4
    assert torch.equal(b.train.x[5].flatten(), torch.from_numpy(row))
    assert b.info.num_classes == 1000 and b.info.has_top5 and b.augment is True
    assert all(r.ok for r in verify("imagenet32", tmp_path))


def test_downsampled_errors(tmp_path, fmt):
    fmt.write_downsampled(tmp_path / "imagenet64", 64, per_batch=1, n_val=1)
    assert load_data(DataConfig("imagenet64", data_dir=str(tmp_path), val_size=2)).train.x.shape[1:] == (3, 64, 64)
    with pytest.raises(BiopropError) as err:  # 32 is not there; the 64 files must not be taken
        load_data(DataConfig("imagenet32", data_dir=str(tmp_path)))
    msg = str(err.value)
    assert f"data_dir {tmp_path / 'imagenet32'}: no such folder" in msg
    assert "Imagenet32_train*" in msg and "val_data.npz" in msg
    fmt.write_downsampled(tmp_path / "imagenet32", 32, per_batch=2, n_val=2)
    np.savez(tmp_path / "imagenet32" / "val_data.npz", data=np.zeros((2, 3072), np.uint8),
             labels=np.array([0, 5]))
    with pytest.raises(BiopropError, match="val_data.npz.*labels span 0..5; expected 1..1000"):
        load_data(DataConfig("imagenet32", data_dir=str(tmp_path), val_size=0))
    np.savez(tmp_path / "imagenet32" / "val_data.npz", data=np.zeros((2, 3000), np.uint8),
             labels=np.array([1, 5]))
    with pytest.raises(BiopropError, match="val_data.npz.*expected uint8 \\(2, 3072\\)"):
        load_data(DataConfig("imagenet32", data_dir=str(tmp_path), val_size=0))
