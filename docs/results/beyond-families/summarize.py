"""The cross-network tables of docs/rules-beyond.md, from the reports exported in this folder: test
error at the best-validation epoch (mean ± std over the finished seeds; their number when fewer than
3), the forward learning rate, and training seconds per epoch against BP's (a loaded shared machine:
a rough guide; bench/bench_rules.py measures cost).

Two tables: every rule at its presets (the paper's rules at Table 5, the others at what their
presets borrow or were searched to), and every rule at the rate the same one-epoch search chose for
it (README.md): the rule's presets where they carry that rate, else its `--vary forward.lr=...` variant.

    python docs/results/beyond-families/summarize.py docs/results/beyond-families
"""

import json
import statistics
import sys
from pathlib import Path

PAPER = ["bp", "pc-fixed", "fa", "dfa", "dtp-parallel"]
EARLIER = ["usf", "brsf", "frsf", "kp", "wm", "drl", "l-drl", "hybrid"]  # the first rules beyond the paper
FAMILIES = ["pc", "ep", "pepita", "drtp", "ff", "fg"]  # issue 18's families
RULES = PAPER + EARLIER + FAMILIES
# the learning rate the one-epoch search of README.md chose for each rule (pc-fixed is BP: not searched)
SEARCHED = {"bp": 1e-3, "fa": 1e-3, "dfa": 3e-3, "dtp-parallel": 3e-3,
            "usf": 3e-4, "brsf": 1e-3, "frsf": 1e-3, "kp": 1e-3, "wm": 1e-3, "drl": 3e-4, "l-drl": 3e-3,
            "hybrid": 3e-3, "pc": 1e-3, "ep": 3e-4, "pepita": 1e-3, "drtp": 3e-3, "ff": 1e-3, "fg": 1e-3}
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


def forward_lr(found: list[dict]) -> float | None:
    return found[0]["config"]["optimizers"]["forward"]["lr"] if found else None


def run_name(root: Path, rule: str, prefix: str, searched: bool) -> str:
    """The preset's runs, or at the searched rate its variant's where the presets carry another rate."""
    preset = f"{prefix}-{rule}"
    report = "fashion-mnist" if prefix.startswith("fashion") else "mnist"
    if not searched or forward_lr(runs(root, report, preset)) == SEARCHED[rule]:
        return preset
    return f"{preset}.forward.lr={SEARCHED[rule]}"


def table(root: Path, rules: list[str], searched: bool) -> None:
    print("| rule | lr | " + " | ".join(preset for _, preset in NETWORKS) + " | s/epoch vs BP, FC / LC |")
    print("|---|---:|" + "---:|" * len(NETWORKS) + "---|")
    for rule in rules:
        cells, rate = [], None
        for report, prefix in NETWORKS:
            found = runs(root, report, run_name(root, rule, prefix, searched))
            finished = [run for run in found if run["summary"].get("epochs") == run["config"]["epochs"]]
            rate = rate or forward_lr(found)
            cells.append(error(finished))
        ratios = []
        for prefix in ("mnist-fc", "mnist-lc"):
            rule_time = seconds_per_epoch(runs(root, "mnist", run_name(root, rule, prefix, searched)))
            bp_time = seconds_per_epoch(runs(root, "mnist", run_name(root, "bp", prefix, searched)))
            ratios.append(f"{rule_time / bp_time:.1f}x" if rule_time and bp_time else "–")
        print(f"| `{rule}` | {f'{rate:.3g}' if rate else '–'} | " + " | ".join(cells) + f" | {' / '.join(ratios)} |")


def main(root: Path) -> None:
    print("Every rule at its presets:\n")
    table(root, RULES, searched=False)
    print("\nEvery rule at the learning rate the same search chose for it:\n")
    table(root, [rule for rule in RULES if rule in SEARCHED], searched=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
