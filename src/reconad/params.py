"""Hyper-parameters declared once: type, default, valid range and help, as a dataclass field.

A model is a dataclass whose hyper-parameters are fields made by :func:`param`::

    coreset_ratio: float = param(0.1, low=0, high=1, low_inclusive=False, help="fraction of patches kept")

The type is the field's annotation: ``int``, ``float``, ``bool``, ``str``, a ``tuple[...]``, ``list[...]``
or ``Sequence[...]`` (kept as a list) of those, or a union such as ``int | str`` or ``X | None``.
``low``/``high`` bound numbers (and each item of a sequence), ``choices`` or ``pattern`` the strings. That
one declaration checks the values a user gives (strings from ``--param key=value`` or Python values,
:func:`check_values`) and the model's own attributes (:func:`validate`, called from ``__post_init__``),
words the error, and lists the parameters for ``reconad params`` (:func:`describe`), like scikit-learn's
``_parameter_constraints``. Rules that tie several parameters together stay in ``__post_init__``, after
:func:`validate`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from reconad.errors import ReconadError

_KEY = "reconad.param"
#: The largest seed: FAISS's k-means takes a signed 32-bit one (numpy and torch take larger ones).
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class Param:
    """What a hyper-parameter may be, beyond its type, and what it is for."""

    help: str
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    choices: tuple[str, ...] | None = None
    pattern: str | None = None  # a string must match this regular expression in full
    shown: str | None = None  # how the pattern is shown to users, e.g. "'cpu' or 'cuda:N'"


def param(
    default: Any,
    *,
    help: str,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    choices: Sequence[str] | None = None,
    pattern: str | None = None,
    shown: str | None = None,
) -> Any:
    """A dataclass field with ``default`` that carries its :class:`Param` declaration (``pattern``: a regular
    expression strings must match in full, ``shown``: its wording for users)."""
    choice_tuple = tuple(choices) if choices else None
    spec = Param(help, low, high, low_inclusive, high_inclusive, choice_tuple, pattern, shown)
    return dataclasses.field(default=default, metadata={_KEY: spec})


def fraction(default: float, *, help: str) -> Any:
    """A :func:`param` in ``(0, 1]``: a share of something that cannot be none of it."""
    return param(default, low=0, high=1, low_inclusive=False, help=help)


class _Invalid(ValueError):
    """A value that does not fit a type (the caller words the error)."""


@dataclass(frozen=True)
class Declared:
    """One declared hyper-parameter of a model class."""

    name: str
    kind: Any  # the resolved annotation
    default: Any
    spec: Param

    def coerce(self, value: Any) -> Any:
        """``value`` (a Python value or the text of ``--param``) as this parameter's type, range checked."""
        try:
            return _coerce(value, self.kind, self.spec)
        except _Invalid:
            raise ReconadError(f"{self.name} must be {self.expected()}, got {value!r}") from None

    def expected(self) -> str:
        """What a valid value is, in words: ``a number in (0, 1]``, ``'auto' or an integer >= 0``."""
        return _describe(self.kind, self.spec)


@functools.cache
def declarations(cls: type) -> dict[str, Declared]:
    """The declared hyper-parameters of ``cls`` by name, in declaration order (empty if it declares none)."""
    if not dataclasses.is_dataclass(cls):
        return {}
    hints = typing.get_type_hints(cls)
    return {
        f.name: Declared(f.name, hints[f.name], f.default, f.metadata[_KEY])
        for f in dataclasses.fields(cls)
        if _KEY in f.metadata
    }


def is_declared(cls: type) -> bool:
    """Whether ``cls`` declares its hyper-parameters with :func:`param`."""
    return bool(declarations(cls))


