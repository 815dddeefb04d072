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

    def counting(x, generator, padding, flip, batch=None):
        calls.append(len(x))
        return real(x, generator, padding, flip, batch)

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


def _interleaved(shares):
    """The global batch whose rows ``k * world + r`` are row ``k`` of rank ``r``'s share."""
    world = len(shares)
    x = torch.empty((sum(len(s[0]) for s in shares), *shares[0][0].shape[1:]), dtype=shares[0][0].dtype)
    y = torch.empty(len(x), dtype=shares[0][1].dtype)
    for rank, (xs, ys) in enumerate(shares):
        x[rank::world], y[rank::world] = xs, ys
    return x, y


def _check_rank_free_augmentation(split, batch_size, world_size, **kw):
    """``world_size`` ranks at ``batch_size`` see exactly the augmented examples, in global-batch
    order, that one process at ``batch_size * world_size`` sees."""
    whole = list(split.batches(batch_size * world_size, augment=True, **kw))
    shares = [list(split.batches(batch_size, augment=True, rank=r, world_size=world_size, **kw))
              for r in range(world_size)]
    assert all(len(share) == len(whole) for share in shares)
    for index, (x, y) in enumerate(whole):
        merged_x, merged_y = _interleaved([share[index] for share in shares])
        assert torch.equal(merged_y, y) and torch.equal(merged_x, x), index


def test_augmentation_does_not_depend_on_the_rank():
    s = _tensor_split(40)
    _check_rank_free_augmentation(s, 5, 2, shuffle=True, seed=3, epoch=2)
    _check_rank_free_augmentation(s, 4, 5, shuffle=True, seed=1, epoch=0)
    with_start = list(s.batches(5, shuffle=True, seed=3, epoch=2, augment=True, rank=1, world_size=2, start=3))
    assert _same(with_start, list(s.batches(5, shuffle=True, seed=3, epoch=2, augment=True, rank=1,
                                            world_size=2))[3:])


@pytest.mark.parametrize("start", [-1, 9, 1.0, True])
def test_bad_start_is_named(start):
    with pytest.raises(BiopropError, match=r"start=.*expected a batch index in 0\.\.8"):
        next(_tensor_split().batches(5, shuffle=True, start=start))
    assert list(_tensor_split().batches(5, shuffle=True, start=8)) == []


def test_plan_describes_the_batches():
    s = _tensor_split()
    plan = s.plan(5, shuffle=True, seed=1, epoch=4, rank=1, world_size=2, start=2)
    assert [b.index for b in plan] == [2, 3]
    assert plan[0].augment_key == (1, 4, "augment", 0, 2)  # the global batch's key, whatever the rank
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


def test_folder_split_augmentation_does_not_depend_on_the_rank(tmp_path, fmt):
    import numpy as np
    from PIL import Image

    train = _folder_split(tmp_path, fmt)  # 15 images: 3 ranks x 3 = one process at 9 (batches 9 and 6)
    rng = np.random.default_rng(0)
    for path, _ in train.files.items:  # noise, not one colour: every crop and flip shows
        Image.fromarray(rng.integers(0, 256, (240, 260, 3), dtype=np.uint8)).save(path, "JPEG")
    _check_rank_free_augmentation(train, 3, 3, shuffle=True, seed=5, epoch=1)


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
