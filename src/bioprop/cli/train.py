"""``bioprop train``: one training run from flags (or a preset plus flags)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from bioprop.data import DataConfig
from bioprop.errors import BiopropError
from bioprop.rules import RULES
from bioprop.training import AdamConfig, TrainConfig, train

ADAM_FLAGS = {"lr": "learning rate", "beta1": "Adam beta1", "beta2": "Adam beta2", "eps": "Adam epsilon"}


def rule_option_fields() -> dict[str, dataclasses.Field]:
    """Every option of every registered rule, by name: each becomes a ``--flag`` automatically."""
    fields: dict[str, dataclasses.Field] = {}
    for name in RULES.names():
        for option in dataclasses.fields(RULES.get(name).Options):
            fields.setdefault(option.name, option)
    return fields


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train one network with one learning rule",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", help="start from this preset (a cell of the paper's tables, see "
                        "`bioprop presets`); every other flag overrides it")
    parser.add_argument("--data", help="dataset name (see `bioprop data --help`)")
    parser.add_argument("--data-dir", help="folder laid out like shared/data (default: $BIOPROP_DATA, then the cache)")
    parser.add_argument("--val-size", type=int, help="training examples held out for validation (default 10000)")
    parser.add_argument("--normalization", choices=["standard", "dataset", "none"])
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="random crop + flip on the training set (default: on for CIFAR-10 only)")
    parser.add_argument("--num-workers", type=int, help="DataLoader worker processes for the imagenet folder loader "
                        "(default: 0, decode in the training process)")
    parser.add_argument("--decoder", choices=["pillow", "simplejpeg", "turbojpeg", "auto"],
                        help="imagenet JPEG decoder; simplejpeg/turbojpeg need `pip install bioprop[fast-jpeg]` "
                             "(default: pillow)")
    parser.add_argument("--jpeg-draft", choices=["off", "train", "all"],
                        help="imagenet: decode JPEGs at reduced size where the crop allows (faster, slightly "
                             "different pixels) (default: off)")
    parser.add_argument("--no-verify", dest="verify", action="store_false", default=None,
                        help="do not compare the published checksums before training (for your own modified "
                             "copy of a dataset; recorded in config.json)")
    parser.add_argument("--model", help="network name (see `bioprop models`)")
    parser.add_argument("--rule", help="learning rule (see `bioprop rules`)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--eval-batch-size", type=int)
    parser.add_argument("--seed", type=int)
    for flag, meaning in ADAM_FLAGS.items():
        parser.add_argument(f"--{flag}", type=float, help=f"forward-weights {meaning}")
        parser.add_argument(f"--inverse-{flag}", type=float, help=f"inverse/feedback-weights {meaning}")
    options = parser.add_argument_group("learning-rule options (each rule accepts its own)")
    for name, option in rule_option_fields().items():
        kind = type(option.default) if option.default is not None else str
        options.add_argument(f"--{name.replace('_', '-')}", dest=f"rule_{name}", type=kind,
                             choices=option.metadata.get("choices"), help=option.metadata.get("help"))
    parser.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--precision", choices=["fp32", "tf32", "bf16"],
                        help="fp32; tf32 (TensorFloat-32 matmuls on CUDA); bf16 (autocast, fp32 master weights) "
                             "(default: fp32)")
    parser.add_argument("--optimizer-impl", choices=["auto", "fused", "foreach", "plain"],
                        help="Adam kernel; auto = fused where the device supports it (default: auto)")
    parser.add_argument("--limit-batches", type=int, help="train on at most this many batches per pass")
    parser.add_argument("--limit-eval-batches", type=int, help="evaluate at most this many batches per split")
    parser.add_argument("--train-eval-size", type=int,
                        help="evaluate the train error on a fixed random subset of this many training examples "
                             "(default: the whole training split)")
    parser.add_argument("--checkpoint-every",
                        help="also checkpoint within a pass: every N steps (e.g. 500) or minutes (e.g. 30min); "
                             "a checkpoint is always written at the end of every pass")
    parser.add_argument("--out", help="run folder for config.json, metrics.jsonl, results.json, checkpoint.pt")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
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
                 "optimizer_impl", "limit_batches", "limit_eval_batches", "train_eval_size", "checkpoint_every"):
        if getattr(args, flag) is not None:
            setattr(config, flag, getattr(args, flag))
    for group, prefix in (("forward", ""), ("inverse", "inverse_")):
        given = {flag: getattr(args, prefix + flag) for flag in ADAM_FLAGS if getattr(args, prefix + flag) is not None}
        config.optimizers[group] = dataclasses.replace(config.optimizers.get(group, AdamConfig()), **given)
    for name in rule_option_fields():
        value = getattr(args, f"rule_{name}")
        if value is not None:
            config.rule_options[name] = value
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
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig.from_dict({k: v for k, v in values.items() if k in known})


def run(args) -> int:
    base = None
    if args.preset:
        from bioprop.presets import get_preset

        base = get_preset(args.preset).config()
    elif args.resume and args.out:
        base = saved_config(Path(args.out))  # flags given again must agree with it (checked on resume)
    config = config_from_args(args, base)
    out = Path(args.out) if args.out else None
    result = train(config, out=out, resume=args.resume, progress=not args.no_progress)
    summary = result["summary"]
    print(f"final test error {summary['final_test_error']:.2f}%  best test error {summary['best_test_error']:.2f}%"
          + (f"  test error at best val {summary['test_error_at_best_val']:.2f}%"
             if "test_error_at_best_val" in summary else ""))
    if out is not None:
        print(f"run folder: {out}")
    return 0
