"""The cross-network table of docs/rules-beyond.md, from the reports exported in this folder: test
error at the best-validation epoch (mean ± std over the finished seeds; their number when fewer than
3), the forward learning rate, and training seconds per epoch against BP's (a loaded shared machine:
a rough guide; bench/bench_rules.py measures cost).

    python docs/results/beyond-families/summarize.py docs/results/beyond-families
"""

import json
import statistics
import sys
from pathlib import Path

RULES = ["bp", "pc-fixed", "fa", "dfa", "dtp-parallel", "pc", "ep", "pepita", "drtp", "ff", "fg"]
NETWORKS = [("mnist", "mnist-fc"), ("fashion-mnist", "fashion-mnist-fc"), ("mnist", "mnist-lc")]


def runs(root: Path, report: str, preset: str) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((root / report / "runs" / preset).glob("seed*.json"))]


def error(finished: list[dict]) -> str:
    values = [run["summary"]["test_error_at_best_val"] for run in finished]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    seeds = "" if len(values) == 3 else f" ({len(values)} seeds)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}{seeds}"


def seconds_per_epoch(finished: list[dict]) -> float | None:
    seconds = [row["seconds"] for run in finished for row in run["metrics"] if row.get("seconds")]
    return statistics.mean(seconds) if seconds else None


def main(root: Path) -> None:
    print("| rule | lr | " + " | ".join(preset for _, preset in NETWORKS) + " | s/epoch vs BP, FC / LC |")
    print("|---|---:|" + "---:|" * len(NETWORKS) + "---|")
    for rule in RULES:
        cells, rate = [], None
        for report, prefix in NETWORKS:
            found = runs(root, report, f"{prefix}-{rule}")
            finished = [run for run in found if run["summary"].get("epochs") == run["config"]["epochs"]]
            rate = rate or (found[0]["config"]["optimizers"]["forward"]["lr"] if found else None)
            cells.append(error(finished))
        ratios = []
        for prefix in ("mnist-fc", "mnist-lc"):
            rule_time = seconds_per_epoch(runs(root, "mnist", f"{prefix}-{rule}"))
            bp_time = seconds_per_epoch(runs(root, "mnist", f"{prefix}-bp"))
            ratios.append(f"{rule_time / bp_time:.1f}x" if rule_time and bp_time else "–")
        print(f"| `{rule}` | {f'{rate:.3g}' if rate else '–'} | " + " | ".join(cells) + f" | {' / '.join(ratios)} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
