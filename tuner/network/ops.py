"""The operator registry: ONNX op_type -> numpy function, and the elementwise and tensor ops.

Every operator the runtime can run is one entry of `OPS`; the runtime refuses a graph with any
other operator before running anything, so this dict is also the answer to "what is
supported". Each function takes the input arrays (None for an omitted optional input), the
attribute dict and the opset version, and returns the list of outputs. Attribute defaults and
the attribute-or-input changes (Clip's bounds, Squeeze's axes, Pad's pads, Slice's starts moved
from attributes to inputs at opsets 10 to 18) follow `onnx.defs.get_schema`. The layers
(convolution, pooling, normalisation) live in ops_nn.py.
"""

from __future__ import annotations

import math

import numpy as np

from tuner.errors import TunerError
from tuner.ir.reference import erf, gelu
from tuner.network import ops_nn
from tuner.network.quant_ops import QUANT_OPS

# TensorProto.DataType codes -> numpy, for Cast and ConstantOfShape (no onnx import needed).
ONNX_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
               7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32,
               13: np.uint64}


def shape_of(dims, a) -> np.ndarray:
    """The output of Shape for a tensor of shape `dims` (opset 15 added start/end)."""
    return np.array(dims[a.get("start", 0):a.get("end", len(dims))], dtype=np.int64)


def _unary(fn):
    return lambda x, a, opset: [np.asarray(fn(x[0], a)).astype(x[0].dtype, copy=False)]


def legacy_broadcast(left, right, a, opset):
    """Before opset 7, `broadcast=1, axis=k` aligns the right operand at axis k of the left."""
    if opset < 7 and a.get("broadcast", 0) and "axis" in a and right.ndim:
        axis = a["axis"] % left.ndim
        right = right.reshape(right.shape + (1,) * (left.ndim - axis - right.ndim))
    return left, right


def _binary(fn):
    def run(x, a, opset):
        left, right = legacy_broadcast(x[0], x[1], a, opset)
        return [np.asarray(fn(left, right)).astype(np.result_type(x[0], x[1]), copy=False)]
    return run


def _variadic(fn):
    def run(x, a, opset):
        out = x[0]
        for other in x[1:]:
            out = fn(out, other)
        return [np.asarray(out).astype(x[0].dtype, copy=False)]
    return run


def _div(left, right):
    if np.issubdtype(left.dtype, np.integer):
        return np.trunc(left / right).astype(left.dtype)
    return left / right


def clip(x, a, opset):
    data = x[0]
    if opset < 11:
        low, high = a.get("min", -np.inf), a.get("max", np.inf)
    else:
        low = x[1] if len(x) > 1 and x[1] is not None else -np.inf
        high = x[2] if len(x) > 2 and x[2] is not None else np.inf
    return [np.clip(data, low, high).astype(data.dtype, copy=False)]


def constant(x, a, opset):
    for key, value in a.items():
        if key == "value":
            return [value]
        if key in ("value_float", "value_floats"):
            return [np.array(value, dtype=np.float32)]
        if key in ("value_int", "value_ints"):
            return [np.array(value, dtype=np.int64)]
    raise TunerError(f"Constant with attributes {sorted(a)} is not supported")


def constant_of_shape(x, a, opset):
    value = a.get("value", np.zeros(1, np.float32))
    return [np.full(tuple(int(d) for d in x[0]), value.reshape(-1)[0], dtype=value.dtype)]


def reshape(x, a, opset):
    data = x[0]
    shape = [int(d) for d in (x[1] if opset >= 5 else a["shape"])]
    if not a.get("allowzero", 0):
        shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [data.reshape(shape)]


def flatten(x, a, opset):
    data = x[0]
    axis = a.get("axis", 1)
    axis += data.ndim if axis < 0 else 0  # in [-rank, rank], a negative one from the end
    return [data.reshape(math.prod(data.shape[:axis]), -1)]


def _axes(x, a, opset, since):
    """Axes given as attribute before opset `since` and as the second input from it."""
    if opset >= since:
        return None if len(x) < 2 or x[1] is None else [int(v) for v in x[1]]
    return a.get("axes")


def squeeze(x, a, opset):
    data, axes = x[0], _axes(x, a, opset, 13)
    if axes is None:
        return [np.squeeze(data)]
    return [np.squeeze(data, axis=tuple(ax % data.ndim for ax in axes))]


