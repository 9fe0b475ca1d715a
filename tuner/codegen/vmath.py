"""Float32 exp, erf, tanh and GELU as straight-line LLVM IR, on a scalar or a vector of any width.

A fused GELU epilogue (tuner/codegen/emit.py) and Softmax (tuner/network/row_codegen.py) need these
functions inside unrolled register tiles, where a call into libm would spill every live
accumulator and could not be vectorised. So each function here is branch-free: every range's
formula runs on every lane and `select` keeps the right one; the only calls are LLVM intrinsics
(fma, fabs, copysign, roundeven) that become single instructions.

    exp   Cody-Waite: n = roundeven(x·log2 e), r = x - n·ln2 in two parts (the high part
          exact under an fma, |r| <= ln2/2), e^r = 1 + r + r²·q(r) with q of degree 4
          (degree 6 in all), times 2^n built in the exponent bits. The scale is applied as
          2^(n - n//2) · 2^(n//2), two normal powers of two, so results that overflow round to
          inf and results in the subnormal range round correctly, not flushed to zero. x is
          clamped to [-104, 89] first (beyond, the result is 0 or inf anyway) so that n fits.
    erf   |x| < 0.921875: x + x·A(x²), A of degree 5; above, 1 - exp(-r) with
          r = a + a·B(a) ≈ -log(erfc a), a = min(|x|, 4), B of degree 6, the sign restored
          (the scheme of Arm's optimized-routines erff). 1 - exp(-r) rounds to exactly 1 from
          |x| ≈ 3.92 on.
    tanh  |x| < 0.55: x + x³·P(x²), P of degree 4; above, 1 - 2/(exp(2|x|) + 1) with the sign
          restored: it cancels only below tanh = 1/2 (|x| = 0.549), and exp(2|x|) = inf gives
          exactly 1.
    gelu  the ONNX/PyTorch formulas as written, on the functions above.

The polynomials are near-minimax fits (Lawson's weighted least squares, in float64, against
math.erf, numpy's exp and tanh's Taylor series) for the error each range contributes to the
result: relative for exp, tanh and small erf, erfc-weighted absolute for large erf. Their
approximation errors are at most 0.05 (exp), 0.03 (tanh) and 0.27 (erf) ulp; rounding adds the
rest. Measured in float32 ulps of the float64 result on every float32 with 2^-12 <= |x| below
104 (exp), 4 (erf), 9.1 (tanh): exp 0.89, erf 1.11, tanh 1.56 ulps (the worst just above
tanh's split); tests/test_vmath.py asserts 1, 1.5 and 2 over every 509th bit pattern and dense
samples, subnormal results included. NaN in gives NaN out; exp(±inf) = inf, 0 and
erf(±inf) = tanh(±inf) = ±1 exactly. GELU's error is at most 2^-22·|x| (measured 2.0·2^-24·|x|;
tests/test_vmath.py derives the bound), and GELU(-inf) is NaN, as the formulas give (-inf · 0)
and onnxruntime's Gelu does.
"""

from __future__ import annotations

import math

from llvmlite import ir

from tuner.errors import CodegenError
from tuner.codegen.irutil import I32, fma, intrinsic

# e^r = 1 + r + r²·q(r) on |r| <= ln2/2: q's coefficients, constant term first.
EXP_Q = (0.49999994, 0.1666652, 0.041668408, 0.008368914, 0.0013814191)
LN2_HI = 0.693147182464599609375  # ln 2 rounded to float32
LN2_LO = -1.904654299957768e-09  # ln 2 - LN2_HI
EXP_LO, EXP_HI = -104.0, 89.0  # e^-104 < 2^-150 rounds to 0; e^89 > 2^128 overflows

ERF_SPLIT = 0.921875
# erf(x) = x + x·A(x²) below ERF_SPLIT
ERF_A = (0.12837915, -0.37612492, 0.112818, -0.026766023, 0.004992296, -0.0005986285)
# -log(erfc a) = a + a·B(a) on [ERF_SPLIT, 4]
ERF_B = (0.12865265, 0.6351339, 0.10626641, -0.023788145, 0.0036550814, -0.00032597533,
         1.1554394e-05)
ERF_ONE = 4.0  # erfc(4) = 1.5e-8 < 2^-25: erf rounds to 1 from 3.92 on

TANH_SPLIT = 0.55
# tanh(x) = x + x³·P(x²) below TANH_SPLIT
TANH_P = (-0.33333334, 0.13333005, -0.05388938, 0.02120533, -0.0064436356)

GELU_ERF, GELU_TANH = 1, 2  # templates/_common.GELU_VALUES
SQRT1_2 = math.sqrt(0.5)
SQRT_2_PI = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715


def _const(typ: ir.Type, value: float | int) -> ir.Constant:
    """`value` as a constant of `typ`, splatted over every lane of a vector type."""
    if isinstance(typ, ir.VectorType):
        return ir.Constant(typ, [value] * typ.count)
    return ir.Constant(typ, value)


