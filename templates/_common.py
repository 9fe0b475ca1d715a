"""Validation shared by the operator templates: every message names the bad value and the form."""

from __future__ import annotations

import numpy as np

from tuner.ir.dag import OUT_TYPES, Operand
from tuner.errors import ShapeError


def check_shape(shape, count: int, form: str, op: str) -> tuple[int, ...]:
    dims = tuple(shape)
    if len(dims) != count or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                      for d in dims):
        text = ",".join(str(d) for d in dims)
        raise ShapeError(f"{op} shape expects {form} ({count} positive integers), got '{text}'")
    return dims


# The epilogue after the bias: none, ReLU, or ReLU6 (ReLU clipped at 6, MobileNet's). An
# integer rather than a flag per kind, so that the task keys of records made before ReLU6
# existed (relu=0 / relu=1) name the same tasks.
RELU_VALUES = {0: "none", 1: "ReLU", 6: "ReLU6"}

# The GELU epilogue (a transformer FFN's activation), after the bias and residual: none, the
# exact form 0.5·x·(1 + erf(x/√2)), or the tanh form 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
# (ONNX Gelu's approximate="tanh"). The two differ by up to 5e-4, so a task names which.
GELU_VALUES = {0: "none", 1: "erf", 2: "tanh"}


# Attributes added after task keys were first stored: a task's key names them only when they
# differ from the template's default, so that records made before they existed still name the
# same tasks.
KEYED_WHEN_SET = frozenset({"residual", "gelu", "a_order", "b_order", "out_order",
                            "out_type", "reduce_range"})


def key_attrs(full: dict, defaults: dict) -> dict:
    """The attributes a task key names: all of `full` but those of KEYED_WHEN_SET that are
    at their template's default (`defaults`)."""
    return {name: value for name, value in full.items()
            if name not in KEYED_WHEN_SET or value != defaults[name]}


def residual_operand(out: Operand) -> Operand:
    """The residual input of a fused skip connection: an array of the output's shape, read
    where the output is written."""
    return Operand("residual", out.shape, out.index, reshaped_from=out.reshaped_from)


def epilogue_reference(values, relu: int, bias=None, residual=None, gelu: int = 0):
    """The epilogue on numpy values of the output's shape: + bias (already broadcast to the
    output) + residual, then `relu` (RELU_VALUES) or `gelu` (GELU_VALUES)."""
    if bias is not None:
        values = values + bias
    if residual is not None:
        values = values + np.asarray(residual, dtype=np.float64).reshape(values.shape)
    return gelu_reference(relu_reference(values, relu), gelu)


def gelu_reference(values, gelu: int):
    """The GELU form `gelu` (GELU_VALUES) of numpy values, in float64 (as the model runtime's
    Gelu: numpy has no erf, and that one is accurate to 1e-8)."""
    from tuner.ir.reference import gelu as onnx_gelu

    return onnx_gelu(values, {1: "none", 2: "tanh"}[gelu]) if gelu else values


def split_inputs(rest: tuple, bias: bool, residual: bool) -> tuple:
    """(bias, residual) from the inputs after lhs and rhs, each None where absent."""
    rest = list(rest)
    bias_value = rest.pop(0) if bias else None
    residual_value = rest.pop(0) if residual else None
    return bias_value, residual_value


def fill_attrs(op: str, attrs: dict, defaults: dict) -> dict:
    unknown = sorted(set(attrs) - set(defaults))
    if unknown:
        raise ShapeError(f"{op} has no attribute {unknown[0]!r}; "
                         f"known: {', '.join(sorted(defaults))}")
    full = dict(defaults)
    for name, value in attrs.items():
        if name in ("relu", "gelu"):
            values = RELU_VALUES if name == "relu" else GELU_VALUES
            if isinstance(value, float) or value not in values:
                choices = ", ".join(f"{v} ({kind})" for v, kind in values.items())
                raise ShapeError(f"{op} attribute {name} expects one of {choices}, "
                                 f"got {value!r}")
            full[name] = int(value)
        elif isinstance(defaults[name], bool):
            if value not in (0, 1, True, False):
                raise ShapeError(f"{op} attribute {name} expects 0 or 1, got {value!r}")
            full[name] = bool(value)
        else:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ShapeError(f"{op} attribute {name} expects an integer, got {value!r}")
            full[name] = value
    if full.get("relu") and full.get("gelu"):
        raise ShapeError(f"{op} takes one activation: relu={full['relu']} and "
                         f"gelu={full['gelu']} are both set")
    return full


def relu_reference(values, relu: int):
    """The epilogue `relu` (RELU_VALUES) applied to numpy values."""
    if relu == 6:
        return np.clip(values, 0, 6)
    return np.maximum(values, 0) if relu else values