def unsqueeze(x, a, opset):
    data, axes = x[0], _axes(x, a, opset, 13)
    rank = data.ndim + len(axes)
    shape = list(data.shape)
    for axis in sorted(ax % rank for ax in axes):
        shape.insert(axis, 1)
    return [data.reshape(shape)]


def concat(x, a, opset):
    return [np.concatenate([v for v in x if v is not None], axis=a.get("axis", 1 if opset < 4
                                                                       else None))]


def split(x, a, opset):
    data = x[0]
    axis = a.get("axis", 0) % data.ndim
    sizes = x[1] if opset >= 13 and len(x) > 1 and x[1] is not None else a.get("split")
    if sizes is None:
        parts = a.get("num_outputs") or a["_outputs"]
        size = -(-data.shape[axis] // parts)
        sizes = [min(size, data.shape[axis] - i * size) for i in range(parts)]
    bounds = np.cumsum([int(s) for s in sizes])[:-1]
    return np.split(data, bounds, axis=axis)


def slice_(x, a, opset):
    data = x[0]
    if opset < 10:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = x[1], x[2]
        axes = x[3] if len(x) > 3 else None
        steps = x[4] if len(x) > 4 else None
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[int(axis) % data.ndim] = slice(int(start), int(end), int(step))
    return [data[tuple(index)]]


def gather(x, a, opset):
    data, index = x[0], x[1].astype(np.int64)
    axis = a.get("axis", 0) % data.ndim
    # an array, 0-d for a scalar index (np.take gives a numpy scalar then)
    return [np.asarray(np.take(data, np.where(index < 0, index + data.shape[axis], index),
                               axis=axis))]


def pad(x, a, opset):
    data = x[0]
    if opset < 11:
        pads, value = a.get("pads", a.get("paddings")), a.get("value", 0.0)
    else:
        pads = x[1]
        value = x[2].reshape(-1)[0] if len(x) > 2 and x[2] is not None and x[2].size else 0
    rank = data.ndim
    axes = list(range(rank)) if opset < 18 or len(x) < 4 or x[3] is None else \
        [int(v) % rank for v in x[3]]
    widths = [(0, 0)] * rank
    for i, axis in enumerate(axes):
        widths[axis] = (int(pads[i]), int(pads[i + len(axes)]))
    mode = a.get("mode", "constant")
    if mode == "constant":
        return [np.pad(data, widths, constant_values=value)]
    return [np.pad(data, widths, mode={"reflect": "reflect", "edge": "edge",
                                       "wrap": "wrap"}[mode])]


def reduce(fn):
    def run(x, a, opset):
        data = x[0]
        since = 13 if fn is np.sum else 18
        axes = _axes(x, a, opset, since)
        if axes is None:
            if a.get("noop_with_empty_axes", 0):
                return [data]
            axes = range(data.ndim)
        keep = bool(a.get("keepdims", 1))
        out = fn(data, axis=tuple(ax % data.ndim for ax in axes), keepdims=keep)
        return [np.asarray(out).astype(data.dtype, copy=False)]
    return run


def cast(x, a, opset):
    return [x[0].astype(ONNX_DTYPES[a["to"]])]


def dropout(x, a, opset):
    return [x[0], np.ones(x[0].shape, dtype=np.bool_)]


def prelu(x, a, opset):
    data, slope = x[0], x[1]
    if opset < 7 and slope.ndim == 1 and data.ndim > 2 and slope.size == data.shape[1]:
        slope = slope.reshape((-1,) + (1,) * (data.ndim - 2))
    return [np.where(data < 0, data * slope, data).astype(data.dtype)]


def _selu(v, a):
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma",
                                                                     1.05070102214813232421875)
    return gamma * np.where(v > 0, v, alpha * (np.exp(v) - 1))


def _sigmoid(v, a):
    return 1.0 / (1.0 + np.exp(-v.astype(np.float64)))


def where(x, a, opset):
    return [np.where(x[0], x[1], x[2])]


def expand(x, a, opset):
    shape = np.broadcast_shapes(x[0].shape, tuple(int(d) for d in x[1]))
    return [np.broadcast_to(x[0], shape).copy()]


def tile(x, a, opset):
    return [np.tile(x[0], [int(r) for r in x[1]])]


def range_(x, a, opset):
    return [np.arange(x[0], x[1], x[2]).astype(x[0].dtype)]


