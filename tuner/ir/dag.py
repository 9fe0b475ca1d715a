"""Compute definitions: what an operator computes, with no decision about how.

Every operator in scope (conv2d in all its variants, matmul/dense, batch matmul) is a
*contraction*: an output element is the sum, over the reduction axes, of the product of two
operands read at affine indices, optionally plus a bias, plus a residual (an array of the
output's shape: the skip connection a ResNet block adds) and through a ReLU. Keeping the IR to
that form is what lets code generation pick broadcast / contiguous / gathered vector loads per
operand and lets layout rewrite derive a packed layout from the loop order alone. An operator
that is not a contraction needs a new body kind here, not a new code path elsewhere.

Index expressions are affine in the iteration axes: conv2d's input row is
`oh*stride + kh*dilation - pad`; grouped convolution gets there by giving the group its own axis.

Quantized (int8) contractions are the same form over integers: uint8 activations times int8
weights summed in int32, then an epilogue that keeps the int32 sum, requantizes it to uint8 or
dequantizes it to float32 (`Quantization`). Their channel reduction is split by the template
into groups of `DOT_GROUP` (`ComputeDAG.dot_axis`), the lanes the CPU's integer dot-product
instructions sum into one int32 (`vpdpbusd`: 4 u8 x s8 products; AVX2's `vpmaddwd`: 2 int16
products, twice). The group is fixed at 4 whatever the target, so that a task's key and its
loops are the same on every machine; the code generator picks the instruction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tuner.errors import TunerError


@dataclass(frozen=True, slots=True)
class Axis:
    name: str
    extent: int
    reduce: bool = False


@dataclass(frozen=True, slots=True)
class Affine:
    """sum(coef * axis) + const."""
    terms: tuple[tuple[str, int], ...]
    const: int = 0

    def coef(self, axis: str) -> int:
        return sum(c for a, c in self.terms if a == axis)

    def bounds(self, extents: dict[str, int]) -> tuple[int, int]:
        """Smallest and largest value over the whole iteration space."""
        lo = hi = self.const
        for axis, c in self.terms:
            top = c * (extents[axis] - 1)
            lo += min(0, top)
            hi += max(0, top)
        return lo, hi


def aff(*terms: tuple[str, int], const: int = 0) -> Affine:
    return Affine(tuple((a, c) for a, c in terms if c != 0), const)


@dataclass(frozen=True, slots=True)
class Operand:
    name: str
    shape: tuple[int, ...]
    index: tuple[Affine, ...]  # one affine expression per dimension, row-major layout
    constant: bool = False     # a weight: its layout may be rewritten once at build time
    padded: bool = False       # reads outside the shape are zero (convolution padding)
    # The shape of the array users pass or get, when the kernel indexes it reshaped (the same
    # bytes in C order): a 1x1 convolution reads N,C,H,W as N,C,H*W, so that one pixel axis
    # can be split into full vectors where W alone cannot (56 = 3*16 + 8).
    reshaped_from: tuple[int, ...] | None = None
    dtype: str = "float32"     # element type (DTYPES)
    # padded reads return the input zero point (Quantization), the quantized 0.0, not 0
    fill_zero_point: bool = False
    # the integers the kernel takes, where narrower than the dtype's (REDUCED_WEIGHT_RANGE)
    value_range: tuple[int, int] | None = None
    # derived from `shape` and `index` once: the search asks for them for every candidate
    _flat: Affine = field(init=False, repr=False, compare=False)
    _axes: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        coefs: dict[str, int] = {}
        const = 0
        for expr, stride in zip(self.index, self.strides()):
            const += expr.const * stride
            for a, c in expr.terms:
                coefs[a] = coefs.get(a, 0) + c * stride
        object.__setattr__(self, "_flat", Affine(
            tuple(sorted((a, c) for a, c in coefs.items() if c)), const))
        object.__setattr__(self, "_axes", frozenset(
            a for expr in self.index for a, _ in expr.terms if expr.coef(a)))

    @property
    def array_shape(self) -> tuple[int, ...]:
        """The shape of the user's array (`shape` is how the kernel indexes it)."""
        return self.reshaped_from if self.reshaped_from is not None else self.shape

    def strides(self) -> tuple[int, ...]:
        out, acc = [], 1
        for size in reversed(self.shape):
            out.append(acc)
            acc *= size
        return tuple(reversed(out))

    def flat(self) -> Affine:
        """The element offset as one affine expression (ignoring padding bounds)."""
        return self._flat

    def depends_on(self, axis: str) -> bool:
        return axis in self._axes

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


# Element types of operands, as numpy names them.
DTYPES = {"float32": np.float32, "uint8": np.uint8, "int8": np.int8, "int32": np.int32,
          "int16": np.int16}  # int16: only an int8 weight packed for vpmaddwd (layout.py)

