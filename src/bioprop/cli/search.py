"""``bioprop search``: the paper's random search (Table 4 ranges) over one preset, with Optuna."""

from __future__ import annotations

import re
import sys

from bioprop.checks import check_output_folder
from bioprop.cli.args import any_int, name, path, positive_int, seed_int
from bioprop.data.sources import check_data_folder
from bioprop.errors import BiopropError
from bioprop.experiments.search import Search
from bioprop.presets import get_preset
from bioprop.training.config import DEVICE_PATTERN


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "search", help="random hyperparameter search (Table 4) for one preset, Optuna study in SQLite or any DB",
        description="Random search over the Table 4 ranges (forward Adam lr log-uniform in [1e-5, 3e-4], beta1 0.9, "
                    "beta2 in {0.99, 0.999}, eps in {1e-4, 1e-6, 1e-8}; the same for the inverse Adam of TP rules; "
                    "alpha in [0.01, 0.2] for DTP; sigma in [0.01, 0.3] for TP rules). Objective: best validation "
                    "error. Start the same command on several machines with one --storage URL to share the study.")
    parser.add_argument("preset", type=name, metavar="PRESET", help="preset name (see `bioprop presets`)")
    parser.add_argument("--trials", type=any_int, default=60, metavar="N",
                        help="trials in the study, over all workers (default: 60)")
    parser.add_argument("--storage", type=path, metavar="URL",
                        help="Optuna storage URL, e.g. postgresql://... to share one study between machines "
                             "(default: sqlite:///OUT/search.db)")
    parser.add_argument("--study-name", type=name, metavar="NAME", help="the study's name (default: the preset name)")
    parser.add_argument("--epochs", type=any_int, metavar="N", help="epochs per trial (default: the preset's)")
    parser.add_argument("--cull-after", type=any_int, metavar="N",
                        help="train every trial for this many epochs, then continue only the best to --epochs "
                             "(default: 10 for ImageNet presets, off otherwise; 0 = off)")
    parser.add_argument("--continue-best", action="store_true",
                        help="run no new trials; only continue the best trial (culling phase 2) on this machine")
    parser.add_argument("--out", type=path, metavar="FOLDER",
                        help="folder for trial runs and the default SQLite file (default: runs/search/STUDY)")
    parser.add_argument("--seed", type=seed_int, default=0, metavar="S",
                        help="sampler seed: trial k draws the same configuration for a given seed, whichever "
                             "worker runs it (default: 0)")
    parser.add_argument("--data-dir", type=path, metavar="FOLDER",
                        help="folder with one sub-folder per dataset (FOLDER/mnist/, ...) "
                             "(default: $BIOPROP_DATA, else the cache, ~/.cache/bioprop)")
    parser.add_argument("--limit-batches", type=positive_int, metavar="N",
                        help="train each trial on at most this many batches per pass (default: all)")
    parser.add_argument("--limit-eval-batches", type=positive_int, metavar="N",
                        help="evaluate at most this many batches per split (default: all)")
    parser.add_argument("--device", type=name, help="auto (CUDA when present), cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--no-verify", dest="verify", action="store_false", default=None,
                        help="do not compare the published checksums before training (your own modified copy)")
    parser.add_argument("--heartbeat", type=positive_int, default=60, metavar="SECONDS",
                        help="seconds between a running trial's heartbeats; a trial silent for 3 heartbeats "
                             "belongs to a dead worker and is retried from its checkpoint (default: 60)")
    parser.add_argument("--space", choices=("table4", "widened"), default="table4",
                        help="table4: the paper's Table 4 as printed; widened: lr up to 1e-2, beta1 in {0.9, 0.99}, "
                             "beta2 also 0.95, eps also 1e-3, alpha and sigma up to twice Table 4's bound (holds every "
                             "MNIST value of Table 5) (default: table4)")
    parser.add_argument("--prune", action="store_true",
                        help="stop a trial whose validation error after an epoch is worse than the median of the "
                             "earlier trials (Optuna's MedianPruner, after 5 trials)")
    parser.add_argument("--progress", action="store_true", help="progress bars (only when stderr is a terminal)")
    parser.set_defaults(func=run)


def run(args) -> int:
    preset = get_preset(args.preset)
    if args.out is not None:
        check_output_folder(args.out, "--out")
    if args.data_dir is not None:
        check_data_folder(args.data_dir, "--data-dir")
    if args.device is not None and not re.fullmatch(DEVICE_PATTERN, args.device):
        raise BiopropError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {args.device!r}")
    search = Search(preset, trials=args.trials, storage=args.storage, study_name=args.study_name,
                    epochs=args.epochs, cull_after=args.cull_after, out=args.out, seed=args.seed,
                    overrides={"data_dir": args.data_dir, "limit_batches": args.limit_batches,
                               "limit_eval_batches": args.limit_eval_batches, "device": args.device,
                               "verify": args.verify},
                    progress=args.progress and sys.stderr.isatty(), heartbeat=args.heartbeat,
                    space=args.space, prune=args.prune)
    search.base.validate()  # the preset with the flags applied, before any trial starts
    result = search.run(continue_only=args.continue_best)
    if result.get("follower"):  # a torchrun process other than rank 0
        return 0
    print(f"study {result['study']}: {result['complete']} complete trials"
          + (f"; best trial {result['best_trial']} (val error {result['best_value']:.2f}%): {result['best_params']}"
             if "best_trial" in result else ""))
    if result.get("continued"):
        c = result["continued"]
        print(f"continued trial {c['trial']} to {c['epochs']} epochs: best val error {c.get('best_val_error', float('nan')):.2f}%, "
              f"test error at best val {c.get('test_error_at_best_val', float('nan')):.2f}%")
    print(f"report with Figure 5 histograms: bioprop report {search.out} --study {search.storage_url or search.out / 'search.db'}")
    return 0
