"""Parameters and options are checked when a command starts: a bad value is one line and exit 2, before
any data is read or any feature extracted, and nothing is written. Random values never end in an internal
error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import SIZE, assert_clean_error, assert_nothing_written, invoke
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import reconad.bench
import reconad.cli
import reconad.pipeline
from reconad import pipeline
from reconad.errors import ReconadError
from reconad.models.base import Model, check_params, init_config, model_class, model_names
from reconad.params import Declared, declarations, is_declared
from reconad.runs import load_run

DECLARED = [name for name in model_names() if is_declared(model_class(name))]
#: Settings that keep a real fit of a unified model to a second; the fuzzing leaves them alone.
UNIFIED_CHEAP = {
    "epochs": "1",
    "layers": "1",
    "widths": "[8,8]",
    "heads": "2",
    "ff_mult": "1",
    "batch_size": "8",
}
#: UniAD's: also a neighbour mask that fits the 4×4 grid of 64 px images.
UNIAD_CHEAP = {
    "epochs": "1",
    "width": "8",
    "heads": "2",
    "encoder_layers": "1",
    "decoder_layers": "1",
    "ff_dim": "8",
    "window": "3",
    "batch_size": "8",
}
CHEAP = {"rlr": UNIFIED_CHEAP, "rlr-selfref": UNIFIED_CHEAP, "uniad": UNIAD_CHEAP}


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading data or building the backbone fails the test: the check must come first."""

    def work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the parameters were checked")

    for module in (reconad.pipeline, reconad.bench):
        monkeypatch.setattr(module, "load_sources", work)
        monkeypatch.setattr(module, "FeatureExtractor", work)


def fit(parts: Path, out: Path, model: str, *extra: object):
    return invoke("fit", model, "--data", f"mvtec:{parts}", "--out", out, "--image-size", SIZE, *extra)


# --- parameters and options: a mistake stops before any work, in one line; `reconad params` lists them ------


def test_a_parameter_of_the_wrong_type_fails_before_the_features(tmp_path, parts, no_work):
    out = tmp_path / "run"
    result = fit(parts, out, "patchcore", "--param", "coreset_ratio=abc")
    assert_clean_error(result, "model patchcore: coreset_ratio must be a number in (0, 1], got 'abc'")
    assert_nothing_written(out)


def test_a_huge_image_size_fails_before_any_work(tmp_path, parts, no_work):
    out = tmp_path / "run"
    result = fit(parts, out, "patchcore", "--image-size", 99999)
    assert_clean_error(result, "--image-size must be an integer from 32 to 2048, got 99999")
    assert_nothing_written(out)


def test_a_negative_epoch_count_fails_before_any_work(tmp_path, parts, no_work):
    out = tmp_path / "run"
    result = fit(parts, out, "rlr", "--param", "epochs=-1")
    assert_clean_error(result, "model rlr: epochs must be an integer from 1 to 10000, got '-1'")
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("option", "words"),
    [
        (["--param", "patchcore.coreset_ratio=abc"], ["model patchcore: coreset_ratio must be a number"]),
        (["--param", "patchcore.nope=1"], ["model patchcore has no parameter nope"]),
        (["--param", "nosuch.k=1"], ["unknown model 'nosuch'"]),
        (["--image-size", "99999"], ["--image-size must be an integer from 32 to 2048"]),
        (["--seed", "-3"], ["--seed must be an integer from 0 to 2147483647, got -3"]),
        (["--holdout", "1"], ["--holdout must be a number in (0, 1), got 1.0"]),
        (["--layers", "3,3"], ["--layers must be backbone levels in increasing order"]),
    ],
)
def test_bench_checks_parameters_and_options_before_any_work(tmp_path, parts, no_work, option, words):
    out = tmp_path / "bench"
    result = invoke("bench", "--model", "patchcore", "--data", f"mvtec:{parts}", "--out", out, *option)
    assert_clean_error(result, *words)
    assert_nothing_written(out)


def test_unified_models_need_an_image_size_that_their_levels_divide(tmp_path, parts, monkeypatch):
    """RLR and RLR-selfref build one network per level from ``size // stride``: 100 px would give a 12×12
    grid where the backbone gives 13×13. Refused before the data is read; per-patch models take any size."""

    def work(*args: object, **kwargs: object) -> None:
        raise AssertionError("data read before the image size was checked")

    monkeypatch.setattr(reconad.pipeline, "load_sources", work)
    out = tmp_path / "run"
    result = fit(parts, out, "rlr-selfref", "--image-size", 100)
    assert_clean_error(result, "image size 100 is not a multiple of 16", "e.g. 96 or 112")
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        (["heads=3"], "token widths must be multiples of 4 and of heads=3"),
        (["windows=[3]"], "windows must give one value per level (2)"),
        (["level_grids=[8,3]"], "every level grid must divide the finest one"),
    ],
)
def test_parameters_that_clash_fail_before_the_data(tmp_path, parts, monkeypatch, params, words):
    def work(*args: object, **kwargs: object) -> None:
        raise AssertionError("data read before the parameters were checked together")

    monkeypatch.setattr(reconad.pipeline, "load_sources", work)
    out = tmp_path / "run"
    result = fit(parts, out, "rlr-selfref", *[f"--param={p}" for p in params])
    assert_clean_error(result, words)
    assert_nothing_written(out)


