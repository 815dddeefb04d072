"""Epochs made of passes (the alternating schedule), the evaluated train error, exact resume at
a pass boundary and in the middle of a pass, fused Adam, and divergence stopping the run."""

import json

import pytest
import torch

from bioprop.data import DataConfig
from bioprop.training import AdamConfig, DivergenceError, TrainConfig, Trainer, evaluate, train, without_timings
from bioprop.training.trainer import make_optimizer


def config(shared_data, **overrides):
    values = dict(data=DataConfig("mnist", data_dir=str(shared_data), val_size=1000), model="mnist-fc",
                  rule="dtp", rule_options={"schedule": "alternating", "diagnostics_every": 2}, epochs=2,
                  batch_size=50, eval_batch_size=500, limit_batches=5, limit_eval_batches=2, device="cpu",
                  train_eval_size=700)
    values.update(overrides)
    return TrainConfig(**values)


def quiet(*args):
    pass


class Interrupted(Exception):
    pass


def interrupt_at_step(trainer: Trainer, call: int) -> None:
    """Make ``trainer`` die (like a kill) during its ``call``-th mini-batch, counted from 1."""
    original, calls = trainer.rule.compute_gradients, [0]

    def compute_gradients(*args):
        calls[0] += 1
        if calls[0] == call:
            raise Interrupted
        return original(*args)

    trainer.rule.compute_gradients = compute_gradients


def assert_same_run(a: dict, b: dict) -> None:
    assert without_timings(a["metrics"]) == without_timings(b["metrics"])
    for key, value in a["rule"].state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, b["rule"].state_dict()[key]), key


def test_an_alternating_epoch_is_an_inverse_pass_then_a_forward_pass(shared_data):
    result = train(config(shared_data, epochs=1), progress=False, log=quiet)
    (row,) = result["metrics"]
    assert [p["groups"] for p in row["passes"]] == [["inverse"], ["forward"]]
    assert [p["steps"] for p in row["passes"]] == [5, 5]  # each pass sees the whole (limited) data
    assert row["seconds"] == pytest.approx(sum(p["seconds"] for p in row["passes"]))
    inverse_pass, forward_pass = row["passes"]
    assert "inverse_loss/layer2" in inverse_pass["diagnostics"] and "forward_loss/layer1" in forward_pass["diagnostics"]
    assert {"train_error", "train_error_running", "val_error", "test_error"} <= set(row)


def test_the_forward_weights_train_once_per_alternating_epoch_as_many_steps_as_parallel(shared_data, tmp_path):
    """Alternating: forward weights untouched by the inverse pass, then trained for a whole pass."""
    trainer = Trainer(config(shared_data, epochs=1), out=tmp_path, progress=False, log=quiet)
    initial = {k: v.clone() for k, v in trainer.rule.model.state_dict().items()}
    interrupt_at_step(trainer, 6)  # the first step of the forward pass
    with pytest.raises(Interrupted):
        trainer.fit()
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 0 and checkpoint["position"]["pass"] == 1
    forward = {k[len("model."):]: v for k, v in checkpoint["rule"].items() if k.startswith("model.")}
    assert all(torch.equal(forward[k], initial[k]) for k in initial)  # the inverse pass left them alone
    steps = trainer.optimizers["forward"].state_dict()["state"]
    assert not steps  # the forward optimiser has not stepped yet


@pytest.mark.parametrize("kill_at, every", [(6, None), (3, "2"), (8, "1"), (12, "2")])
def test_resume_is_exact_at_a_pass_boundary_and_in_the_middle_of_a_pass(shared_data, tmp_path, kill_at, every):
    straight = train(config(shared_data, checkpoint_every=every), out=tmp_path / "straight", progress=False, log=quiet)
    trainer = Trainer(config(shared_data, checkpoint_every=every), out=tmp_path / "killed", progress=False, log=quiet)
    interrupt_at_step(trainer, kill_at)
    with pytest.raises(Interrupted):
        trainer.fit()
    resumed = train(config(shared_data, checkpoint_every=every), out=tmp_path / "killed", resume=True,
                    progress=False, log=quiet)
    assert_same_run(straight, resumed)
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert without_timings([json.loads(line) for line in lines]) == without_timings(straight["metrics"])


