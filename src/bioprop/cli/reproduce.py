"""``bioprop reproduce``: every cell of a table (or named presets) x seeds, then the report."""

from __future__ import annotations

import os
import shlex
import sys

from bioprop.checks import check_output_folder
from bioprop.cli.args import any_int, name, path, positive_int
from bioprop.data.sources import check_data_folder
from bioprop.experiments.reproduce import (EpochBudget, parse_grid, parse_int_list, plan_runs, record_command,
                                           reproduce, run_state)
from bioprop.experiments.report import write_report
from bioprop.presets import GROUPS, select_presets
from bioprop.training.interrupt import TrainingInterrupted


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "reproduce", help="run table cells x seeds (resuming what is done) and write the report",
        description="Run every cell of a table (or the named presets) with several seeds into OUT/<preset>/seed<k>/, "
                    "skipping finished runs and resuming partial ones, then write OUT/report.md. Groups: "
                    + "; ".join(f"{k}: {v}" for k, v in GROUPS.items()))
    parser.add_argument("targets", nargs="+", metavar="GROUP_OR_PRESET", type=name,
                        help=f"groups ({', '.join(GROUPS)}), preset names (see `bioprop presets`) or globs "
                             "('mnist-fc-*')")
    parser.add_argument("--seeds", type=any_int, default=3, metavar="N", help="seeds 0..N-1 (default: 3)")
    parser.add_argument("--epochs", action="append", metavar="N|PATTERN=N", type=name,
                        help="epoch budget (default: the preset's, 500); repeat or comma-separate PATTERN=N for "
                        "per-cell budgets, e.g. --epochs 40 --epochs lc=15")
    parser.add_argument("--out", required=True, type=path, metavar="FOLDER", help="runs folder (e.g. runs/mnist)")
    parser.add_argument("--data-dir", type=path, metavar="FOLDER",
                        help="folder with one sub-folder per dataset (FOLDER/mnist/, ...) "
                             "(default: $BIOPROP_DATA, else the cache, ~/.cache/bioprop)")
    parser.add_argument("--limit-batches", action="append", metavar="N|PATTERN=N", type=name,
                        help="train on at most this many batches per epoch; PATTERN=N like --epochs (e.g. lc=250) "
                             "(default: all)")
    parser.add_argument("--limit-eval-batches", type=positive_int, metavar="N",
                        help="evaluate at most this many batches per split (default: all)")
    parser.add_argument("--train-eval-size", type=positive_int, metavar="N",
                        help="the train error after each epoch on a fixed random subset of N training examples "
                             "(cheap for large or slow cells, e.g. 10000 for MNIST-LC) (default: all)")
    parser.add_argument("--aux-sweep", metavar="SIZES", type=name,
                        help="also run every preset whose rule has auxiliary outputs (AO-SDTP) with these sizes, "
                             "e.g. 0,128,512,1024 (Figure 4) (default: no sweep)")
    parser.add_argument("--vary", action="append", metavar="KEY=V1,V2", type=name,
                        help="run every combination of these values instead of each preset's own (repeatable): "
                             "a rule option (forward_reduction=unit-sum,element-mean), an optimiser setting of every "
                             "group (eps_convention=pytorch,tensorflow, lr_schedule=constant,cosine) or of one "
                             "(inverse.lr=1e-4,1e-3), or "
                             "val_size; folders <preset>.KEY=VALUE... (default: no variants)")
    parser.add_argument("--protocol", choices=("honest", "paper", "both"), default="honest",
                        help="honest: hold out the preset's validation split and report the test error at the "
                             "best-validation epoch; paper: the paper's protocol, every run trained on all the "
                             "training data (val_size 0), the best test error over training reported (selection "
                             "on the test set), folders <preset>.protocol=paper; both: the two (default: honest)")
    parser.add_argument("--alignment-every", type=positive_int, metavar="N",
                        help="measure alignment with backprop every N steps in every run (per layer; plotted by "
                             "the report) (default: off)")
    parser.add_argument("--no-verify", dest="verify", action="store_false", default=None,
                        help="do not compare the published checksums before training (your own modified copy)")
    parser.add_argument("--device", type=name, help="auto (CUDA when present), cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                        help="runs trained at the same time (processes) (default: 1)")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch threads per run (default: CPU cores / jobs)")
    parser.add_argument("--report-out", type=path, metavar="FOLDER",
                        help="also write the report (with compact run JSON) to this folder")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state, train nothing")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars and no per-epoch lines (there are no bars anyway when stderr is "
                             "not a terminal)")
    parser.set_defaults(func=run)


