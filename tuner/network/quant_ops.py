"""numpy implementations of ONNX's quantization operators, for the nodes no int8 kernel runs.

QuantizeLinear and DequantizeLinear (per tensor, or per axis with `axis`), DynamicQuantizeLinear,
and the integer operator forms QLinearConv, QLinearMatMul, ConvInteger and MatMulInteger. The
integer products are computed exactly (in float64 on the zero-point-shifted integers, whose
sums stay far below 2^53) and requantized as ONNX defines it: the product times the scales in
float32, rounded half to even, plus the zero point, saturated to the output type. Blocked
quantization (opset 21's `block_size`) and float8 types are refused with one line naming them.
"""

from __future__ import annotations

import numpy as np

from tuner.errors import TunerError
from tuner.network import ops_nn

QUANTIZED_TYPES = (np.uint8, np.int8)


def _per_axis(value, rank: int, axis: int) -> np.ndarray:
    """A scale or zero point shaped to broadcast along `axis` of a rank-`rank` tensor."""
    value = np.asarray(value)
    if value.ndim == 0 or value.size == 1:
        return value.reshape(())
    shape = [1] * rank
    shape[axis % rank] = value.size
    return value.reshape(shape)


def _check_plain(a: dict, op: str) -> None:
    if a.get("block_size", 0):
        raise TunerError(f"{op} with block_size={a['block_size']} (blocked quantization) is "
                         f"not supported")


def quantize(real, scale, zero_point, dtype) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round_half_even(real / scale) + zero_point), in float32
    and in place after the division (a quantized model runs these on every activation its
    kernels do not: float64 temporaries tripled their time). Adding an integer zero point to
    an integer-valued float32 is exact, and so is clipping to the type's bounds."""
    q = np.divide(np.asarray(real, np.float32), np.asarray(scale, np.float32),
                  dtype=np.float32)
    return _saturate(q, zero_point, dtype)


def _saturate(q: np.ndarray, zero_point, dtype) -> np.ndarray:
    """float32 `q` (overwritten) rounded half to even, plus `zero_point`, saturated to
    `dtype`. Where |q| reaches 2^24 the addition may round, but such values saturate alike."""
    info = np.iinfo(dtype)
    np.rint(q, out=q)
    q += np.asarray(zero_point).astype(np.float32)
    np.clip(q, info.min, info.max, out=q)
    return q.astype(dtype)


def quantize_linear(x, a, opset):
    _check_plain(a, "QuantizeLinear")
    data, scale = x[0], x[1]
    zero = x[2] if len(x) > 2 and x[2] is not None else np.uint8(0)
    dtype = np.asarray(zero).dtype.type
    if dtype not in QUANTIZED_TYPES:
        raise TunerError(f"QuantizeLinear to {np.dtype(dtype).name} is not supported (uint8 "
                         f"and int8 are)")
    axis = a.get("axis", 1)
    return [quantize(data, _per_axis(scale, data.ndim, axis),
                     _per_axis(zero, data.ndim, axis), dtype)]


def dequantize_linear(x, a, opset):
    _check_plain(a, "DequantizeLinear")
    data, scale = x[0], x[1]
    zero = x[2] if len(x) > 2 and x[2] is not None else 0
    axis = a.get("axis", 1)
    # (x - zero) is an integer of at most 33 bits for int32 data, exact in float64; for 8-bit
    # data it is exact in float32 too, where the subtraction and product happen in place
    wide = np.float64 if data.dtype.itemsize > 2 else np.float32
    out = data.astype(wide)
    out -= _per_axis(zero, data.ndim, axis).astype(wide)
    if wide is np.float64:
        out = out.astype(np.float32)
    out *= _per_axis(scale, data.ndim, axis).astype(np.float32)
    return [out]


def dynamic_quantize_linear(x, a, opset):
    """uint8 with the scale and zero point of the data's range (widened to include 0), in
    float32 as ONNX writes it: scale = (max - min) / 255, zero point = round(0 - min / scale)
    (computing the scale in float64 and rounding it once made the zero point differ by one
    from onnxruntime's on some inputs)."""
    data = np.asarray(x[0], np.float32)
    low = np.minimum(np.float32(0), data.min()) if data.size else np.float32(0)
    high = np.maximum(np.float32(0), data.max()) if data.size else np.float32(0)
    scale = (high - low) / np.float32(255)
    if scale == 0:
        scale = np.float32(1)
    zero = np.uint8(np.clip(np.rint(np.float32(0) - low / scale), 0, 255))
    return [quantize(data, scale, zero, np.uint8), np.array(scale, np.float32),
            np.array(zero, np.uint8)]


def _shifted(value, zero, axis: int | None = None) -> np.ndarray:
    value = np.asarray(value, np.float64)
    if zero is None:
        return value
    zero = np.asarray(zero, np.float64)
    if axis is not None and zero.size > 1:
        zero = _per_axis(zero, value.ndim, axis)
    return value - zero


def conv_integer(x, a, opset):
    """ConvInteger: int32 sums of (x - x_zp) * (w - w_zp), zero-padded in that domain."""
    data = _shifted(x[0], x[2] if len(x) > 2 else None)
    weight = _shifted(x[1], x[3] if len(x) > 3 else None, 0)
    return [np.rint(ops_nn.conv([data, weight], a, opset)[0]).astype(np.int32)]


def matmul_integer(x, a, opset):
    left = _shifted(x[0], x[2] if len(x) > 2 else None)
    right = _shifted(x[1], x[3] if len(x) > 3 else None, -1)
    return [np.rint(np.matmul(left, right)).astype(np.int32)]


def qlinear_conv(x, a, opset):
    """QLinearConv: x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp[, B]."""
    sums = conv_integer([x[0], x[3], x[2], x[5]], a, opset)[0].astype(np.int64)
    if len(x) > 8 and x[8] is not None:
        sums = sums + np.asarray(x[8], np.int64).reshape(1, -1, *([1] * (sums.ndim - 2)))
    scale = (np.float32(x[1]) * _per_axis(x[4], sums.ndim, 1).astype(np.float32)
             / np.float32(x[6])).astype(np.float32)
    return [_requantize(sums, scale, x[7])]


def qlinear_matmul(x, a, opset):
    """QLinearMatMul: a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp."""
    sums = matmul_integer([x[0], x[3], x[2], x[5]], a, opset)[0].astype(np.int64)
    scale = (np.float32(x[1]) * _per_axis(x[4], sums.ndim, -1).astype(np.float32)
             / np.float32(x[6])).astype(np.float32)
    return [_requantize(sums, scale, x[7])]


def _requantize(sums, scale, zero_point) -> np.ndarray:
    real = sums.astype(np.float32) * scale
    return _saturate(real, zero_point, np.asarray(zero_point).dtype.type)


QUANT_OPS = {
    "QuantizeLinear": quantize_linear,
    "DequantizeLinear": dequantize_linear,
    "DynamicQuantizeLinear": dynamic_quantize_linear,
    "ConvInteger": conv_integer,
    "MatMulInteger": matmul_integer,
    "QLinearConv": qlinear_conv,
    "QLinearMatMul": qlinear_matmul,
}
