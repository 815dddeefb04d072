"""The networks of Bartunov et al. (2018), Table 3 and Appendix 5.2, by name.

Every network uses tanh between layers, Glorot-uniform initialisation, zero biases, SAME
padding and strided layers instead of pooling; the output is a linear layer whose logits
feed a softmax / cross-entropy. Locally-connected layers are written (kernel, channels,
stride); each ``*-conv`` network is the ``*-lc`` network with weight-shared convolutions
(the paper's "BP ConvNet" baselines).

``mnist-autoencoder`` (App. 5.5, Figs. 6-7) is the one network of another task
(:mod:`bioprop.tasks`, ``reconstruction``): 784-512-64-512-784, tanh hidden units like the
paper's other networks, and a *linear* output layer of 784 units trained on ½||h_L - x||² against
its own (flattened) input. The paper states neither the output nonlinearity nor the input
scaling; its presets feed pixels / 255 (normalisation "none", so the output reconstructs the
[0, 1] image and the error is per pixel on Fig. 6's scale), and a linear output can reach every
pixel value without saturating.

=============  ======================================================================
mnist-fc       FC 256 x5 -> 10                                                (0.47M)
mnist-lc       LC(3, 32, 2) -> LC(3, 64, 2) -> FC 1024 -> 10                   (4.2M)
cifar-fc       FC 1024 x3 -> 10                                               (5.25M)
cifar-lc       LC(5, 64, 2) -> LC(5, 128, 2) -> LC(3, 256, 1) -> FC 1024 -> 10  (50M)
imagenet-lc    LC(9,48,4) LC(3,48,2) LC(5,96,1) LC(3,96,2) LC(3,192,1) LC(3,192,2)
               LC(3,384,1) -> 1000                                             (260M)
mnist-auto-    FC 512 -> FC 64 -> FC 512 -> 784 (linear output; reconstruction)  (0.87M)
encoder
=============  ======================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bioprop.errors import BiopropError
from bioprop.models.network import Block, Network
from bioprop.nn import Conv2dSame, LocallyConnected2d
from bioprop.registry import Registry
from bioprop.tasks import TASKS

MODELS: Registry = Registry("model")


@dataclass(frozen=True)
class LayerSpec:
    """One hidden layer: ``kind`` is "fc", "lc" or "conv"; ``units`` is the width or channel count."""

    kind: str
    units: int
    kernel: int = 1
    stride: int = 1


def build_network(name: str, input_shape: tuple[int, int, int], hidden: list[LayerSpec], num_classes: int | None,
                  task: str = "classification") -> Network:
    """Builds blocks for ``hidden`` layers (tanh) plus a linear output layer, with Glorot init; the
    output has as many units as the task needs (``num_classes``, or the input's for reconstruction)."""
    channels, height, width = input_shape
    features = None  # set once the activations are flat
    blocks: list[Block] = []
    outputs = TASKS.get(task).output_units(input_shape, num_classes)
    for spec in hidden + [LayerSpec("fc", outputs)]:
        is_output = len(blocks) == len(hidden)
        activation = "identity" if is_output else "tanh"
        if spec.kind == "fc":
            flatten = features is None
            in_features = features if features is not None else channels * height * width
            layer = nn.Linear(in_features, spec.units)
            features = spec.units
        elif spec.kind in ("lc", "conv"):
            if features is not None:
                raise ValueError(f"{name}: a {spec.kind} layer cannot follow a fully-connected one")
            flatten = False
            if spec.kind == "lc":
                layer = LocallyConnected2d(channels, spec.units, (height, width), spec.kernel, spec.stride)
            else:
                layer = Conv2dSame(channels, spec.units, (height, width), spec.kernel, spec.stride)
            channels, (height, width) = spec.units, layer.out_size
        else:
            raise ValueError(f"{name}: unknown layer kind {spec.kind!r}")
        glorot_init(layer)
        blocks.append(Block(layer, activation, flatten))
    return Network(blocks, input_shape, num_classes, name=name, task=task)


def glorot_init(layer: nn.Module) -> None:
    """Glorot & Bengio (2010) uniform weights, zero biases (fan counts include the kernel area)."""
    if isinstance(layer, LocallyConnected2d):
        layer.reset_parameters()  # Glorot with the per-location fan-in/fan-out
        return
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _register(name: str, input_shape: tuple[int, int, int], hidden: list[LayerSpec], num_classes: int | None,
              task: str = "classification") -> None:
    MODELS.register(name)(lambda: build_network(name, input_shape, hidden, num_classes, task))


def _lc_twins(prefix: str, input_shape, local: list[tuple[int, int, int]], fc: list[int], num_classes: int) -> None:
    for kind in ("lc", "conv"):
        hidden = [LayerSpec(kind, units, kernel, stride) for kernel, units, stride in local]
        hidden += [LayerSpec("fc", units) for units in fc]
        _register(f"{prefix}-{kind}", input_shape, hidden, num_classes)


_register("mnist-fc", (1, 28, 28), [LayerSpec("fc", 256)] * 5, 10)
_register("cifar-fc", (3, 32, 32), [LayerSpec("fc", 1024)] * 3, 10)
_lc_twins("mnist", (1, 28, 28), [(3, 32, 2), (3, 64, 2)], [1024], 10)
_lc_twins("cifar", (3, 32, 32), [(5, 64, 2), (5, 128, 2), (3, 256, 1)], [1024], 10)
_lc_twins("imagenet", (3, 224, 224),
          [(9, 48, 4), (3, 48, 2), (5, 96, 1), (3, 96, 2), (3, 192, 1), (3, 192, 2), (3, 384, 1)], [], 1000)
_register("mnist-autoencoder", (1, 28, 28), [LayerSpec("fc", 512), LayerSpec("fc", 64), LayerSpec("fc", 512)], None,
          task="reconstruction")


def model_factory(name: str):
    """The builder of model ``name``: a registered name (``mnist-fc``), or an import path
    ``package.module:function`` (or a file, ``path/to/models.py:function``) naming a function (or
    class) that returns any ``nn.Module`` mapping
    ``(N, C, H, W)`` images to ``(N, classes)`` logits: a user's own ResNet, say. Such a module may
    declare ``input_shape`` and ``num_classes`` attributes, which the trainer checks against the data."""
    if isinstance(name, str) and ":" in name and name not in MODELS:
        module_name, _, attribute = name.rpartition(":")
        module = _import(module_name, name)
        builder = getattr(module, attribute, None)
        if not callable(builder):
            raise BiopropError(f"model {name!r}: module {module_name!r} has no function or class {attribute!r}")
        return builder
    return MODELS.get(name)


def _import(module_name: str, name: str):
    """The module ``package.module``, or the Python file ``path/to/file.py``."""
    import importlib
    import importlib.util
    from pathlib import Path

    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ImportError(f"no file {module_name}")
            spec = importlib.util.spec_from_file_location(f"bioprop_user_model_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(module_name)
    except ImportError as error:
        raise BiopropError(f"model {name!r}: cannot import {module_name!r} ({error}); expected a registered "
                           f"model name, an import path package.module:function or a file path/to/file.py:function") from None


def create_model(name: str) -> nn.Module:
    """Builds model ``name`` (registered, or an import path, see :func:`model_factory`) with freshly
    initialised weights (seed with ``torch.manual_seed``)."""
    model = model_factory(name)()
    if not isinstance(model, nn.Module):
        raise BiopropError(f"model {name!r}: its builder returned {type(model).__name__}, expected an nn.Module")
    return model


def list_models() -> list[str]:
    return MODELS.names()
