"""Validation split, batching, sharding, augmentation and normalisation of in-memory splits."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from bioprop.data import DataConfig, TensorSplit, augment_batch, load_data, make_generator, split_indices
from bioprop.errors import BiopropError


def _split(n=103, c=3, size=8, **kw):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    return TensorSplit(x, torch.arange(n) % 10, [0.5] * c, [0.25] * c, **kw)


def _labels(split, **kw):
    return torch.cat([y for _, y in split.batches(10, **kw)] or [torch.zeros(0, dtype=torch.long)])


def test_split_indices_deterministic_disjoint():
    train, val = split_indices(100, 30, seed=4)
    again_train, again_val = split_indices(100, 30, seed=4)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert len(train) == 70 and len(val) == 30
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    assert not torch.equal(val, split_indices(100, 30, seed=5)[1])
    assert len(split_indices(100, 0, 0)[1]) == 0
    with pytest.raises(BiopropError, match="val_size=100 .* only 100 examples"):
        split_indices(100, 100, 0)


def test_load_data_val_split(tmp_path, fmt):
    x_tr, y_tr, x_te, y_te = fmt.make_mnist_arrays(60, 20)
    x_tr[:, 0, 0] = range(60)  # tag each image with its index
    fmt.write_mnist(tmp_path / "mnist", (x_tr, y_tr, x_te, y_te))
    cfg = DataConfig("mnist", verify=False, data_dir=str(tmp_path), val_size=15)
    a, b = load_data(cfg, seed=3), load_data(cfg, seed=3)
    tags = lambda s: s.images()[:, 0, 0, 0].tolist()  # noqa: E731
    assert tags(a.val) == tags(b.val) and len(a.val) == 15 and len(a.train) == 45
    assert sorted(tags(a.train) + tags(a.val)) == list(range(60))
    assert tags(load_data(cfg, seed=4).val) != tags(a.val)
    assert torch.equal(a.val.labels(), torch.from_numpy(y_tr)[a.val.indices])
    with pytest.raises(BiopropError, match="val_size=60"):
        load_data(dataclasses.replace(cfg, val_size=60))
    json.dumps(dataclasses.asdict(cfg))  # recorded in config.json
    json.dumps(a.normalization)


@pytest.mark.parametrize("field,value", [("normalization", "zscore"), ("flip", "diagonal"),
                                         ("val_size", -1), ("crop_padding", 1.5), ("augment", "yes")])
def test_bad_config_fields_are_named(field, value):
    with pytest.raises(BiopropError, match=f"data.{field}="):
        load_data(DataConfig("mnist", verify=False, **{field: value}))


def test_batches_deterministic_per_seed_and_epoch():
    s = _split()
    assert torch.equal(_labels(s, shuffle=True, seed=1, epoch=2), _labels(s, shuffle=True, seed=1, epoch=2))
    torch.manual_seed(123)  # the global RNG plays no part
    first = [x for x, _ in s.batches(10, shuffle=True, seed=1, epoch=2, augment=True)]
    torch.manual_seed(999)
    torch.rand(5)
    second = [x for x, _ in s.batches(10, shuffle=True, seed=1, epoch=2, augment=True)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(_labels(s, shuffle=True, seed=1, epoch=2), _labels(s, shuffle=True, seed=1, epoch=3))
    assert not torch.equal(_labels(s, shuffle=True, seed=1, epoch=2), _labels(s, shuffle=True, seed=2, epoch=2))
    assert _labels(s, shuffle=False).tolist() == (torch.arange(103) % 10).tolist()
    sizes = [len(y) for _, y in s.batches(10, shuffle=True)]
    assert sizes == [10] * 10 + [3] and s.num_batches(10) == 11
    assert [len(y) for _, y in s.batches(10, shuffle=True, drop_last=True)] == [10] * 10
    assert s.num_batches(10, drop_last=True) == 10


@pytest.mark.parametrize("n,world", [(103, 3), (99, 3), (8, 4), (5, 8)])
def test_shards_disjoint_and_covering(n, world):
    s = TensorSplit(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n), [0.0], [1.0])
    shards = [_labels(s, shuffle=True, seed=0, epoch=1, rank=r, world_size=world).tolist()
              for r in range(world)]
    per_rank = -(-n // world)
    assert all(len(sh) == per_rank for sh in shards)
    assert {len(list(s.batches(10, shuffle=True, rank=r, world_size=world))) for r in range(world)} == {
        s.num_batches(10, world_size=world)}
    flat = sum(shards, [])
    assert set(flat) == set(range(n))
    if n % world == 0:
        assert len(flat) == len(set(flat))  # disjoint
    dropped = [_labels(s, shuffle=True, rank=r, world_size=world, drop_last=True).tolist() for r in range(world)]
    assert len(sum(dropped, [])) == len(set(sum(dropped, []))) == (n // world) // 10 * 10 * world
    with pytest.raises(BiopropError, match="rank=3, world_size=3"):
        next(s.batches(10, shuffle=True, rank=3, world_size=3))


def test_random_crop_is_a_shift_with_zero_padding():
    x = torch.randint(1, 256, (64, 3, 10, 12), dtype=torch.uint8)
    out = augment_batch(x, make_generator(0), padding=4, flip="none")
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (4, 4, 4, 4))
    offsets = set()
    for i in range(64):
        matches = [(dy, dx) for dy in range(9) for dx in range(9)
                   if torch.equal(out[i], padded[i, :, dy:dy + 10, dx:dx + 12])]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 10  # offsets vary across the batch
    assert torch.equal(augment_batch(x, make_generator(0), 0, "none"), x)
    both = augment_batch(x, make_generator(0), padding=4, flip="horizontal")  # same offsets
    mirrored = 0
    for i in range(64):
        crop = out[i]
        assert torch.equal(both[i], crop) or torch.equal(both[i], crop.flip(-1))
        mirrored += not torch.equal(both[i], crop)
    assert 10 < mirrored < 54


@pytest.mark.parametrize("flip,dim", [("horizontal", -1), ("vertical", -2)])
def test_flip_mirrors_exactly(flip, dim):
    x = torch.randint(0, 256, (64, 1, 6, 6), dtype=torch.uint8)
    out = augment_batch(x, make_generator(1), padding=0, flip=flip)
    same = [torch.equal(o, i) for o, i in zip(out, x)]
    mirrored = [torch.equal(o, i.flip(dim)) for o, i in zip(out, x)]
    assert all(a or b for a, b in zip(same, mirrored))
    assert 10 < sum(mirrored) < 54


def test_augmented_batches_keep_shape_and_change_images():
    s = _split()
    plain = next(s.batches(16, shuffle=True, seed=0, epoch=0))[0]
    aug = next(s.batches(16, shuffle=True, seed=0, epoch=0, augment=True))[0]
    assert aug.shape == plain.shape == (16, 3, 8, 8) and aug.dtype == torch.float32
    assert not torch.equal(plain, aug)


def test_normalisation_modes(tmp_path, fmt):
    fmt.write_cifar(tmp_path)
    std_bundle = load_data(DataConfig("cifar10", verify=False, data_dir=str(tmp_path), val_size=20), seed=0)
    xs = torch.cat([x for x, _ in std_bundle.train.batches(32, shuffle=False)])
    assert xs.mean((0, 2, 3)).abs().max() < 1e-4
    assert (xs.std((0, 2, 3)) - 1).abs().max() < 1e-3
    none = load_data(DataConfig("cifar10", verify=False, data_dir=str(tmp_path), val_size=0, normalization="none"))
    assert none.normalization == {"mean": [0.0] * 3, "std": [1.0] * 3}
    x, _ = next(none.train.batches(100, shuffle=False))
    assert torch.allclose(x, none.train.x.float() / 255)
    pub = load_data(DataConfig("cifar10", verify=False, data_dir=str(tmp_path), val_size=0, normalization="dataset"))
    assert pub.normalization["mean"] == [0.4914, 0.4822, 0.4465]
    off = load_data(DataConfig("cifar10", verify=False, data_dir=str(tmp_path), val_size=0, augment=False))
    assert off.augment is False


def test_storage_on_device_gives_same_batches():
    s = _split()
    moved = s.to("cpu")
    for (a, ya), (b, yb) in zip(s.batches(10, shuffle=True, augment=True), moved.batches(10, shuffle=True, augment=True)):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_splits_that_view_one_set_of_images_move_it_once():
    x, y = torch.zeros(20, 1, 4, 4, dtype=torch.uint8), torch.arange(20)
    train = TensorSplit(x, y, [0.5], [0.25], indices=torch.arange(15))
    val = TensorSplit(x, y, [0.5], [0.25], indices=torch.arange(15, 20))
    test = TensorSplit(x.clone(), y.clone(), [0.5], [0.25])
    moved = {}
    on_train, on_val, on_test = (split.to("meta", moved) for split in (train, val, test))
    assert on_train.x.device.type == "meta"
    assert on_train.x is on_val.x and on_train.y is on_val.y  # one copy of the training images
    assert on_test.x is not on_train.x and len(moved) == 4
    assert train.to("meta").x is not on_train.x  # without a shared ``moved``, a copy of its own


@pytest.mark.gpu
def test_cuda_batches_match_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    s = _split()
    for (a, ya), (b, yb) in zip(s.batches(10, shuffle=True, augment=True),
                                s.batches(10, shuffle=True, augment=True, device="cuda")):
        assert b.device.type == "cuda" and torch.allclose(a, b.cpu()) and torch.equal(ya, yb.cpu())
    cached = s.to("cuda")
    a = torch.cat([x for x, _ in s.batches(10, shuffle=True, augment=True)])
    b = torch.cat([x for x, _ in cached.batches(10, shuffle=True, augment=True, device="cuda")])
    assert torch.allclose(a, b.cpu())


def test_the_trainer_moves_the_training_images_to_the_device_once():
    from types import SimpleNamespace

    from bioprop.training.trainer import Trainer

    x, y = torch.zeros(20, 1, 4, 4, dtype=torch.uint8), torch.arange(20)
    data = SimpleNamespace(train=TensorSplit(x, y, [0.5], [0.25], indices=torch.arange(15)),
                           val=TensorSplit(x, y, [0.5], [0.25], indices=torch.arange(15, 20)),
                           test=TensorSplit(x.clone(), y.clone(), [0.5], [0.25]))
    trainer = Trainer.__new__(Trainer)  # only what _move_data_to_device reads
    trainer.device, trainer.data = torch.device("meta"), data
    trainer._move_data_to_device()
    assert data.train.x.device.type == "meta" and data.train.x is data.val.x and data.test.x is not data.train.x
