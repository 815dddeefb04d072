"""Summaries of a run's per-epoch metrics, under both selection protocols.

* ``test_error_at_best_val``: test error at the epoch of lowest validation error (honest
  model selection on held-out training data);
* ``best_test_error``: lowest test error over training (the paper's protocol, which selects
  on the test set and is optimistic).

"error" is the metric of the run's task (:mod:`bioprop.tasks`, read from the rows' keys): a
reconstruction run's summary has ``test_reconstruction_error_at_best_val``,
``best_test_reconstruction_error``, ``final_train_reconstruction_error`` and so on.
"""

from __future__ import annotations

from bioprop.tasks import task_of_row


def summarize(metrics: list[dict]) -> dict:
    if not metrics:
        return {"epochs": 0}
    final = metrics[-1]
    m = task_of_row(final).metric  # "error" for classification
    train, test, val = f"train_{m}", f"test_{m}", f"val_{m}"
    summary = {
        "epochs": final["epoch"],
        f"final_{train}": final[train],
        f"final_{test}": final[test],
    }
    best_test = min(metrics, key=lambda row: row[test])
    summary.update({f"best_{test}": best_test[test], "best_test_epoch": best_test["epoch"],
                    f"{train}_at_best_test": best_test[train]})
    with_val = [row for row in metrics if row.get(val) is not None]
    if with_val:
        best_val = min(with_val, key=lambda row: row[val])
        summary.update({f"best_{val}": best_val[val], "best_val_epoch": best_val["epoch"],
                        f"{test}_at_best_val": best_val[test], f"{train}_at_best_val": best_val[train]})
        if "test_top5_error" in best_val:
            summary["test_top5_error_at_best_val"] = best_val["test_top5_error"]
    if "test_top5_error" in best_test:
        summary["best_test_top5_error"] = min(row["test_top5_error"] for row in metrics)
    return summary


def without_timings(value):
    """``value`` (metrics rows, nested dicts and lists) without the keys ending in ``seconds``:
    what two runs of the same config must agree on exactly."""
    if isinstance(value, dict):
        return {key: without_timings(item) for key, item in value.items() if not key.endswith("seconds")}
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value