# The weights of a model quantized with onnxruntime's `reduce_range` (7-bit weights) lie in
# [-64, 64]: a pair of uint8 x int8 products then fits int16 (255 x 64 x 2 = 32640 <= 32767),
# so AVX2's vpmaddubsw sums it exactly (tuner/codegen/quantized.py). A weight operand taking
# only these values has them as its `value_range` (the task attribute `reduce_range`).
REDUCED_WEIGHT_RANGE = (-64, 64)


def fits_reduced_range(weight: np.ndarray) -> bool:
    """Whether every value of the int8 `weight` lies in REDUCED_WEIGHT_RANGE."""
    low, high = REDUCED_WEIGHT_RANGE
    return weight.size == 0 or (int(weight.min()) >= low and int(weight.max()) <= high)


def value_range(dtype: str, narrower: tuple[int, int] | None = None) -> tuple[int, int]:
    """The integers an operand of integer `dtype` takes: `narrower`, else the dtype's."""
    if narrower is not None:
        return narrower
    info = np.iinfo(DTYPES[dtype])
    return int(info.min), int(info.max)


def as_element_type(array, dtype: str, name: str,
                    narrower: tuple[int, int] | None = None) -> np.ndarray:
    """`array` as elements of `dtype` (DTYPES). Anything converts to float32; an integer type
    takes integers that fit it (or `narrower`, an operand's value_range) and refuses the rest
    with one line naming `name` (a float activation handed to a uint8 kernel is a
    quantization the caller forgot)."""
    want = DTYPES[dtype]
    arr = np.asarray(array)
    if want == np.float32 or (arr.dtype == want and narrower is None):
        return arr.astype(want, copy=False)
    low, high = value_range(dtype, narrower)
    if arr.dtype.kind not in "iub" or (arr.size and (arr.min() < low or arr.max() > high)):
        what = f"a {dtype} array" if narrower is None else f"a {dtype} array of reduced range"
        raise TunerError(f"{name} must be {what} (integers in [{low}, {high}]), got "
                         f"{arr.dtype}" + (f" values in [{arr.min()}, {arr.max()}]"
                                           if arr.size and arr.dtype.kind in "iufb" else ""))
    return arr.astype(want, copy=False)


# The reduction lanes summed into one int32 by the dot-product instructions: vpdpbusd's 4.
DOT_GROUP = 4

# What a quantized contraction writes: its int32 sum (ONNX MatMulInteger, ConvInteger), the
# sum requantized to uint8 (QLinearConv, QLinearMatMul, a QDQ pair), or dequantized to float32
# (a dynamically quantized MatMul followed by its scale).
OUT_TYPES = ("int32", "uint8", "float32")


@dataclass(frozen=True, slots=True)
class Quantization:
    """The epilogue of an int8 contraction, on the int32 sum `acc` (+ the int32 bias):
    - int32:   out = acc (ReLU: max(acc, 0));
    - uint8:   out = clamp(round_half_even(float32(acc) * scale[k]) + zero_points[1], lo, 255),
               lo = zero_points[1] with ReLU, else 0 (ONNX QuantizeLinear; onnxruntime's
               requantization multiplies in float32 the same way);
    - float32: out = float32(acc) * scale[k] (ReLU: max(out, 0)).
    `zero_points` is int32[2]: the input's zero point, which padded reads of the input return
    (the quantized zero), and the output's. A nonzero input zero point z is the caller's to
    fold into the bias: sum((x - z) * w) = sum(x * w) - z * sum(w).

    `centered`: both operands are uint8 activations (batch_matmul: attention's products of
    two quantized tensors), so no sum of either is known ahead of time to fold their zero
    points into a bias. The kernel subtracts them instead, zero_points[0] from the first
    operand and zero_points[2] from the second (int32[3] then), and sums
    (x - zx) * (y - zy): both factors lie in [-255, 255], so they are multiplied as int16 by
    vpmaddwd, whose pair sums (at most 2 x 255^2) are exact in int32."""
    out_type: str                 # OUT_TYPES
    scale: Operand | None         # float32 per output channel; None for int32 output
    zero_points: Operand
    centered: bool = False


