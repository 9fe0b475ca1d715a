"""Generated LayerNormalization and Softmax (tuner/network/row_codegen.py): `row_view`'s rules for
the nodes' attributes and opsets, and the compiled functions against float64 numpy references
over row widths around the vector width (under one vector, one, one and a bit, a loop with a
masked tail), 1, 7 and 128 rows, with and without scale and bias, at 1 and 2 threads, for the
host's vectors and AVX2's. Inputs far from zero check LayerNorm's variance; inputs over ±80
check Softmax's maximum."""

from __future__ import annotations

import ctypes
import itertools

import numpy as np
import pytest

from tuner.codegen.jit import compile_ir_object, load_libgomp, target_machine
from tuner.ir.llvm_init import llvm
from tuner.network.row_codegen import layer_norm_ir, row_view, softmax_ir
from tuner.ir.target import named_target

WIDTHS = (1, 3, 7, 16, 17, 50, 197, 768)
ROWS = (1, 7, 128)
CPUS = pytest.mark.parametrize("cpu", [None, "x86-64-v3"], ids=["host", "256-bit"])
THREADS = pytest.mark.parametrize("threads", [1, 2])


@pytest.mark.parametrize("op_type, attrs, shape, opset, view", [
    ("LayerNormalization", {}, (2, 5, 768), 17, (10, 768)),
    ("LayerNormalization", {"axis": 1}, (2, 5, 6), 17, (2, 30)),
    ("LayerNormalization", {"axis": -2}, (2, 5, 6), 17, (2, 30)),
    ("LayerNormalization", {"axis": 0}, (2, 5, 6), 17, (1, 60)),
    ("LayerNormalization", {"stash_type": 1}, (4, 8), 17, (4, 8)),
    ("LayerNormalization", {"stash_type": 0}, (4, 8), 17, None),
    ("LayerNormalization", {"axis": 3}, (2, 5, 6), 17, None),
    ("LayerNormalization", {"axis": -4}, (2, 5, 6), 17, None),
    ("LayerNormalization", {}, (0, 8), 17, None),
    ("Softmax", {}, (2, 12, 197, 197), 13, (2 * 12 * 197, 197)),
    ("Softmax", {"axis": 3}, (2, 12, 197, 197), 13, (2 * 12 * 197, 197)),
    ("Softmax", {"axis": 1}, (2, 12, 5), 13, None),
    ("Softmax", {"axis": -2}, (2, 12, 5), 17, None),
    ("Softmax", {}, (3, 4, 5), 11, (3, 20)),  # before 13: axis 1, flattened from there
    ("Softmax", {"axis": 0}, (3, 4, 5), 11, (1, 60)),
    ("Softmax", {"axis": -1}, (3, 4, 5), 11, (12, 5)),
    ("Softmax", {"axis": 2}, (3, 4, 5), 1, (12, 5)),
    ("Softmax", {}, (5,), 11, None),  # axis 1 of a vector
    ("Softmax", {}, (5,), 13, (1, 5)),
    ("Relu", {}, (4, 8), 17, None),
])
def test_row_view(op_type, attrs, shape, opset, view):
    assert row_view(op_type, attrs, shape, opset) == view


class Compiled:
    """One generated function, compiled for `target` and loaded with MCJIT."""

    def __init__(self, ir_text: str, symbol: str, target, pointers: int):
        if target.threads > 1:
            load_libgomp()
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""),
                                                 target_machine(target))
        self.engine.add_object_file(llvm.ObjectFileRef.from_data(
            compile_ir_object(ir_text, target)))
        self.engine.finalize_object()
        self.fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * pointers)(
            self.engine.get_function_address(symbol))

    def __call__(self, *arrays: np.ndarray) -> None:
        assert all(a.flags.c_contiguous for a in arrays)
        self.fn(*(a.ctypes.data for a in arrays))


def layer_norm_reference(x, epsilon, scale, bias):
    x = x.astype(np.float64)
    mean = x.mean(axis=1, keepdims=True)
    y = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=1, keepdims=True) + epsilon)
    y = y * scale if scale is not None else y
    return y + bias if bias is not None else y