def test_the_python_pipeline_checks_too(parts, extractor):
    from reconad import pipeline
    from reconad.data import load_sources

    data = load_sources([f"mvtec:{parts}"])
    with pytest.raises(ReconadError, match="coreset_ratio must be a number"):
        pipeline.fit("patchcore", data, extractor, params={"coreset_ratio": "abc"})
    with pytest.raises(ReconadError, match="seed must be an integer from 0"):
        pipeline.fit("patchcore", data, extractor, seed=-1)


def test_params_lists_each_parameter_with_its_values_default_and_use():
    result = invoke("params", "patchcore")
    assert result.exit_code == 0, result.output
    text = result.stdout
    for name, decl in declarations(model_class("patchcore")).items():
        assert name in text and decl.spec.help.split()[0] in text
    assert "(0, 1]" in text and "'auto' or an integer" in text
    assert_clean_error(invoke("params", "nosuch"), "unknown model 'nosuch'")
    from typer.testing import CliRunner

    help_text = CliRunner().invoke(reconad.cli.app, ["fit", "--help"], env={"COLUMNS": "200"}).stdout
    assert "`reconad params MODEL` lists them" in help_text


# --- random values ------------------------------------------------------------------------------------------

JUNK = st.one_of(
    st.text(max_size=10),
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["auto", "true", "False", "null", "", " ", "-0", "1e-9", "1e400", "[]", "[1,", "0x10"]),
    st.lists(st.integers(-3, 300), max_size=3).map(json.dumps),
)


def valid(decl: Declared) -> st.SearchStrategy[str]:
    """Text of values the declaration accepts (mostly), so that fits get past the check."""
    spec, kind = decl.spec, decl.kind
    options: list[st.SearchStrategy] = [st.just(json.dumps(decl.default))]
    if spec.choices:
        options.append(st.sampled_from(spec.choices))
    low = -1e6 if spec.low is None else spec.low
    high = 1e6 if spec.high is None else spec.high
    if "float" in str(kind):
        floats = st.floats(low, high, exclude_min=not spec.low_inclusive, exclude_max=not spec.high_inclusive)
        options.append(floats.map(repr))
    if "int" in str(kind):
        options.append(st.integers(math.ceil(low), math.floor(high)).map(str))
    if "bool" in str(kind):
        options.append(st.sampled_from(["true", "false"]))
    return st.one_of(options)


@st.composite
def model_values(draw: st.DrawFn, junk: bool) -> tuple[str, dict[str, str]]:
    name = draw(st.sampled_from(DECLARED))
    decl = {k: d for k, d in declarations(model_class(name)).items() if k not in CHEAP.get(name, {})}
    names = [*decl, "no_such_param"] if junk else list(decl)
    keys = draw(st.lists(st.sampled_from(names), max_size=3, unique=True))
    values = {k: draw(JUNK if junk or k not in decl else st.one_of(valid(decl[k]), JUNK)) for k in keys}
    return name, values


def check_like_fit(name: str, raw: dict[str, str], extractor: object) -> Model | None:
    """What ``reconad fit`` checks before any work: each value, then the model they make with the features'
    context. The model, or None after asserting a one-line :class:`ReconadError`."""
    try:
        return pipeline.new_model(name, raw, extractor, seed=0)
    except ReconadError as err:
        assert str(err) and "\n" not in str(err)
        return None


@given(model_values(junk=True))
@settings(max_examples=150, deadline=None)
def test_random_values_are_refused_in_one_line_or_build_the_model(extractor, case):
    name, raw = case
    model = check_like_fit(name, raw, extractor)
    if model is not None:  # the values given are what the model holds
        checked = check_params(name, raw)
        assert {k: init_config(model)[k] for k in checked} == checked


@given(model_values(junk=False))
@settings(max_examples=40, deadline=None)
def test_mostly_valid_values_are_accepted_or_refused_in_one_line(extractor, case):
    check_like_fit(*case, extractor)


@given(case=model_values(junk=False))
@example(case=("patchcore", {"coreset_ratio": "0.5", "nprobe": "0", "k": "2"}))  # surely valid ones
@example(case=("sgfr", {"sampling_ratio": "0.3", "metric": "l2", "rounds": "2"}))
@example(case=("rlr-selfref", {"jitter_prob": "0.5", "lr_schedule": "constant"}))
@example(case=("uniad", {"dropout": "0.2", "lr_schedule": "cosine"}))
@example(case=("uniad", {"dropout": "1.5"}))  # surely refused, by the check before any work
@example(case=("uniad", {"window": "9"}))  # surely refused, by the fit: a 9×9 mask does not fit the 4×4 grid
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_real_fit_with_random_values_exits_2_or_writes_a_run(case, parts, extractor, tmp_path_factory):
    """Refused: one line (the check's own where the check before any work refuses), nothing written.
    Accepted: the run holds the values given (as the check converted them)."""
    name, raw = case
    out = tmp_path_factory.mktemp("fuzz") / "run"
    given_params = {**CHEAP.get(name, {}), **raw}
    args = [f"--param={k}={v}" for k, v in given_params.items()]
    result = fit(parts, out, name, "--holdout", 0.2, *args)
    if result.exit_code == 2:
        line = assert_clean_error(result)
        assert_nothing_written(out)
        try:
            pipeline.new_model(name, given_params, extractor, seed=0)
        except ReconadError as err:  # refused before any work: in the check's own words
            assert line == f"error: {err}"
    else:
        assert result.exit_code == 0, (raw, result.output)
        saved, checked = load_run(out).config["params"], check_params(name, given_params)
        assert {k: saved[k] for k in checked} == json.loads(json.dumps(checked)), (raw, saved)
