"""Comparators measured in the same process and with the same protocol as our kernels.

numpy's matmul runs on OpenBLAS; its thread count is set at run time with threadpoolctl
(OPENBLAS_NUM_THREADS only works before numpy is imported). onnxruntime's Conv runs on MLAS
with the weight as an initializer, so it may pre-pack it as our kernels do; onnxruntime is an
optional dependency (`pip install -e .[bench]`).
"""

from __future__ import annotations

import numpy as np

from tuner.errors import TunerError
from tuner.timing import TimingResult, time_callable


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def numpy_matmul(m: int, n: int, k: int, threads: int, batch: int | None = None,
                 min_sample_s: float = 0.01) -> TimingResult:
    from threadpoolctl import threadpool_limits

    shape_a = (m, k) if batch is None else (batch, m, k)
    shape_b = (k, n) if batch is None else (batch, k, n)
    a = _rng().uniform(-1, 1, shape_a).astype(np.float32)
    b = _rng().uniform(-1, 1, shape_b).astype(np.float32)
    out = np.empty(shape_a[:-1] + (n,), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        return time_callable(lambda: np.matmul(a, b, out=out), min_sample_s=min_sample_s)


def _onnxruntime():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise TunerError("onnxruntime is not installed: pip install -e '.[bench]'") from None
    return onnx, onnxruntime


def _session(model, threads: int):
    _, ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def onnxruntime_conv2d(shape, stride: int, pad: int, dilation: int, groups: int, threads: int,
                       min_sample_s: float = 0.01) -> TimingResult:
    onnx, _ = _onnxruntime()
    from onnx import TensorProto, helper, numpy_helper

    n, c, h, w, k, r, s = shape
    weight = _rng().uniform(-1, 1, (k, c // groups, r, s)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[stride, stride],
                            pads=[pad] * 4, dilations=[dilation, dilation], group=groups)
    graph = helper.make_graph([node], "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [n, c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = _session(model, threads)
    x = _rng().uniform(-1, 1, (n, c, h, w)).astype(np.float32)
    return time_callable(lambda: sess.run(None, {"x": x}), min_sample_s=min_sample_s)


def onnxruntime_matmul(m: int, n: int, k: int, threads: int, batch: int | None = None,
                       min_sample_s: float = 0.01) -> TimingResult:
    onnx, _ = _onnxruntime()
    from onnx import TensorProto, helper, numpy_helper

    shape_a = [m, k] if batch is None else [batch, m, k]
    shape_b = (k, n) if batch is None else (batch, k, n)
    b = _rng().uniform(-1, 1, shape_b).astype(np.float32)
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    graph = helper.make_graph([node], "matmul",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, shape_a)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = _session(model, threads)
    a = _rng().uniform(-1, 1, shape_a).astype(np.float32)
    return time_callable(lambda: sess.run(None, {"a": a}), min_sample_s=min_sample_s)