# ------------------------------------------------------------------------------- int8

# What an int8 contraction writes (tuner.ir.dag.Quantization), by the value of its `out_type`
# attribute: its int32 sum, the sum requantized to uint8, or dequantized to float32.
OUT_TYPE_VALUES = dict(enumerate(OUT_TYPES))
# A task's dtype: of its computation, where tuner.ir.dag.DTYPES are its operands' element types.
TASK_DTYPES = ("float32", "int8")


def check_dtype(op: str, dtype: str, full: dict) -> None:
    """The dtype and the attributes only one dtype takes: int8 kernels have the int32 bias,
    ReLU, an output type (`out_type`) and weights of reduced range (`reduce_range`: every
    weight in tuner.ir.dag.REDUCED_WEIGHT_RANGE, as onnxruntime's quantizer writes them with
    reduce_range=True), not GELU, ReLU6 or a residual."""
    if dtype not in TASK_DTYPES:
        raise ShapeError(f"{op} dtype expects one of {', '.join(TASK_DTYPES)}, got {dtype!r}")
    out_type = full.get("out_type", 0)
    if out_type not in OUT_TYPE_VALUES:
        choices = ", ".join(f"{v} ({kind})" for v, kind in OUT_TYPE_VALUES.items())
        raise ShapeError(f"{op} attribute out_type expects one of {choices}, got {out_type!r}")
    if dtype == "float32":
        for name in ("out_type", "reduce_range"):
            if full.get(name):
                raise ShapeError(f"{op} attribute {name} is for int8 kernels; this one is "
                                 f"float32")
        return
    for name, value, why in (("gelu", full.get("gelu", 0), "GELU"),
                             ("residual", full.get("residual", False), "a residual")):
        if value:
            raise ShapeError(f"int8 {op} takes no {why} ({name}={int(value)}): only bias, "
                             f"relu=1 and out_type")
    if full.get("relu") == 6:
        raise ShapeError(f"int8 {op} takes relu=0 or relu=1, got relu=6 (ReLU6 needs the "
                         f"output's scale: quantize its clip into the output range instead)")


def dot_split(channel_base, extent: int, axis: str) -> tuple[list, object, bool]:
    """An int8 reduction of `extent` lanes split for the dot-product instructions into
    `axis` (ceil(extent / DOT_GROUP)) and `axis`i (DOT_GROUP lanes): (the two axes, the
    index `channel_base` + DOT_GROUP*axis + axis`i`, whether the last group overhangs the
    extent, so that operands read past it must be padded)."""
    from tuner.ir.dag import DOT_GROUP, Affine, Axis

    groups = -(-extent // DOT_GROUP)
    axes = [Axis(axis, groups, True), Axis(f"{axis}i", DOT_GROUP, True)]
    index = Affine(tuple(channel_base.terms) + ((axis, DOT_GROUP), (f"{axis}i", 1)),
                   channel_base.const)
    return axes, index, extent % DOT_GROUP != 0


def quantization(out_type: int, out_channel, channels: int, centered: bool = False):
    """The epilogue operands of an int8 task writing `out_type` (OUT_TYPE_VALUES), whose
    per-channel scale is read at `out_channel` (an index over `channels` output channels);
    `centered`: the kernel subtracts both operands' zero points (tuner.ir.dag.Quantization),
    the second operand's a third zero point."""
    from tuner.ir.dag import Operand, Quantization, aff

    kind = OUT_TYPE_VALUES[out_type]
    scale = None if kind == "int32" else \
        Operand("scale", (channels,), (out_channel,), dtype="float32")
    zero_points = Operand("zero_points", (3 if centered else 2,), (aff(),), dtype="int32")
    return Quantization(kind, scale, zero_points, centered)


def quantized_reference(acc, relu: int, out_type: int, bias=None, scale=None,
                        zero_points=None, channel_shape=None):
    """The int8 epilogue (tuner.ir.dag.Quantization) on exact int64 sums `acc`; `bias` and
    `scale` are per output channel, reshaped to `channel_shape` to broadcast."""
    acc = np.asarray(acc, dtype=np.int64)
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int64).reshape(channel_shape)
    kind = OUT_TYPE_VALUES[out_type]
    if kind == "int32":
        return (np.maximum(acc, 0) if relu else acc).astype(np.int32)
    product = acc.astype(np.float32) * np.asarray(scale, np.float32).reshape(channel_shape)
    if kind == "float32":
        return np.maximum(product, np.float32(0)) if relu else product
    zero = int(zero_points[1])
    low = zero if relu else 0
    return np.clip(np.rint(product).astype(np.int64) + zero, low, 255).astype(np.uint8)
