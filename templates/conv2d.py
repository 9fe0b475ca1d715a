"""conv2d: NCHW input, KCRS weight, any stride, padding, dilation and groups.

Shape N,C,H,W,K,R,S. Groups get an axis of their own (`g`, present when groups > 1), so every
index stays affine: output channel `g*K/groups + k`, input channel `g*C/groups + c`. Depthwise
convolution is groups = C. A pointwise convolution (1x1, stride 1, no padding) is a matrix
product over the pixels: its output rows and columns fuse into one pixel axis `p` of extent
OH*OW, read and written contiguously (the arrays keep their NCHW shape, the kernel indexes them
as N,C,H*W), so the vector axis can take full vectors where OW alone leaves a tail (56 = 3*16 +
8) and a register tile can span rows. The weight is constant (packed once at build time when a
schedule rewrites its layout); reads of the input outside its bounds are the zero padding. With
`residual`, an array of the output's shape is added after the bias (a ResNet block's skip
connection, fused with the ReLU that follows it).

dtype int8: uint8 data, int8 weight, int32 bias and sums, and the epilogue `out_type` names
(templates/_common.OUT_TYPE_VALUES, tuner.ir.dag.Quantization). Where a group has two input
channels or more, they are reduced in groups of four (`c` and `ci`, tuner.ir.dag.DOT_GROUP)
for the dot-product instructions; a last group that overhangs reads zero weights (and the
input's zero point, which they multiply to nothing). Depthwise convolutions have no channel
reduction and multiply lane by lane. `reduce_range`: the weight takes only
tuner.ir.dag.REDUCED_WEIGHT_RANGE.
"""

from __future__ import annotations

import numpy as np

from templates._common import (check_dtype, check_shape, dot_split, epilogue_reference,
                              fill_attrs, quantization, quantized_reference, residual_operand,
                              split_inputs)
from tuner.ir.dag import OUT_TYPES, REDUCED_WEIGHT_RANGE, Axis, ComputeDAG, Operand, aff
from tuner.errors import ShapeError

NAME = "conv2d"
SHAPE_FORM = "N,C,H,W,K,R,S"
DEFAULTS = {"stride": 1, "pad": 0, "dilation": 1, "groups": 1, "bias": False, "relu": 0,
            "residual": False, "gelu": 0, "out_type": 0, "reduce_range": False}


def normalize_attrs(shape, attrs: dict, dtype: str = "float32") -> dict:
    full = fill_attrs(NAME, attrs, DEFAULTS)
    check_dtype(NAME, dtype, full)
    return full


def output_hw(h: int, w: int, r: int, s: int, stride: int, pad: int, dilation: int):
    oh = (h + 2 * pad - dilation * (r - 1) - 1) // stride + 1
    ow = (w + 2 * pad - dilation * (s - 1) - 1) // stride + 1
    return oh, ow


