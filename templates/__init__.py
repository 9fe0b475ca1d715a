"""Operator compute definitions: one module per operator, nothing but the math.

    conv2d.py        NCHW input, KCRS weight; stride, padding, dilation, groups; bias, ReLU, GELU
    matmul.py        C[M,N] = A[M,K] @ B[K,N] (dense: B is a constant weight); bias, ReLU, GELU
    batch_matmul.py  C[b] = A[b] @ B[b]; bias, ReLU
    _common.py       shape / attribute validation shared by the three

Each module exposes `NAME`, `SHAPE_FORM` (for messages), `normalize_attrs(shape, attrs)` and
`definition(shape, **attrs) -> tuner.ir.dag.ComputeDAG`. Adding an operator is adding a module and
a line in `TEMPLATES`.
"""

from importlib import import_module
from types import ModuleType

from tuner.errors import ShapeError

TEMPLATES = ("conv2d", "matmul", "batch_matmul")


def get_template(op: str) -> ModuleType:
    if op not in TEMPLATES:
        raise ShapeError(f"unknown operator {op!r}; expected one of {', '.join(TEMPLATES)}")
    return import_module(f"templates.{op}")
