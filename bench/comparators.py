"""Comparators: numpy (OpenBLAS) and onnxruntime (MLAS), each timed in a process of its own.

Why a process each: at two threads on a two-core machine, a library's thread pool that is
still spinning after its last call (OpenBLAS, onnxruntime and libgomp all busy-wait a while
before they sleep) steals a core from whatever runs next, so a comparator timed in the process
that also runs our kernels, or after another library, is measured slower than it is (and so are
our kernels after it). `measure_in_subprocess(kind, task, threads)` therefore starts
`python -m bench.comparators '{"kind": ..., "task": ..., "threads": ...}'` for one
(comparator, shape, thread count) (bench/child.py), with the thread counts set in its
environment (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS: read when the library
loads) and again with threadpoolctl / onnxruntime's session options, and reads one JSON line
back. A missing
library, a crash or a hang gives None and a note on stderr, never a number.

The timing itself is the in-process functions below, which the child calls, with the one timing
protocol (tuner/measure/timing.py) our kernels are measured with. Constant operands are prepared
once, before timing, as our kernels pack theirs once at build time: numpy's B is created once;
onnxruntime's Conv weight and MatMul B are initializers, so MLAS may pre-pack them when the
session is created. Outputs are preallocated for everyone (numpy `out=`, onnxruntime I/O
binding, our bound kernel's `out=`): a fresh multi-megabyte output per call costs page faults
that say nothing about the kernel. onnxruntime is an optional dependency
(`pip install -e .[bench]`).

    python -m bench.comparators '{"kind": "numpy", "task": {"op": "matmul",
                                  "shape": [128, 768, 768]}, "threads": 1}'

The same child times our own kernel as a user gets it (kind "tuned": `tuner.build` from a
records database, weights bound once), so that the ratios in a report compare one protocol
with itself, each side in a fresh process, at the same moment of a noisy machine.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from bench.child import TIMEOUT_S, run_child
from tuner.buffers import aligned_copy, aligned_empty
from tuner.errors import TunerError
from tuner.ir.target import Target
from tuner.ir.task import Task
from tuner.measure.timing import TimingResult, time_callable

KINDS = ("numpy", "onnxruntime")


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ---------------------------------------------------------------- in-process (the child's)
def numpy_matmul(m: int, n: int, k: int, threads: int, batch: int | None = None,
                 min_sample_s: float = 0.01) -> TimingResult:
    from threadpoolctl import threadpool_limits

    shape_a = (m, k) if batch is None else (batch, m, k)
    shape_b = (k, n) if batch is None else (batch, k, n)
    a = aligned_copy(_rng().uniform(-1, 1, shape_a).astype(np.float32))
    b = aligned_copy(_rng().uniform(-1, 1, shape_b).astype(np.float32))
    out = aligned_empty(shape_a[:-1] + (n,), np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        return time_callable(lambda: np.matmul(a, b, out=out), min_sample_s=min_sample_s)


def _onnxruntime():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise TunerError("onnxruntime is not installed: pip install -e '.[bench]'") from None
    return onnx, onnxruntime


def session(model, threads: int):
    """An onnxruntime session of `model` (a ModelProto) at `threads`, sequential, with every
    graph optimisation (its fusions are part of what it is compared on)."""
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
    sess = session(model, threads)
    x = _rng().uniform(-1, 1, (n, c, h, w)).astype(np.float32)
    out_shape = Task.create("conv2d", shape, stride=stride, pad=pad, dilation=dilation,
                            groups=groups).dag().output.array_shape
    return time_callable(bound_run(sess, {"x": x}, {"y": out_shape}),
                         min_sample_s=min_sample_s)


def bound_run(sess, feeds: dict[str, np.ndarray], out_shapes: dict[str, tuple[int, ...]]):
    """One call of `sess` on `feeds` into preallocated float32 outputs (I/O binding), as our
    kernels and numpy are timed: no allocation of an output in the timed call."""
    binding = sess.io_binding()
    # every side's buffers on cache lines, as our runtime allocates them (tuner/buffers.py)
    held = [aligned_copy(array) for array in feeds.values()]
    for name, array in zip(feeds, held):
        binding.bind_cpu_input(name, array)
    outs = {name: aligned_empty(shape, np.float32) for name, shape in out_shapes.items()}
    for name, y in outs.items():
        binding.bind_output(name, "cpu", 0, np.float32, list(y.shape), y.ctypes.data)

    def run():  # keeps the inputs and outputs alive for as long as the binding uses them
        sess.run_with_iobinding(binding)
        return outs, held
    return run


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
    sess = session(model, threads)
    a = _rng().uniform(-1, 1, shape_a).astype(np.float32)
    return time_callable(bound_run(sess, {"a": a}, {"y": tuple(shape_a[:-1]) + (n,)}),
                         min_sample_s=min_sample_s)


def _quantized_model(node, inputs: list, initializers: list, output_type: int):
    onnx, _ = _onnxruntime()
    from onnx import helper

    graph = helper.make_graph([node], "int8", inputs,
                              [helper.make_tensor_value_info("y", output_type, None)],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def onnxruntime_int8(task: Task, threads: int, min_sample_s: float = 0.01) -> TimingResult:
    """onnxruntime's int8 operator for an int8 task: QLinearConv (uint8 out) or ConvInteger
    (int32 out) for conv2d, QLinearMatMul or MatMulInteger for matmul; uint8 activations with
    a zero point, int8 weights (zero point 0, per-output-channel scales where the operator
    takes them), the int32 bias where QLinearConv takes one. For batch_matmul the same
    operators of two uint8 inputs with a zero point each, the second an input too (attention's
    products: onnxruntime cannot pack it ahead). A dequantized float32 output has no single
    onnxruntime operator: no comparator."""
    onnx, _ = _onnxruntime()
    from onnx import TensorProto, helper, numpy_helper

    dag, attrs = task.dag(), task.attr_dict
    kind = ("int32", "uint8", "float32")[attrs.get("out_type", 0)]
    if kind == "float32" or attrs.get("relu"):
        raise TunerError(f"no onnxruntime operator computes {task.key} in one node")
    rng = _rng()
    inputs = dag.random_inputs(rng)
    x, w = inputs[0], inputs[1]
    # onnxruntime's product is [M, N] whatever our out_order (21 stores it transposed)
    out_shape = (task.shape[0], task.shape[1]) if task.op == "matmul" else \
        dag.output.array_shape
    channels = dag.output.array_shape[1] if task.op == "conv2d" else out_shape[-1]
    x_zp = np.array(int(inputs[-1][0]), dtype=np.uint8)
    init = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(x_zp, "x_zp")]
    out_type = TensorProto.UINT8 if kind == "uint8" else TensorProto.INT32
    x_info = helper.make_tensor_value_info("x", TensorProto.UINT8, list(x.shape))
    feeds = {"x": x}
    if task.op == "batch_matmul":
        if attrs.get("bias") or any(attrs.get(o, 123) != 123 for o in ("a_order", "b_order",
                                                               "out_order")):
            raise TunerError(f"no onnxruntime operator computes {task.key} in one node")
        init = [numpy_helper.from_array(x_zp, "x_zp"),
                numpy_helper.from_array(np.array(int(inputs[-1][2]), np.uint8), "w_zp")]
        feeds["w"] = w
        x_info = [x_info, helper.make_tensor_value_info("w", TensorProto.UINT8, list(w.shape))]
        if kind == "int32":
            node = helper.make_node("MatMulInteger", ["x", "w", "x_zp", "w_zp"], ["y"])
        else:
            init += [numpy_helper.from_array(np.float32(0.02), "x_scale"),
                     numpy_helper.from_array(np.float32(0.02), "w_scale"),
                     numpy_helper.from_array(np.float32(0.5), "y_scale"),
                     numpy_helper.from_array(np.uint8(128), "y_zp")]
            node = helper.make_node("QLinearMatMul", ["x", "x_scale", "x_zp", "w", "w_scale",
                                                      "w_zp", "y_scale", "y_zp"], ["y"])
    elif task.op == "conv2d":
        conv = dict(strides=[attrs["stride"]] * 2, pads=[attrs["pad"]] * 4,
                    dilations=[attrs["dilation"]] * 2, group=attrs["groups"])
        if kind == "int32":
            node = helper.make_node("ConvInteger", ["x", "w", "x_zp"], ["y"], **conv)
        else:
            init += [numpy_helper.from_array(np.float32(0.02), "x_scale"),
                     numpy_helper.from_array(rng.uniform(0.001, 0.01, channels)
                                             .astype(np.float32), "w_scale"),
                     numpy_helper.from_array(np.zeros(channels, np.int8), "w_zp"),
                     numpy_helper.from_array(np.float32(0.5), "y_scale"),
                     numpy_helper.from_array(np.uint8(128), "y_zp")]
            names = ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"]
            if attrs.get("bias"):
                init.append(numpy_helper.from_array(inputs[2], "bias"))
                names.append("bias")
            node = helper.make_node("QLinearConv", names, ["y"], **conv)
    else:
        if attrs.get("bias"):
            raise TunerError(f"no onnxruntime operator computes {task.key} in one node")
        if kind == "int32":
            node = helper.make_node("MatMulInteger", ["x", "w", "x_zp"], ["y"])
        else:
            init += [numpy_helper.from_array(np.float32(0.02), "x_scale"),
                     numpy_helper.from_array(np.float32(0.005), "w_scale"),
                     numpy_helper.from_array(np.int8(0), "w_zp"),
                     numpy_helper.from_array(np.float32(0.5), "y_scale"),
                     numpy_helper.from_array(np.uint8(128), "y_zp")]
            node = helper.make_node("QLinearMatMul", ["x", "x_scale", "x_zp", "w", "w_scale",
                                                      "w_zp", "y_scale", "y_zp"], ["y"])
    sess = session(_quantized_model(node, x_info if isinstance(x_info, list) else [x_info],
                                    init, out_type), threads)
    binding = sess.io_binding()
    held = [aligned_copy(value) for value in feeds.values()]
    for name, value in zip(feeds, held):
        binding.bind_cpu_input(name, value)
    y = aligned_empty(out_shape, np.uint8 if kind == "uint8" else np.int32)
    binding.bind_output("y", "cpu", 0, y.dtype, list(y.shape), y.ctypes.data)

    def run():
        sess.run_with_iobinding(binding)
        return y, held
    return time_callable(run, min_sample_s=min_sample_s)


def tuned_kernel(task: Task, threads: int, db: str, cpu: str | None,
                 min_sample_s: float = 0.01) -> TimingResult:
    """Our kernel as a user gets it: `tuner.build` from the records in `db`, constant
    operands bound (packed) once, then timed per call like the peers: the inputs checked on
    every call, the output written into one preallocated array (numpy's `out=`,
    onnxruntime's I/O binding)."""
    import warnings

    import tuner
    from tuner.replay.source import NoRecordWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", NoRecordWarning)  # no record: nothing tuned to time
        built = tuner.build(task.op, task.shape, db=db, threads=threads, cpu=cpu,
                            dtype=task.dtype, **task.attr_dict)
    dag = task.dag()
    inputs = dag.random_inputs(_rng())
    constants = {op.name: arr for op, arr in zip(dag.inputs, inputs) if op.constant}
    # on cache lines, as a package's runtime allocates them (tuner/buffers.py)
    free = [aligned_copy(arr) for op, arr in zip(dag.inputs, inputs) if not op.constant]
    bound = built.bind(**constants)
    out = built.kernel.new_output()
    return time_callable(lambda: bound(*free, out=out), min_sample_s=min_sample_s)


def kinds_for(task: Task) -> tuple[str, ...]:
    """The comparators that implement `task`: numpy has no convolution, and batch matmul's
    second operand is an activation, not a weight onnxruntime could take as an initializer.
    An int8 task is compared with onnxruntime's int8 operators (`onnxruntime_int8`)."""
    if task.dtype == "int8":
        return ("onnxruntime",)
    return {"conv2d": ("onnxruntime",), "matmul": ("numpy", "onnxruntime"),
            "batch_matmul": ("numpy",)}.get(task.op, ())


def time_comparator(kind: str, task: Task, threads: int) -> TimingResult:
    """Times comparator `kind` on `task` in this process (the child's job)."""
    s, attrs = task.shape, task.attr_dict
    if kind not in kinds_for(task):
        raise TunerError(f"no {kind} comparator for {task.op}")
    if task.dtype == "int8":
        return onnxruntime_int8(task, threads)
    if task.op == "conv2d":
        return onnxruntime_conv2d(s, attrs["stride"], attrs["pad"], attrs["dilation"],
                                  attrs["groups"], threads)
    if task.op == "matmul":
        return (numpy_matmul if kind == "numpy" else onnxruntime_matmul)(*s, threads)
    b, m, n, k = s
    return numpy_matmul(m, n, k, threads, batch=b)


# ---------------------------------------------------------------- one process per comparator
def measure_in_subprocess(kind: str, task: Task, threads: int, timeout_s: float = TIMEOUT_S,
                          env: dict[str, str] | None = None, **extra) -> float | None:
    """GFLOPS of comparator `kind` on `task` at `threads`, timed in a fresh process (with
    `env` added to its environment). Kind "tuned" is our kernel replayed from the records
    (`extra`: db, cpu; see `tuned_kernel`)."""
    request = json.dumps({"kind": kind, "task": task.to_json(), "threads": threads, **extra})
    answer = run_child("bench.comparators", [request], threads, timeout_s, env)
    if answer is None:
        return None
    if "error" in answer:
        print(f"warning: {kind} on {task.key}: {answer['error']}", file=sys.stderr)
        return None
    return float(answer["gflops"])


# OpenBLAS picks its kernels by CPUID at load time unless OPENBLAS_CORETYPE names a core, and
# its detection lags new CPUs: numpy's OpenBLAS 0.3.31 runs its Haswell (AVX2) kernels on
# Zen 5 (square.1024 at one thread: 118 GFLOPS; with OPENBLAS_CORETYPE=SkylakeX, its AVX-512
# kernels: 217-222). So numpy is always given the core type of the target's vector ISA: the
# best OpenBLAS has for it, and no wider than the code it is compared with (`--cpu x86-64-v3`
# on an AVX-512 machine). onnxruntime's MLAS has no such switch (it dispatches on CPUID
# alone), so for a target narrower than the host its figures come from a wider ISA.
OPENBLAS_CORE = {(512, True): "SkylakeX", (256, True): "Haswell", (256, False): "Sandybridge",
                 (128, False): "Nehalem"}


def isa_limits(target: Target, host: Target) -> dict[str, dict[str, str] | None]:
    """Per comparator, the environment that runs it with `target`'s vector ISA; None for a
    comparator that cannot be restricted to a target narrower than the host (it is then
    timed but not compared against)."""
    t, h = target.machine, host.machine
    narrower = t.vector_bits < h.vector_bits or (h.has_fma and not t.has_fma)
    core = OPENBLAS_CORE.get((t.vector_bits, t.has_fma))
    return {"numpy": {"OPENBLAS_CORETYPE": core} if core else (None if narrower else {}),
            "onnxruntime": None if narrower else {}}


def measure_peers(task: Task, threads: int,
                  limits: dict[str, dict[str, str] | None] | None = None) -> dict[str, float]:
    """GFLOPS of every comparator that implements `task` and ran, one process each, each
    with its environment from `limits` (`isa_limits`) if given."""
    peers = {}
    for kind in kinds_for(task):
        env = (limits or {}).get(kind) or {}
        gflops = measure_in_subprocess(kind, task, threads, env=env)
        if gflops is not None:
            peers[kind] = gflops
    return peers


def main(argv: list[str] | None = None) -> int:
    """The child: one JSON request in argv, one JSON line out (`gflops` or `error`)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    request = json.loads(argv[0])
    task = Task.from_json(request["task"])
    try:
        if request["kind"] == "tuned":
            timing = tuned_kernel(task, int(request["threads"]), request["db"],
                                  request.get("cpu"))
        else:
            timing = time_comparator(request["kind"], task, int(request["threads"]))
    except (TunerError, Warning) as err:  # onnxruntime missing, no record: an answer
        print(json.dumps({"error": str(err)}))
        return 0
    flops = task.dag().flops
    print(json.dumps({"kind": request["kind"], "gflops": flops / timing.median_s / 1e9,
                      "median_s": timing.median_s, "min_s": timing.min_s,
                      "number": timing.number}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
