"""Every way into the CLI refuses bad input before work starts: exit status 2, one line
``bioprop...: error: ...`` on stderr that names the field or file, no traceback."""

import math
import os

import pytest

import bioprop.cli.reproduce
import bioprop.cli.search
import bioprop.cli.train
from bioprop.cli import main
from bioprop.errors import BiopropError
from bioprop.rules import create_rule, rule_options
from bioprop.models import create_model
from bioprop.training import AdamConfig, TrainConfig
from bioprop.data import DataConfig


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """Training, reproducing and searching must never start for bad input."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started for bad input")

    monkeypatch.setattr(bioprop.cli.train, "train", refuse)
    monkeypatch.setattr(bioprop.cli.reproduce, "reproduce", refuse)
    monkeypatch.setattr(bioprop.cli.search.Search, "run", refuse)
    monkeypatch.setenv("BIOPROP_OFFLINE", "1")


def refused(capsys, argv, message, prog="bioprop"):
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, (argv, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    assert message in lines[0], err
    return lines[0]


TRAIN = ["train", "--data", "mnist", "--model", "mnist-fc"]

TRAIN_CASES = [
    # unknown names, with close matches
    (["train", "--data", "mnst", "--model", "mnist-fc"], "unknown dataset 'mnst'; did you mean 'mnist'?"),
    (["train", "--data", "mnist", "--model", "mnist-fcc"], "unknown model 'mnist-fcc'; did you mean 'mnist-fc'"),
    (TRAIN + ["--rule", "dtpp"], "unknown learning rule 'dtpp'; did you mean 'dtp'"),
    (["train", "--preset", "mnist-fc-dtp-paralel"], "unknown preset 'mnist-fc-dtp-paralel'; did you mean "
                                                   "'mnist-fc-dtp-parallel'"),
    (["train", "--preset", "mnist-fc-dtp"], "unknown preset 'mnist-fc-dtp'; did you mean 'mnist-fc-dtp-parallel' or "
                                           "'mnist-fc-dtp-alternating'"),
    (TRAIN + ["--rule", "bp", "--alpha", "0.1"], "rule 'bp' has no option 'alpha'"),
    (TRAIN + ["--rule", "dfa", "--noise", "0.1"], "rule 'dfa' has no option 'noise'"),
    # NaN / inf refused by name, at parse time
    (TRAIN + ["--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
    (TRAIN + ["--inverse-lr", "inf"], "argument --inverse-lr: expected a finite number, got 'inf'"),
    (TRAIN + ["--beta2=-inf"], "argument --beta2: expected a finite number, got '-inf'"),
    (TRAIN + ["--rule", "dtp", "--noise", "NaN"], "argument --noise: expected a finite number, got 'NaN'"),
    (TRAIN + ["--rule", "dtp", "--alpha", "Infinity"], "argument --alpha: expected a finite number"),
    # wrong types
    (TRAIN + ["--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
    (TRAIN + ["--epochs", "1.5"], "argument --epochs: expected an integer, got '1.5'"),
    (TRAIN + ["--batch-size", "ten"], "argument --batch-size: expected an integer, got 'ten'"),
    (TRAIN + ["--rule", "ao-sdtp", "--aux-units", "many"], "argument --aux-units: expected an integer"),
    (TRAIN + ["--precision", "fp16"], "argument --precision: invalid choice: 'fp16'"),
    (TRAIN + ["--rule", "dtp", "--schedule", "sometimes"], "argument --schedule: invalid choice"),
    # out-of-range numbers
    (TRAIN + ["--lr", "-0.1"], "forward optimiser: learning rate must be > 0, got -0.1"),
    (TRAIN + ["--lr=0"], "forward optimiser: learning rate must be > 0, got 0.0"),
    (TRAIN + ["--rule", "dtp", "--inverse-lr", "-1"], "inverse optimiser: learning rate must be > 0"),
    (TRAIN + ["--inverse-lr", "0.1"], "--inverse-lr: rule 'bp' has no 'inverse' parameter group"),
    (TRAIN + ["--beta1", "1"], "forward optimiser: beta1 must be in [0, 1), got 1.0"),
    (TRAIN + ["--rule", "sdtp", "--inverse-beta2", "1.5"], "inverse optimiser: beta2 must be in [0, 1), got 1.5"),
    (TRAIN + ["--eps", "0"], "forward optimiser: eps must be > 0, got 0.0"),
    (TRAIN + ["--rule", "dtp", "--noise", "-0.1"], "rule 'dtp': noise must be a finite number >= 0, got -0.1"),
    (TRAIN + ["--rule", "dtp", "--alpha", "0"], "rule 'dtp': alpha must be a finite number > 0, got 0.0"),
    (TRAIN + ["--rule", "ao-sdtp", "--aux-units", "-1"], "rule 'ao-sdtp': aux_units must be an integer in [0, 65536]"),
    (TRAIN + ["--rule", "ao-sdtp", "--aux-units", "10000000"], "aux_units must be an integer in [0, 65536]"),
    (TRAIN + ["--rule", "sdtp", "--diagnostics-every", "-1"], "diagnostics_every must be an integer >= 0"),
    (TRAIN + ["--batch-size", "0"], "batch_size must be a positive integer, got 0"),
    (TRAIN + ["--eval-batch-size", "-5"], "eval_batch_size must be a positive integer, got -5"),
    (TRAIN + ["--epochs", "0"], "epochs must be a positive integer, got 0"),
    (TRAIN + ["--val-size", "-1"], "data.val_size=-1; expected an integer >= 0"),
    (TRAIN + ["--num-workers", "-2"], "data.num_workers=-2; expected an integer >= 0"),
    (TRAIN + ["--limit-batches", "0"], "limit_batches must be a positive integer or unset, got 0"),
    (TRAIN + ["--limit-eval-batches", "-3"], "limit_eval_batches must be a positive integer or unset"),
    (TRAIN + ["--train-eval-size", "0"], "train_eval_size must be a positive integer or unset"),
    (TRAIN + ["--seed", "-1"], "argument --seed: expected an integer in 0..4294967295, got '-1'"),
    (TRAIN + ["--seed", str(2**40)], "argument --seed: expected an integer in 0..4294967295"),
    (TRAIN + ["--checkpoint-every", "0"], "checkpoint_every must be a number of steps"),
    (TRAIN + ["--checkpoint-every=-5min"], "checkpoint_every must be a number of steps"),
    (TRAIN + ["--device", "tpu"], "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    # argparse's own errors, one line each
    (TRAIN + ["--lrr", "0.1"], "unrecognized arguments: --lrr 0.1 (--lrr: did you mean --lr?)"),
    (TRAIN + ["--lr"], "argument --lr: expected one argument"),
    (TRAIN + ["stray"], "unrecognized arguments: stray"),
    (TRAIN + ["--data-dir", ""], "argument --data-dir: expected a path, got ''"),
    (["train", "--model", "mnist-fc"], "--data and --model are required (or --preset)"),
    (TRAIN + ["--resume"], "--resume needs --out"),
]


@pytest.mark.parametrize("argv, message", TRAIN_CASES, ids=[" ".join(c[0][5:]) or "train" for c in TRAIN_CASES])
def test_train_refuses_bad_flags(capsys, argv, message):
    prog = "bioprop train" if "argument " in message or "unrecognized" in message else "bioprop"
    refused(capsys, argv, message, prog)


def test_argparse_errors_are_one_line_even_for_garbage(capsys):
    line = refused(capsys, TRAIN + ["--what\never", "x\x00y"], "unrecognized arguments:", "bioprop train")
    assert "\\n" in line and "\\x00" in line  # escaped, not printed raw
    refused(capsys, ["trian"], "argument COMMAND: invalid choice: 'trian'", "bioprop")
    refused(capsys, ["data"], "the following arguments are required", "bioprop data")
    refused(capsys, ["data", "fetch"], "the following arguments are required: NAME", "bioprop data fetch")


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    existing = tmp_path / "results.txt"
    existing.write_text("not a run folder")
    refused(capsys, TRAIN + ["--out", str(existing)], f"--out '{existing}' is a file; expected a folder")
    refused(capsys, TRAIN + ["--out", str(existing / "run")], f"'{existing}' is a file; expected a folder")
    refused(capsys, ["reproduce", "mnist-fc-bp", "--out", str(existing)], "--out")
    refused(capsys, ["reproduce", "mnist-fc-bp", "--out", str(tmp_path / "r"), "--report-out", str(existing)],
            "--report-out")
    refused(capsys, ["search", "mnist-fc-bp", "--out", str(existing)], f"--out '{existing}' is a file")
    (tmp_path / "runs").mkdir()
    refused(capsys, ["report", str(tmp_path / "runs"), "--out", str(existing)], f"--out '{existing}' is a file")
    assert existing.read_text() == "not a run folder"


@pytest.mark.parametrize("command", [
    ["train", "--data", "mnist", "--model", "mnist-fc"],
    ["data", "fetch", "mnist"],
    ["data", "verify", "mnist"],
    ["reproduce", "mnist-fc-bp", "--out", "OUT"],
    ["search", "mnist-fc-bp", "--out", "OUT"],
])
def test_data_dir_that_is_missing_or_a_file_is_refused(tmp_path, capsys, command):
    command = [str(tmp_path / "out") if arg == "OUT" else arg for arg in command]
    missing = tmp_path / "nope"
    refused(capsys, command + ["--data-dir", str(missing)],
            f"--data-dir '{missing}' is not a folder (it does not exist)")
    a_file = tmp_path / "file"
    a_file.write_text("")
    refused(capsys, command + ["--data-dir", str(a_file)], f"--data-dir '{a_file}' is not a folder (it is a file)")
    assert not (tmp_path / "out").exists()


def test_unreadable_data_dir_is_refused(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if str(path) == str(folder)
                        else real_access(path, mode, **kw))
    refused(capsys, TRAIN + ["--data-dir", str(folder)], f"--data-dir '{folder}' cannot be read (permission denied)")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads every folder")
def test_unreadable_data_dir_is_refused_for_real(tmp_path, capsys):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0)
    try:
        refused(capsys, TRAIN + ["--data-dir", str(folder)], "cannot be read (permission denied)")
    finally:
        folder.chmod(0o700)


def test_val_size_larger_than_the_training_set_names_dataset_and_sizes(shared_data, tmp_path, capsys, monkeypatch):
    from bioprop.training import train

    monkeypatch.setattr(bioprop.cli.train, "train", train)  # the real one: the check is where data is loaded
    line = refused(capsys, TRAIN + ["--data-dir", str(shared_data), "--val-size", "60000", "--no-progress",
                                    "--device", "cpu", "--out", str(tmp_path / "run")],
                   "data.val_size=60000 (--val-size) but the training set of dataset 'mnist' has only 60000 examples")
    assert "expected 0 <= val_size < 60000" in line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


REPRODUCE_SEARCH_CASES = [
    (["reproduce", "mnst", "--out", "OUT"], "bioprop", "unknown preset or group 'mnst'; did you mean 'mnist'"),
    (["reproduce", "mnist-fc-bp", "--out", "OUT", "--jobs", "0"], "bioprop reproduce",
     "argument --jobs: expected a positive integer, got '0'"),
    (["reproduce", "mnist-fc-bp", "--out", "OUT", "--threads", "-1"], "bioprop reproduce",
     "argument --threads: expected a positive integer"),
    (["reproduce", "mnist-fc-bp", "--out", "OUT", "--seeds", "0"], "bioprop",
     "--seeds 0: expected a positive number of seeds"),
    (["reproduce", "mnist-fc-bp", "--out", "OUT", "--seeds", "two"], "bioprop reproduce",
     "argument --seeds: expected an integer, got 'two'"),
    (["reproduce", "mnist-fc-bp", "--out", "OUT", "--epochs", "0"], "bioprop", "--epochs '0': the number must be >= 1"),
    (["reproduce", "mnist-fc-bp", "--out", "OUT", "--epochs", "lc=x"], "bioprop", "--epochs 'lc=x': expected N"),
    (["reproduce", "mnist-fc-bp", "--out", "OUT", "--limit-batches", "-1"], "bioprop", "--limit-batches '-1'"),
    (["reproduce", "mnist-fc-bp", "--out", "OUT", "--limit-eval-batches", "0"], "bioprop reproduce",
     "argument --limit-eval-batches: expected a positive integer"),
    (["reproduce", "cifar10", "--out", "OUT", "--aux-sweep", "1,x"], "bioprop", "--aux-sweep '1,x'"),
    (["reproduce", "cifar10", "--out", "OUT", "--aux-sweep", "100000"], "bioprop",
     "aux_units must be an integer in [0, 65536]"),
    (["reproduce", "mnist-fc-bp", "--out", "OUT", "--device", "gpu"], "bioprop", "device must be"),
    (["reproduce", "mnist-fc-bp"], "bioprop reproduce", "the following arguments are required: --out"),
    (["search", "mnist-fc-bpp"], "bioprop", "unknown preset 'mnist-fc-bpp'; did you mean 'mnist-fc-bp'"),
    (["search", "mnist-fc-bp", "--trials", "0"], "bioprop", "--trials 0: expected a positive number of trials"),
    (["search", "mnist-fc-bp", "--trials", "1e400"], "bioprop search", "argument --trials: expected an integer"),
    (["search", "mnist-fc-bp", "--epochs", "nan"], "bioprop search", "argument --epochs: expected an integer"),
    (["search", "mnist-fc-bp", "--epochs", "0"], "bioprop", "--epochs 0: expected a positive number"),
    (["search", "mnist-fc-bp", "--cull-after", "-1"], "bioprop", "--cull-after -1: expected >= 0"),
    (["search", "mnist-fc-bp", "--seed", "-3"], "bioprop search", "argument --seed: expected an integer in 0.."),
    (["search", "mnist-fc-bp", "--heartbeat", "0"], "bioprop search", "argument --heartbeat: expected a positive"),
    (["search", "mnist-fc-bp", "--limit-batches", "0"], "bioprop search", "argument --limit-batches"),
    (["search", "mnist-fc-bp", "--device", "tpu"], "bioprop", "--device must be"),
]


@pytest.mark.parametrize("argv, prog, message", REPRODUCE_SEARCH_CASES,
                         ids=[" ".join(c[0]) for c in REPRODUCE_SEARCH_CASES])
def test_reproduce_and_search_refuse_bad_input(tmp_path, capsys, argv, prog, message):
    argv = [str(tmp_path / "out") if arg == "OUT" else arg for arg in argv]
    refused(capsys, argv, message, prog)


def test_other_commands_refuse_bad_input(tmp_path, capsys):
    refused(capsys, ["presets", "--show", "mnist-fc-dt"], "unknown preset 'mnist-fc-dt'; did you mean")
    refused(capsys, ["presets", "mnsit"], "no preset matches 'mnsit'; did you mean 'mnist'")
    refused(capsys, ["data", "fetch", "cifar"], "unknown dataset 'cifar'; did you mean 'cifar10'")
    refused(capsys, ["data", "verify", "imagenet-32"], "unknown dataset 'imagenet-32'; did you mean 'imagenet32'")
    refused(capsys, ["report", str(tmp_path / "missing")], f"report: SOURCE '{tmp_path / 'missing'}' does not exist")
    refused(capsys, ["report", str(tmp_path), "--epochs", "0"], "argument --epochs: expected a positive integer, got '0'",
            "bioprop report")
    refused(capsys, ["plan", "--model", "mnist-fc", "--rule", "dtp", "--batch-size", "8", "--noise", "nan"],
            "argument --noise: expected a finite number", "bioprop plan")
    refused(capsys, ["plan", "--model", "mnist-fc", "--rule", "dtp", "--batch-size", "8", "--memory",
                     "9" * 400 + "GB"], "memory must be a positive size")
    refused(capsys, ["plan", "--model", "mnist-fc", "--rule", "ao-sdtp", "--batch-size", "8", "--aux-units", "-1"],
            "rule 'ao-sdtp': aux_units must be")


# -- the Python API is as safe as the CLI ------------------------------------------------------

def good_config(**overrides):
    values = dict(data=DataConfig("mnist"), model="mnist-fc")
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("overrides, message", [
    (dict(epochs=True), "epochs must be a positive integer, got True"),
    (dict(batch_size=2.0), "batch_size must be a positive integer, got 2.0"),
    (dict(seed=-1), "seed must be an integer in [0, 4294967295], got -1"),
    (dict(seed="0"), "seed must be an integer"),
    (dict(model=["mnist-fc"]), "model must be a name"),
    (dict(model="mnist_fc"), "unknown model 'mnist_fc'; did you mean 'mnist-fc'"),
    (dict(rule="FA"), "unknown learning rule 'FA'; did you mean 'fa'"),
    (dict(rule="dtp", rule_options={"nosie": 0.1}), "rule 'dtp' has no option 'nosie'; did you mean 'noise'?"),
    (dict(rule="dtp", rule_options={"noise": math.nan}), "rule 'dtp': noise must be a finite number >= 0, got nan"),
    (dict(rule="dtp", rule_options={"noise": "0.1"}), "noise must be a finite number"),
    (dict(rule="dtp", rule_options={"alpha": 10**400}), "alpha must be a finite number > 0"),
    (dict(rule="ao-sdtp", rule_options={"aux_units": 5.0}), "aux_units must be an integer"),
    (dict(rule="sdtp", rule_options={"inverse_loss": "mse"}),
     "inverse_loss must be one of noise-preserving, denoising"),
    (dict(rule_options=[("noise", 1)]), "rule_options must be a mapping"),
    (dict(optimizers={"forward": AdamConfig(lr=math.inf)}), "forward optimiser: lr must be a finite number, got inf"),
    (dict(optimizers={"forward": AdamConfig(beta1=True)}), "forward optimiser: beta1 must be a finite number"),
    (dict(optimizers={"forward": {"lr": 0.1}}),
     "optimizers: 'forward' must name a parameter group and hold optimiser settings"),
    (dict(data=DataConfig("mnist", verify=1)), "data.verify=1; expected true or false"),
    (dict(data=DataConfig("mnist", data_dir=3)), "data.data_dir=3; expected a folder path or null"),
    (dict(data=DataConfig("mnist", crop_padding=10**6)), "data.crop_padding=1000000; expected an integer in 0..64"),
    (dict(data=DataConfig("svhn")), "unknown dataset 'svhn'"),
    (dict(data="mnist"), "data must be a data config"),
    (dict(device="cuda:-1"), "device must be"),
    (dict(precision=None), "precision must be one of fp32, tf32, bf16, got None"),
    (dict(checkpoint_every=True), "checkpoint_every must be a number of steps"),
])
def test_train_config_validate_names_the_field(overrides, message):
    with pytest.raises(BiopropError) as error:
        good_config(**overrides).validate()
    assert message in str(error.value)


def test_rules_check_their_options_when_built_directly():
    with pytest.raises(BiopropError, match="rule 'dtp': noise must be a finite number >= 0, got inf"):
        rule_options("dtp", noise=math.inf)
    with pytest.raises(BiopropError, match="aux_units must be an integer in"):
        create_rule("ao-sdtp", create_model("mnist-fc"), aux_units=-4)
    from bioprop.rules.target_prop.variants import DifferenceTargetProp

    options = DifferenceTargetProp.Options(alpha=math.nan)
    with pytest.raises(BiopropError, match="alpha must be a finite number > 0, got nan"):
        DifferenceTargetProp(create_model("mnist-fc"), options)
    good_config(rule="dtp", rule_options={"noise": 0, "alpha": 1, "schedule": "alternating"}).validate()


def test_a_boolean_rule_option_parses_true_and_false(monkeypatch):
    """A rule option whose default is a bool gets a true/false flag: ``type=bool`` would read the
    string "false" as True."""
    import argparse
    import dataclasses

    from bioprop.cli import train as train_cli

    @dataclasses.dataclass
    class Options:
        symmetric: bool = False

    monkeypatch.setattr(train_cli, "rule_option_fields", lambda: {"symmetric": dataclasses.fields(Options)[0]})
    monkeypatch.setattr(train_cli, "default_help", lambda defaults: "")
    parser = argparse.ArgumentParser(exit_on_error=False)
    train_cli.add_rule_options(parser, "options")
    assert parser.parse_args(["--symmetric", "false"]).rule_symmetric is False
    assert parser.parse_args(["--symmetric", "Yes"]).rule_symmetric is True
    with pytest.raises(argparse.ArgumentError, match="expected true or false, got 'maybe'"):
        parser.parse_args(["--symmetric", "maybe"])
