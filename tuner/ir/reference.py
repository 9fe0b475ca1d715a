"""float64 numpy references of the scalar functions that compute definitions and the model
runtime share (numpy has no erf, and scipy is not a dependency): what a generated GELU epilogue
is checked against (templates/_common.py) and what the runtime's Erf and Gelu nodes compute
(tuner/network/ops.py).
"""

from __future__ import annotations

import math

import numpy as np

from tuner.errors import TunerError


def erf(x):
    """erf to ~1e-8 absolute in float64 (numpy has none, scipy is not a dependency): the
    Maclaurin series below 0.5, where 1 - erfc loses digits, and above it Numerical Recipes'
    Chebyshev erfc (fractional error < 1.2e-7, so < 6e-8 absolute here). Both run on every
    element, in place, and np.where picks: boolean-mask indexing costs more than the
    arithmetic it would save. The work goes in blocks that stay in L2: some thirty passes over
    a whole 3 MB float64 array are memory-bound (BERT's GELU, 128 x 3072 elements: 9.8 ms with
    a 13-term series, 19 ms with masks, 16 ms unblocked)."""
    flat = np.asarray(x).reshape(-1)
    out = np.empty(flat.shape, dtype=np.float64)
    for start in range(0, flat.size, ERF_BLOCK):
        out[start:start + ERF_BLOCK] = _erf_block(flat[start:start + ERF_BLOCK])
    return out.reshape(np.shape(x))


def gelu(x, form: str):
    """ONNX's Gelu in float64: `form` 'none' is 0.5·x·(1 + erf(x/√2)), 'tanh' its tanh
    approximation 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""
    x = np.asarray(x, dtype=np.float64)
    if form == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if form == "none":
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    raise TunerError(f"Gelu's approximate attribute is 'none' or 'tanh', got {form!r}")


ERF_BLOCK = 8192  # float64 elements: the block's handful of temporaries fit in L2


def _erf_block(x):
    z = np.asarray(x, dtype=np.float64)
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = np.full_like(t, ERFC_COEFFS[-1])
    for c in reversed(ERFC_COEFFS[1:-1]):
        poly *= t
        poly += c
    poly *= t
    poly += ERFC_COEFFS[0]
    poly -= a * a
    np.exp(poly, out=poly)
    poly *= t                       # erfc(|z|)
    big = np.copysign(1.0 - poly, z)
    sq = z * z
    series = np.full_like(z, MACLAURIN[-1])
    for c in reversed(MACLAURIN[:-1]):  # Horner in z^2; the 9th term is < 1e-11 at 0.5
        series *= sq
        series += c
    series *= z
    return np.where(a < 0.5, series, big)


ERFC_COEFFS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
               -1.13520398, 1.48851587, -0.82215223, 0.17087277)
# erf(z) = 2/sqrt(pi) * sum_n (-1)^n z^(2n+1) / (n! (2n+1))
MACLAURIN = tuple(2.0 / math.sqrt(math.pi) * (-1) ** n / (math.factorial(n) * (2 * n + 1))
                  for n in range(9))
