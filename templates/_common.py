"""Validation shared by the operator templates: every message names the bad value and the form."""

from __future__ import annotations

from tuner.errors import ShapeError


def check_shape(shape, count: int, form: str, op: str) -> tuple[int, ...]:
    dims = tuple(shape)
    if len(dims) != count or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                      for d in dims):
        text = ",".join(str(d) for d in dims)
        raise ShapeError(f"{op} shape expects {form} ({count} positive integers), got '{text}'")
    return dims


def fill_attrs(op: str, attrs: dict, defaults: dict) -> dict:
    unknown = sorted(set(attrs) - set(defaults))
    if unknown:
        raise ShapeError(f"{op} has no attribute {unknown[0]!r}; "
                         f"known: {', '.join(sorted(defaults))}")
    full = dict(defaults)
    for name, value in attrs.items():
        if isinstance(defaults[name], bool):
            if value not in (0, 1, True, False):
                raise ShapeError(f"{op} attribute {name} expects 0 or 1, got {value!r}")
            full[name] = bool(value)
        else:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ShapeError(f"{op} attribute {name} expects an integer, got {value!r}")
            full[name] = value
    return full