@dataclass(frozen=True, slots=True)
class ComputeDAG:
    """out[output.index] = act(bias[...] + residual[output.index] + sum_reduce lhs[...] *
    rhs[...]); the activation is `relu` 0 (none), 1 (ReLU) or 6 (ReLU6: clipped at 6 too), or
    `gelu` 1 (erf form) or 2 (tanh form); at most one of the two is set."""
    op: str
    axes: tuple[Axis, ...]
    output: Operand
    lhs: Operand
    rhs: Operand
    bias: Operand | None
    relu: int
    flops: float
    # numpy reference on the user-facing inputs (`inputs`); float64 inside for accuracy
    reference: Callable[..., np.ndarray] = field(compare=False, hash=False, repr=False)
    # read at the output's index, added after the bias and before the ReLU; not constant
    residual: Operand | None = None
    gelu: int = 0  # templates/_common.GELU_VALUES
    quant: Quantization | None = None  # int8: the epilogue and its parameters
    dot_axis: str | None = None        # int8: the reduce axis of DOT_GROUP lanes, if any

    @property
    def inputs(self) -> tuple[Operand, ...]:
        """The operands in kernel argument order: lhs, rhs[, bias][, residual], then an int8
        contraction's [scale,] zero_points."""
        return (self.lhs, self.rhs) + self.addends + self.quant_operands

    @property
    def quant_operands(self) -> tuple[Operand, ...]:
        if self.quant is None:
            return ()
        return tuple(op for op in (self.quant.scale, self.quant.zero_points) if op is not None)

    @property
    def dtype(self) -> str:
        """'float32', or 'int8' for a quantized contraction."""
        return "float32" if self.quant is None else "int8"

    @property
    def reduced_range(self) -> bool:
        """Whether this int8 contraction's weights lie in REDUCED_WEIGHT_RANGE (its products
        of uint8 activations then sum in int16 pairs without saturating)."""
        if self.quant is None or self.lhs.dtype != "uint8" or self.rhs.value_range is None \
                or self.quant.centered:
            return False
        low, high = self.rhs.value_range
        return REDUCED_WEIGHT_RANGE[0] <= low and high <= REDUCED_WEIGHT_RANGE[1]

    @property
    def centered(self) -> bool:
        """Whether this int8 contraction subtracts both operands' zero points in the kernel
        (Quantization.centered)."""
        return self.quant is not None and self.quant.centered

    @property
    def addends(self) -> tuple[Operand, ...]:
        """The operands the epilogue adds to the sum, in order: [bias][, residual]."""
        return tuple(op for op in (self.bias, self.residual) if op is not None)

    @property
    def activated(self) -> bool:
        """Whether the epilogue applies an activation (ReLU, ReLU6 or GELU)."""
        return bool(self.relu or self.gelu)

    @property
    def extents(self) -> dict[str, int]:
        return {a.name: a.extent for a in self.axes}

    def axis(self, name: str) -> Axis:
        for a in self.axes:
            if a.name == name:
                return a
        raise KeyError(name)

    @property
    def spatial_axes(self) -> tuple[Axis, ...]:
        return tuple(a for a in self.axes if not a.reduce)

    @property
    def reduce_axes(self) -> tuple[Axis, ...]:
        return tuple(a for a in self.axes if a.reduce)

    def operand(self, name: str) -> Operand:
        for op in self.inputs + (self.output,):
            if op.name == name:
                return op
        raise KeyError(name)

    def tolerance(self) -> tuple[float, float]:
        """(rtol, atol) against the float64 reference: rtol 1e-4 on float32, with an absolute
        floor that grows with the reduction length, since outputs that cancel to ~0 carry the
        rounding of every term summed into them. int8 kernels are exact: integer sums, and an
        epilogue that rounds the same float32 products as the reference."""
        if self.quant is not None:
            return 0.0, 0.0
        reduction = int(np.prod([a.extent for a in self.reduce_axes]))
        return 1e-4, 4e-6 * max(1.0, reduction) ** 0.5

    def random_inputs(self, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        if self.quant is None:
            return tuple(rng.uniform(-1.0, 1.0, size=op.array_shape).astype(np.float32)
                         for op in self.inputs)
        return tuple(self._random_quantized(rng, op) for op in self.inputs)

    def _random_quantized(self, rng: np.random.Generator, op: Operand) -> np.ndarray:
        """Values over the whole range of each type, and scales that spread the requantized
        outputs over much of uint8 (a sum of R products of uniform uint8 and int8 values has
        a spread of about 10900 sqrt(R))."""
        if op.dtype in ("uint8", "int8"):
            low, high = value_range(op.dtype, op.value_range)
            return rng.integers(low, high + 1, size=op.array_shape, dtype=DTYPES[op.dtype])
        if self.quant is not None and op is self.quant.zero_points:
            return rng.integers(0, 256, size=op.array_shape).astype(np.int32)
        if op.dtype == "int32":  # the bias
            return rng.integers(-1 << 14, 1 << 14, size=op.array_shape).astype(np.int32)
        reduction = int(np.prod([a.extent for a in self.reduce_axes]))
        return (rng.uniform(0.5, 2.0, size=op.array_shape)
                / (300.0 * np.sqrt(reduction))).astype(np.float32)
