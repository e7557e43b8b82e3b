"""Hyper-parameters declared once (reconad.params): values checked and converted by type and range, one clear
error naming the parameter, the listing for ``reconad params``, and PatchCore's config unchanged."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import numpy as np
import pytest

from reconad.errors import ReconadError
from reconad.models.bank.patchcore import PatchCore
from reconad.models.base import MODELS, check_params, init_config, model_names, parameter_names
from reconad.params import check_value, check_values, declarations, describe, is_declared, param, validate


@dataclass(eq=False)
class Toy:
    name: ClassVar[str] = "toy"

    ratio: float = param(0.5, low=0, high=1, low_inclusive=False, help="a fraction")
    steps: int = param(3, low=1, help="how many")
    probe: int | str = param("auto", low=0, high=64, choices=("auto",), help="cells or auto")
    mode: str = param("fast", choices=("fast", "exact"), help="how")
    flag: bool = param(False, help="on or off")
    widths: tuple[int, ...] | None = param(None, low=1, help="one per level")
    plain: int = 7  # not a hyper-parameter the user sets

    def __post_init__(self) -> None:
        validate(self)


def check(**values: object) -> dict[str, object]:
    return check_values(Toy, values, "model toy")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"ratio": "0.25"}, {"ratio": 0.25}),
        ({"ratio": 1}, {"ratio": 1.0}),
        ({"steps": "12"}, {"steps": 12}),
        ({"steps": 4.0}, {"steps": 4}),
        ({"probe": "8"}, {"probe": 8}),
        ({"probe": "auto"}, {"probe": "auto"}),
        ({"mode": "exact"}, {"mode": "exact"}),
        ({"flag": "true"}, {"flag": True}),
        ({"flag": "False"}, {"flag": False}),
        ({"widths": "[16, 32]"}, {"widths": (16, 32)}),
        ({"widths": "16,32"}, {"widths": (16, 32)}),
        ({"widths": [16]}, {"widths": (16,)}),
        ({"widths": "null"}, {"widths": None}),
        ({"steps": np.int64(5), "ratio": np.float32(0.5)}, {"steps": 5, "ratio": 0.5}),
    ],
)
def test_values_are_converted_to_the_declared_type(values, expected):
    out = check(**values)
    assert out == expected
    assert all(type(out[k]) is type(v) for k, v in expected.items())


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"ratio": "abc"}, "ratio must be a number in (0, 1], got 'abc'"),
        ({"ratio": 0}, "ratio must be a number in (0, 1], got 0"),
        ({"ratio": "nan"}, "ratio must be a number in (0, 1]"),
        ({"ratio": float("inf")}, "ratio must be a number in (0, 1]"),
        ({"steps": "-1"}, "steps must be an integer >= 1, got '-1'"),
        ({"steps": 2.5}, "steps must be an integer >= 1"),
        ({"steps": True}, "steps must be an integer >= 1"),
        ({"steps": np.bool_(True)}, "steps must be an integer >= 1"),
        ({"steps": Fraction(3, 2)}, "steps must be an integer >= 1"),
        ({"probe": "x"}, "probe must be 'auto' or an integer from 0 to 64, got 'x'"),
        ({"probe": 65}, "probe must be 'auto' or an integer from 0 to 64"),
        ({"mode": "slow"}, "mode must be one of 'fast', 'exact', got 'slow'"),
        ({"mode": 1}, "mode must be one of 'fast', 'exact'"),
        ({"flag": "yes please"}, "flag must be true or false"),
        ({"flag": 1}, "flag must be true or false"),
        ({"widths": "[0]"}, "widths must be a list of integers >= 1 or null"),
        ({"widths": "[1,"}, "widths must be a list of integers >= 1 or null"),
        ({"widths": []}, "widths must be a list of integers >= 1 or null"),
        ({"nope": 1}, "toy has no parameter nope; its parameters: flag, mode, probe, ratio, steps, widths"),
        ({"plain": 1}, "model toy has no parameter plain"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_parameter_and_its_range(values, words):
    with pytest.raises(ReconadError) as info:
        check(**values)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("model toy")


def test_the_python_api_is_checked_and_converted_too():
    toy = Toy(ratio=1, widths=[8, 8])
    assert toy.ratio == 1.0 and type(toy.ratio) is float and toy.widths == (8, 8)
    with pytest.raises(ReconadError, match="model toy: steps must be an integer >= 1, got 0"):
        Toy(steps=0)


def test_declarations_serve_the_listing():
    assert list(declarations(Toy)) == ["ratio", "steps", "probe", "mode", "flag", "widths"]
    rows = {row[0]: row[1:] for row in describe(Toy)}
    assert rows["ratio"] == ("a number in (0, 1]", "0.5", "a fraction")
    assert rows["probe"] == ("'auto' or an integer from 0 to 64", '"auto"', "cells or auto")
    assert rows["widths"] == ("a list of integers >= 1 or null", "null", "one per level")
    assert is_declared(Toy) and not is_declared(int)


def test_check_value_words_an_option():
    assert check_value("--seed", "5", int, low=0) == 5
    with pytest.raises(ReconadError, match=r"^--holdout must be a number in \(0, 1\), got 1.0$"):
        check_value("--holdout", 1.0, float, low=0, high=1, low_inclusive=False, high_inclusive=False)


def test_an_undeclarable_type_is_a_programming_error():
    @dataclass
    class Odd:
        when: complex = param(1j, help="no checks exist for this type")

    with pytest.raises(TypeError):
        check_values(Odd, {"when": 2j}, "odd")


# --- the declared models ------------------------------------------------------------------------------------

#: Each model's default config as runs and benches record it: these keys, in this order, with these values and
#: types (a change here makes new runs and benches differ from the ones already on disk).
DEFAULT_CONFIGS = {
    "patchcore": {
        "coreset_ratio": 0.1, "k": 1, "projection_dim": 128, "nprobe": "auto", "min_recall": 0.99, "seed": 0,
        "coreset_chunk": 65536,
    },
    "sgfr": {
        "sampling_ratio": 0.1, "n_candidates": 16, "lam": 0.02, "alpha": 0.5, "iters": 15, "rounds": 4,
        "pool_size": 131072, "metric": "abscos", "nprobe": 8, "seed": 0,
    },
    "rlr-selfref": {
        "level_channels": [40, 112], "level_grids": [32, 16], "widths": None, "layers": 2, "heads": 4,
        "ff_mult": 2, "windows": None, "jitter_scale": 4.0, "jitter_prob": 1.0, "epochs": 27, "batch_size": 4,
        "lr": 0.001, "seed": 0, "device": "auto", "lr_schedule": "cosine",
    },
}  # fmt: skip
DEFAULT_CONFIGS["rlr"] = {**DEFAULT_CONFIGS["rlr-selfref"], "use_lca": True, "use_mlka": True}


@pytest.mark.parametrize("name", sorted(DEFAULT_CONFIGS))
def test_default_config_keys_order_and_types(name):
    """The declared defaults give exactly the recorded config, and building from it gives it back."""
    cls, expected = MODELS[name], DEFAULT_CONFIGS[name]
    config = cls().get_config()
    assert config == expected and list(config) == list(expected)
    assert dataclasses.is_dataclass(cls) and cls(**expected).get_config() == expected
    assert all(type(config[k]) is type(v) for k, v in expected.items())


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"coreset_ratio": 0}, "coreset_ratio must be a number in (0, 1]"),
        ({"coreset_ratio": "abc"}, "coreset_ratio must be a number in (0, 1]"),
        ({"k": 0}, "k must be an integer >= 1"),
        ({"nprobe": -1}, "nprobe must be 'auto' or an integer from 0 to 65536"),
        ({"min_recall": 1.5}, "min_recall must be a number in (0, 1]"),
        ({"seed": 2**31}, "seed must be an integer from 0 to 2147483647"),
        ({"projection_dim": 0}, "projection_dim must be an integer >= 1"),
    ],
)
def test_patchcore_refuses_bad_values_from_python(values, words):
    with pytest.raises(ReconadError) as info:
        PatchCore(**values)
    assert str(info.value).startswith(f"model patchcore: {words}, got ")


@pytest.mark.parametrize(
    ("name", "values", "words"),
    [
        ("rlr", {"epochs": -1}, "model rlr: epochs must be an integer from 1 to 10000, got -1"),
        ("rlr", {"use_lca": False, "use_mlka": "false"}, "rlr needs at least one of use_lca and use_mlka"),
        ("rlr-selfref", {"device": "gpu"}, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
        (
            "rlr-selfref",
            {"widths": [64, 64], "heads": 3},
            "token widths must be multiples of 4 and of heads=3",
        ),
        ("rlr-selfref", {"heads": 3}, "token widths must be multiples of 4 and of heads=3, got 64"),
        ("rlr-selfref", {"windows": [4, 3]}, "windows must be odd"),
        ("rlr-selfref", {"windows": [3]}, "windows must give one value per level (2)"),
        ("rlr-selfref", {"level_grids": [32, 12]}, "every level grid must divide the finest one"),
        ("rlr-selfref", {"lr_schedule": "linear"}, "lr_schedule must be one of 'constant', 'cosine', 'step'"),
    ],
)
def test_unified_models_refuse_bad_values_and_combinations(name, values, words):
    with pytest.raises(ReconadError) as info:
        MODELS[name](**values)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_window_larger_than_its_level_grid_is_a_clear_error():
    import torch

    model = MODELS["rlr-selfref"](
        level_channels=(4, 4), level_grids=(4, 2), widths=(8, 8), layers=1, epochs=1
    )
    with pytest.raises(ReconadError, match="a 3×3 attention window does not fit a 2×2 level grid"):
        model.fit(torch.randn(2, 8, 4, 4))


def test_sgfr_refuses_an_unknown_metric():
    with pytest.raises(ReconadError, match="model sgfr: metric must be one of 'abscos', 'cosine', 'l2'"):
        MODELS["sgfr"](metric="manhattan")


def test_patchcore_k_larger_than_its_bank_is_a_clear_error():
    import torch

    with pytest.raises(ReconadError, match="k=5 nearest atoms asked of a memory bank of 2"):
        PatchCore(coreset_ratio=0.5, k=5).fit(torch.randn(1, 4, 2, 2))


# --- every model -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", model_names())
def test_every_init_parameter_is_declared(name):
    cls = MODELS[name]
    assert set(parameter_names(cls)) == set(declarations(cls))
    defaults = {k: d.default for k, d in declarations(cls).items()}
    assert init_config(cls()) == check_values(cls, defaults, name)  # the defaults are valid values
    assert check_params(name, {}) == {}
