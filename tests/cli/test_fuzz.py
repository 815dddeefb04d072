"""Property tests: whatever the arguments, ``bioprop train`` either parses them into a config that
passes validation, or exits with status 2 and exactly one ``bioprop...: error:`` line on stderr,
never a traceback; ``TrainConfig.from_dict`` gives a valid config or a BiopropError. Nothing is
trained: the function that trains is replaced by a recorder."""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import bioprop.cli.train
from bioprop.cli import build_parser, main
from bioprop.data import DataConfig
from bioprop.errors import BiopropError
from bioprop.presets import PRESETS
from bioprop.training import AdamConfig, TrainConfig

ERROR_LINE = re.compile(r"^bioprop( [a-z]+)*: error: \S")


def train_actions() -> list[argparse.Action]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in subparsers.choices["train"]._actions if a.option_strings and a.dest != "help"]


ACTIONS = train_actions()

garbage = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
special = st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1", "-0.0", "0", "1e-400",
                           "", " ", "--", "-", "1_0", "0x10", "1.5", "2" * 30, "None", "true", "\n", "a\x00b"])
small_ints = st.one_of(st.integers(1, 100), st.integers(-3, 70000)).map(str)
floats = st.one_of(st.floats(-2, 2, allow_nan=False).map(repr), st.sampled_from(["1e-3", "3e-4", "0.9", "0.999",
                                                                                  "1e-8", "0.2", "0.15"]))


def valid_value(action: argparse.Action) -> st.SearchStrategy[str]:
    if action.choices:
        return st.sampled_from(sorted(action.choices))
    dest = action.dest
    if dest == "preset":
        return st.sampled_from(PRESETS.names()[:12])
    if dest == "data":
        return st.sampled_from(["mnist", "fashion-mnist", "cifar10", "mnst"])
    if dest == "model":
        return st.sampled_from(["mnist-fc", "mnist-lc", "cifar-fc", "mnist-xl"])
    if dest == "rule":
        return st.sampled_from(["bp", "fa", "dfa", "dtp", "sdtp", "ao-sdtp", "tp", "backprop"])
    if dest in ("data_dir", "out"):
        return st.sampled_from([".", "data", "runs/a", "a-file", "a-file/x", "missing"])
    if dest == "device":
        return st.sampled_from(["auto", "cpu", "cuda", "cuda:1", "tpu"])
    if dest == "checkpoint_every":
        return st.sampled_from(["500", "30min", "0", "0.5min", "x"])
    if dest == "seed":
        return small_ints
    name = getattr(action.type, "__name__", "")
    if name == "number":
        return floats
    if name == "integer":
        return small_ints
    return garbage


@st.composite
def flag_and_value(draw) -> list[str]:
    action = draw(st.sampled_from(ACTIONS))
    flag = draw(st.sampled_from(action.option_strings))
    if action.nargs == 0:  # store_true / --augment / --no-verify
        return [flag] + draw(st.sampled_from([[], [], ["extra"]]))
    kind = draw(st.sampled_from(["valid"] * 8 + ["equals"] * 2 + ["special", "garbage", "missing"]))
    if kind == "missing":
        return [flag]
    value = draw({"valid": valid_value(action), "special": special, "garbage": garbage,
                  "equals": valid_value(action)}[kind])
    return [f"{flag}={value}"] if kind == "equals" else [flag, value]


@st.composite
def train_argv(draw) -> list[str]:
    argv: list[str] = []
    start = draw(st.sampled_from(["data+model", "data+model", "preset", "nothing"]))
    if start == "data+model":
        argv += ["--data", "mnist", "--model", "mnist-fc"]
    elif start == "preset":
        argv += ["--preset", draw(st.sampled_from(PRESETS.names()))]
    paths = st.sampled_from([".", "data", "runs/a", "a-file", "a-file/x", "missing"])
    if draw(st.booleans()):
        argv += ["--out", draw(paths)]
    if draw(st.integers(0, 2)) == 0:
        argv += ["--data-dir", draw(paths)]
    for _ in range(draw(st.integers(0, 4))):
        choice = draw(st.sampled_from(["flag"] * 12 + ["unknown", "positional"]))
        if choice == "flag":
            argv += draw(flag_and_value())
        elif choice == "unknown":
            argv += [draw(st.sampled_from(["--lrr", "--epoch-s", "--foo", "-x", "--data-dirr", "--noise-level"])),
                     draw(st.one_of(small_ints, garbage))]
        else:
            argv.append(draw(st.one_of(garbage, special)))
    return argv


class Recorder:
    def __init__(self):
        self.configs: list[TrainConfig] = []
        self.outs: list[Path | None] = []

    def __call__(self, config, out=None, resume=False, progress=True, **kwargs):
        self.configs.append(config)
        self.outs.append(out)
        return {"summary": {"final_test_error": 1.0, "best_test_error": 1.0}, "metrics": [], "rule": None}


