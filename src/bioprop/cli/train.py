"""``bioprop train``: one training run from flags (or a preset plus flags)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from bioprop.checks import check_output_folder
from bioprop.cli.args import any_int, boolean, finite_float, name, path, seed_int
from bioprop.cli.optimizer_flags import RULE_OPTION_HINTS, add_optimizer_flags, apply_optimizer_flags, hinted
from bioprop.data import DATASETS, DataConfig
from bioprop.data.sources import check_data_folder
from bioprop.errors import BiopropError
from bioprop.models import MODELS
from bioprop.rules import RULES
from bioprop.tasks import task_of_summary
from bioprop.training import TrainConfig, train
from bioprop.training.distributed import is_main_process
from bioprop.training.progress import PROGRESS_MODES
from bioprop.training.tensorboard import TensorBoard
from bioprop.training.config import EPS_CONVENTIONS, OPTIMIZER_IMPLS, PRECISIONS


def rule_option_fields() -> dict[str, dataclasses.Field]:
    """Every option of every registered rule, by name: each becomes a ``--flag`` automatically."""
    fields: dict[str, dataclasses.Field] = {}
    for rule in RULES.names():
        for option in dataclasses.fields(RULES.get(rule).Options):
            fields.setdefault(option.name, option)
    return fields


def add_rule_options(parser: argparse.ArgumentParser, title: str) -> None:
    """One flag per rule option (``--noise``, ``--alpha``, ...), typed like the option's default."""
    options = parser.add_argument_group(title)
    for option_name, option in rule_option_fields().items():
        kind = type(option.default) if option.default is not None else str
        kind = {bool: boolean, float: finite_float, int: any_int}.get(kind, name)
        if option_name in RULE_OPTION_HINTS:  # --schedule cosine: a pointer to --lr-schedule
            kind = hinted(kind, RULE_OPTION_HINTS[option_name])
        defaults = {rule: field.default for rule in RULES.names()
                    for field in dataclasses.fields(RULES.get(rule).Options) if field.name == option_name}
        options.add_argument(f"--{option_name.replace('_', '-')}", dest=f"rule_{option_name}", type=kind,
                             choices=option.metadata.get("choices"), metavar=None if option.metadata.get("choices")
                             else option_name.upper(),
                             help=(option.metadata.get("help") or f"option of {', '.join(defaults)}")
                             + default_help(defaults))


def default_help(defaults: dict[str, object]) -> str:
    """' (default: 0.1)', or each rule's where the rules that have the option differ
    (' (default: 20 for pc; 0 for pc-fixed)')."""
    values = list(dict.fromkeys(repr(value) for value in defaults.values()))
    if values == ["None"]:
        return ""
    if len(values) == 1:
        return f" (default: {next(iter(defaults.values()))})"
    by_value: dict[str, list[str]] = {}
    for rule, value in defaults.items():
        by_value.setdefault(str(value), []).append(rule)
    return " (default: " + "; ".join(f"{value} for {', '.join(rules)}" for value, rules in by_value.items()) + ")"


def _default(field: str, kind=TrainConfig):
    return {f.name: f.default for f in dataclasses.fields(kind)}[field]


