"""FORMAT:PATH parsing and loading several sources at once."""

from __future__ import annotations

import pytest

from reconad.data import load_sources
from reconad.data.sources import FORMATS, parse_source
from reconad.data.synthetic import make_parts
from reconad.errors import ReconadError


def test_parse_source(tmp_path):
    assert parse_source(f"mvtec:{tmp_path}") == ("mvtec", tmp_path)
    assert parse_source("MTD:~/x")[1].name == "x" and "~" not in str(parse_source("mtd:~/x")[1])
    assert set(FORMATS) == {"mvtec", "mvtec3d", "mtd", "visa", "btad", "folder"}


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("just/a/path", ["not format:path", "mvtec3d"]),
        ("pascal:/data", ["unknown data format 'pascal'", "folder"]),
        ("mvtec:", ["no path"]),
        ("mvtec:  ", ["no path"]),
    ],
)
def test_parse_source_errors(spec, words):
    with pytest.raises(ReconadError) as info:
        parse_source(spec)
    for word in words:
        assert word in str(info.value).lower()


def _two_roots(tmp_path):
    a = make_parts(tmp_path / "a", n_train=3, n_test_good=1, n_test_bad=3, size=32, category="alpha")
    b = make_parts(tmp_path / "b", n_train=3, n_test_good=1, n_test_bad=3, size=32, category="beta")
    return a, b


def test_load_sources(tmp_path):
    a, b = _two_roots(tmp_path)
    specs = [f"mvtec:{a.parent}", f"mvtec:{b}", f"folder:{b / 'test'}"]
    cats = load_sources(specs)
    assert [(c.name, c.source) for c in cats] == [("alpha", specs[0]), ("beta", specs[1]), ("test", specs[2])]
    assert [c.name for c in load_sources(specs, categories=["beta"])] == ["beta"]
    with pytest.raises(ReconadError, match="no good/ folder"):
        load_sources([f"folder:{b}"])


def test_load_sources_errors(tmp_path):
    a, _ = _two_roots(tmp_path)
    with pytest.raises(ReconadError, match="no data source"):
        load_sources([])
    with pytest.raises(ReconadError, match="'alpha' appears in both"):
        load_sources([f"mvtec:{a}", f"mvtec:{a.parent}"])
    with pytest.raises(ReconadError, match="'gamma' not found; found: alpha"):
        load_sources([f"mvtec:{a}"], categories=["alpha", "gamma"])
