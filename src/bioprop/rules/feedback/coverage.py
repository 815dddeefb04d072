"""Which layers of a module a feedback rule covers: the error goes through a feedback weight in some,
others need none, and every other layer with parameters is refused by name (never left on backprop
without a word).

* **feedback layers** — linear maps of their input whose input gradient is their own transposed map
  (:data:`~bioprop.nn.affine.FEEDBACK_LAYER_TYPES`): ``nn.Linear``, ``nn.Conv1d/2d/3d``,
  ``nn.ConvTranspose1d/2d/3d``, ``LocallyConnected2d`` and bioprop's ``Conv2dSame``, and subclasses that
  keep their class's ``forward`` (weight-normalised layers included). The error reaches their input
  through ``B``.
* **local layers** — parameters that act elementwise or as a lookup, so that no weight matrix is
  transported backwards: normalisation (``BatchNorm*``, ``SyncBatchNorm``, ``InstanceNorm*``,
  ``LayerNorm``, ``GroupNorm``, ``RMSNorm``; their affine scale and shift learn from the error that
  reaches them, and the error passes through the normalisation's own Jacobian, scale included: a gain
  per unit, not a transposed matrix), ``nn.PReLU`` (a slope per channel) and ``nn.Embedding`` /
  ``nn.EmbeddingBag`` (integer inputs: no error goes below them). Autograd trains them.
* **refused** — everything else with parameters: ``nn.MultiheadAttention`` (its projections run inside
  ``F.multi_head_attention_forward``, not through a layer that could be replaced), recurrent layers
  (fused kernels reusing one weight at every step), ``nn.Bilinear`` (bilinear in two inputs: no single
  transposed map), lazy layers not yet initialised, a subclass of a feedback layer with a ``forward`` of
  its own, and any module holding parameters of its own (its ``forward`` uses them in ways wrap cannot
  see). Their subtrees are not searched further, except a plain module with parameters of its own,
  whose children are covered as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from bioprop.nn import Conv2dSame
from bioprop.nn.affine import FEEDBACK_LAYER_TYPES

_OWN_FORWARDS = {layer_type.forward for layer_type in (*FEEDBACK_LAYER_TYPES, Conv2dSame)}

LOCAL_LAYER_TYPES = tuple(t for t in (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None), nn.LocalResponseNorm,
    nn.PReLU, nn.Embedding, nn.EmbeddingBag) if t is not None)

REFUSED_LAYER_TYPES = (
    (nn.MultiheadAttention, "attention runs its projections (in_proj_weight, out_proj) inside "
                            "F.multi_head_attention_forward, so their backward pass would stay backprop's"),
    (nn.RNNBase, "a recurrent layer reuses its weights at every step inside a fused kernel; no layer to replace"),
    (nn.RNNCellBase, "a recurrent cell's weights are used by a fused kernel; no layer to replace"),
    (nn.Bilinear, "bilinear in two inputs: no single transposed map to carry the error back"),
)

FEEDBACK_LAYERS_TEXT = "nn.Linear, nn.Conv1d/2d/3d, nn.ConvTranspose1d/2d/3d, LocallyConnected2d"
SUPPORTED = f"{FEEDBACK_LAYERS_TEXT} (normalisation, PReLU and embeddings learn from their local gradient)"


@dataclass
class LayerCoverage:
    """The layers of a module by how a feedback rule treats them, each as ``(name, module)``."""

    feedback: list[tuple[str, nn.Module]] = field(default_factory=list)
    local: list[tuple[str, nn.Module]] = field(default_factory=list)
    refused: list[tuple[str, nn.Module, str]] = field(default_factory=list)  # with the reason

    def describe_refused(self) -> str:
        return "; ".join(f"{name or '(the module itself)'} ({type(module).__name__}): {reason}"
                         for name, module, reason in self.refused)


def _uninitialised(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params()


def _refusal(module: nn.Module) -> tuple[str | None, bool]:
    """(why ``module`` is refused or None, whether its children are still searched)."""
    if _uninitialised(module):
        return "a lazy layer not initialised yet: run one forward pass before wrapping", False
    for layer_type, reason in REFUSED_LAYER_TYPES:
        if isinstance(module, layer_type):
            return reason, False
    own = [name for name, parameter in module._parameters.items() if parameter is not None]
    if isinstance(module, FEEDBACK_LAYER_TYPES):  # a subclass with a forward of its own
        base = next(t for t in type(module).__mro__ if t in FEEDBACK_LAYER_TYPES)
        return f"a subclass of {base.__name__} with its own forward: how it uses its weight is unknown", False
    if own:
        return f"parameters of its own ({', '.join(own)}) that its forward uses in ways wrap cannot see", True
    return None, True


def layer_coverage(module: nn.Module) -> LayerCoverage:
    """Every submodule of ``module`` (``module`` included), once each, sorted into the three kinds."""
    coverage, seen = LayerCoverage(), set()

    def visit(name: str, current: nn.Module) -> None:
        if id(current) in seen:
            return
        seen.add(id(current))
        if isinstance(current, FEEDBACK_LAYER_TYPES) and type(current).forward in _OWN_FORWARDS \
                and not _uninitialised(current):
            coverage.feedback.append((name, current))
            return
        if isinstance(current, LOCAL_LAYER_TYPES):
            coverage.local.append((name, current))
            return
        reason, search_children = _refusal(current)
        if reason is not None:
            coverage.refused.append((name, current, reason))
        if search_children:
            for child_name, child in current.named_children():
                visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", module)
    return coverage
