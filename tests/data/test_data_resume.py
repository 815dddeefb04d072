"""Mid-epoch resume: ``batches(..., start=k)`` is ``list(batches(...))[k:]``, bit for bit,
without touching the skipped batches, for in-memory, downsampled-ImageNet and folder splits."""

import pytest
import torch

from bioprop.data import DataConfig, TensorSplit, load_data
from bioprop.data import batching, imagenet
from bioprop.errors import BiopropError


def _tensor_split(n=37):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    return TensorSplit(x, torch.arange(n), [0.5] * 3, [0.25] * 3)


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b))


def _check_every_start(split, batch_size, **kw):
    full = list(split.batches(batch_size, **kw))
    assert len(full) == split.num_batches(batch_size, kw.get("drop_last", False),
                                          kw.get("world_size", 1))
    for k in range(len(full) + 1):
        assert _same(list(split.batches(batch_size, start=k, **kw)), full[k:]), k
    return full


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("drop_last", [False, True])
def test_tensor_split_start_equals_slice(world_size, drop_last):
    s = _tensor_split()
    for rank in range(world_size):
        _check_every_start(s, 5, shuffle=True, seed=3, epoch=2, augment=True, rank=rank,
                           world_size=world_size, drop_last=drop_last)


def test_skipped_batches_are_not_augmented(monkeypatch):
    s = _tensor_split()
    calls = []
    real = batching.augment_batch

    def counting(x, generator, padding, flip):
        calls.append(len(x))
        return real(x, generator, padding, flip)

    monkeypatch.setattr(batching, "augment_batch", counting)
    list(s.batches(5, shuffle=True, augment=True, start=6))
    assert calls == [5, 2]  # batches 6 and 7 of 8 only


def test_augmentation_is_keyed_per_batch():
    """A batch's augmentation depends on (seed, epoch, rank, batch index), not on the batches
    drawn before it: the same examples at another index are augmented differently."""
    s = _tensor_split()
    first = [x for x, _ in s.batches(5, shuffle=False, augment=True)]
    again = [x for x, _ in s.batches(5, shuffle=False, augment=True, start=1)]
    assert all(torch.equal(a, b) for a, b in zip(first[1:], again))
    plain = [x for x, _ in s.batches(5, shuffle=False)]
    assert not torch.equal(first[0], plain[0])  # augmentation is on
    other_epoch = [x for x, _ in s.batches(5, shuffle=False, augment=True, epoch=1)]
    assert not torch.equal(first[0], other_epoch[0])
    rank1 = list(s.batches(5, shuffle=False, augment=True, rank=1, world_size=2))
    assert rank1[0][1].tolist() == [1, 3, 5, 7, 9]  # shard order unchanged by augmentation


@pytest.mark.parametrize("start", [-1, 9, 1.0, True])
def test_bad_start_is_named(start):
    with pytest.raises(BiopropError, match=r"start=.*expected a batch index in 0\.\.8"):
        next(_tensor_split().batches(5, shuffle=True, start=start))
    assert list(_tensor_split().batches(5, shuffle=True, start=8)) == []


def test_plan_describes_the_batches():
    s = _tensor_split()
    plan = s.plan(5, shuffle=True, seed=1, epoch=4, rank=1, world_size=2, start=2)
    assert [b.index for b in plan] == [2, 3]
    assert plan[0].augment_key == (1, 4, "augment", 1, 2)
    labels = [y for _, y in s.batches(5, shuffle=True, seed=1, epoch=4, rank=1, world_size=2)]
    assert torch.equal(plan[1].rows, labels[3])  # labels are the example indices here


def test_downsampled_imagenet_start_and_shards(tmp_path, fmt):
    fmt.write_downsampled(tmp_path / "imagenet32", 32, per_batch=3, n_val=5)
    bundle = load_data(DataConfig("imagenet32", data_dir=str(tmp_path), val_size=4), seed=0)
    assert bundle.augment is True
    shards = []
    for rank in range(2):
        full = _check_every_start(bundle.train, 4, shuffle=True, seed=0, epoch=1, augment=True,
                                  rank=rank, world_size=2)
        shards.append(torch.cat([y for _, y in full]))
    assert len(shards[0]) == len(shards[1]) == 13  # 26 training images over 2 ranks
    assert sorted(torch.cat(shards).tolist()) == sorted(bundle.train.labels().tolist())
    _check_every_start(bundle.test, 2, shuffle=False, rank=1, world_size=2)


# ---------------------------------------------------------------- ImageNet folders

def _folder_split(tmp_path, fmt, workers=0):
    fmt.write_imagenet(tmp_path / "imagenet", n_train=5)
    bundle = load_data(DataConfig("imagenet", data_dir=str(tmp_path), val_size=0,
                                  num_workers=workers), seed=0)
    return bundle.train


@pytest.mark.parametrize("world_size", [1, 2])
def test_folder_split_start_equals_slice(tmp_path, fmt, world_size):
    train = _folder_split(tmp_path, fmt)  # 15 images
    for rank in range(world_size):
        _check_every_start(train, 3, shuffle=True, seed=5, epoch=1, augment=True, rank=rank,
                           world_size=world_size)
    _check_every_start(train, 4, shuffle=False, rank=world_size - 1, world_size=world_size)


def test_folder_split_skips_reading_and_decoding(tmp_path, fmt, monkeypatch):
    train = _folder_split(tmp_path, fmt)
    opened = []
    real = imagenet.read_file
    monkeypatch.setattr(imagenet, "read_file", lambda path: opened.append(path) or real(path))
    plan = train.plan(4, shuffle=True, seed=2, start=2)
    list(train.batches(4, shuffle=True, seed=2, augment=True, start=2))
    paths = [p for p, _ in train.files.items]
    assert opened == [paths[i] for batch in plan for i in batch.rows.tolist()]
    assert len(opened) == 7  # batches 2 (4 images) and 3 (3 images) of 15 images


def test_folder_split_independent_of_workers(tmp_path, fmt):
    train = _folder_split(tmp_path, fmt)
    kw = dict(shuffle=True, seed=1, epoch=3, augment=True, rank=1, world_size=2)
    serial = list(train.batches(3, **kw))
    train.num_workers = 2
    parallel = list(train.batches(3, **kw))
    assert _same(serial, parallel)
    assert _same(list(train.batches(3, start=2, **kw)), serial[2:])
    train.close()
