"""Plan a run before starting it: will it fit in memory, and what does one step cost?

:func:`plan` builds the model and the rule with *fake* tensors (``FakeTensorMode``: meta storage,
no memory, no arithmetic, so even imagenet-lc plans in seconds) and then measures rather than
guesses. Fake rather than bare ``torch.device("meta")`` tensors because fake ones keep a real
device type: ``torch.autocast``, which the bf16 plan needs and target propagation enters for its
float32 targets, refuses the meta device.

* parameters and buffers are counted from the rule module itself (``rule.parameter_groups()``,
  ``rule.named_buffers()``), so a rule registered tomorrow is planned without changes here;
* two training steps per pass of an epoch (``rule.passes()``) run on a fake batch; the second,
  steady-state one is measured (the first absorbs one-off work such as target propagation's
  diagnostics at batch 0):

  - *activations*: the bytes of every tensor autograd saves for backward, through
    ``torch.autograd.graph.saved_tensors_hooks`` (distinct storages, weights excluded; the
    bf16 copies that autocast makes of weights are reported on their own);
  - *working memory*: the peak of all storages alive together during the step (input batch,
    activations, temporaries, gradients), tracked op by op in a ``TorchDispatchMode``;
  - *FLOPs*: ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, which is
    all the arithmetic that matters here), split into the forward pass, autograd's backward and
    the rule's extra work outside backward (inverse passes, feedback projections, targets).

Precision: ``bf16`` runs the step under ``torch.autocast(dtype=torch.bfloat16)``, as the trainer
does: matmul outputs and the tensors saved around them shrink to 2 bytes, while the master
weights, their gradients and Adam's moments stay float32. ``tf32`` only changes how CUDA
multiplies float32 numbers, so it plans like ``fp32``. The peak estimate is

    parameters + buffers + Adam moments (2 per trained parameter)
        + max over passes (working memory of a step + gradients kept from the other passes).

Evaluation: the FLOPs of one ``rule.predict`` on a batch of the plan's size (the rule's inference,
which evaluation scores: the network's forward pass, or the rule's own, e.g. Forward-Forward's one
pass per label), measured like the steps' (``Plan.predict_flops``).

What is not modelled: the CUDA context and allocator fragmentation (leave a margin of ~10 %),
the memory of evaluation batches, a dataset kept on the device (uint8: 0.15 GB for CIFAR-10) and
Adam's own temporaries (none for the fused kernel). Locally-connected
layers are planned on their accelerator code path (all patches gathered at once); elsewhere
the CPU code paths run, whose temporaries may differ slightly from CUDA's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field

import torch
import torch.utils._pytree as pytree
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from bioprop.data import DATASETS
from bioprop.errors import BiopropError
from bioprop.models import MODELS, create_model
from bioprop.nn import locally_connected
from bioprop.registry import Registry
from bioprop.rules import RULES, LearningRule, create_rule
from bioprop.tasks import task_of

PRECISIONS = ("fp32", "tf32", "bf16")
ADAM_MOMENTS = 2  # exp_avg and exp_avg_sq, each shaped and typed like its parameter

# Training-set sizes (images) of the registered datasets, for FLOPs per epoch.
TRAINING_EXAMPLES = {"mnist": 60_000, "fashion-mnist": 60_000, "cifar10": 50_000,
                     "imagenet": 1_281_167, "imagenet32": 1_281_167, "imagenet64": 1_281_167}

MEMORY_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
                "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass
class TensorCount:
    """Tensors of one kind: a parameter group, or buffers sharing a name pattern."""

    name: str                       # "forward", "inverse", or a buffer name such as "feedback_matrix"
    tensors: int
    count: int                      # numbers
    bytes: int
    shape: list[int] | None = None  # the shape, when the kind is a single tensor


@dataclass
class StepCost:
    """One training step of a pass that trains ``groups``, measured at the plan's batch size."""

    groups: list[str]
    activation_bytes: int      # saved for backward (distinct storages, weights excluded)
    weight_copy_bytes: int     # low-precision copies of weights saved for backward (bf16 autocast)
    gradient_bytes: int        # .grad of the parameters trained in this pass
    kept_gradient_bytes: int   # .grad of other groups, left from their own pass
    working_peak_bytes: int    # all the step allocates, alive together at its peak (all above but the kept)
    forward_flops: int         # the network's forward pass
    backward_flops: int        # inside autograd's backward
    extra_flops: int           # the rule's other work outside backward (inverses, projections, targets)

    @property
    def flops(self) -> int:
        return self.forward_flops + self.backward_flops + self.extra_flops


