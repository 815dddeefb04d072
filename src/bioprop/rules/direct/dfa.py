"""Direct feedback alignment (Nøkland 2016, NeurIPS; "broadcast FA", Samadi et al. 2017).

The output error goes straight to every hidden layer through a fixed random matrix:

    e = dL/da_L,   delta_l = (B_l e) * f'(a_l),   dW_l = delta_l h_{l-1}^T  (l < L),

and the output layer learns from its true gradient. L is the model's task loss
(:mod:`bioprop.tasks`): for a classifier e = (softmax(a_L) - y*) / N, for an autoencoder
e = (h_L - x) / N, so ``B_l`` has one row per output unit (the classes; 784 for the MNIST
autoencoder). ``B_l`` maps the error to the *whole* activation of layer l (dense DFA), also for
convolutional and locally-connected layers.

Memory: instead of one ``classes x units_l`` matrix per layer (the sum over layers, which ran
out of memory on ImageNet in the paper), a single shared matrix ``M`` of shape
``(outputs + hidden_layers - 1, max_l units_l)`` with entries uniform in [-1, 1) is stored, and
layer l uses the window ``B_l = s_l * M[l : l + outputs, : units_l]`` (a view, no copy), with
the Glorot scale ``s_l = sqrt(6 / (outputs + units_l))``. Shifting the row window per layer
keeps layers of equal width from sharing one feedback matrix. Memory grows with the largest
layer only (after TinyDFA, Launay et al. 2020).

Implementation: the error is delivered at the outputs of named submodules, the *delivery points*
(``deliver_at``; on a bioprop Network by default every hidden block, ``blocks.0`` .. ``blocks.{L-2}``).
Forward hooks cut the graph at each (the computation above sees the output detached) and pass the
model's output through an identity autograd function whose backward receives ``e = dL/dlogits`` of
*whatever loss* is back-propagated and returns ``e`` to the layers above the last delivery point (their
true gradient) and ``B_k e`` to delivery point k; autograd then applies ``f'(a_l)`` and forms the local
weight gradients. Everything inside a segment (batch norm, pooling, skip connections within it) is
ordinary autograd. So ``rule(x)``, ``model(x)`` and a backward pass through either are DFA's update,
equal to :meth:`~DirectFeedbackAlignment.compute_gradients`.

The rule wraps its model in place, however applied (``create_rule("dfa", net)``, ``bioprop.wrap(net,
rule="dfa", deliver_at=["layer1", "layer2"])``, or ``--model package.module:function`` with
``--deliver-at``; :mod:`bioprop.rules.wrapping`): the hooks sit on the model, ``M`` is the model's
buffer ``feedback_matrix`` (so ``model.to()``, ``model.state_dict()`` and deep copies carry it), and
``wrap`` returns the model (the rule: ``bioprop.rule_of(model)``). ``M`` is drawn from the seed at
construction for a Network, or when the module declares ``input_shape`` (or ``example_input`` is given
to ``wrap``: one probe forward in eval mode); otherwise at the first forward with gradients, on the
logits' device (``load_state_dict`` works before it). Window k belongs to the k-th delivery point in
``named_modules()`` order. Restrictions, refused by name: the output must be ``(N, outputs)``; every
delivery point must run exactly once per forward and return a tensor; no tensor computed below a
delivery point may be used above it (a skip connection crossing it, checked on the first forward:
deliver at the whole residual block's output instead). Not checked: an in-place op directly on a
delivery point's output (it shares storage with the cut copy; autograd may then raise). Forwards under
``torch.no_grad()``, inside :meth:`true_backprop`, and of a submodule called on its own (not within a
forward of the model) are plain.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from bioprop.checks import suggest
from bioprop.errors import BiopropError
from bioprop.models import Network
from bioprop.nn.init import glorot_uniform_bound
from bioprop.rules.base import LearningRule, StepResult, register_rule, rule_options
from bioprop.rules.wrapping import WrapsModel, keep_absent_entries, remove_tensor


class _Deliver(torch.autograd.Function):
    """Identity on the logits; backward sends ``e`` on and ``B_k e`` into each delivery output."""

    @staticmethod
    def forward(ctx, rule, logits, *hidden):
        ctx.rule, ctx.shapes = rule, [(h.shape, h.dtype) for h in hidden]
        return logits.clone()

    @staticmethod
    def backward(ctx, error):
        signals = [ctx.rule.project_error(error, k).reshape(shape).to(dtype)
                   for k, (shape, dtype) in enumerate(ctx.shapes)]
        return (None, error, *signals)


@register_rule("dfa")
class DirectFeedbackAlignment(WrapsModel, LearningRule):
    trains_through_autograd = True

    @dataclass
    class Options:
        deliver_at: str = field(default="", metadata={"help": (
            "comma-separated submodule names (as in named_modules()) whose outputs receive the projected "
            "error; empty: every hidden block of a bioprop Network (required for any other model)")})

    def __init__(self, model, options=None, seed=0, example_input=None):
        super().__init__(model, options, seed)
        self.delivery_names = _delivery_names(model, self.options.deliver_at)
        if hasattr(model, "feedback_matrix"):
            raise BiopropError(f"dfa: {type(model).__name__} already has an attribute 'feedback_matrix', where the "
                               f"rule keeps its feedback matrix")
        self._checked, self._outputs, self._in_forward = False, [], False
        self.attach_to_model()  # every check passed: from here on the model changes
        model.register_buffer("feedback_matrix", None)  # drawn once the shapes are known
        modules = dict(model.named_modules())
        for index, name in enumerate(self.delivery_names):
            self.keep_hook(modules[name].register_forward_hook(functools.partial(self._cut_hook, index)))
        self.keep_hook(model.register_forward_pre_hook(self._enter_forward))  # bound methods: deepcopy-safe
        self.keep_hook(model.register_forward_hook(self._output_hook))
        self.keep_hook(model._register_load_state_dict_pre_hook(self._materialise))
        self._register_load_state_dict_pre_hook(self._read_old_checkpoint)
        if isinstance(model, Network) and not self.options.deliver_at.strip():
            self.num_classes = model.output_units  # the rows of B_l: output units (classes of a classifier)
            self.hidden_sizes = [math.prod(shape) for shape in model.output_shapes()[:-1]]
            self._draw(model.layers[0].weight.device)
            self._checked = True  # a stack of blocks: no skip connection crosses a block boundary
            return
        if example_input is None and hasattr(model, "input_shape"):
            reference = next(model.parameters(), torch.empty(0))
            example_input = torch.zeros(2, *model.input_shape, dtype=reference.dtype, device=reference.device)
        if example_input is not None:
            try:
                self._probe(example_input)
            except BaseException:  # a refused module is left as it was
                self.unwrap()
                raise

    @classmethod
    def wrap(cls, module, seed=0, strict=True, example_input=None, **options):
        """``module`` itself, its forward now giving outputs whose backward is DFA's (the rule:
        ``bioprop.rule_of(module)``). ``deliver_at`` may be a list of names or a comma-separated string;
        ``strict`` is the feedback rules' (DFA replaces no layer)."""
        if not isinstance(options.get("deliver_at", ""), str):
            options["deliver_at"] = ",".join(options["deliver_at"])
        cls(module, rule_options(cls.name, **options), seed=seed, example_input=example_input)
        return module

    # -- the feedback matrices --------------------------------------------------------------
    @property
    def feedback_matrix(self) -> torch.Tensor | None:
        """``M``, the model's buffer ``feedback_matrix`` (None until the shapes are known)."""
        return self.model.feedback_matrix

    def feedback_weight(self, index: int) -> torch.Tensor:
        """``B_l`` (classes x units) for hidden layer ``index``, already scaled: a view plus a scale."""
        classes, units = self.num_classes, self.hidden_sizes[index]
        return self.feedback_matrix[index: index + classes, :units] * glorot_uniform_bound(classes, units)

    def project_error(self, error: torch.Tensor, index: int) -> torch.Tensor:
        """``B_l e`` for a batch of output errors ``(N, classes)`` -> ``(N, units_l)``."""
        classes, units = self.num_classes, self.hidden_sizes[index]
        window = self.feedback_matrix[index: index + classes, :units].to(error.dtype)
        return error.mm(window) * glorot_uniform_bound(classes, units)

    def _draw(self, device) -> None:
        """``M``, uniform in [-1, 1), from the rule's seed, for ``num_classes`` and ``hidden_sizes``."""
        rows = self.num_classes + max(len(self.hidden_sizes) - 1, 0)
        sample = torch.rand(rows, max(self.hidden_sizes, default=1), generator=self.layer_generator(0))
        self.model.feedback_matrix = (2 * sample - 1).to(device)

    def _allocate(self, logits: torch.Tensor, hidden: list[torch.Tensor]) -> None:
        """Reads the shapes; draws ``M`` the first time, afterwards checks it fits them."""
        self.num_classes, self.hidden_sizes = logits.shape[1], [h[0].numel() for h in hidden]
        shape = (self.num_classes + len(hidden) - 1, max(self.hidden_sizes))
        if self.feedback_matrix is None:
            self._draw(logits.device)
        elif tuple(self.feedback_matrix.shape) != shape:
            raise BiopropError(f"dfa: the feedback matrix is {tuple(self.feedback_matrix.shape)}, but this "
                               f"module's {self.num_classes} classes and delivery points of {self.hidden_sizes} "
                               f"units need {shape}")

    def _materialise(self, state_dict, prefix, *args):
        """Load pre hook of the model: room for a stored ``M`` not drawn yet; a state_dict without one (a
        plain model's) keeps the current ``M``."""
        stored = state_dict.get(prefix + "feedback_matrix")
        if self.feedback_matrix is None and stored is not None:
            device = next(self.model.parameters(), stored).device
            self.model.feedback_matrix = torch.empty(stored.shape, dtype=stored.dtype, device=device)
        keep_absent_entries(("feedback_matrix",), self.model, state_dict, prefix)

    def _read_old_checkpoint(self, state_dict, prefix, *args) -> None:
        """Load pre hook of the rule: before issue 17 the rule itself held ``feedback_matrix``."""
        if prefix + "feedback_matrix" in state_dict:
            state_dict[prefix + "model.feedback_matrix"] = state_dict.pop(prefix + "feedback_matrix")

    def release_model(self) -> None:
        remove_tensor(self.model, "feedback_matrix")

    # -- the hooks ------------------------------------------------------------------------
    def _enter_forward(self, module, args):
        self._outputs.clear()
        self._in_forward = torch.is_grad_enabled() and not self.in_true_backprop

    def _cut_hook(self, index, module, args, output):
        if not self._in_forward:
            return None
        name = self.delivery_names[index]
        if not isinstance(output, torch.Tensor):
            raise BiopropError(f"dfa: delivery point {name!r} returned {type(output).__name__}, not a tensor")
        if any(k == index for k, _ in self._outputs):
            raise BiopropError(f"dfa: delivery point {name!r} ran twice in one forward pass (a shared module); "
                               f"deliver at a module that runs once")
        self._outputs.append((index, output))
        return output.detach()

    def _output_hook(self, module, args, logits):
        active, self._in_forward = self._in_forward, False
        if not active or not self.delivery_names:  # no hidden block: the output layer's true gradient
            return None
        fired = dict(self._outputs)
        missing = [name for k, name in enumerate(self.delivery_names) if k not in fired]
        if missing:
            raise BiopropError(f"dfa: delivery point(s) {', '.join(map(repr, missing))} did not run in this "
                               f"forward pass")
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise BiopropError(f"dfa: {type(module).__name__} must return (N, classes) logits, got "
                               f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
        if not logits.requires_grad:
            raise BiopropError(f"dfa: the logits of {type(module).__name__} depend on no parameter above the last "
                               f"delivery point {self.delivery_names[-1]!r}; deliver below the output layer")
        if not self._checked:
            self._check_no_crossing([output for _, output in self._outputs], logits,
                                    [self.delivery_names[k] for k, _ in self._outputs])
            self._checked = True
        hidden = [fired[k] for k in range(len(self.delivery_names))]
        self._allocate(logits, hidden)
        self._outputs.clear()
        return _Deliver.apply(self, logits, *hidden)

    @staticmethod
    def _check_no_crossing(hidden, logits, names) -> None:
        """Refuses a graph node reachable from two segments' outputs (a skip over a delivery point)."""
        owner = {}
        for segment, tensor in enumerate([*hidden, logits]):
            stack, seen = [tensor.grad_fn], set()
            while stack:
                node = stack.pop()
                if node is None or node in seen or type(node).__name__ == "AccumulateGrad":
                    continue
                seen.add(node)
                lower = owner.setdefault(node, segment)
                if lower != segment:
                    raise BiopropError(f"dfa: a tensor computed below delivery point {names[lower]!r} is also used "
                                       f"above it (a skip connection crossing it); deliver at the output of the "
                                       f"whole residual block instead")
                stack.extend(next_node for next_node, _ in node.next_functions)

    def _probe(self, example_input: torch.Tensor) -> None:
        modes = {module: module.training for module in self.model.modules()}
        self.model.eval()
        try:
            with torch.enable_grad():
                self.model(example_input)
        finally:
            for module, training in modes.items():
                module.training = training

    # -- the interface ----------------------------------------------------------------------
    def compute_gradients(self, x, y, groups):
        target = self.task.target(x, y)
        logits = self(x)
        loss = self.task.loss(logits, target)
        loss.backward()
        return StepResult(loss.detach(), logits.detach())


def _delivery_names(model: nn.Module, deliver_at: str) -> list[str]:
    """The requested names, checked against ``model.named_modules()`` and put in its order; for a
    Network without ``deliver_at``, every hidden block."""
    known = [name for name, _ in model.named_modules() if name]
    listing = ", ".join(known[:30]) + (f", ... ({len(known)} in all)" if len(known) > 30 else "")
    requested = [name.strip() for name in deliver_at.split(",") if name.strip()]
    if not requested and isinstance(model, Network):
        return [f"blocks.{index}" for index in range(len(model.blocks) - 1)]
    kind = type(model).__name__
    if not requested:
        raise BiopropError(f"dfa on a {kind} needs deliver_at: the submodules whose outputs receive the projected "
                           f"error, e.g. deliver_at={known[:2]} (its submodules: {listing or 'none'})")
    for name in requested:
        if name not in known:
            raise BiopropError(f"dfa: {kind} has no submodule {name!r}{suggest(name, known)} "
                               f"(its submodules: {listing or 'none'})")
    return [name for name in known if name in requested]