def add_parser(subparsers) -> None:
    data_default = lambda field: _default(field, DataConfig)  # noqa: E731
    parser = subparsers.add_parser(
        "train", help="train one network with one learning rule",
        description="Train one network with one learning rule, from flags or from a preset plus flags. "
                    "Defaults marked 'or the preset's' come from --preset when one is given.")
    parser.add_argument("--preset", type=name, help="start from this preset (a cell of the paper's tables, see "
                        "`bioprop presets`); every other flag overrides it")
    parser.add_argument("--data", type=name, help=f"dataset: {', '.join(DATASETS.names())} "
                        "(required without --preset)")
    parser.add_argument("--data-dir", type=path, metavar="FOLDER",
                        help="folder with one sub-folder per dataset (FOLDER/mnist/, "
                        "FOLDER/cifar10/, ...) (default: $BIOPROP_DATA, else the cache, ~/.cache/bioprop)")
    parser.add_argument("--val-size", type=any_int, metavar="N",
                        help=f"training examples held out for validation, 0 for none "
                             f"(default: {data_default('val_size')}, or the preset's)")
    parser.add_argument("--normalization", choices=["standard", "dataset", "none"],
                        help="input normalisation: per-channel mean/std of the training split, the published "
                             f"constants, or pixels/255 (default: {data_default('normalization')})")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="random crop + flip on the training set (default: on for cifar10 and imagenet*, "
                             "off for mnist and fashion-mnist)")
    parser.add_argument("--num-workers", type=any_int, metavar="N",
                        help="imagenet: processes that decode images "
                             f"(default: {data_default('num_workers')}, decode in the training process)")
    parser.add_argument("--decoder", choices=["pillow", "simplejpeg", "turbojpeg", "auto"],
                        help="imagenet JPEG decoder; simplejpeg/turbojpeg need `pip install bioprop[fast-jpeg]` "
                             f"(default: {data_default('decoder')})")
    parser.add_argument("--jpeg-draft", choices=["off", "train", "all"],
                        help="imagenet: decode JPEGs at reduced size where the crop allows (faster, slightly "
                             f"different pixels) (default: {data_default('jpeg_draft')})")
    parser.add_argument("--no-verify", dest="verify", action="store_false", default=None,
                        help="do not compare the published checksums before training (for your own modified "
                             "copy of a dataset; recorded in config.json)")
    parser.add_argument("--model", type=name, help=f"network: {', '.join(MODELS.names())}; see `bioprop models` "
                        "(required without --preset)")
    parser.add_argument("--rule", type=name,
                        help=f"learning rule: {', '.join(RULES.names())}, see `bioprop rules` "
                             f"(default: {_default('rule')}, or the preset's)")
    parser.add_argument("--epochs", type=any_int, metavar="N",
                        help=f"training epochs (default: {_default('epochs')}, or the preset's)")
    parser.add_argument("--batch-size", type=any_int, metavar="N",
                        help=f"training batch size, over all processes (default: {_default('batch_size')}, "
                             "or the preset's)")
    parser.add_argument("--eval-batch-size", type=any_int, metavar="N",
                        help=f"batch size for evaluation (default: {_default('eval_batch_size')})")
    parser.add_argument("--seed", type=seed_int, metavar="S",
                        help=f"random seed of initialisation, data order, noise and the validation split "
                             f"(default: {_default('seed')})")
    add_optimizer_flags(parser)  # --lr, --optimizer, --lr-schedule, ...; --inverse-lr, ... (cli/optimizer_flags.py)
    parser.add_argument("--eps-convention", choices=EPS_CONVENTIONS,
                        help="where Adam's epsilon enters, in every parameter group: 'pytorch' (added to the "
                             "bias-corrected sqrt(v)) or 'tensorflow' (added to the uncorrected sqrt(v), as "
                             "tf.train.AdamOptimizer) (default: pytorch, or the preset's)")
    add_rule_options(parser, "learning-rule options (each rule accepts its own; see `bioprop rules`)")
    parser.add_argument("--device", type=name, help="auto (CUDA when present), cpu, cuda, cuda:N "
                        f"(default: {_default('device')})")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="fp32; tf32 (TensorFloat-32 matmuls on CUDA); bf16 (autocast, fp32 master weights) "
                             f"(default: {_default('precision')})")
    parser.add_argument("--optimizer-impl", choices=OPTIMIZER_IMPLS,
                        help="optimiser kernel (Adam, AdamW, SGD); auto = fused where the device supports it "
                             f"(default: {_default('optimizer_impl')})")
    parser.add_argument("--limit-batches", type=any_int, metavar="N",
                        help="train on at most this many batches per pass (default: all)")
    parser.add_argument("--limit-eval-batches", type=any_int, metavar="N",
                        help="evaluate at most this many batches per split (default: all)")
    parser.add_argument("--train-eval-size", type=any_int, metavar="N",
                        help="evaluate the train error on a fixed random subset of this many training examples "
                             "(default: the whole training split)")
    parser.add_argument("--checkpoint-every", type=name, metavar="N|Nmin",
                        help="also checkpoint within a pass: every N steps (e.g. 500) or minutes (e.g. 30min); "
                             "a checkpoint is always written at the end of every pass (default: only then)")
    parser.add_argument("--alignment-every", type=any_int, metavar="N",
                        help="every N steps, measure each layer's update angle to backprop's gradient and the "
                             "feedback/forward weight angle, written per epoch in metrics.jsonl (default: 0, off)")
    parser.add_argument("--sync-batchnorm", action="store_true", default=None,
                        help="data-parallel runs: batch-norm layers normalise with the statistics of the global "
                             "batch (SyncBatchNorm), so N processes at B/N train as one at B (default: each "
                             "process its own share; buffers are taken from process 0)")
    parser.add_argument("--out", type=path, metavar="FOLDER",
                        help="run folder for config.json, metrics.jsonl, results.json, checkpoint.pt "
                             "(default: write nothing)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its checkpoint (start it when there is none)")
    parser.add_argument("--progress", choices=PROGRESS_MODES,
                        help="auto: a bar on a terminal, a line every --progress-every seconds in a log (steps/s, "
                             "loss, ETA); bar; log; none: only the epoch lines (default: auto)")
    parser.add_argument("--progress-every", type=finite_float, metavar="SECONDS",
                        help="seconds between progress lines in a log (default: 30)")
    parser.add_argument("--no-progress", action="store_true", help="the same as --progress none")
    parser.add_argument("--tensorboard", type=path, metavar="DIR",
                        help="also write TensorBoard event files to DIR: step losses, learning rates, diagnostics "
                             "and alignment angles, every metric per epoch (needs the tensorboard package)")
    parser.set_defaults(func=run)