def _int_type(typ: ir.Type) -> ir.Type:
    """The i32 type with the shape of the float type `typ`, for its bits."""
    return ir.VectorType(I32, typ.count) if isinstance(typ, ir.VectorType) else I32


def _call(b: ir.IRBuilder, name: str, *args: ir.Value) -> ir.Value:
    """The intrinsic llvm.`name` on arguments of one float or float-vector type."""
    t = args[0].type
    suffix = f"v{t.count}f32" if isinstance(t, ir.VectorType) else "f32"
    fn = intrinsic(b.module, f"llvm.{name}.{suffix}", t, [t] * len(args))
    return b.call(fn, list(args))


def _poly(b: ir.IRBuilder, x: ir.Value, coeffs: tuple[float, ...]) -> ir.Value:
    """coeffs[0] + coeffs[1]·x + ... by Horner's rule, one fma a step."""
    acc = _const(x.type, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = fma(b, acc, x, _const(x.type, c))
    return acc


def _pow2(b: ir.IRBuilder, k: ir.Value, typ: ir.Type) -> ir.Value:
    """2^k for integer k in [-126, 127], built in the exponent field."""
    biased = b.add(k, _const(k.type, 127))
    return b.bitcast(b.shl(biased, _const(k.type, 23)), typ)


def exp(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e^x, lane by lane (the method and its error: the module docstring)."""
    t = x.type
    lo, hi = _const(t, EXP_LO), _const(t, EXP_HI)
    # NaN takes the low end (an unordered compare) so that fptosi below sees a number
    # (fptosi of NaN is poison); the NaN itself is returned at the end.
    xc = b.select(b.fcmp_unordered("<", x, lo), lo, x)
    xc = b.select(b.fcmp_ordered(">", xc, hi), hi, xc)
    n = _call(b, "roundeven", b.fmul(xc, _const(t, 1 / math.log(2))))
    # n != 0 only where |x| > 1/4, so x, like n·LN2_HI, has no bit below 2^-25, and
    # x - n·LN2_HI is under 1/2: it fits in float32, the first fma is exact and r carries one
    # rounding.
    r = fma(b, n, _const(t, -LN2_HI), xc)
    r = fma(b, n, _const(t, -LN2_LO), r)
    p = fma(b, fma(b, _poly(b, r, EXP_Q), r, _const(t, 1.0)), r, _const(t, 1.0))
    k = b.fptosi(n, _int_type(t))  # in [-150, 128]
    half = b.ashr(k, _const(k.type, 1))
    y = b.fmul(b.fmul(p, _pow2(b, b.sub(k, half), t)), _pow2(b, half, t))
    return b.select(b.fcmp_unordered("uno", x, x), x, y)


def erf(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """erf(x), lane by lane; odd exactly, as the sign is copied, not computed."""
    t = x.type
    a = _call(b, "fabs", x)
    small = fma(b, a, _poly(b, b.fmul(a, a), ERF_A), a)
    # an ordered compare leaves NaN in a, so it flows through exp to the result
    a4 = b.select(b.fcmp_ordered(">", a, _const(t, ERF_ONE)), _const(t, ERF_ONE), a)
    neg_a = b.fneg(a4)
    large = b.fsub(_const(t, 1.0), exp(b, fma(b, neg_a, _poly(b, a4, ERF_B), neg_a)))
    odd = b.select(b.fcmp_ordered("<", a, _const(t, ERF_SPLIT)), small, large)
    return _call(b, "copysign", odd, x)


def tanh(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """tanh(x), lane by lane; odd exactly, as the sign is copied, not computed."""
    t = x.type
    a = _call(b, "fabs", x)
    a2 = b.fmul(a, a)
    small = fma(b, b.fmul(a2, a), _poly(b, a2, TANH_P), a)
    one = _const(t, 1.0)
    large = b.fsub(one, b.fdiv(_const(t, 2.0), b.fadd(exp(b, b.fadd(a, a)), one)))
    odd = b.select(b.fcmp_ordered("<", a, _const(t, TANH_SPLIT)), small, large)
    return _call(b, "copysign", odd, x)


def gelu(b: ir.IRBuilder, x: ir.Value, form: int) -> ir.Value:
    """ONNX's Gelu: `form` GELU_ERF is 0.5·x·(1 + erf(x/√2)), GELU_TANH its tanh form
    0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), each evaluated as written."""
    t = x.type
    if form == GELU_ERF:
        s = erf(b, b.fmul(x, _const(t, SQRT1_2)))
    elif form == GELU_TANH:
        cubic = b.fmul(b.fmul(x, x), x)
        inner = fma(b, _const(t, GELU_CUBIC), cubic, x)
        s = tanh(b, b.fmul(inner, _const(t, SQRT_2_PI)))
    else:
        raise CodegenError(f"gelu form is {GELU_ERF} (erf) or {GELU_TANH} (tanh), got {form!r}")
    return b.fmul(b.fmul(x, _const(t, 0.5)), b.fadd(_const(t, 1.0), s))
