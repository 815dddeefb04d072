"""Forward gradients: the gradient estimated from directional derivatives, with no backward pass at all.

A forward-mode derivative (``torch.func.jvp``) gives, in one forward pass, the directional derivative
of the loss along a random direction v; scaling v by it gives an unbiased estimate of the gradient,
since E[v vᵀ] = I for v ~ N(0, I):

    g = (∇L · v) v,        E[g] = ∇L,        E‖g‖² = (n + 2) ‖∇L‖²   (n: the dimension of v),

averaged over ``directions`` independent draws (variance / ``directions``). Three kinds of
``perturbation``, which differ in *what* is perturbed:

* ``weight`` (Baydin, Pearlmutter, Syme, Wood & Torr 2022, "Gradients without backpropagation",
  arXiv 2202.08587): v over every trained parameter θ (weights and biases), g_θ = (∇_θL · v) v. The
  dimension n is the parameter count (0.47M for mnist-fc), so the estimate is very noisy.
* ``activity`` (Ren, Kornblith, Liao & Hinton 2023, "Scaling forward gradient with local losses",
  ICLR; their activity-perturbed *global* variant, FG-A): each block's pre-activation a_l gets its own
  u_l ~ N(0, I), per example; the directional derivative of example n's loss along all of them,
  d_n = Σ_l ∇_{a_l} L_n · u_l, gives δ_l = d_n u_l / N, an unbiased estimate of ∂L/∂a_l, and the weight
  gradient is the layer's local δ_l h_{l-1}ᵀ (for convolutional and LC layers their own weight-gradient
  map). n is now the number of units (1,290 for mnist-fc), not of weights.
* ``local`` (the default; Ren et al. 2023's local greedy variant, LG-FG-A, with one layer per block):
  each hidden block l has its own loss L_l = task loss of a linear head on h_l (on the channel means of
  a feature map, as Ren et al. pool before their heads), and its perturbation u_l reaches only that
  loss: d_{l,n} = ∇_{a_l} L_{l,n} · u_l, δ_l = d_{l,n} u_l / N. The block's input comes from the block
  below (no gradient crosses blocks); the output block's loss is the task's. The heads are the
  rule's own parameters (in the ``forward`` group, after the network's), trained by their exact local
  gradient ∂L_l/∂head = e_l p_lᵀ / N (e_l the head's output error, p_l its input): one layer, no
  backward pass either.

The directional derivative of the loss is the output error of each example times the output's
tangent, d_n = e_n · ȯ_n, with e = ∂(Σ_n L_n)/∂h_L the task's output error (softmax − one-hot for
classification, h_L − x for reconstruction, by autograd of the loss alone for your own loss): the
forward-mode pass carries ȯ, nothing is propagated backwards through the network. A
locally-connected layer's fast kernel has no forward-mode derivative, so with ``weight`` and
``activity`` perturbations the perturbed pass runs LC layers as unfold + einsum (the same map; tested).
Weight perturbations are the same on every data-parallel process; activity perturbations are drawn
per example for the whole global batch (see :mod:`bioprop.rules.forward_only`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bioprop.checks import check_int
from bioprop.models.zoo import glorot_init
from bioprop.nn import LocallyConnected2d
from bioprop.nn.affine import affine_ops
from bioprop.rules.base import LearningRule, StepResult, register_rule
from bioprop.rules.forward_only import StepSeeded, accumulate_grad, require_network

PERTURBATIONS = ("weight", "activity", "local")


def affine(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``layer``'s pre-activation W x + b with the given ``weight`` and ``bias``, in ops that have a
    forward-mode derivative (``torch.func.jvp``): the layer's own map for linear and convolutional
    layers, unfold + einsum for a locally-connected one (whose fast kernel has no forward mode)."""
    if isinstance(layer, LocallyConnected2d):
        return locally_connected_by_unfold(layer, x, weight, bias)
    ops = affine_ops(layer)
    return ops.add_bias(ops.forward(ops.prepare(x), weight), bias)


def locally_connected_by_unfold(layer: LocallyConnected2d, x: torch.Tensor, weight: torch.Tensor,
                                bias: torch.Tensor | None) -> torch.Tensor:
    """The LC map (N, C, H, W) -> (N, O, H', W') as zero padding, ``F.unfold`` and one einsum: every
    output location l multiplies its patch (C kH kW numbers, ordered as a Conv2d kernel) by its own
    filter ``weight[i, j]`` (O x C x kH x kW)."""
    top, bottom, left, right = layer.padding
    patches = F.unfold(F.pad(x, (left, right, top, bottom)), layer.kernel_size, stride=layer.stride)
    out_h, out_w = layer.out_size
    filters = weight.reshape(out_h * out_w, layer.out_channels, -1)                  # (L, O, K)
    out = torch.einsum("nkl,lok->nol", patches, filters).reshape(x.shape[0], layer.out_channels, out_h, out_w)
    return out if bias is None else out + bias


