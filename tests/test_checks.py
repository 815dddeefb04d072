"""``bioprop.checks.suggest``: the names a mistyped or partly typed name most likely meant."""

import pytest

from bioprop.checks import suggest
from bioprop.data import DATASETS
from bioprop.models import MODELS
from bioprop.presets import PRESETS, group_names
from bioprop.rules import RULES


def suggested(name, known) -> list[str]:
    """The names of ``suggest``'s hint, in order (``[]`` for no hint)."""
    hint = suggest(name, known)
    if not hint:
        return []
    assert hint.startswith("; did you mean ") and hint.endswith("?"), hint
    return [part.strip("'") for part in hint[len("; did you mean "):-1].split(" or ")]


PRESET_NAMES = group_names() + PRESETS.names()


@pytest.mark.parametrize("name, first", [
    # the case: a name typed in part is completed, not matched to short look-alikes
    ("mnist-fc-dtp", {"mnist-fc-dtp-parallel", "mnist-fc-dtp-alternating"}),
    ("MNIST-FC-DTP", {"mnist-fc-dtp-parallel", "mnist-fc-dtp-alternating"}),
    ("mnist_fc_dtp", {"mnist-fc-dtp-parallel", "mnist-fc-dtp-alternating"}),
    ("mnist-fc-sdtp", {"mnist-fc-sdtp-parallel", "mnist-fc-sdtp-alternating"}),
    # a typo in a name typed in part (mnist-fc-drtp, a whole name one letter away, is as close)
    ("mnist-fc-dtpp", {"mnist-fc-dtp-parallel", "mnist-fc-drtp"}),
    # a whole name with a typo: its close match
    ("mnist-fc-dtp-paralel", {"mnist-fc-dtp-parallel"}),
    ("mnist-fc-bpp", {"mnist-fc-bp"}),
])
def test_preset_names_typed_in_part_are_completed_first(name, first):
    names = suggested(name, PRESET_NAMES)
    assert set(names[:len(first)]) == first, names


def test_names_containing_the_text_come_after_those_starting_with_it():
    names = suggested("fc-dtp", PRESET_NAMES)
    assert names and all("fc-dtp" in n for n in names), names
    assert suggested("sdt", RULES.names()) == ["sdtp", "ao-sdtp"]


@pytest.mark.parametrize("name, known, expected", [
    ("ao", RULES.names(), ["ao-sdtp"]),
    ("l-dr", RULES.names(), ["l-drl"]),
    ("FA", RULES.names(), ["fa"]),
    ("dtpp", RULES.names(), ["dtp", "sdtp", "drtp"]),
    ("imagenet", MODELS.names(), ["imagenet-lc", "imagenet-conv"]),
    ("mnist_fc", MODELS.names(), ["mnist-fc"]),
    ("cifar", DATASETS.names(), ["cifar10"]),
    ("fashion", DATASETS.names(), ["fashion-mnist"]),
    ("mnst", DATASETS.names(), ["mnist"]),
    ("imagenet-32", DATASETS.names(), ["imagenet32", "imagenet", "imagenet64"]),
])
def test_rules_models_and_datasets_get_the_same_help(name, known, expected):
    assert suggested(name, known) == expected


@pytest.mark.parametrize("name", ["", "-", "_", "--", "zzz", 3, None])
def test_nothing_alike_suggests_nothing(name):
    assert suggest(name, PRESET_NAMES) == ""


def test_at_most_three_names():
    assert len(suggested("mnist", MODELS.names() + ["mnist-x", "mnist-y"])) == 3
