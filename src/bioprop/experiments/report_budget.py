"""The report's Budget section: what was run (the seeds, and per model the epochs, the batches per
epoch and every setting that shortens training or evaluation, the paper's protocol) and how it
compares with the paper's budget."""

from __future__ import annotations

from bioprop.experiments.runs import Run


def seeds_line(seeds: list[int]) -> str:
    """How many seeds and which: "1 seed (seed 0)", "3 seeds (0, 1, 2)" (never "seeds: 0", which
    reads as none)."""
    if len(seeds) == 1:
        return f"1 seed (seed {seeds[0]})"
    return f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"


def run_budget(config: dict, epochs_done: int) -> str:
    """One run's budget from its config: the epochs, then each setting that cuts training or
    evaluation short, with the flag that set it, and how far an unfinished run got, e.g. "3 epochs,
    100 batches of 100 per epoch (`--limit-batches 100`), evaluation on at most 2 batches of 1000 per
    split (`--limit-eval-batches 2`) (only 1 done so far)"."""
    epochs = config.get("epochs")
    parts = [f"{epochs} epochs"]
    if config.get("limit_batches"):
        n = config["limit_batches"]
        parts.append(f"{n} batches of {config.get('batch_size', '?')} per epoch (`--limit-batches {n}`)")
    if config.get("limit_eval_batches"):
        n = config["limit_eval_batches"]
        parts.append(f"evaluation on at most {n} batches of {config.get('eval_batch_size', '?')} per split "
                     f"(`--limit-eval-batches {n}`)")
    if config.get("train_eval_size"):
        n = config["train_eval_size"]
        parts.append(f"train error on a fixed random {n:,} training examples (`--train-eval-size {n}`)")
    text = ", ".join(parts)
    if epochs is not None and epochs_done < epochs:
        text += f" (only {epochs_done} done so far)"
    return text


def _model_budgets(runs: list[Run]) -> dict[str, set[str]]:
    """Per model, the distinct budgets its runs were given (:func:`run_budget`)."""
    by_model: dict[str, set[str]] = {}
    for run in runs:
        by_model.setdefault(run.config.get("model", "?"), set()).add(run_budget(run.config, run.summary["epochs"]))
    return by_model


def budget_section(runs: list[Run]) -> list[str]:
    """The Budget section's bullet lines: the seeds, the paper's protocol when used, each model's
    budget, and the conventions that make the budgets comparable with the paper's."""
    seeds = sorted({r.seed for r in runs})
    lines = [f"- {seeds_line(seeds)}; a number is the mean ± sample std over a cell's seeds (one value: one "
             "seed); a seed that diverged or has not finished its epochs is left out of every mean, and its row "
             "says so"]
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
