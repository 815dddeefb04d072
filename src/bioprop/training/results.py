"""Summaries of a run's per-epoch metrics, under both selection protocols.

* ``test_error_at_best_val``: test error at the epoch of lowest validation error (honest
  model selection on held-out training data);
* ``best_test_error``: lowest test error over training (the paper's protocol, which selects
  on the test set and is optimistic).
"""

from __future__ import annotations


def summarize(metrics: list[dict]) -> dict:
    if not metrics:
        return {"epochs": 0}
    final = metrics[-1]
    summary = {
        "epochs": final["epoch"],
        "final_train_error": final["train_error"],
        "final_test_error": final["test_error"],
    }
    best_test = min(metrics, key=lambda row: row["test_error"])
    summary.update(best_test_error=best_test["test_error"], best_test_epoch=best_test["epoch"],
                   train_error_at_best_test=best_test["train_error"])
    with_val = [row for row in metrics if row.get("val_error") is not None]
    if with_val:
        best_val = min(with_val, key=lambda row: row["val_error"])
        summary.update(best_val_error=best_val["val_error"], best_val_epoch=best_val["epoch"],
                       test_error_at_best_val=best_val["test_error"],
                       train_error_at_best_val=best_val["train_error"])
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
