"""The numpy implementations of the network layers: convolution, pooling, normalisation,
softmax and the matrix products.

They are what runs a layer that is not a tuned task (and the reference a tuned one is checked
against), so they must be exact to the ONNX semantics and fast enough to run a ResNet-50 in a
test: convolution is im2col by strided views plus one matrix product per group, pooling reduces
over strided windows, never a Python loop over pixels. Spatial operators take any number of
spatial dimensions (Conv1d and Conv3d cost nothing more than Conv2d here). Each function takes the
input arrays (None for an omitted optional input), the attribute dict and the opset version, and
returns the list of outputs.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided



def spatial_pads(x_shape, kernel, strides, dilations, attrs):
    """(begin, end) pads per spatial axis, from `pads` or `auto_pad` as the spec defines them."""
    nd = len(kernel)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(x_shape[2:], kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return begin, end
    if auto == "VALID":
        return [0] * nd, [0] * nd
    pads = list(attrs.get("pads", [0] * 2 * nd))
    return pads[:nd], pads[nd:]


def _out_size(size, k, s, d, b, e, ceil_mode):
    span = size + b + e - ((k - 1) * d + 1)
    if ceil_mode:
        out = -(-span // s) + 1
        # The last window must start inside the input or the left padding (spec, PyTorch).
        if (out - 1) * s >= size + b:
            out -= 1
        return out
    return span // s + 1


def _windows(x, kernel, strides, dilations, begin, end, ceil_mode, fill):
    """A view (N, C, *out, *kernel) of the padded input: window elements without copying."""
    outs = [_out_size(n, k, s, d, b, e, ceil_mode)
            for n, k, s, d, b, e in zip(x.shape[2:], kernel, strides, dilations, begin, end)]
    # ceil_mode may read past the end padding: pad far enough that every window is in bounds.
    extra = [max((o - 1) * s + (k - 1) * d + 1 - (n + b + e), 0)
             for o, n, k, s, d, b, e in zip(outs, x.shape[2:], kernel, strides, dilations,
                                             begin, end)]
    widths = [(0, 0), (0, 0)] + [(b, e + x_) for b, e, x_ in zip(begin, end, extra)]
    if any(b or e for b, e in widths):
        x = np.pad(x, widths, constant_values=fill)
    st = x.strides
    shape = x.shape[:2] + tuple(outs) + tuple(kernel)
    strides_ = (st[:2] + tuple(st[2 + i] * strides[i] for i in range(len(kernel)))
                + tuple(st[2 + i] * dilations[i] for i in range(len(kernel))))
    return as_strided(x, shape, strides_, writeable=False), outs


def _kernel_attrs(a, kernel):
    nd = len(kernel)
    return list(a.get("strides", [1] * nd)), list(a.get("dilations", [1] * nd))


def conv(x, a, opset):
    data, weight, bias = x[0], x[1], x[2] if len(x) > 2 else None
    kernel = list(a.get("kernel_shape", weight.shape[2:]))
    strides, dilations = _kernel_attrs(a, kernel)
    begin, end = spatial_pads(data.shape, kernel, strides, dilations, a)
    group = int(a.get("group", 1))
    n, c = data.shape[:2]
    k = weight.shape[0]
    win, outs = _windows(data, kernel, strides, dilations, begin, end, False, 0)
    nd, pixels = len(kernel), math.prod(outs)
    cg, kg = c // group, k // group
    # (N, G, Cg*R*S, P) columns times (G, Kg, Cg*R*S) weights: one batched product, in
    # float64 so that channels computed alike round alike whichever BLAS micro-kernel (edge or
    # main tile) summed them: the `light` zoo models, whose weights are all equal, give
    # activations near 1e9 where one float32 ulp of difference decides their softmax.
    perm = (0, 1) + tuple(2 + nd + i for i in range(nd)) + tuple(2 + i for i in range(nd))
    cols = win.transpose(perm).astype(np.float64).reshape(n, group, cg * math.prod(kernel),
                                                          pixels)
    w = weight.astype(np.float64).reshape(group, kg, cg * math.prod(kernel))
    out = np.matmul(w[None], cols).reshape((n, k) + tuple(outs))
    if bias is not None:
        out += bias.reshape((1, k) + (1,) * nd)
    return [out.astype(data.dtype, copy=False)]


def _pool_setup(x, a):
    kernel = list(a["kernel_shape"])
    strides, dilations = _kernel_attrs(a, kernel)
    begin, end = spatial_pads(x.shape, kernel, strides, dilations, a)
    return kernel, strides, dilations, begin, end, bool(a.get("ceil_mode", 0))


def max_pool(x, a, opset):
    data = x[0]
    kernel, strides, dilations, begin, end, ceil = _pool_setup(data, a)
    outs = [_out_size(n, k, s, d, b, e, ceil)
            for n, k, s, d, b, e in zip(data.shape[2:], kernel, strides, dilations, begin, end)]
    # A box's maximum is separable: one axis at a time, the outer first (its slices keep
    # rows contiguous), each tap an elementwise maximum of strided slices over the outputs
    # whose tap is inside the input, so the -inf pads are never copied in. ResNet-50's 3x3
    # stride-2 pool on 64x112x112 (Zen 5, 1 thread, best of 5): 0.89 ms as 9 maxima over the
    # windows of a padded copy, 0.49 so.
    out = data
    for axis, (k, s, d, b, o) in enumerate(zip(kernel, strides, dilations, begin, outs), 2):
        out = _max_along(out, axis, k, s, d, b, o)
    return [out]


def _max_along(x, axis, k, s, d, b, o):
    """out[.., j, ..] = max over taps t of x[.., j*s - b + t*d, ..] along `axis`, taps
    outside the input left out (the lowest value where none is inside). The output starts as
    a copy of a tap inside the input for every output where there is one (the middle tap of
    a padded window), which saves filling it and one maximum: 0.48 -> 0.37 ms for ResNet-50's
    pool (Zen 5, 1 thread)."""
    n = x.shape[axis]
    before = (slice(None),) * axis
    spans = []  # per tap: the outputs [lo, hi) whose tap is inside, and its input slice
    for t in range(k):
        start = t * d - b          # the input index of output 0's tap
        lo = max(0, -(start // s))  # the first output whose tap is >= 0 (ceil(-start / s))
        hi = min(o, (n - 1 - start) // s + 1) if n - 1 - start >= 0 else 0
        if hi > lo:
            spans.append((lo, hi, slice(lo * s + start, (hi - 1) * s + start + 1, s)))
    whole = next((span for span in spans if span[:2] == (0, o)), None)
    if whole is not None:
        out = x[before + (whole[2],)].copy()  # a copy even where the tap is all of x
        spans.remove(whole)
    else:
        shape = list(x.shape)
        shape[axis] = o
        lowest = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
        out = np.full(shape, lowest, x.dtype)
    for lo, hi, taps in spans:
        target = out[before + (slice(lo, hi),)]
        np.maximum(target, x[before + (taps,)], out=target)
    return out


def average_pool(x, a, opset):
    data = x[0]
    kernel, strides, dilations, begin, end, ceil = _pool_setup(data, a)
    win, outs = _windows(data, kernel, strides, dilations, begin, end, ceil, 0)
    axes = tuple(range(-len(kernel), 0))
    total = win.sum(axis=axes, dtype=np.float64)
    # The divisor: elements inside the input, or also the explicit pads (never the cells that
    # ceil_mode adds past them), per window and axis; the count is separable over axes.
    count = np.ones(outs)
    for i, (n, k, s, d, b, e, o) in enumerate(zip(data.shape[2:], kernel, strides, dilations,
                                                  begin, end, outs)):
        lo, hi = (-b, n + e) if a.get("count_include_pad", 0) else (0, n)
        starts = np.arange(o) * s - b
        taps = starts[:, None] + np.arange(k)[None, :] * d
        per_axis = ((taps >= lo) & (taps < hi)).sum(axis=1)
        shape = [1] * len(outs)
        shape[i] = o
        count = count * per_axis.reshape(shape)
    return [(total / count).astype(data.dtype)]


def global_average_pool(x, a, opset):
    data = x[0]
    n, c = data.shape[:2]
    pixels = math.prod(data.shape[2:])
    # A product with a vector of ones, in the input's type (float32, as the kernels sum):
    # numpy's mean over the last axes took 60 us for ResNet-50's 2048x7x7 (Zen 5), the
    # product in float64 28 (90 with the input out of cache), in float32 8 (45).
    ones = np.ones(pixels, data.dtype if data.dtype.kind == "f" else np.float64)
    total = data.reshape(n, c, pixels) @ ones
    return [(total / pixels).reshape((n, c) + (1,) * (data.ndim - 2)).astype(data.dtype)]


def global_max_pool(x, a, opset):
    data = x[0]
    return [data.max(axis=tuple(range(2, data.ndim)), keepdims=True)]


def batch_normalization(x, a, opset):
    data, scale, bias, mean, var = x[:5]
    shape = (1, -1) + (1,) * (data.ndim - 2)
    inv = scale / np.sqrt(var.astype(np.float64) + a.get("epsilon", 1e-5))
    out = (data - mean.reshape(shape)) * inv.reshape(shape).astype(data.dtype) \
        + bias.reshape(shape)
    return [out.astype(data.dtype, copy=False)]


def instance_normalization(x, a, opset):
    data, scale, bias = x
    axes = tuple(range(2, data.ndim))
    mean = data.mean(axis=axes, keepdims=True, dtype=np.float64)
    var = ((data - mean) ** 2).mean(axis=axes, keepdims=True)
    shape = (1, -1) + (1,) * (data.ndim - 2)
    out = (data - mean) / np.sqrt(var + a.get("epsilon", 1e-5)) * scale.reshape(shape) \
        + bias.reshape(shape)
    return [out.astype(data.dtype)]


def layer_normalization(x, a, opset):
    data, scale = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    axis = a.get("axis", -1) % data.ndim
    axes = tuple(range(axis, data.ndim))
    d64 = data.astype(np.float64)
    mean = d64.mean(axis=axes, keepdims=True)
    var = ((d64 - mean) ** 2).mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(var + a.get("epsilon", 1e-5))
    out = (d64 - mean) * inv * scale
    if bias is not None:
        out = out + bias
    outs = [out.astype(data.dtype), mean.astype(np.float32), inv.astype(np.float32)]
    return outs


def lrn(x, a, opset):
    data = x[0]
    size = int(a["size"])
    alpha, beta, bias = a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)
    square = np.square(data.astype(np.float64))
    c = data.shape[1]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    padded = np.pad(square, [(0, 0), (lo, hi)] + [(0, 0)] * (data.ndim - 2))
    csum = np.cumsum(padded, axis=1)
    csum = np.concatenate([np.zeros_like(csum[:, :1]), csum], axis=1)
    window = csum[:, size:size + c] - csum[:, :c]
    return [(data / (bias + alpha / size * window) ** beta).astype(data.dtype)]


def _softmax_axes(data, a, opset):
    """Before opset 13 Softmax flattens to 2-D at `axis` (default 1) and normalises the whole
    second part; from 13 it normalises along `axis` alone (default -1)."""
    if opset >= 13:
        return (a.get("axis", -1) % data.ndim,)
    return tuple(range(a.get("axis", 1) % data.ndim, data.ndim))


def softmax(x, a, opset):
    data = x[0].astype(np.float64)
    axes = _softmax_axes(data, a, opset)
    e = np.exp(data - data.max(axis=axes, keepdims=True))
    return [(e / e.sum(axis=axes, keepdims=True)).astype(x[0].dtype)]


def log_softmax(x, a, opset):
    data = x[0].astype(np.float64)
    axes = _softmax_axes(data, a, opset)
    shifted = data - data.max(axis=axes, keepdims=True)
    out = shifted - np.log(np.exp(shifted).sum(axis=axes, keepdims=True))
    return [out.astype(x[0].dtype)]


def gemm(x, a, opset):
    left, right = x[0], x[1]
    c = x[2] if len(x) > 2 else None
    if a.get("transA", 0):
        left = left.T
    if a.get("transB", 0):
        right = right.T
    out = a.get("alpha", 1.0) * (left @ right)
    if c is not None and a.get("beta", 1.0) != 0:
        out = out + a.get("beta", 1.0) * c
    return [out.astype(x[0].dtype, copy=False)]


def matmul(x, a, opset):
    return [np.matmul(x[0], x[1])]
