"""The help texts: every command's --help works, every option is explained, real defaults are
shown (never "None"), no docstring markup, and the names users need are listed. Progress bars
only on a terminal."""

from __future__ import annotations

import argparse
import dataclasses
import io
import re
import subprocess
import sys

import pytest

import bioprop.cli.reproduce
import bioprop.cli.train
from bioprop.cli import build_parser, main
from bioprop.data import DATASETS, DataConfig
from bioprop.rules import RULES
from bioprop.training import AdamConfig, TrainConfig


def all_parsers(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its prog: bioprop, bioprop train, bioprop data fetch, ..."""
    parser = parser or build_parser()
    found = {parser.prog: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.update(all_parsers(sub))
    return found


PARSERS = all_parsers()
COMMANDS = sorted(PARSERS)
MARKUP = re.compile(r"``|:(class|mod|func|meth|attr|data):|\bTODO\b|shared/data|docstring")


def test_every_command_is_covered():
    assert {"bioprop", "bioprop train", "bioprop data", "bioprop data fetch", "bioprop data verify",
            "bioprop models", "bioprop rules", "bioprop presets", "bioprop reproduce", "bioprop report",
            "bioprop search", "bioprop plan"} <= set(COMMANDS)


@pytest.mark.parametrize("prog", COMMANDS)
def test_help_is_clean(prog, capsys):
    with pytest.raises(SystemExit) as done:
        main([*prog.split()[1:], "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {prog}")
    assert "None" not in text, text  # "(default: None)" and the like
    assert not MARKUP.search(text), MARKUP.search(text)
    parser = PARSERS[prog]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS and len(action.help) > 10, f"{prog} {name}"
    assert parser.description, f"{prog} has no description"


def help_of(prog: str, flag: str) -> str:
    action = next(a for a in PARSERS[prog]._actions if flag in a.option_strings or a.dest == flag)
    return " ".join(action.help.split())


def test_dataset_and_rule_names_are_listed_from_the_registries():
    for prog, flag in (("bioprop train", "--data"), ("bioprop data fetch", "name"), ("bioprop data verify", "name"),
                       ("bioprop plan", "--data")):
        text = help_of(prog, flag)
        assert all(name in text for name in DATASETS.names()), (prog, text)
    assert {"mnist", "fashion-mnist", "cifar10", "imagenet", "imagenet32", "imagenet64"} <= set(DATASETS.names())
    assert all(name in PARSERS["bioprop data"].description for name in DATASETS.names())
    for prog in ("bioprop train", "bioprop plan"):
        assert all(name in help_of(prog, "--rule") for name in RULES.names())


def defaults(kind) -> dict:
    return {f.name: f.default for f in dataclasses.fields(kind)}


@pytest.mark.parametrize("flag, default", [
    ("--epochs", defaults(TrainConfig)["epochs"]), ("--batch-size", defaults(TrainConfig)["batch_size"]),
    ("--eval-batch-size", defaults(TrainConfig)["eval_batch_size"]), ("--seed", defaults(TrainConfig)["seed"]),
    ("--rule", defaults(TrainConfig)["rule"]), ("--device", defaults(TrainConfig)["device"]),
    ("--precision", defaults(TrainConfig)["precision"]),
    ("--optimizer-impl", defaults(TrainConfig)["optimizer_impl"]),
    ("--val-size", defaults(DataConfig)["val_size"]), ("--num-workers", defaults(DataConfig)["num_workers"]),
    ("--decoder", defaults(DataConfig)["decoder"]), ("--jpeg-draft", defaults(DataConfig)["jpeg_draft"]),
    ("--normalization", defaults(DataConfig)["normalization"]),
    ("--lr", f"{defaults(AdamConfig)['lr']:g}"), ("--inverse-eps", f"{defaults(AdamConfig)['eps']:g}"),
    ("--beta2", f"{defaults(AdamConfig)['beta2']:g}"),
    ("--noise", 0.2), ("--alpha", 0.15), ("--aux-units", 512), ("--schedule", "parallel"),
])
def test_train_help_states_the_real_defaults(flag, default):
    assert f"(default: {default}" in help_of("bioprop train", flag)


def test_a_flag_shared_by_rules_with_different_defaults_states_each_rules():
    """One --flag serves every rule with that option; where their defaults differ, each is named."""
    for flag, option in (("--inference-steps", "inference_steps"), ("--inference-rate", "inference_rate")):
        expected = "; ".join(f"{getattr(RULES.get(rule).Options(), option)} for {rule}" for rule in ("pc", "pc-fixed"))
        assert f"(default: {expected})" in " ".join(help_of("bioprop train", flag).split())
    assert bioprop.cli.train.default_help({"dtp": 0.1, "sdtp": 0.1}) == " (default: 0.1)"
    assert bioprop.cli.train.default_help({"a": None}) == ""
    assert bioprop.cli.train.default_help({"a": 1, "b": 2, "c": 1}) == " (default: 1 for a, c; 2 for b)"


def test_help_runs_from_the_console(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bioprop", "train", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stderr == ""
    assert "(default: None)" not in result.stdout and "--lr X" in result.stdout


# -- progress: a bar on a terminal, lines in a log --------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self):
        return True


def record_train(monkeypatch):
    calls = []

    def fake(config, out=None, resume=False, progress=True, **kwargs):
        calls.append(progress)
        return {"summary": {"final_test_error": 1.0, "best_test_error": 1.0}}

    monkeypatch.setattr(bioprop.cli.train, "train", fake)
    return calls


@pytest.mark.parametrize("flags, expected", [
    ([], "auto"), (["--no-progress"], "none"), (["--progress", "log"], "log"), (["--progress", "bar"], "bar"),
])
def test_train_passes_the_progress_mode(monkeypatch, flags, expected):
    calls = record_train(monkeypatch)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert main(["train", "--data", "mnist", "--model", "mnist-fc", *flags]) == 0
    assert calls == [expected]


def test_train_progress_every_must_be_positive(monkeypatch):
    record_train(monkeypatch)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert main(["train", "--data", "mnist", "--model", "mnist-fc", "--progress-every", "0"]) == 2
    assert "--progress-every must be a number of seconds > 0, got 0.0" in sys.stderr.getvalue()


@pytest.mark.parametrize("terminal, expected", [(False, False), (True, True)])
def test_reproduce_shows_progress_only_on_a_terminal(monkeypatch, tmp_path, terminal, expected):
    calls = []

    def fake(specs, out, jobs=1, progress=False, echo_epochs=True, threads=None, **kwargs):
        calls.append((progress, echo_epochs))
        return {"skipped": [], "ran": [], "failed": []}

    monkeypatch.setattr(bioprop.cli.reproduce, "reproduce", fake)
    monkeypatch.setattr(sys, "stderr", Terminal() if terminal else io.StringIO())
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert main(["reproduce", "mnist-fc-bp", "--seeds", "1", "--out", str(tmp_path), "--no-report"]) == 0
    assert calls == [(expected, True)]  # the per-epoch lines stay, in logs too