def definition(shape, stride: int = 1, pad: int = 0, dilation: int = 1, groups: int = 1,
               bias: bool = False, relu: int = 0, residual: bool = False,
               gelu: int = 0, out_type: int = 0, reduce_range: bool = False,
               dtype: str = "float32") -> ComputeDAG:
    n, c, h, w, k, r, s = check_shape(shape, 7, SHAPE_FORM, NAME)
    for name, value, low in (("stride", stride, 1), ("dilation", dilation, 1),
                             ("groups", groups, 1), ("pad", pad, 0)):
        if value < low:
            raise ShapeError(f"conv2d {name} expects an integer >= {low}, got {value}")
    if c % groups or k % groups:
        raise ShapeError(f"conv2d groups={groups} must divide C={c} and K={k}")
    oh, ow = output_hw(h, w, r, s, stride, pad, dilation)
    if oh < 1 or ow < 1:
        raise ShapeError(f"conv2d with H,W={h},{w}, R,S={r},{s}, stride={stride}, pad={pad}, "
                         f"dilation={dilation} has an empty output ({oh}x{ow})")
    cg, kg = c // groups, k // groups
    pointwise = r == s == stride == 1 and pad == 0
    int8 = dtype == "int8"
    axes = [Axis("n", n)]
    if groups > 1:
        axes.append(Axis("g", groups))
    out_channel = aff(("g", kg), ("k", 1)) if groups > 1 else aff(("k", 1))
    in_channel = aff(("g", cg), ("c", 1)) if groups > 1 else aff(("c", 1))
    weight_channel = aff(("c", 1))
    reduction = [Axis("c", cg, True)]
    overhang = False
    if int8 and cg > 1:
        reduction, in_channel, overhang = dot_split(aff(("g", cg)) if groups > 1 else aff(),
                                                    cg, "c")
        weight_channel = dot_split(aff(), cg, "c")[1]
    types = dict(data="uint8", weight="int8", bias="int32", out=OUT_TYPES[out_type]) if int8 else \
        dict(data="float32", weight="float32", bias="float32", out="float32")
    weight_range = REDUCED_WEIGHT_RANGE if reduce_range else None
    if pointwise:
        axes += [Axis("k", kg), Axis("p", oh * ow)] + reduction
        data = Operand("data", (n, c, h * w), (aff(("n", 1)), in_channel, aff(("p", 1))),
                       reshaped_from=(n, c, h, w), padded=overhang, dtype=types["data"],
                       fill_zero_point=int8)
        weight = Operand("weight", (k, cg, 1, 1), (out_channel, weight_channel, aff(), aff()),
                         constant=True, padded=overhang, dtype=types["weight"],
                         value_range=weight_range)
        out = Operand("out", (n, k, oh * ow), (aff(("n", 1)), out_channel, aff(("p", 1))),
                      reshaped_from=(n, k, oh, ow), dtype=types["out"])
    else:
        axes += [Axis("k", kg), Axis("oh", oh), Axis("ow", ow)] + reduction[:1] + \
            [Axis("kh", r, True), Axis("kw", s, True)] + reduction[1:]
        data = Operand("data", (n, c, h, w),
                       (aff(("n", 1)), in_channel,
                        aff(("oh", stride), ("kh", dilation), const=-pad),
                        aff(("ow", stride), ("kw", dilation), const=-pad)),
                       padded=True, dtype=types["data"], fill_zero_point=int8)
        weight = Operand("weight", (k, cg, r, s),
                         (out_channel, weight_channel, aff(("kh", 1)), aff(("kw", 1))),
                         constant=True, padded=overhang, dtype=types["weight"],
                         value_range=weight_range)
        out = Operand("out", (n, k, oh, ow), (aff(("n", 1)), out_channel, aff(("oh", 1)),
                                              aff(("ow", 1))), dtype=types["out"])
    bias_op = Operand("bias", (k,), (out_channel,), constant=True,
                      dtype=types["bias"]) if bias else None
    flops = 2.0 * n * k * oh * ow * cg * r * s

    def window_sums(x, wt):
        """The convolution's sums over the padded input `x` and weight `wt`, in their dtype
        (float64 for the float reference, int64 for the exact int8 one)."""
        res = np.zeros((n, k, oh, ow), dtype=x.dtype)
        for gi in range(groups):
            xg = x[:, gi * cg:(gi + 1) * cg]
            wg = wt[gi * kg:(gi + 1) * kg]
            for ri in range(r):
                for si in range(s):
                    h0, w0 = ri * dilation, si * dilation
                    win = xg[:, :, h0:h0 + stride * (oh - 1) + 1:stride,
                             w0:w0 + stride * (ow - 1) + 1:stride]
                    res[:, gi * kg:(gi + 1) * kg] += np.einsum("nchw,kc->nkhw", win,
                                                                wg[:, :, ri, si])
        return res

    if int8:
        def quantized(data_val, weight_val, *rest):
            rest = list(rest)
            bias_val = rest.pop(0) if bias else None
            scale_val = rest.pop(0) if out_type else None
            zero_points = rest[0]
            x = np.pad(data_val.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)),
                       constant_values=int(zero_points[0]))
            return quantized_reference(window_sums(x, weight_val.astype(np.int64)), relu,
                                       out_type, bias_val, scale_val, zero_points,
                                       (1, k, 1, 1))

        return ComputeDAG(NAME, tuple(axes), out, data, weight, bias_op, relu, flops,
                          quantized, quant=quantization(out_type, out_channel, k),
                          dot_axis="ci" if len(reduction) > 1 else None)

    def reference(data_val, weight_val, *rest):
        bias_val, residual_val = split_inputs(rest, bias, residual)
        x = np.pad(data_val.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        res = window_sums(x, weight_val.astype(np.float64))
        return epilogue_reference(res, relu, None if bias_val is None else
                                  bias_val[None, :, None, None], residual_val, gelu)

    return ComputeDAG(NAME, tuple(axes), out, data, weight, bias_op, relu, flops, reference,
                      residual_operand(out) if residual else None, gelu)
