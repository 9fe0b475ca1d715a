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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


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
        coefs: dict[str, int] = {}
        const = 0
        for expr, stride in zip(self.index, self.strides()):
            const += expr.const * stride
            for a, c in expr.terms:
                coefs[a] = coefs.get(a, 0) + c * stride
        return Affine(tuple(sorted((a, c) for a, c in coefs.items() if c)), const)

    def depends_on(self, axis: str) -> bool:
        return any(expr.coef(axis) for expr in self.index)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


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

    @property
    def inputs(self) -> tuple[Operand, ...]:
        """The operands in kernel argument order: lhs, rhs[, bias][, residual]."""
        return (self.lhs, self.rhs) + self.addends

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
        rounding of every term summed into them."""
        reduction = int(np.prod([a.extent for a in self.reduce_axes]))
        return 1e-4, 4e-6 * max(1.0, reduction) ** 0.5

    def random_inputs(self, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        return tuple(rng.uniform(-1.0, 1.0, size=op.array_shape).astype(np.float32)
                     for op in self.inputs)