@dataclass
class Plan:
    """Memory and compute of training ``model`` with ``rule`` at ``batch_size``; sizes in bytes."""

    model: str
    rule: str
    batch_size: int
    precision: str
    rule_options: dict
    parameters: list[TensorCount]   # one per parameter group, plus any untrained parameters
    buffers: list[TensorCount]      # fixed tensors: feedback weights, auxiliary weights, ...
    optimizer_bytes: int            # Adam moments of the trained groups
    steps: list[StepCost]           # one per pass of an epoch
    dataset: str | None = None
    training_examples: int | None = None
    trained_groups: list[str] = field(default_factory=list)
    predict_flops: int | None = None  # one evaluation batch: rule.predict on batch_size examples
    own_predict: bool = False         # whether the rule defines its own inference (not one forward pass)

    @property
    def held_bytes(self) -> int:
        """Held for the whole run: weights, buffers and optimiser state."""
        return sum(t.bytes for t in self.parameters + self.buffers) + self.optimizer_bytes

    @property
    def peak_bytes(self) -> int:
        return self.held_bytes + max(s.working_peak_bytes + s.kept_gradient_bytes for s in self.steps)

    @property
    def steps_per_pass(self) -> int | None:
        return None if self.training_examples is None else math.ceil(self.training_examples / self.batch_size)

    @property
    def epoch_flops(self) -> int | None:
        """FLOPs of one epoch: every pass over the training set, at its step's cost."""
        steps = self.steps_per_pass
        return None if steps is None else steps * sum(s.flops for s in self.steps)

    def fits(self, memory_bytes: int) -> bool:
        return self.peak_bytes <= memory_bytes

    def to_dict(self) -> dict:
        result = dataclasses.asdict(self)
        for step, cost in zip(result["steps"], self.steps):
            step["flops"] = cost.flops
        result.update(held_bytes=self.held_bytes, peak_bytes=self.peak_bytes,
                      steps_per_pass=self.steps_per_pass, epoch_flops=self.epoch_flops)
        return result


def plan(model: str, rule: str, batch_size: int, precision: str = "fp32", data: str | None = None,
         **rule_options) -> Plan:
    """Plans training ``model`` with ``rule`` (and its ``rule_options``) at ``batch_size``.

    ``data`` names the dataset for FLOPs per epoch (default: the registered dataset whose images
    and classes fit the model). Raises :class:`BiopropError` for unknown names or bad values.
    """
    check_name(MODELS, model)
    check_name(RULES, rule)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BiopropError(f"batch size must be a positive integer, got {batch_size!r}")
    if precision not in PRECISIONS:
        raise BiopropError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if data is not None:
        check_name(DATASETS, data)
    with FakeTensorMode(), accelerator_chunking(), fake_tolist_by_element():
        network = create_model(model)
        learning_rule = create_rule(rule, network, **rule_options)
        groups = learning_rule.parameter_groups()
        parameters = count_parameters(learning_rule, groups)
        buffers = count_buffers(learning_rule)
        steps = measure_steps(learning_rule, batch_size, precision)
        predict_flops = measure_prediction(learning_rule, batch_size, precision)
    trained = sorted({group for step in steps for group in step.groups})
    optimizer_bytes = ADAM_MOMENTS * sum(p.numel() * p.element_size() for g in trained for p in groups[g])
    dataset = data or matching_dataset(network)
    own_predict = type(learning_rule).predict is not LearningRule.predict
    return Plan(model, rule, batch_size, precision, dict(rule_options), parameters, buffers, optimizer_bytes,
                steps, dataset, TRAINING_EXAMPLES.get(dataset), trained, predict_flops, own_predict)


# -- input checks ----------------------------------------------------------------------------

def check_name(registry: Registry, name: str) -> None:
    """Raises a BiopropError naming the closest registered names when ``name`` is not one."""
    registry.get(name)