def layer_norm_cases(shift: int):
    """Every width and row count, with scale, bias and epsilon (8 choices) taken in turn
    from the `shift`th: over 4 shifts, each width and row count meets 4 of them."""
    options = list(itertools.product([False, True], [False, True], [1e-5, 1e-12]))
    cases = [(rows, width) for width in WIDTHS for rows in ROWS]
    return [(*case, *options[(k + shift) % len(options)]) for k, case in enumerate(cases)]


@THREADS
@CPUS
def test_layer_norm_matches_numpy(cpu, threads):
    target = named_target(cpu, threads)
    rng = np.random.default_rng(threads)
    cases = layer_norm_cases(2 * (threads - 1) + (cpu is None))
    for case, (rows, width, scale, bias, epsilon) in enumerate(cases):
        symbol = f"ln{case}"
        code = layer_norm_ir(symbol, rows, width, epsilon, scale, bias, target.machine, threads)
        fn = Compiled(code, symbol, target, 2 + scale + bias)
        x = rng.standard_normal((rows, width)).astype(np.float32)
        # far from zero: 1000 +- 0.01, where a float32 ulp is 0.6% of the deviation
        x[rows // 2] = 1000 + 0.01 * rng.standard_normal(width)
        x[-1] = 3.0  # a constant row: 0 before the bias
        params = [rng.standard_normal(width).astype(np.float32) + 1 for _ in range(scale + bias)]
        out = np.full_like(x, np.nan)
        fn(out, x, *params)
        want = layer_norm_reference(x, epsilon, params[0] if scale else None,
                                    params[-1] if bias else None)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6 * max(1, abs(want).max()),
                                   err_msg=f"rows {rows} width {width} scale {scale} "
                                           f"bias {bias} epsilon {epsilon}")


def softmax_reference(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@THREADS
@CPUS
def test_softmax_matches_numpy(cpu, threads):
    target = named_target(cpu, threads)
    rng = np.random.default_rng(threads)
    for case, (rows, width) in enumerate(itertools.product(ROWS, WIDTHS)):
        symbol = f"softmax{case}"
        fn = Compiled(softmax_ir(symbol, rows, width, target.machine, threads), symbol, target, 2)
        x = rng.uniform(-100, 100, (rows, width)).astype(np.float32)  # e^100 overflows
        x[rows // 2] = rng.standard_normal(width)
        out = np.full_like(x, np.nan)
        fn(out, x)
        # results under float32's smallest normal (e^-87.3) have a fixed absolute precision
        np.testing.assert_allclose(out, softmax_reference(x), rtol=1e-5, atol=1e-44,
                                   err_msg=f"rows {rows} width {width}")


@CPUS
@THREADS
def test_softmax_with_a_mask_adds_it_to_every_row(cpu, threads):
    """An attention mask (0 kept, -10000 masked, the last positions of a padded batch) of one
    row of `width` floats, added to each row before the softmax."""
    target = named_target(cpu, threads)
    rng = np.random.default_rng(threads + 7)
    for case, (rows, width) in enumerate(itertools.product(ROWS, WIDTHS)):
        symbol = f"masked{case}"
        fn = Compiled(softmax_ir(symbol, rows, width, target.machine, threads, mask=True),
                      symbol, target, 3)
        x = rng.uniform(-8, 8, (rows, width)).astype(np.float32)
        mask = np.where(np.arange(width) < max(1, width - width // 3), 0.0, -10000.0
                        ).astype(np.float32)
        out = np.full_like(x, np.nan)
        fn(out, x, mask)
        np.testing.assert_allclose(out, softmax_reference(x + mask), rtol=1e-5, atol=1e-44,
                                   err_msg=f"rows {rows} width {width}")


@CPUS
def test_softmax_of_nan_and_of_minus_infinity_is_nan(cpu):
    """As numpy's formula: NaN anywhere in a row, or a row of -inf (-inf - -inf)."""
    target = named_target(cpu, 1)
    width = 2 * target.machine.lanes + 3
    fn = Compiled(softmax_ir("softmax", 3, width, target.machine, 1), "softmax", target, 2)
    x = np.zeros((3, width), np.float32)
    x[0, width - 1] = np.nan  # in the masked tail
    x[1, 0] = np.nan
    x[2] = -np.inf
    out = np.zeros_like(x)
    with np.errstate(invalid="ignore"):
        assert np.isnan(softmax_reference(x)).all()
    fn(out, x)
    assert np.isnan(out).all()