OPS = {
    "Conv": ops_nn.conv,
    "MaxPool": ops_nn.max_pool,
    "AveragePool": ops_nn.average_pool,
    "GlobalAveragePool": ops_nn.global_average_pool,
    "GlobalMaxPool": ops_nn.global_max_pool,
    "BatchNormalization": ops_nn.batch_normalization,
    "InstanceNormalization": ops_nn.instance_normalization,
    "LayerNormalization": ops_nn.layer_normalization,
    "LRN": ops_nn.lrn,
    "Softmax": ops_nn.softmax,
    "LogSoftmax": ops_nn.log_softmax,
    "Gemm": ops_nn.gemm,
    "MatMul": ops_nn.matmul,
    "Relu": _unary(lambda v, a: np.maximum(v, 0)),
    "LeakyRelu": _unary(lambda v, a: np.where(v < 0, v * a.get("alpha", 0.01), v)),
    "Elu": _unary(lambda v, a: np.where(v > 0, v, a.get("alpha", 1.0) * (np.exp(v) - 1))),
    "Selu": _unary(_selu),
    "Sigmoid": _unary(_sigmoid),
    "HardSigmoid": _unary(lambda v, a: np.clip(a.get("alpha", 0.2) * v + a.get("beta", 0.5),
                                               0, 1)),
    "Tanh": _unary(lambda v, a: np.tanh(v)),
    "Softplus": _unary(lambda v, a: np.logaddexp(0, v)),
    "Softsign": _unary(lambda v, a: v / (1 + np.abs(v))),
    "Exp": _unary(lambda v, a: np.exp(v)),
    "Log": _unary(lambda v, a: np.log(v)),
    "Sqrt": _unary(lambda v, a: np.sqrt(v)),
    "Abs": _unary(lambda v, a: np.abs(v)),
    "Neg": _unary(lambda v, a: -v),
    "Reciprocal": _unary(lambda v, a: 1 / v),
    "Floor": _unary(lambda v, a: np.floor(v)),
    "Ceil": _unary(lambda v, a: np.ceil(v)),
    "Erf": _unary(lambda v, a: erf(v)),
    "Gelu": _unary(lambda v, a: gelu(v, a.get("approximate", "none"))),
    "Identity": lambda x, a, opset: [x[0]],
    "Dropout": dropout,
    "Clip": clip,
    "PRelu": prelu,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(_div),
    "Pow": _binary(np.power),
    "Equal": _binary(np.equal),
    "Less": _binary(np.less),
    "Greater": _binary(np.greater),
    "Where": where,
    "Sum": _variadic(np.add),
    "Max": _variadic(np.maximum),
    "Min": _variadic(np.minimum),
    "Mean": lambda x, a, opset: [(sum(x) / len(x)).astype(x[0].dtype, copy=False)],
    "ReduceMean": reduce(np.mean),
    "ReduceSum": reduce(np.sum),
    "ReduceMax": reduce(np.max),
    "Constant": constant,
    "ConstantOfShape": constant_of_shape,
    "Shape": lambda x, a, opset: [shape_of(x[0].shape, a)],
    "Size": lambda x, a, opset: [np.array(x[0].size, dtype=np.int64)],
    "CastLike": lambda x, a, opset: [x[0].astype(x[1].dtype)],
    "Cast": cast,
    "Reshape": reshape,
    "Flatten": flatten,
    "Transpose": lambda x, a, opset: [np.transpose(x[0], a.get("perm"))],
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Gather": gather,
    "Pad": pad,
    "Expand": expand,
    "Tile": tile,
    "Range": range_,
}


OPS.update(QUANT_OPS)


def run_node(node, values, opset: int) -> list[np.ndarray]:
    """The outputs of `node` on `values` (one per input name, None where the name is '')."""
    attrs = dict(node.attributes)
    if node.op_type == "Split":  # before opset 18 an even split is as many parts as outputs
        attrs["_outputs"] = len(node.outputs)
    # NaN and inf are values like any other in ONNX (Sqrt of a negative, Pow): no warnings.
    with np.errstate(all="ignore"):
        outputs = OPS[node.op_type](values, attrs, opset)
    if len(outputs) < len([o for o in node.outputs if o]):
        raise TunerError(f"ONNX operator '{node.op_type}' (node '{node.name}'): only "
                         f"{len(outputs)} of its {len(node.outputs)} outputs are supported")
    return list(outputs[:len(node.outputs)])