def parse_memory(text: str) -> int:
    """``"80GB"`` -> 80e9 bytes; decimal (kB, MB, GB, TB) and binary (KiB, MiB, GiB, TiB) units."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]+)\s*", str(text))
    unit = match and MEMORY_UNITS.get(match.group(2).lower())
    if not unit or not 0 < float(match.group(1)) * unit < float("inf"):
        raise BiopropError(f"memory must be a positive size with a unit, such as 80GB, 40GiB or 512MB; "
                           f"got {text!r}")
    return int(float(match.group(1)) * unit)


def matching_dataset(network) -> str | None:
    """The dataset whose images and classes (outputs, for the network's task) fit ``network``; ties go
    to the one it is named after."""
    task = task_of(network)
    fitting = [name for name in DATASETS.names() if DATASETS.get(name).info.input_shape == network.input_shape
               and task.output_units(DATASETS.get(name).info.input_shape, DATASETS.get(name).info.num_classes)
               == network.output_units]
    named_after = [name for name in fitting if network.name.startswith(name.rstrip("0123456789"))]
    return (named_after or fitting or [None])[0]


# -- counting --------------------------------------------------------------------------------

def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def count_parameters(rule, groups: dict[str, list[torch.nn.Parameter]]) -> list[TensorCount]:
    counts = [TensorCount(name, len(params), sum(p.numel() for p in params), _nbytes(params))
              for name, params in groups.items()]
    grouped = {id(p) for params in groups.values() for p in params}
    untrained = [p for p in rule.parameters() if id(p) not in grouped]
    if untrained:
        counts.append(TensorCount("not trained", len(untrained), sum(p.numel() for p in untrained),
                                  _nbytes(untrained)))
    return counts


def count_buffers(rule) -> list[TensorCount]:
    """Buffers by their own name, numbers as ``*`` (every layer's ``feedback_weight`` together;
    ``feedback_matrix``; ``aux_weight``)."""
    kinds: dict[str, list[torch.Tensor]] = {}
    for name, buffer in rule.named_buffers():
        kinds.setdefault(re.sub(r"\d+", "*", name.rsplit(".", 1)[-1]), []).append(buffer)
    return [TensorCount(name, len(tensors), sum(t.numel() for t in tensors), _nbytes(tensors),
                        list(tensors[0].shape) if len(tensors) == 1 else None)
            for name, tensors in kinds.items()]


# -- measuring -------------------------------------------------------------------------------

@contextlib.contextmanager
def accelerator_chunking():
    """Locally-connected layers gather their input patches in ~4 MB chunks on the CPU but all at
    once on an accelerator: plan the accelerator's buffers (and run far fewer fake ops)."""
    cpu_chunk = locally_connected._CPU_CHUNK_BYTES
    locally_connected._CPU_CHUNK_BYTES = sys.maxsize
    try:
        yield
    finally:
        locally_connected._CPU_CHUNK_BYTES = cpu_chunk


def _tolist_by_element(tensor):
    if tensor.dim() == 0:
        return tensor.item()
    return [_tolist_by_element(element) for element in tensor]


@contextlib.contextmanager
def fake_tolist_by_element():
    """``.tolist()`` of a fake tensor reads it element by element, through ``.item()``, which the
    :class:`StepRecorder` answers with 0 (as torch >= 2.5 does anyway; torch 2.4's fake ``tolist``
    needs a symbolic shape environment and fails without one, e.g. in a TP rule's diagnostics)."""
    original = FakeTensor.tolist
    FakeTensor.tolist = _tolist_by_element
    try:
        yield
    finally:
        FakeTensor.tolist = original


def in_backward() -> bool:
    """Whether autograd's engine is running a backward pass on this thread."""
    return torch._C._current_graph_task_id() != -1


class StepRecorder(TorchDispatchMode):
    """Watches every op of fake training steps: storages alive (their peak), FLOPs in and outside
    backward, and the storages autograd saves. Reading a fake number (``.item()``, as diagnostics
    do) yields 0, so steps that report numbers run too."""

    def __init__(self, flop_counter: FlopCounterMode, weights: list[torch.Tensor]):
        super().__init__()
        self.flop_counter = flop_counter
        self.weights = {StorageWeakRef(w.untyped_storage()) for w in weights}
        self.recording = False

    @contextlib.contextmanager
    def record(self):
        """Measure what happens inside: storages created here, their peak, FLOPs, saved tensors."""
        self.live: dict[StorageWeakRef, int] = {}
        self.live_bytes = self.peak_bytes = 0
        self.weight_copies: set[StorageWeakRef] = set()  # casts of a weight to another dtype
        self.saved: dict[StorageWeakRef, int] = {}
        self.saved_weight_copies: dict[StorageWeakRef, int] = {}
        self.flops = {"backward": 0, "outside": 0}
        self.recording = True
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.on_save, lambda tensor: tensor):
                yield self
        finally:
            self.recording = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            return 0.0 if args[0].dtype.is_floating_point else 0
        if not self.recording:
            return func(*args, **(kwargs or {}))
        flops_before = self.flop_counter.get_total_flops()
        out = func(*args, **(kwargs or {}))
        self.flops["backward" if in_backward() else "outside"] += self.flop_counter.get_total_flops() - flops_before
        inputs = {StorageWeakRef(t.untyped_storage()) for t in _tensors((args, kwargs))}
        for tensor in _tensors(out):
            self.on_output(tensor, inputs)
            if func is torch.ops.aten._to_copy.default and inputs & self.weights:
                self.weight_copies.add(StorageWeakRef(tensor.untyped_storage()))
        return out

    def on_output(self, tensor: torch.Tensor, inputs: set[StorageWeakRef]) -> None:
        """Counts ``tensor``'s storage if it is new: not a view or in-place result of an input."""
        storage = tensor.untyped_storage()
        key = StorageWeakRef(storage)
        if key in self.live or key in inputs:
            return
        nbytes = storage.nbytes()
        if self.live_bytes + nbytes > self.peak_bytes:  # a new peak, unless storages have died since
            for dead in [k for k in self.live if k.expired()]:
                self.live_bytes -= self.live.pop(dead)
        self.live[key] = nbytes
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def on_save(self, tensor: torch.Tensor) -> torch.Tensor:
        key = StorageWeakRef(tensor.untyped_storage())
        if key in self.live:  # created during the step: not a weight itself
            (self.saved_weight_copies if key in self.weight_copies else self.saved)[key] = self.live[key]
        return tensor