@register_rule("fg")
class ForwardGradient(StepSeeded, LearningRule):
    """Forward gradient (Baydin et al. 2022; Ren et al. 2023): g = (∇L · v) v from one jvp per direction."""

    label = "FG"
    preset_column = "fa"
    # four directions per step (a third of one direction's error in an epoch); Adam's lr
    # chosen among 3e-4, 1e-3, 3e-3 on the validation error after one epoch of MNIST-FC (seed 0;
    # docs/results/beyond-families/README.md)
    preset_settings = {"lr": 1e-3, "directions": 4}
    wrap_refusal = ("its update is a forward-mode derivative of the loss along random directions (torch.func.jvp), "
                    "not a replacement of the backward pass that a wrapped module's loss.backward() runs")

    @dataclass
    class Options:
        perturbation: str = field(default="local", metadata={"choices": PERTURBATIONS, "help": (
            "what is perturbed: 'weight' (every parameter, Baydin et al. 2022), 'activity' (every block's "
            "pre-activations, global loss; Ren et al. 2023's FG-A) or 'local' (pre-activations, each block "
            "on its own loss through a linear head; Ren et al.'s LG-FG-A)")})
        directions: int = field(default=1, metadata={"help": (
            "forward gradient: number of random directions per batch whose estimates are averaged "
            "(one jvp each; the variance falls as 1/directions)")})

    @classmethod
    def check_options(cls, options) -> None:
        check_int(options.directions, "directions", minimum=1)
        super().check_options(options)

    def __init__(self, model, options=None, seed=0):
        super().__init__(model, options, seed)
        require_network(self, model)
        self.heads = nn.ModuleList()
        if self.options.perturbation == "local":
            outputs = model.output_units
            for block in model.blocks[:-1]:
                layer = block.layer
                width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
                reference = layer.weight
                head = nn.Linear(width, outputs, device=reference.device, dtype=reference.dtype)
                glorot_init(head)
                self.heads.append(head)

    def parameter_groups(self):
        return {"forward": list(self.model.parameters()) + list(self.heads.parameters())}

    # -- the perturbed passes ------------------------------------------------------------------
    def _slots(self) -> list[tuple[nn.Module, str]]:
        """(layer, "weight" | "bias") for every parameter of the network, in ``model.parameters()`` order."""
        slots = []
        for layer in self.model.layers:
            slots.append((layer, "weight"))
            if layer.bias is not None:
                slots.append((layer, "bias"))
        return slots

    def _run(self, x, values, perturbations=None):
        """The network's output with parameters ``values`` ([(weight, bias)] per block) and ``perturbations``
        added to the pre-activations (one per block, or None), through ops with forward-mode derivatives."""
        h = x
        for index, block in enumerate(self.model.blocks):
            weight, bias = values[index]
            a = affine(block.layer, block.layer_input(h), weight, bias)
            if perturbations is not None:
                a = a + perturbations[index]
            h = block.activate(a)
        return h

    def _layer_values(self, flat):
        """``[(weight, bias)]`` per block from the flat parameters in :meth:`_slots` order."""
        values, position = [], 0
        for layer in self.model.layers:
            weight = flat[position]
            bias = flat[position + 1] if layer.bias is not None else None
            position += 1 if layer.bias is None else 2
            values.append((weight, bias))
        return values

    def _primal(self, x):
        """The unperturbed pass (the layers' own kernels): each block's input and pre-activation, the output."""
        inputs, pre_activations, h = [], [], x
        for block in self.model.blocks:
            inputs.append(block.layer_input(h))
            pre_activations.append(block.layer(inputs[-1]))
            h = block.activate(pre_activations[-1])
        return inputs, pre_activations, h

    def _weight_mode(self, x, target, step):
        """g_θ = mean over directions of (∇_θL · v) v, v ~ N(0, I) over every parameter of the network."""
        parameters = [getattr(layer, kind) for layer, kind in self._slots()]
        primals = tuple(p.detach() for p in parameters)
        sums = [torch.zeros_like(p) for p in primals]
        for sample in range(self.options.directions):
            generator = self.generator(x.device, step, sample)
            tangents = tuple(torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
                             for p in primals)
            output, tangent = torch.func.jvp(lambda *flat: self._run(x, self._layer_values(flat)), primals, tangents)
            derivative = self._directional(output, tangent, target).mean()  # ∇L · v (L: the batch mean)
            for total, v in zip(sums, tangents):
                total.add_(v * derivative.to(v.dtype))
        for parameter, total in zip(parameters, sums):
            accumulate_grad(parameter, total / self.options.directions)
        return output

    def _activity_mode(self, x, target, step):
        """δ_l = mean over directions of d_n u_l / N, d_n = Σ_l ∇_{a_l}L_n · u_l (one jvp through the whole network)."""
        inputs, pre_activations, output = self._primal(x)
        values = [(layer.weight.detach(), None if layer.bias is None else layer.bias.detach())
                  for layer in self.model.layers]
        deltas = [0.0] * len(pre_activations)
        for sample in range(self.options.directions):
            generator = self.generator(x.device, step, sample)
            noise = tuple(self.global_normal(a, generator) for a in pre_activations)
            zeros = tuple(torch.zeros_like(u) for u in noise)
            perturbed, tangent = torch.func.jvp(lambda *eps: self._run(x, values, eps), zeros, noise)
            scale = self._directional(perturbed, tangent, target) / (len(x) * self.options.directions)
            deltas = [d + _per_example(scale, u) for d, u in zip(deltas, noise)]
        self._write_layer_grads(inputs, deltas)
        return output

    def _local_mode(self, x, target, step):
        """δ_l = mean over directions of d_{l,n} u_l / N, d_{l,n} = ∇_{a_l}L_{l,n} · u_l (each block's own loss)."""
        blocks = self.model.blocks
        inputs, pre_activations, output = self._primal(x)
        heads = [(head.weight.detach(), head.bias.detach()) for head in self.heads]

        def local_outputs(*eps):
            """Each block's loss input: its head's output (hidden blocks) or the network's output."""
            outs = []
            for index, (block, a, e) in enumerate(zip(blocks, pre_activations, eps)):
                h = block.activate(a + e)
                outs.append(F.linear(_pooled(h), *heads[index]) if index < len(heads) else h)
            return tuple(outs)

        deltas = [0.0] * len(blocks)
        for sample in range(self.options.directions):
            generator = self.generator(x.device, step, sample)
            noise = tuple(self.global_normal(a, generator) for a in pre_activations)
            zeros = tuple(torch.zeros_like(u) for u in noise)
            outs, tangents = torch.func.jvp(local_outputs, zeros, noise)
            for index, (out, tangent, u) in enumerate(zip(outs, tangents, noise)):
                scale = self._directional(out, tangent, target) / (len(x) * self.options.directions)
                deltas[index] = deltas[index] + _per_example(scale, u)
        self._write_layer_grads(inputs, deltas)
        for index, head in enumerate(self.heads):  # the heads: their exact local gradient e_l p_lᵀ / N
            features = _pooled(blocks[index].activate(pre_activations[index])).to(head.weight.dtype)
            error = self.task.output_error(F.linear(features, head.weight, head.bias), target) / len(x)
            accumulate_grad(head.weight, error.t().mm(features))
            accumulate_grad(head.bias, error.sum(0))
        return output

    def _directional(self, output, tangent, target) -> torch.Tensor:
        """d_n = e_n · ȯ_n, each example's directional derivative of its own loss (e: the task's output
        error, ∂(Σ_n L_n)/∂h_L, in float32 or wider)."""
        dtype = torch.promote_types(output.dtype, torch.float32)
        error = self.task.output_error(output.detach().to(dtype), target)
        return (error * tangent.to(dtype)).flatten(1).sum(1)

    def _write_layer_grads(self, inputs, deltas) -> None:
        """Each layer's local weight and bias gradient from its input and δ_l (the layer's own map)."""
        for block, inp, delta in zip(self.model.blocks, inputs, deltas):
            layer = block.layer
            ops = affine_ops(layer)
            grad_weight, grad_bias = ops.parameter_grads(ops.prepare(inp), delta.to(inp.dtype), layer.bias)
            accumulate_grad(layer.weight, grad_weight)
            if layer.bias is not None:
                accumulate_grad(layer.bias, grad_bias)

    # -- the interface -------------------------------------------------------------------------
    def compute_gradients(self, x, y, groups):
        target = self.task.target(x, y)
        step = self.next_step()
        with torch.no_grad():  # forward mode only: nothing is recorded for a backward pass
            if "forward" not in groups:
                output = self.model(x)
            elif self.options.perturbation == "weight":
                output = self._weight_mode(x, target, step)
            elif self.options.perturbation == "activity":
                output = self._activity_mode(x, target, step)
            else:
                output = self._local_mode(x, target, step)
            loss = self.task.loss(output, target)
        return StepResult(loss.detach(), output.detach())


def _per_example(scale: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``scale[n] * noise[n]`` for every example n."""
    return noise * scale.to(noise.dtype).view(-1, *([1] * (noise.dim() - 1)))


def _pooled(h: torch.Tensor) -> torch.Tensor:
    """A head's input: the units of a flat activation, the channel means of a feature map."""
    return h if h.dim() == 2 else h.flatten(2).mean(2)
