"""``bioprop plan``: memory and FLOPs of a model x rule x batch size, and whether it fits, before a run."""

from __future__ import annotations

import json

from bioprop.cli.args import name
from bioprop.cli.train import add_rule_options, rule_option_fields
from bioprop.data import DATASETS
from bioprop.errors import BiopropError
from bioprop.models import MODELS
from bioprop.experiments.plan import PRECISIONS, Plan, StepCost, parse_memory, plan
from bioprop.rules import RULES


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="say before a run whether it fits in memory and what it costs",
        description="Builds the model and rule with fake tensors (no memory: seconds, even for imagenet-lc) "
                    "and measures one training step per pass: weights and buffers, Adam moments, gradients, "
                    "activations saved for backward, the step's peak working memory and its matmul FLOPs.")
    parser.add_argument("--model", required=True, type=name,
                        help=f"network: {', '.join(MODELS.names())} (see `bioprop models`)")
    parser.add_argument("--rule", required=True, type=name,
                        help=f"learning rule: {', '.join(RULES.names())} (see `bioprop rules`)")
    parser.add_argument("--batch-size", required=True, metavar="N",
                        help="training batch size (per device)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32, tf32 (same memory as fp32) or bf16 autocast (fp32 master weights) "
                             "(default: fp32)")
    parser.add_argument("--memory", type=name, metavar="SIZE",
                        help="memory available on the device, e.g. 80GB, 141GB or 40GiB: adds a verdict "
                             "(default: no verdict)")
    parser.add_argument("--data", type=name, help=f"dataset for FLOPs per epoch: {', '.join(DATASETS.names())} "
                        "(default: the one the model is built for)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_rule_options(parser, "learning-rule options (as for `bioprop train`)")
    parser.set_defaults(func=run)


def run(args) -> int:
    try:
        batch_size = int(args.batch_size)
    except ValueError:
        raise BiopropError(f"batch size must be a positive integer, got {args.batch_size!r}") from None
    memory = parse_memory(args.memory) if args.memory is not None else None
    rule_options = {option: getattr(args, f"rule_{option}") for option in rule_option_fields()
                    if getattr(args, f"rule_{option}") is not None}
    result = plan(args.model, args.rule, batch_size, args.precision, data=args.data, **rule_options)
    if args.json:
        report = result.to_dict()
        if memory is not None:
            report.update(memory_bytes=memory, fits=result.fits(memory))
        print(json.dumps(report, indent=2))
    else:
        print(format_plan(result, memory))
    return 0


def format_bytes(n: int) -> str:
    """Decimal units, as devices are sold: 80 GB = 80e9 bytes."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def flop_unit(n: int) -> tuple[str, int]:
    for unit, size in (("PFLOP", 10**15), ("TFLOP", 10**12), ("GFLOP", 10**9), ("MFLOP", 10**6)):
        if n >= size:
            return unit, size
    return "FLOP", 1


def format_flops(n: int) -> str:
    unit, size = flop_unit(n)
    return f"{n / size:.3g} {unit}"


def step_title(step: StepCost) -> str:
    return f"step training {' + '.join(step.groups)}"


def format_plan(result: Plan, memory: int | None = None) -> str:
    """The plan as a table: memory by kind, FLOPs per step and epoch, and a verdict when ``memory`` is given."""
    width = 46
    lines = [f"plan: {result.model} x {result.rule}, batch size {result.batch_size}, {result.precision}"
             + "".join(f", {name}={value}" for name, value in result.rule_options.items()), "",
             f"{'memory':<{width}} {'numbers':>13} {'bytes':>11}"]

    def row(label: str, nbytes: int, count: int | None = None, indent: int = 2, note: str = "") -> None:
        numbers = f"{count:,}" if count is not None else ""
        lines.append(f"{' ' * indent}{label:<{width - indent}} {numbers:>13} {format_bytes(nbytes):>11}"
                     + (f"   {note}" if note else ""))

    for group in result.parameters:
        trained = "trained" if group.name in result.trained_groups else "not trained"
        row(f"{group.name} parameters ({trained}, {group.tensors} tensors)", group.bytes, group.count,
            note="weights and biases")
    for buffer in result.buffers:
        shape = f" [{' x '.join(map(str, buffer.shape))}]" if buffer.shape else f" ({buffer.tensors} tensors)"
        row(f"fixed {buffer.name}{shape}", buffer.bytes, buffer.count)
    row("Adam moments (2 per trained parameter, fp32)", result.optimizer_bytes)
    row("held for the whole run", result.held_bytes)
    for step in result.steps:
        lines.append(f"  {step_title(step)}:")
        row("activations saved for backward", step.activation_bytes, indent=4)
        if step.weight_copy_bytes:
            row("weight copies saved for backward (autocast)", step.weight_copy_bytes, indent=4)
        row("gradients (fp32)", step.gradient_bytes, indent=4)
        row("working memory at the step's peak", step.working_peak_bytes, indent=4,
            note="batch, activations, temporaries, gradients")
        if step.kept_gradient_bytes:
            row("gradients kept from the other passes", step.kept_gradient_bytes, indent=4)
    row("peak estimate", result.peak_bytes)

    lines += ["", "compute (matmul FLOPs)"]
    for step in result.steps:
        unit, size = flop_unit(step.flops)
        parts = " + ".join(f"{name} {flops / size:.3g}" for name, flops in (
            ("forward", step.forward_flops), ("backward", step.backward_flops),
            ("rule's extra work", step.extra_flops)))
        lines.append(f"  {step_title(step)}: {parts} = {step.flops / size:.3g} {unit}")
    if result.own_predict and result.predict_flops is not None:
        lines.append(f"  evaluation with the rule's own inference (predict), a batch of {result.batch_size}: "
                     f"{format_flops(result.predict_flops)} "
                     f"(the network's forward pass: {format_flops(result.steps[0].forward_flops)})")
    if result.epoch_flops is not None:
        passes = len(result.steps)
        lines.append(f"  epoch of {result.dataset} ({result.training_examples:,} training images, "
                     f"{passes} pass{'es' if passes > 1 else ''} x {result.steps_per_pass:,} steps): "
                     f"{format_flops(result.epoch_flops)}")
    if memory is not None:
        lines.append("")
        if result.fits(memory):
            lines.append(f"verdict: fits in {format_bytes(memory)} (peak {format_bytes(result.peak_bytes)}, "
                         f"{100 * result.peak_bytes / memory:.0f}% of it)")
        else:
            lines.append(f"verdict: does not fit (needs {format_bytes(result.peak_bytes)}, "
                         f"have {format_bytes(memory)})")
    return "\n".join(lines)