def config_from_args(args, base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (a preset, or the defaults) with every flag that was given applied on top."""
    if base is None:
        if not args.data or not args.model:
            raise BiopropError("--data and --model are required (or --preset)")
        base = TrainConfig(data=DataConfig(name=args.data), model=args.model)
    config = TrainConfig.from_dict(base.to_dict())  # a copy
    data_flags = {"name": args.data, "data_dir": args.data_dir, "val_size": args.val_size,
                  "normalization": args.normalization, "augment": args.augment,
                  "num_workers": args.num_workers, "decoder": args.decoder, "jpeg_draft": args.jpeg_draft,
                  "verify": args.verify}
    config.data = dataclasses.replace(config.data, **{k: v for k, v in data_flags.items() if v is not None})
    for flag in ("model", "rule", "epochs", "batch_size", "eval_batch_size", "seed", "device", "precision",
                 "optimizer_impl", "limit_batches", "limit_eval_batches", "train_eval_size", "checkpoint_every",
                 "alignment_every", "sync_batchnorm"):
        if getattr(args, flag) is not None:
            setattr(config, flag, getattr(args, flag))
    apply_optimizer_flags(args, config)
    if args.eps_convention is not None:
        for group in RULES.get(config.rule).groups:
            config.optimizers[group] = dataclasses.replace(config.optimizer_settings(group),
                                                           eps_convention=args.eps_convention)
    for option in rule_option_fields():
        value = getattr(args, f"rule_{option}")
        if value is not None:
            config.rule_options[option] = value
    return config


def saved_config(out: Path) -> TrainConfig | None:
    """The config of the run in ``out`` (its config.json), or None when there is none yet."""
    import json

    path = out / "config.json"
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise BiopropError(f"{path} cannot be read ({error}); expected the config.json bioprop wrote") from None
    if not isinstance(values, dict):
        raise BiopropError(f"{path} is not a bioprop config.json (expected a JSON object)")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig.from_dict({k: v for k, v in values.items() if k in known})


def prepare(args) -> tuple[TrainConfig, Path | None]:
    """The checked config and run folder of a parsed ``bioprop train`` command line.

    Everything that can be checked without reading data is checked here, before any work:
    folders (--out, --data-dir), names (preset, dataset, model, rule, rule options) and values
    (:meth:`TrainConfig.validate`). A :class:`BiopropError` names what is wrong."""
    out = check_output_folder(args.out, "--out") if args.out is not None else None
    if args.resume and out is None:
        raise BiopropError("--resume needs --out, the run folder to continue")
    if args.data_dir is not None:
        check_data_folder(args.data_dir, "--data-dir")
    base = None
    if args.preset:
        from bioprop.presets import get_preset

        base = get_preset(args.preset).config()
    elif args.resume:
        base = saved_config(out)  # flags given again must agree with it (checked on resume)
    config = config_from_args(args, base)
    config.validate()
    return config, out


def progress_mode(args) -> str:
    """``--progress`` (``--no-progress`` is ``none``); by default a bar on a terminal, lines in a log."""
    if args.no_progress:
        return "none"
    return args.progress or "auto"


def run(args) -> int:
    config, out = prepare(args)
    if args.progress_every is not None and not args.progress_every > 0:
        raise BiopropError(f"--progress-every must be a number of seconds > 0, got {args.progress_every}")
    callbacks = [TensorBoard(args.tensorboard)] if args.tensorboard is not None else []
    result = train(config, out=out, resume=args.resume, progress=progress_mode(args), callbacks=callbacks,
                   progress_every=args.progress_every or 30.0)
    if not is_main_process():  # under torchrun: rank 0 speaks for the job
        return 0
    summary = result["summary"]
    task = task_of_summary(summary)
    metric, words, shown = task.metric, task.metric.replace("_", " "), task.format_metric
    print(f"final test {words} {shown(summary[f'final_test_{metric}']).strip()}  best test {words} "
          f"{shown(summary[f'best_test_{metric}']).strip()}"
          + (f"  test {words} at best val {shown(summary[f'test_{metric}_at_best_val']).strip()}"
             if f"test_{metric}_at_best_val" in summary else ""))
    if out is not None:
        print(f"run folder: {out}")
    return 0
