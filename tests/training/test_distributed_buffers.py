"""Data parallel equals one process also with batch norm and augmentation (2 gloo processes on the
CPU): every buffer agrees across ranks and with rank 0's checkpoint; parameters start as rank 0's;
with --sync-batchnorm two processes at B/2 equal one at B for a conv network with batch norm (a
feedback rule and DFA); on CIFAR-format files with augmentation for a feedback rule, DFA and a TP
rule; the bucketed gradient average equals the flat one for every rule; a gradient that is None on
one process only does not hang."""

import gc
import importlib.util
import os
import time
import weakref
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from bioprop.data import DataConfig, load_data
from bioprop.models import create_model
from bioprop.rules import create_rule
from bioprop.training import AdamConfig, TrainConfig, Trainer, distributed
from bioprop.training.checkpoint import load_checkpoint
from synthetic_data import in_memory
from test_distributed import CASES, TP, assert_same, free_port

MODELS = Path(__file__).with_name("distributed_models.py")
TIMEOUT = 240  # seconds for a whole spawn: far beyond its few seconds, short of a hang


def spawn(worker, *args, world_size: int = 2) -> dict:
    """Runs ``worker(rank, world_size, port, results, *args)`` in ``world_size`` processes; fails the
    test, killing them, if they are not done within :data:`TIMEOUT` (a hang)."""
    results = mp.Manager().dict()
    context = mp.start_processes(worker, args=(world_size, free_port(), results, *args), nprocs=world_size,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the data-parallel processes hung (still running after {TIMEOUT} s)")
    return dict(results)


def join_job(rank: int, world_size: int, port: int) -> distributed.DataParallel:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    return distributed.from_environment(torch.device("cpu"))[0]


def leave_job() -> None:
    distributed.leave_process_group(together=True)  # as the CLI leaves


def tensors(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}


# -- the trainer: batch norm, sync batch norm, augmentation ----------------------------------------

def bn_config(rule: str, model: str = "conv_batchnorm", sync: bool = False) -> TrainConfig:
    options = {"deliver_at": "body.2,body.5"} if rule == "dfa" else {}  # the error reaches both ReLUs
    return TrainConfig(data=DataConfig("cifar10"), model=f"{MODELS}:{model}", rule=rule, rule_options=options,
                       epochs=1, batch_size=16,
                       eval_batch_size=32, limit_batches=3, limit_eval_batches=1, device="cpu", sync_batchnorm=sync,
                       optimizers={"forward": AdamConfig(lr=1e-2)})


def cifar_config(root: Path, rule: str) -> TrainConfig:
    """CIFAR-10 files in the real format, augmented (the dataset's default: random crop and flip)."""
    return TrainConfig(data=DataConfig("cifar10", data_dir=str(root), val_size=20, verify=False), model="cifar-fc",
                       rule=rule, rule_options={"diagnostics_every": 0} if rule in TP else {}, epochs=1,
                       batch_size=16, eval_batch_size=40, limit_batches=3, limit_eval_batches=1, device="cpu",
                       optimizers={"forward": AdamConfig(lr=1e-3, eps=1e-6), "inverse": AdamConfig(lr=1e-3)})


def synthetic():
    return in_memory("cifar10", n_train=64, n_val=32, n_test=32)


def trainer_worker(rank, world_size, port, results, jobs):
    join_job(rank, world_size, port)
    try:
        for key, (config, out) in jobs.items():
            data = synthetic() if config.data.data_dir is None else None
            trainer = Trainer(config, out=out, progress=False, data=data, log=lambda *a: None)
            trainer.fit()
            results[(key, rank)] = (tensors(trainer.rule), trainer.metrics)
            reducer, parameters = weakref.ref(trainer.reducer), [weakref.ref(p) for p in trainer.rule.parameters()]
            del trainer
            gc.collect()
            results[("left behind", key, rank)] = (reducer() is not None, sum(p() is not None for p in parameters))
    finally:
        leave_job()


def single(config: TrainConfig):
    data = synthetic() if config.data.data_dir is None else None
    trainer = Trainer(config, progress=False, data=data, log=lambda *a: None)
    initial = tensors(trainer.rule)
    trainer.fit()
    final = tensors(trainer.rule)
    # state drawn at the first step (DFA's seeded feedback matrix) must come out exactly the same
    return final, trainer.metrics, {**final, **initial}


def write_cifar(root: Path) -> Path:
    """tests/experiments/conftest.py's writer (100 training images, 20 test images)."""
    path = MODELS.parents[1] / "experiments" / "conftest.py"
    spec = importlib.util.spec_from_file_location("experiments_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_cifar(root)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cifar_root):
    """Every two-process run of this module, in one spawn: {(job, rank): (state, metrics)}."""
    run = tmp_path_factory.mktemp("runs")
    jobs = {"bn": (bn_config("fa"), str(run / "bn")),
            "unseeded": (bn_config("bp", model="conv_batchnorm_unseeded"), None),
            **{f"sync-{rule}": (bn_config(rule, sync=True), None) for rule in ("fa", "dfa")},
            **{f"cifar-{rule}": (cifar_config(cifar_root, rule), None) for rule in ("fa", "dfa", "dtp")}}
    return spawn(trainer_worker, jobs), run


def test_every_buffer_agrees_across_ranks_and_with_rank_0s_checkpoint(trained):
    results, run = trained
    (state0, metrics0), (state1, metrics1) = results[("bn", 0)], results[("bn", 1)]
    assert any("running_var" in key for key in state0)
    saved = load_checkpoint(run / "bn" / "checkpoint.pt")["rule"]
    for key, value in state0.items():
        assert torch.equal(state1[key], value), key
        assert torch.equal(saved[key], value), key
    assert [row["test_error"] for row in metrics0] == [row["test_error"] for row in metrics1]  # one model scored


def test_a_finished_trainer_leaves_neither_its_reducer_nor_its_parameters_behind(trained):
    """The reducer's hooks sit in the parameters' C++ state, invisible to the garbage collector; left
    there after fit(), they kept every finished run's reducer and parameters in memory until the
    process exited, and a torchrun rank freeing them at shutdown aborted now and then."""
    results, _ = trained
    left = {key: value for key, value in results.items() if key[0] == "left behind"}
    assert len(left) == 2 * 7 and all(value == (False, 0) for value in left.values()), left


def test_parameters_start_as_rank_0s(trained):
    results, _ = trained
    state0, state1 = results[("unseeded", 0)][0], results[("unseeded", 1)][0]
    for key, value in state0.items():
        assert torch.equal(state1[key], value), key


@pytest.mark.parametrize("rule", ["fa", "dfa"])
def test_sync_batchnorm_two_processes_at_half_batch_equal_one_at_full_batch(trained, rule):
    results, _ = trained
    assert_same(single(bn_config(rule, sync=True)), results[(f"sync-{rule}", 0)])


def test_without_sync_batchnorm_each_process_normalises_with_its_own_share(trained):
    """What --sync-batchnorm changes: rank 0's running statistics come from its B/2 examples alone."""
    results, _ = trained
    alone, _, initial = single(bn_config("fa"))
    parallel = results[("bn", 0)][0]
    key = "model.body.1.running_var"
    assert not torch.allclose(parallel[key], alone[key], rtol=1e-3, atol=0), key


@pytest.mark.parametrize("rule", ["fa", "dfa", "dtp"])
def test_augmented_cifar_two_processes_at_half_batch_equal_one_at_full_batch(trained, cifar_root, rule):
    results, _ = trained
    assert load_data(cifar_config(cifar_root, rule).data, seed=0).augment
    assert_same(single(cifar_config(cifar_root, rule)), results[(f"cifar-{rule}", 0)])


# -- the gradient reducer ----------------------------------------------------------------------

def reducer_worker(rank, world_size, port, results, cases):
    parallel = join_job(rank, world_size, port)
    try:
        for name, options in cases:
            results[(name, options.get("schedule"), rank)] = bucketed_against_flat(parallel, name, options)
        results[("none", rank)] = none_on_one_rank(parallel)
        results[("changed", rank)] = gradient_changed_after_accumulation(parallel)
        trainer = Trainer(bn_config("bp", model="rank_branch"), progress=False, data=synthetic(), log=lambda *a: None)
        trainer.fit()
        results[("trainer-none", rank)] = tensors(trainer.rule)
    finally:
        leave_job()


def bucketed_against_flat(parallel, name, options) -> tuple[float, int]:
    """Two copies of a rule see the same batches; one averages through the bucketed reducer (small
    buckets, so that several go before the backward pass ends), the other through the flat all-reduce.
    Returns the largest gradient difference relative to the gradient's size, and the buckets sent early."""
    copies = []
    for _ in range(2):
        torch.manual_seed(0)
        rule = create_rule(name, create_model("mnist-fc"), seed=0,
                           **{**options, **({"diagnostics_every": 0} if name in TP else {})})
        rule.set_data_parallel(parallel.rank, parallel.world_size)
        copies.append(rule)
    bucketed, flat = copies
    reducer = distributed.GradientReducer(parallel, bucketed.parameter_groups(), bucket_bytes=2**18)
    generator = torch.Generator().manual_seed(parallel.rank)
    worst = 0.0
    for step in range(3):
        for groups in bucketed.passes():
            x, y = torch.randn(8, 1, 28, 28, generator=generator), torch.randint(0, 10, (8,), generator=generator)
            for rule in copies:
                rule.zero_grad(set_to_none=True)
            torch.manual_seed(step)
            reducer.start(groups)
            bucketed.compute_gradients(x, y, groups)
            reducer.finish()
            torch.manual_seed(step)
            flat.compute_gradients(x, y, groups)
            pairs = [(a, b) for group in groups for a, b in zip(bucketed.parameter_groups()[group],
                                                                 flat.parameter_groups()[group])]
            parallel.average_gradients([b for _, b in pairs])
            for a, b in pairs:
                assert (a.grad is None) == (b.grad is None)
                if a.grad is not None:
                    worst = max(worst, float((a.grad - b.grad).norm() / (b.grad.norm() + 1e-30)))
    reducer.close()
    return worst, reducer.early_launches


def none_on_one_rank(parallel) -> dict:
    """``used_by_0`` gets a gradient on rank 0 only, ``unused`` on no rank, over three steps."""
    torch.manual_seed(0)
    layers = nn.ModuleDict({"shared": nn.Linear(4, 4), "used_by_0": nn.Linear(4, 4), "unused": nn.Linear(4, 4)})
    reducer = distributed.GradientReducer(parallel, {"forward": list(layers.parameters())}, bucket_bytes=64)
    x = torch.full((2, 4), float(parallel.rank + 1))
    for _ in range(3):
        layers.zero_grad(set_to_none=True)
        reducer.start(("forward",))
        loss = layers["shared"](x).sum() + (layers["used_by_0"](x).sum() if parallel.rank == 0 else 0)
        loss.backward()
        reducer.finish()
    return {name: None if p.grad is None else p.grad.clone() for name, p in layers.named_parameters()}


def gradient_changed_after_accumulation(parallel) -> tuple[list, list]:
    """A rule that doubles its gradients after backward: the reducer must send the doubled ones."""
    torch.manual_seed(0)
    layer = nn.Linear(4, 4)
    reducer = distributed.GradientReducer(parallel, {"forward": list(layer.parameters())}, bucket_bytes=64)
    x = torch.full((2, 4), float(parallel.rank + 1))
    sent, expected = [], []
    for _ in range(3):
        layer.zero_grad(set_to_none=True)
        reducer.start(("forward",))
        layer(x).square().sum().backward()
        layer.weight.grad.mul_(2)
        reducer.finish()
        sent.append(layer.weight.grad.clone())
        layer.zero_grad(set_to_none=True)
        layer(x).square().sum().backward()
        layer.weight.grad.mul_(2)
        parallel.average_gradients([layer.weight])
        expected.append(layer.weight.grad.clone())
    return sent, expected


@pytest.fixture(scope="module")
def reduced():
    return spawn(reducer_worker, CASES)


@pytest.mark.parametrize("rule, options", CASES, ids=[f"{r}-{o.get('schedule', '')}".strip("-") for r, o in CASES])
def test_bucketed_average_equals_the_flat_one(reduced, rule, options):
    for rank in range(2):
        worst, early = reduced[(rule, options.get("schedule"), rank)]
        assert worst <= 1e-6, (rank, worst)
    if rule in ("bp", "fa", "dtp"):  # rules whose gradients come from autograd: buckets overlap the backward
        assert early > 0


def test_a_gradient_none_on_one_rank_only_counts_as_zeros_and_does_not_hang(reduced):
    rank0, rank1 = reduced[("none", 0)], reduced[("none", 1)]
    for name in rank0:
        if name.startswith("unused"):
            assert rank0[name] is None and rank1[name] is None  # None everywhere stays None
        else:
            assert torch.equal(rank0[name], rank1[name]), name
    assert rank1["used_by_0.weight"].abs().sum() > 0  # rank 0's gradient, halved
    trainer0, trainer1 = reduced[("trainer-none", 0)], reduced[("trainer-none", 1)]
    for key, value in trainer0.items():
        assert torch.equal(trainer1[key], value), key


def test_a_gradient_changed_after_it_was_accumulated_is_sent_changed(reduced):
    for rank in range(2):
        sent, expected = reduced[("changed", rank)]
        for a, b in zip(sent, expected, strict=True):
            assert torch.allclose(a, b, rtol=1e-6, atol=0)
