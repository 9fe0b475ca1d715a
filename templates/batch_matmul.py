"""batch_matmul: C[b] = A[b] @ B[b] (+ bias[N]) (ReLU), A: [B,M,K], B: [B,K,N].

Both operands are activations (attention's Q·K^T), so neither is packed at build time.

Each of A, B and C may be stored with its batch axis elsewhere than first (`a_order`,
`b_order`, `out_order`): the order of the stored array's axes, as the 1-based positions of the
logical axes, 123 being [batch, rows, columns] and 213 [rows, batch, columns]. Attention reads
its heads this way: a projection's output [sequence, heads x head size] is, unchanged, Q as
[M, B, K] (213) and V as [K, B, N] (213), and the context [sequence, heads x head size] it
writes is C as [M, B, N] (213), so the Reshape/Transpose pairs an exporter writes around the
products are no copies. Only orders that keep the last axis last are offered: they move whole
rows, so every operand stays contiguous along the axis the kernels vectorize.
"""

from __future__ import annotations

import numpy as np

from templates._common import check_dtype, check_shape, fill_attrs, relu_reference
from tuner.ir.dag import Axis, ComputeDAG, Operand, aff
from tuner.errors import ShapeError

NAME = "batch_matmul"
SHAPE_FORM = "B,M,N,K"
DEFAULT_ORDER = 123
ORDERS = (123, 213)
DEFAULTS = {"bias": False, "relu": 0, "a_order": DEFAULT_ORDER, "b_order": DEFAULT_ORDER,
            "out_order": DEFAULT_ORDER}


def normalize_attrs(shape, attrs: dict, dtype: str = "float32") -> dict:
    full = fill_attrs(NAME, attrs, DEFAULTS)
    check_dtype(NAME, dtype, full)
    if dtype != "float32":
        raise ShapeError(f"{NAME} has no {dtype} kernels yet (conv2d and matmul have)")
    for name in ("a_order", "b_order", "out_order"):
        if full[name] not in ORDERS:
            raise ShapeError(f"{NAME} attribute {name} expects one of "
                             f"{', '.join(map(str, ORDERS))}, got {full[name]!r}")
    return full


def _stored(name: str, logical: tuple[tuple[str, int], ...], order: int,
            constant: bool = False) -> Operand:
    """An operand whose logical axes (name, extent) are stored in `order`."""
    picked = [logical[int(digit) - 1] for digit in str(order)]
    return Operand(name, tuple(extent for _, extent in picked),
                   tuple(aff((axis, 1)) for axis, _ in picked), constant=constant)


def _to_logical(value: np.ndarray, order: int) -> np.ndarray:
    """A stored array as [batch, rows, columns]."""
    return np.transpose(value, np.argsort([int(d) - 1 for d in str(order)]))


def definition(shape, bias: bool = False, relu: int = 0, a_order: int = DEFAULT_ORDER,
               b_order: int = DEFAULT_ORDER, out_order: int = DEFAULT_ORDER) -> ComputeDAG:
    nb, m, n, k = check_shape(shape, 4, SHAPE_FORM, NAME)
    axes = (Axis("b", nb), Axis("i", m), Axis("j", n), Axis("k", k, reduce=True))
    a = _stored("a", (("b", nb), ("i", m), ("k", k)), a_order)
    b = _stored("b", (("b", nb), ("k", k), ("j", n)), b_order)
    out = _stored("out", (("b", nb), ("i", m), ("j", n)), out_order)
    bias_op = Operand("bias", (n,), (aff(("j", 1)),), constant=True) if bias else None

    def reference(a_val, b_val, bias_val=None):
        res = np.matmul(_to_logical(a_val, a_order).astype(np.float64),
                        _to_logical(b_val, b_order).astype(np.float64))
        if bias_val is not None:
            res = res + bias_val
        stored = np.transpose(relu_reference(res, relu),
                              [int(d) - 1 for d in str(out_order)])
        return np.ascontiguousarray(stored)

    return ComputeDAG(NAME, axes, out, a, b, bias_op, relu, 2.0 * nb * m * n * k, reference)
