"""``bioprop report``: Markdown tables (ours vs the paper) and PNG plots from a runs folder."""

from __future__ import annotations

from bioprop.checks import check_output_folder, check_readable_folder
from bioprop.cli.args import name, path, positive_int
from bioprop.experiments.report import write_report


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write report.md + PNGs from a `bioprop reproduce` folder",
        description="Write report.md (our numbers next to the paper's) and its PNG plots from the runs folder "
                    "of `bioprop reproduce` or `bioprop search`.")
    parser.add_argument("source", type=path, metavar="SOURCE",
                        help="the --out folder of `bioprop reproduce` (or an exported report folder)")
    parser.add_argument("--out", type=path, metavar="FOLDER",
                        help="write the report here instead (with compact per-run JSON, no checkpoints: "
                        "small enough to commit, e.g. docs/results/mnist) (default: SOURCE)")
    parser.add_argument("--study", action="append", metavar="DB_OR_URL", type=path,
                        help="an Optuna storage (search.db path or URL) whose studies get Figure 5 histograms; "
                        "repeatable (default: SOURCE/search*.db and SOURCE/*/search.db)")
    parser.add_argument("--title", type=name,
                        help="the report's title (default: the one kept in OUT/reproduce.json, else Reproduction of "
                        "Bartunov et al. (2018): DATASETS)")
    parser.add_argument("--note", help="a paragraph to put under the title (e.g. why this budget); kept in "
                        "OUT/reproduce.json for later runs")
    parser.add_argument("--epochs", type=positive_int, metavar="N",
                        help="read every run at epoch N: its later epochs are ignored, and a run that has not "
                        "reached N is unfinished and left out of the means (to compare runs of different "
                        "lengths at one budget) (default: the N kept in OUT/reproduce.json, else each run's own budget)")
    parser.set_defaults(func=run)


def run(args) -> int:
    check_readable_folder(args.source, "report: SOURCE")
    if args.out is not None:
        check_output_folder(args.out, "--out")
    command = ["report", args.source] + (["--out", args.out] if args.out else [])
    for study in args.study or []:
        command += ["--study", study]
    if args.title:
        command += ["--title", args.title]
    path = write_report(args.source, args.out, studies=args.study, title=args.title, command=command, note=args.note,
                        epochs=args.epochs)
    print(f"report: {path}")
    return 0