PROTOCOL_LINES = {
    "honest": "honest (a validation split held out of the training data selects the epoch)",
    "paper": "paper (all the training data, val_size 0; the best test error over training is reported)",
    "both": "both (each run honest, and again under the paper's protocol in <preset>.protocol=paper)"}


def canonical_command(args) -> list[str]:
    """The command line, rebuilt from the parsed flags (for the report's "Commands" section)."""
    argv = ["reproduce", *args.targets, "--seeds", str(args.seeds)]
    for value in args.epochs or []:
        argv += ["--epochs", value]
    for value in args.limit_batches or []:
        argv += ["--limit-batches", value]
    for value in args.vary or []:
        argv += ["--vary", value]
    if args.protocol != "honest":
        argv += ["--protocol", args.protocol]
    argv += ["--out", str(args.out)]
    for flag in ("data_dir", "limit_eval_batches", "train_eval_size", "aux_sweep", "alignment_every", "device",
                 "threads", "report_out"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.jobs != 1:
        argv += ["--jobs", str(args.jobs)]
    if args.no_progress:
        argv.append("--no-progress")
    if args.verify is False:
        argv.append("--no-verify")
    return argv


def run(args) -> int:
    check_output_folder(args.out, "--out")
    if args.report_out is not None:
        check_output_folder(args.report_out, "--report-out")
    if args.data_dir is not None:
        check_data_folder(args.data_dir, "--data-dir")
    presets = select_presets(args.targets)
    specs = plan_runs(presets, seeds=args.seeds, epochs=EpochBudget.parse(args.epochs),
                      aux_sweep=parse_int_list(args.aux_sweep, "--aux-sweep"), grid=parse_grid(args.vary),
                      protocol=args.protocol,
                      data_dir=args.data_dir,
                      limit_batches=EpochBudget.parse(args.limit_batches, "--limit-batches"),
                      limit_eval_batches=args.limit_eval_batches, train_eval_size=args.train_eval_size,
                      alignment_every=args.alignment_every,
                      device=args.device, verify=args.verify)
    if args.dry_run:
        print(f"protocol: {PROTOCOL_LINES[args.protocol]}")
        for spec in specs:
            state, done = run_state(spec.path(args.out), spec.config.epochs)
            print(f"{spec.tag:<48} {state:<8} {done}/{spec.config.epochs} epochs  {spec.config.rule} "
                  f"{spec.config.model}  val_size {spec.config.data.val_size}")
        return 0
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes
    if main_process:
        record_command(args.out, canonical_command(args))
    try:
        outcome = reproduce(specs, args.out, jobs=args.jobs, progress=not args.no_progress and sys.stderr.isatty(),
                            echo_epochs=not args.no_progress, threads=args.threads)
    except KeyboardInterrupt as stopped:  # Ctrl-C, SIGTERM: the same command picks up every run where it stopped
        resume = "bioprop " + shlex.join(canonical_command(args))
        if isinstance(stopped, TrainingInterrupted):  # --jobs 1: the run in this process
            raise stopped.with_resume(resume) from None
        # --jobs N: each worker checkpointed its run at the step it was in; no other run was started
        name = stopped.args[0] if stopped.args and str(stopped.args[0]).startswith("SIG") else "SIGINT"
        raise TrainingInterrupted(name, "while training (every run in progress stopped after its step)",
                                  f"each run's folder under {args.out}", resume) from None
    if not main_process:
        return 0
    if not args.no_report:
        print(f"report: {write_report(args.out)}")
        if args.report_out:
            print(f"report: {write_report(args.out, args.report_out)}")
    if outcome["failed"]:
        print(f"bioprop: {len(outcome['failed'])} run(s) failed: "
              + ", ".join(spec.tag for spec in outcome["failed"]), file=sys.stderr)
        return 1
    return 0
