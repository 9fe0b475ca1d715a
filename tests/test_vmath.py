"""tuner.codegen.vmath against float64 references, over the whole float32 range.

Each function is compiled as `void f(float *out, const float *x, i64 n)`: the vector form of
the code on W lanes (8, and the host's own width if wider), then the scalar form on the tail;
one more build runs the scalar form on everything. The inputs are every STRIDE-th float32 bit
pattern (both signs, subnormals, zeros, infinities, NaNs), the special values, and a dense
uniform sample of the range where each function does its work. The bounds, in float32 ulps of
the float64 reference rounded to float32 (measured maxima in tuner/codegen/vmath.py's docstring):

    exp <= 1, erf <= 1.5, tanh <= 2 ulps, subnormal results included; NaN exactly where the
    reference is NaN, infinities exactly where it is infinite.
    GELU, both forms: |error| <= 2^-22·|x| + 2^-149. With s = erf(u) or tanh(v), in units of
    2^-24: s is off by at most 1.5 (erf) or 2 (tanh) of its ulps, each <= 1 as |s| <= 1;
    1 + s rounds by <= 1; the argument's roundings move s by <= 0.97 (u = x·fl(1/√2): two
    roundings, times erf'(u)·u <= 0.49) or <= 2.7 (v: six roundings at most, times
    tanh'(v)·v <= 0.45). So 1 + s is off by <= 5.7, halved by 0.5·x (exact); the last product
    rounds by <= 1 of |gelu| <= |x|: <= 3.9·2^-24·|x| in all. 2^-149 covers 0.5·x rounding a
    subnormal x.
"""

import ctypes
import functools
import math

import numpy as np
import pytest
from llvmlite import ir

from tuner.codegen import vmath
from tuner.codegen.irutil import F32, I64, PTR, VOID, elem_ptr, runtime_loop, vec_type
from tuner.codegen.jit import optimize, target_machine
from tuner.ir.llvm_init import llvm
from tuner.ir.target import host_target

STRIDE = 509  # 8.4M of the 2^32 bit patterns; a prime, so every exponent and low bits vary
DENSE = 1 << 20

FUNCTIONS = {
    "exp": vmath.exp,
    "erf": vmath.erf,
    "tanh": vmath.tanh,
    "gelu_erf": lambda b, x: vmath.gelu(b, x, vmath.GELU_ERF),
    "gelu_tanh": lambda b, x: vmath.gelu(b, x, vmath.GELU_TANH),
}
ULP_BOUND = {"exp": 1.0, "erf": 1.5, "tanh": 2.0}
DENSE_RANGE = {"exp": (-104.0, 89.0)}  # the others: [-10, 10]

TARGET = host_target(1)
# None: the scalar form on every element
WIDTHS = sorted({8, TARGET.machine.lanes}) + [None]


def _define(module: ir.Module, name: str, emit, width: int | None) -> None:
    fn = ir.Function(module, ir.FunctionType(VOID, [PTR, PTR, I64]), name=name)
    out, x, n = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    tail = ir.Constant(I64, 0)
    if width is not None:
        vectors = b.sdiv(n, ir.Constant(I64, width))

        def vector_body(i):
            offset = b.mul(i, ir.Constant(I64, width))
            value = b.load(elem_ptr(b, x, offset), typ=vec_type(width), align=4)
            b.store(emit(b, value), elem_ptr(b, out, offset), align=4)

        runtime_loop(b, 0, vectors, vector_body, "v")
        tail = b.mul(vectors, ir.Constant(I64, width))

    def scalar_body(i):
        b.store(emit(b, b.load(elem_ptr(b, x, i), typ=F32)), elem_ptr(b, out, i))

    runtime_loop(b, tail, n, scalar_body, "s")
    b.ret_void()


def _symbol(name: str, width: int | None) -> str:
    return f"{name}_w{width or 1}"


@pytest.fixture(scope="module")
def compiled():
    """symbol -> callable(x) -> f(x), all from one MCJIT engine."""
    module = ir.Module(name="vmath_test")
    for name, emit in FUNCTIONS.items():
        for width in WIDTHS:
            _define(module, _symbol(name, width), emit, width)
    tm = target_machine(TARGET)
    engine = llvm.create_mcjit_compiler(optimize(str(module), TARGET, tm), tm)
    engine.finalize_object()
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)

    def caller(symbol):
        fn = proto(engine.get_function_address(symbol))

        def call(x):
            x = np.ascontiguousarray(x, dtype=np.float32)
            out = np.empty_like(x)
            fn(out.ctypes.data, x.ctypes.data, x.size)
            return out
        return call

    yield {_symbol(n, w): caller(_symbol(n, w)) for n in FUNCTIONS for w in WIDTHS}
    engine.close()