def test_resume_of_a_run_killed_after_its_checkpoint_rewrites_the_metrics_files(shared_data, tmp_path):
    run = tmp_path / "run"
    train(config(shared_data, epochs=1), out=run, progress=False, log=quiet)
    (run / "metrics.jsonl").unlink()
    (run / "results.json").unlink()
    train(config(shared_data, epochs=1), out=run, resume=True, progress=False, log=quiet)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert json.loads((run / "results.json").read_text())["epochs"] == 1


def test_train_error_is_the_trained_network_on_a_fixed_training_subset(shared_data):
    result = train(config(shared_data, rule="bp", rule_options={}, epochs=1), progress=False, log=quiet)
    trainer = Trainer(config(shared_data, rule="bp", rule_options={}, epochs=1), progress=False, log=quiet)
    evaluated = evaluate(result["rule"], trainer.data.train, 500, size=700, seed=0)
    assert result["metrics"][-1]["train_error"] == pytest.approx(evaluated["error"])
    again = evaluate(result["rule"], trainer.data.train, 100, size=700, seed=0)  # other batch size, same subset
    assert again["error"] == pytest.approx(evaluated["error"])
    other = evaluate(result["rule"], trainer.data.train, 500, size=700, seed=1)
    assert other["error"] != evaluated["error"]  # a different subset
    full = evaluate(result["rule"], trainer.data.train, 5000)
    assert full["error"] != evaluated["error"]


@pytest.mark.parametrize("rule", ["bp", "fa", "dtp"])
def test_fused_adam_gives_the_plain_update_to_float_tolerance(rule):
    from bioprop.models import create_model
    from bioprop.rules import create_rule

    finals = {}
    for implementation in ("plain", "fused"):
        torch.manual_seed(0)
        learner = create_rule(rule, create_model("mnist-fc"))
        optimizers = {g: make_optimizer(p, AdamConfig(lr=1e-3, eps=1e-8), implementation, torch.device("cpu"))
                      for g, p in learner.parameter_groups().items()}
        generator = torch.Generator().manual_seed(1)
        for _ in range(20):
            x, y = torch.randn(20, 1, 28, 28, generator=generator), torch.randint(0, 10, (20,), generator=generator)
            torch.manual_seed(2)  # the same noise for target propagation
            for optimizer in optimizers.values():
                optimizer.zero_grad()
            learner.compute_gradients(x, y, tuple(optimizers))
            for optimizer in optimizers.values():
                optimizer.step()
        finals[implementation] = [p.detach().clone() for p in learner.parameters()]
        assert optimizers["forward"].defaults.get("fused") is (implementation == "fused" or None)
    for plain, fused in zip(finals["plain"], finals["fused"]):
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("overrides", [
    dict(rule="bp", rule_options={}, optimizers={"forward": AdamConfig(lr=1e36), "inverse": AdamConfig()}),
    dict(rule_options={"schedule": "parallel", "noise": 1e30}),
])
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(shared_data, tmp_path, overrides):
    run = tmp_path / "run"
    with pytest.raises(DivergenceError, match="non-finite") as error:
        train(config(shared_data, epochs=3, **overrides), out=run, progress=False, log=quiet)
    assert f"rule {overrides.get('rule', 'dtp')!r}" in str(error.value) and "epoch" in str(error.value)
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "diverged" and "non-finite" in results["reason"]
    if (run / "checkpoint.pt").exists():
        checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
        assert all(torch.isfinite(v).all() for v in checkpoint["rule"].values()
                   if torch.is_tensor(v) and v.is_floating_point())


def test_bad_run_options_are_refused(shared_data):
    for overrides, message in [(dict(train_eval_size=0), "train_eval_size"), (dict(precision="fp8"), "precision"),
                               (dict(checkpoint_every="5h"), "checkpoint_every"),
                               (dict(optimizer_impl="turbo"), "optimizer_impl")]:
        with pytest.raises(Exception, match=message):
            Trainer(config(shared_data, **overrides), progress=False)