@pytest.fixture(scope="module")
def sandbox():
    """A folder to run in: relative --out / --data-dir values land here; 'data' is a folder and
    'a-file' a file."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "data").mkdir()
        (root / "a-file").write_text("not a folder")
        yield root


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(argv=train_argv())
def test_train_command_line_parses_to_a_valid_config_or_exits_2_with_one_line(argv, sandbox, monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(bioprop.cli.train, "train", recorder)
    monkeypatch.setenv("BIOPROP_OFFLINE", "1")
    monkeypatch.chdir(sandbox)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(["train", *argv])
    err = err.getvalue()
    event(f"exit status {code}")
    assert "Traceback" not in err
    if code == 0:
        assert err == "" and len(recorder.configs) == 1, (argv, err)
        config, out = recorder.configs[0], recorder.outs[0]
        config.validate()  # what would have been trained is valid
        assert out is None or out.is_dir() or not any(p.is_file() for p in (out, *out.parents)), argv
        assert config.data.data_dir is None or Path(config.data.data_dir).is_dir(), argv
    else:
        assert code == 2, (argv, code, err)
        assert not recorder.configs, argv
        lines = err.splitlines()
        assert len(lines) == 1 and ERROR_LINE.match(lines[0]), (argv, err)


# -- TrainConfig.from_dict ---------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.integers(), st.floats(),
                    st.sampled_from(["mnist", "mnist-fc", "bp", "dtp", "auto", "cpu", "fp32", "standard", "30min"]),
                    st.text(max_size=6))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                      max_leaves=6)


def field_dict(kind, overrides: dict) -> st.SearchStrategy[dict]:
    """Dicts with some of ``kind``'s fields (valid defaults, or any value) and now and then an unknown key."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(kind)]
    return st.dictionaries(st.one_of(st.sampled_from(names), st.text(max_size=5)),
                           st.one_of(overrides.get("__any__", values), values), max_size=len(names)).map(
        lambda d: {**{k: v for k, v in overrides.items() if k != "__any__"}, **d})


adam_dicts = field_dict(AdamConfig, {"__any__": st.sampled_from([1e-3, 0.9, 0.999, 1e-8, -1.0, math.nan, 0])})
data_dicts = st.one_of(field_dict(DataConfig, {"name": "mnist"}), values)
good = {"data": st.fixed_dictionaries({"name": st.sampled_from(["mnist", "cifar10"])},
                                     optional={"val_size": st.integers(0, 20000),
                                               "augment": st.sampled_from([None, True]),
                                               "normalization": st.sampled_from(["standard", "none"])}),
        "model": st.sampled_from(["mnist-fc", "mnist-lc"]), "rule": st.sampled_from(["bp", "fa", "dtp"]),
        "rule_options": st.just({}), "epochs": st.integers(1, 50), "batch_size": st.integers(1, 500),
        "seed": st.integers(0, 2**32 - 1), "device": st.sampled_from(["auto", "cpu", "cuda:0"]),
        "limit_batches": st.sampled_from([None, 3]), "precision": st.sampled_from(["fp32", "bf16"]),
        "checkpoint_every": st.sampled_from([None, "500", "30min"]),
        "optimizers": st.dictionaries(st.sampled_from(["forward", "inverse"]), st.fixed_dictionaries(
            {}, optional={"lr": st.floats(1e-6, 1), "beta2": st.floats(0, 0.9999)}), max_size=2)}
bad = {"data": data_dicts, "model": st.sampled_from(["nope", 3, None]), "rule": st.sampled_from(["x", ["bp"]]),
       "rule_options": st.one_of(st.dictionaries(st.sampled_from(["noise", "alpha", "aux_units", "schedule", "bogus"]),
                                                 values, min_size=1, max_size=3), values),
       "optimizers": st.one_of(st.dictionaries(st.sampled_from(["forward", "inverse"]), adam_dicts, min_size=1,
                                               max_size=2), values),
       "epochs": values, "batch_size": values, "seed": values, "device": values, "limit_batches": values,
       "precision": values, "checkpoint_every": values}


@st.composite
def config_dicts(draw) -> dict:
    """A valid config dict with a few fields replaced by anything, some dropped, maybe an unknown key."""
    result = {}
    for field, strategy in good.items():
        roll = draw(st.integers(0, 9))
        if roll == 0 and field not in ("data", "model"):
            continue  # missing: the default
        result[field] = draw(bad[field] if roll == 1 else strategy)
    if draw(st.integers(0, 9)) == 0:
        result[draw(st.text(max_size=5))] = draw(values)
    if draw(st.integers(0, 19)) == 0:
        result.pop(draw(st.sampled_from(["data", "model"])))
    return result


any_dict = st.one_of(config_dicts(), config_dicts(), config_dicts(), values)


@settings(max_examples=150, deadline=None, database=None)
@given(values=any_dict)
def test_from_dict_gives_a_valid_config_or_a_bioprop_error(values):
    try:
        config = TrainConfig.from_dict(values)
        config.validate()
    except BiopropError as error:
        event("BiopropError")
        assert str(error) and "\n" not in str(error)
        return
    event("valid")
    again = TrainConfig.from_dict(config.to_dict())  # a valid config survives its own config.json
    assert again.to_dict() == config.to_dict()


def test_the_fuzzer_reaches_both_outcomes(sandbox, monkeypatch):
    """The properties above mean something only if both branches happen: spot-check each."""
    recorder = Recorder()
    monkeypatch.setattr(bioprop.cli.train, "train", recorder)
    monkeypatch.chdir(sandbox)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--data", "mnist", "--model", "mnist-fc", "--lr", "3e-4", "--out", "runs/a"]) == 0
    assert recorder.configs[0].optimizers["forward"].lr == 3e-4
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["train", "--data", "mnist", "--model", "mnist-fc", "--out", "a-file"]) == 2
    assert ERROR_LINE.match(err.getvalue()) and err.getvalue().count("\n") == 1
    assert os.path.isfile(sandbox / "a-file")