def _inputs(name: str) -> np.ndarray:
    patterns = np.arange(0, 1 << 32, STRIDE, dtype=np.uint64).astype(np.uint32)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.1754944e-38,
                         3.4028235e38, -3.4028235e38, 1.0, -1.0], dtype=np.float32)
    lo, hi = DENSE_RANGE.get(name, (-10.0, 10.0))
    dense = np.linspace(lo, hi, DENSE, dtype=np.float32)
    # 9486639 values in all, odd: the scalar tail runs after the vectors
    return np.concatenate([patterns.view(np.float32), specials, dense, [np.float32(0.5)]])


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in float64, as math.erf gives it, without calling it where the answer is known:
    ±1 from |x| = 6 (erfc(6) = 2e-17, under half an ulp of 1), 2x/√π below 2^-30 (the next
    term, -x³/3·2/√π, is under 2^-60 of it)."""
    out = np.copysign(1.0, x)
    a = np.abs(x)
    tiny = a < 2.0 ** -30
    out[tiny] = x[tiny] * (2 / math.sqrt(math.pi))
    mid = ~tiny & (a < 6)
    out[mid] = np.frompyfunc(math.erf, 1, 1)(x[mid]).astype(np.float64)
    out[np.isnan(x)] = np.nan
    return out


def _reference(name: str, x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    if name == "exp":
        return np.exp(x)
    if name == "erf":
        return _erf(x)
    if name == "tanh":
        return np.tanh(x)
    if name == "gelu_erf":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


@functools.cache
def _case(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, float64 reference), made once per function for all widths."""
    x = _inputs(name)
    with np.errstate(over="ignore", invalid="ignore"):
        return x, _reference(name, x)


def _ulp_error(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|got - ref| in ulps of ref rounded to float32. An infinity counts as ±2^128, where the
    next float32 after FLT_MAX would be, so a result that overflows where the reference is
    just under the limit is an error of an ulp or so, not an infinite one."""
    limit = 2.0 ** 128
    g = np.clip(got.astype(np.float64), -limit, limit)
    r = np.clip(ref, -limit, limit)
    rounded = np.minimum(np.abs(r), np.finfo(np.float32).max).astype(np.float32)
    _, exponent = np.frexp(rounded)  # rounded = m·2^exponent, 1/2 <= m < 1
    ulp = np.ldexp(1.0, np.maximum(np.where(rounded == 0, -149, exponent - 24), -149))
    return np.abs(g - r) / ulp


def _check_specials(got: np.ndarray, ref: np.ndarray) -> None:
    assert np.array_equal(np.isnan(got), np.isnan(ref)), "NaN where the reference is not"
    inf = np.isinf(ref)
    assert np.array_equal(got[inf], ref[inf].astype(np.float32))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", sorted(ULP_BOUND))
def test_error_in_ulps(compiled, name, width):
    x, ref = _case(name)
    got = compiled[_symbol(name, width)](x)
    _check_specials(got, ref)
    ok = ~np.isnan(ref)
    err = _ulp_error(got[ok], ref[ok])
    worst = int(np.argmax(err))
    assert err[worst] <= ULP_BOUND[name], \
        f"{name}({x[ok][worst]!r}) = {got[ok][worst]!r}, float64 {ref[ok][worst]!r}: " \
        f"{err[worst]:.2f} ulps"


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", ["gelu_erf", "gelu_tanh"])
def test_gelu_error(compiled, name, width):
    x, ref = _case(name)
    got = compiled[_symbol(name, width)](x)
    _check_specials(got, ref)
    ok = np.isfinite(ref)
    bound = 2.0 ** -22 * np.abs(x[ok].astype(np.float64)) + 2.0 ** -149
    excess = np.abs(got[ok] - ref[ok]) / bound
    worst = int(np.argmax(excess))
    assert excess[worst] <= 1, \
        f"{name}({x[ok][worst]!r}) = {got[ok][worst]!r}, float64 {ref[ok][worst]!r}"


@pytest.mark.parametrize("width", WIDTHS)
def test_exact_values(compiled, width):
    """The values a caller may rely on exactly: limits, zeros with their sign, symmetry."""
    def run(name, values):
        return compiled[_symbol(name, width)](np.array(values, dtype=np.float32))

    inf, nan = np.inf, np.nan
    np.testing.assert_array_equal(run("exp", [0.0, -0.0, inf, -inf, -104.0, 89.0, -1e30]),
                                  [1.0, 1.0, inf, 0.0, 0.0, inf, 0.0])
    # erf rounds to 1 from 3.92 on (erfc(3.92) = 2.96e-8, half an ulp under 1 is 2.98e-8),
    # tanh from 9.02 on
    for name, one in (("erf", 3.93), ("tanh", 9.1)):
        got = run(name, [0.0, -0.0, inf, -inf, nan, one, -one, 1e30, -1e30])
        np.testing.assert_array_equal(got, [0.0, -0.0, 1.0, -1.0, nan, 1.0, -1.0, 1.0, -1.0])
        assert np.signbit(got[1]) and not np.signbit(got[0])
        # odd: the sign is restored exactly, never computed
        x = np.linspace(0, 10, 100_003, dtype=np.float32)
        assert np.array_equal(run(name, -x), -run(name, x))
    for name in ("gelu_erf", "gelu_tanh"):
        np.testing.assert_array_equal(run(name, [0.0, inf, -inf, nan, 1e30, -1e30]),
                                      np.float32([0.0, inf, nan, nan, 1e30, -0.0]))


@pytest.mark.parametrize("width", [None, 3, 16])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_straight_line(name, width):
    """Any vector width (or a scalar), and no basic block of its own: the code can go inside
    an unrolled register tile."""
    typ = F32 if width is None else vec_type(width)
    module = ir.Module(name="vmath_straight")
    fn = ir.Function(module, ir.FunctionType(typ, [typ]), name="f")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(FUNCTIONS[name](b, fn.args[0]))
    assert len(fn.blocks) == 1
    llvm.parse_assembly(str(module)).verify()