def _tensors(tree) -> list[torch.Tensor]:
    return [leaf for leaf in pytree.tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


def _gradient_bytes(params) -> int:
    return _nbytes(p.grad for p in params if p.grad is not None)


def measure_steps(rule, batch_size: int, precision: str) -> list[StepCost]:
    """Two fake epochs of one step per pass; the second one's steps are measured."""
    groups = rule.parameter_groups()
    all_params = [p for params in groups.values() for p in params]
    input_shape = (batch_size, *rule.model.input_shape)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def train_step(pass_groups):
        for group in pass_groups:  # as the trainer: zero_grad(set_to_none=True) of the groups trained
            for p in groups[group]:
                p.grad = None
        x, y = torch.empty(input_shape), torch.zeros(batch_size, dtype=torch.long)
        with autocast:
            rule.compute_gradients(x, y, pass_groups)

    weights = all_params + list(rule.buffers())
    with FlopCounterMode(display=False) as flop_counter, StepRecorder(flop_counter, weights) as recorder:
        with recorder.record(), torch.no_grad(), autocast:
            rule(torch.empty(input_shape))
        forward_flops = recorder.flops["outside"]
        for pass_groups in rule.passes():  # warm-up
            train_step(pass_groups)
        steps = []
        for pass_groups in rule.passes():
            trained = [p for g in pass_groups for p in groups[g]]
            trained_ids = {id(p) for p in trained}
            kept = _gradient_bytes(p for p in all_params if id(p) not in trained_ids)
            with recorder.record():
                train_step(pass_groups)
            steps.append(StepCost(list(pass_groups), sum(recorder.saved.values()),
                                  sum(recorder.saved_weight_copies.values()), _gradient_bytes(trained), kept,
                                  recorder.peak_bytes, forward_flops, recorder.flops["backward"],
                                  recorder.flops["outside"] - forward_flops))
    return steps


def measure_prediction(rule, batch_size: int, precision: str) -> int:
    """FLOPs of ``rule.predict`` on one fake batch, in eval mode without gradients, as evaluation runs it."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    was_training = rule.training
    rule.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad(), autocast:
            rule.predict(torch.empty(batch_size, *rule.model.input_shape))
    finally:
        rule.train(was_training)
    return counter.get_total_flops()