def check_values(cls: type, values: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """``values`` converted to the declared types of ``cls``; one :class:`ReconadError` naming the parameter,
    its type and valid range for the first bad one, or naming an unknown parameter (``owner``: who has them,
    e.g. ``model patchcore``)."""
    decl = declarations(cls)
    unknown = sorted(set(values) - set(decl))
    if unknown:
        raise ReconadError(
            f"{owner} has no parameter {', '.join(unknown)}; its parameters: {', '.join(sorted(decl))}"
        )
    out = {}
    for name, value in values.items():
        try:
            out[name] = decl[name].coerce(value)
        except ReconadError as err:
            raise ReconadError(f"{owner}: {err}") from None
    return out


def validate(obj: Any) -> None:
    """Check and convert the declared hyper-parameters of a dataclass instance in place (its
    ``__post_init__`` calls this, so the Python API is checked like the CLI)."""
    cls = type(obj)
    owner = f"model {getattr(cls, 'name', cls.__name__)}"
    values = {name: getattr(obj, name) for name in declarations(cls)}
    for name, value in check_values(cls, values, owner).items():
        setattr(obj, name, value)


def check_value(what: str, value: Any, kind: Any, **spec: Any) -> Any:
    """One value (a command-line option, say) checked and converted like a declared parameter of type
    ``kind`` with the range of ``spec`` (:func:`param`'s keywords); the error names ``what``."""
    return Declared(what, kind, None, Param("", **spec)).coerce(value)


def parse_params(values: list[str] | None) -> dict[str, str]:
    """``key=value`` pairs of ``--param``, values as typed (each is converted where it is declared)."""
    params: dict[str, str] = {}
    for item in values or []:
        if "=" not in item:
            raise ReconadError(f"--param {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        params[key.strip()] = raw
    return params


def describe(cls: type) -> list[tuple[str, str, str, str]]:
    """``(name, valid values, default, help)`` of each declared hyper-parameter of ``cls``."""
    return [(d.name, d.expected(), json.dumps(d.default), d.spec.help) for d in declarations(cls).values()]


# ---------------------------------------------------------------- types


def _members(kind: Any) -> tuple[Any, ...] | None:
    """The members of a union type, else None."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        return typing.get_args(kind)
    return None


def _coerce(value: Any, kind: Any, spec: Param) -> Any:
    members = _members(kind)
    if members is not None:
        if type(None) in members and (value is None or (isinstance(value, str) and value.lower() in _NULL)):
            return None
        for member in (m for m in members if m is not type(None)):
            try:
                return _coerce(value, member, spec)
            except _Invalid:
                continue
        raise _Invalid
    origin = typing.get_origin(kind)
    if origin in (tuple, list, Sequence):
        return _sequence(value, origin, typing.get_args(kind), spec)
    if kind is bool:
        return _bool(value)
    if kind is str:
        if not isinstance(value, str) or (spec.choices is not None and value not in spec.choices):
            raise _Invalid
        if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
            raise _Invalid
        return value
    if kind in (int, float):
        return _in_range(_number(value, kind), spec)
    raise TypeError(f"no parameter checks for type {kind!r}")


_NULL = ("none", "null")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _Invalid


def _number(value: Any, kind: type) -> int | float:
    """An int or a finite float; an int parameter takes integral floats (3.0) too, never booleans."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                raise _Invalid from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy scalars are Real too
        raise _Invalid
    value = int(value) if isinstance(value, numbers.Integral) else float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise _Invalid
        return int(value)
    return float(value)


def _in_range(value: int | float, spec: Param) -> int | float:
    low_ok = spec.low is None or (value >= spec.low if spec.low_inclusive else value > spec.low)
    high_ok = spec.high is None or (value <= spec.high if spec.high_inclusive else value < spec.high)
    if not (low_ok and high_ok):
        raise _Invalid
    return value


def _sequence(value: Any, origin: Any, args: tuple[Any, ...], spec: Param) -> tuple | list:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
        except json.JSONDecodeError:
            raise _Invalid from None
    if not isinstance(value, (list, tuple)) or not value:
        raise _Invalid
    item = args[0] if args else Any
    items = [_coerce(v, item, spec) for v in value]
    return tuple(items) if origin is tuple else items


def _describe(kind: Any, spec: Param) -> str:
    members = _members(kind)
    if members is not None:
        words = [_describe(m, spec) for m in members if m is not type(None)]
        words.sort(key=lambda w: not w.startswith(("'", "one of")))  # 'auto' or an integer >= 0
        if type(None) in members:
            words.append("null")
        return " or ".join(words)
    origin = typing.get_origin(kind)
    if origin in (tuple, list, Sequence):
        args = typing.get_args(kind)
        return f"a list of {_plural(_describe(args[0], spec))}" if args else "a list"
    if kind is bool:
        return "true or false"
    if kind is str:
        if spec.pattern is not None:
            return spec.shown or f"a string matching {spec.pattern}"
        if spec.choices is None:
            return "a string"
        if len(spec.choices) == 1:
            return repr(spec.choices[0])
        return "one of " + ", ".join(repr(c) for c in spec.choices)
    noun = "an integer" if kind is int else "a number"
    return noun + _range_words(spec, kind)


def _plural(words: str) -> str:
    for single, many in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings")):
        if words.startswith(single):
            return many + words[len(single) :]
    return words


def _range_words(spec: Param, kind: type) -> str:
    def show(x: float) -> str:
        return str(int(x)) if kind is int or float(x).is_integer() else repr(x)

    if spec.low is not None and spec.high is not None:
        left, right = "[" if spec.low_inclusive else "(", "]" if spec.high_inclusive else ")"
        if kind is int and spec.low_inclusive and spec.high_inclusive:
            return f" from {show(spec.low)} to {show(spec.high)}"
        return f" in {left}{show(spec.low)}, {show(spec.high)}{right}"
    if spec.low is not None:
        return f" {'>=' if spec.low_inclusive else '>'} {show(spec.low)}"
    if spec.high is not None:
        return f" {'<=' if spec.high_inclusive else '<'} {show(spec.high)}"
    return ""
