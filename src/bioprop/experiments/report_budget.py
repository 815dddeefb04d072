"""The report's Budget section: what was run (seeds, epochs and batches per model, the paper's
protocol) and how it compares with the paper's budget."""

from __future__ import annotations

from bioprop.experiments.runs import Run


def _model_budgets(runs: list[Run]) -> dict[str, set[str]]:
    """Per model, the distinct budgets its runs were given: epochs, batches per epoch, and how far
    an unfinished run got."""
    by_model: dict[str, set[str]] = {}
    for run in runs:
        config = run.config
        limit = config.get("limit_batches")
        desc = f"{config.get('epochs')} epochs" + (f", {limit} batches per epoch" if limit else "")
        done = run.summary["epochs"]
        if done < config.get("epochs", done):
            desc += f" (only {done} done so far)"
        by_model.setdefault(config.get("model", "?"), set()).add(desc)
    return by_model


def budget_section(runs: list[Run]) -> list[str]:
    """The Budget section's bullet lines: seeds, the paper's protocol when used, each model's budget,
    and the conventions that make the budgets comparable with the paper's."""
    seeds = sorted({r.seed for r in runs})
    lines = [f"- seeds: {', '.join(map(str, seeds))} (mean ± sample std over seeds; one value: one seed); a seed "
             "that diverged or has not finished its epochs is left out of every mean, and its row says so"]
    if any(run.variant.get("protocol") == "paper" for run in runs):
        lines.append("- runs under the paper's protocol (`<preset>.protocol=paper`, `--protocol paper`): trained on "
                     "all the training data (val_size 0), their best test error over training reported")
    for model, descs in sorted(_model_budgets(runs).items()):
        lines.append(f"- `{model}`: {'; '.join(sorted(descs))}")
    lines.append("- an epoch of the alternating schedule is a full inverse pass followed by a full forward pass "
                 "(Lee et al.'s DTP code), so every cell gets the same number of forward passes; the train error is "
                 "the trained network's error on the training split after the epoch")
    lines.append("- the paper: the best error within 500 epochs, single runs; hyperparameters from its Table 5 "
                 "(see `docs/reproducing.md` for every choice the paper left open)")
    return lines
