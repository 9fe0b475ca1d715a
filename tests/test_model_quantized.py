"""Quantized ONNX models as onnxruntime.quantization writes them: their QDQ layers become int8
tasks, and the compiled model and its package compute what onnxruntime computes on the same
quantized file."""

from __future__ import annotations

import json

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")
from onnx import helper  # noqa: E402

import tuner  # noqa: E402
from records import RecordStore  # noqa: E402
from model_builders import make_model, randn  # noqa: E402
from tuner.network.deploy import load_package  # noqa: E402
from tuner.network.fused import FUSED_OPS  # noqa: E402
from tuner.network.graph import load_model  # noqa: E402
from tuner.network.package import write_package  # noqa: E402
from tuner.network.quantized import unsigned_activations  # noqa: E402
from tuner.network.runtime import run_graph  # noqa: E402
from tuner.network.tasks import extract_tasks  # noqa: E402
from tuner.ir.target import host_target  # noqa: E402
from tuner.replay.source import open_schedules  # noqa: E402


def small_cnn(rng):
    """conv3x3+ReLU, a residual block (two convs, one a 1x1 with an odd channel count and no
    padding), a depthwise 3x3 with stride 2, global pooling and a Gemm classifier."""
    w = {"w1": randn(rng, 8, 3, 3, 3) * 0.3, "b1": randn(rng, 8) * 0.1,
         "w2": randn(rng, 8, 8, 3, 3) * 0.2, "b2": randn(rng, 8) * 0.1,
         "w3": randn(rng, 8, 8, 1, 1) * 0.3,
         "w4": randn(rng, 8, 1, 3, 3) * 0.3, "b4": randn(rng, 8) * 0.1,
         "w5": randn(rng, 7, 8, 1, 1) * 0.3, "b5": randn(rng, 7) * 0.1,
         "fc": randn(rng, 10, 7) * 0.3, "fcb": randn(rng, 10) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3"], ["c3"]),
             helper.make_node("Add", ["c3", "r1"], ["a3"]),
             helper.make_node("Relu", ["a3"], ["r3"]),
             helper.make_node("Conv", ["r3", "w4", "b4"], ["c4"], pads=[1, 1, 1, 1],
                              strides=[2, 2], group=8),
             helper.make_node("Relu", ["c4"], ["r4"]),
             helper.make_node("Conv", ["r4", "w5", "b5"], ["c5"]),
             helper.make_node("GlobalAveragePool", ["c5"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1)]
    return make_model(nodes, {"x": (1, 3, 12, 10)}, "y", w, opset=13)


class _Reader(quantization.CalibrationDataReader):
    def __init__(self, rng, count: int = 8):
        self.batches = iter([{"x": rng.uniform(-1, 1, (1, 3, 12, 10)).astype(np.float32)}
                             for _ in range(count)])

    def get_next(self):
        return next(self.batches, None)


@pytest.fixture(scope="module", params=["per_tensor", "per_channel", "per_channel_reduced"])
def quantized(request, tmp_path_factory):
    """The small CNN quantized per tensor, per channel, and per channel with 7-bit weights
    (`reduce_range`, which makes int8 tasks of reduced range)."""
    rng = np.random.default_rng(11)
    folder = tmp_path_factory.mktemp("quantized")
    float_path, path = folder / "model.onnx", folder / f"model.{request.param}.onnx"
    import onnx
    onnx.save(small_cnn(rng), float_path)
    quantization.quantize_static(str(float_path), str(path), _Reader(rng),
                                 per_channel=request.param != "per_tensor",
                                 reduce_range=request.param.endswith("reduced"))
    return path


def _package(tmp_path, path, target):
    """The package of the ONNX file `path` for `target`, written to tmp_path / "pkg" with the
    default schedules (an empty records database, tmp_path / "empty.db")."""
    db = str(tmp_path / "empty.db")
    RecordStore(f"sqlite:///{db}").close()
    with open_schedules(db) as schedules:
        return write_package(str(path), tmp_path / "pkg", schedules, target)


def _onnxruntime(path, x):
    """onnxruntime on the quantized file as ONNX defines it: each QDQ layer dequantized, run
    in float and quantized again. (Its optimized session fuses them into int8 kernels, which
    on a CPU without VNNI use vpmaddubsw and saturate pairs of products: measured on Zen 3,
    one output of the per-channel model off by 0.34-0.43 (58-72 steps) on each of four
    inputs, where ours agree with this session's exactly.)"""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _inputs(count=4):
    rng = np.random.default_rng(3)
    return [rng.uniform(-1, 1, (1, 3, 12, 10)).astype(np.float32) for _ in range(count)]


def test_quantize_static_layers_become_int8_tasks(quantized):
    extraction = extract_tasks(load_model(str(quantized)))
    tasks = [use.task for use in extraction.tasks]
    int8 = [t for t in tasks if t.dtype == "int8"]
    # the five convolutions and the classifier
    assert len(int8) == len(tasks) == 6, [t.key for t in tasks]
    assert {t.op for t in int8} == {"conv2d", "matmul"}
    assert all(t.attr_dict["out_type"] in (1, 2) for t in int8)
    assert not [n for n in extraction.graph.nodes if n.op_type in ("Conv", "Gemm")]
    # 7-bit weights make tasks of reduced range; full-range ones reach +-127 in every
    # tensor (per tensor) or channel (per channel) and do not
    reduced = str(quantized).endswith("reduced.onnx")
    assert [t.attr_dict.get("reduce_range", False) for t in int8] == [reduced] * 6


def test_int8_activations_are_retyped_exactly(quantized):
    graph = load_model(str(quantized))
    retyped = unsigned_activations(graph)
    x = _inputs(1)[0]
    np.testing.assert_array_equal(run_graph(retyped, {"x": x})[0], run_graph(graph, {"x": x})[0])


def test_fused_graph_matches_onnxruntime(quantized):
    """The fused int8 nodes run by their exact integer references, everything else in numpy:
    outputs within one quantization step of onnxruntime's on the same file (its float sums
    of dequantized values may round a requantized value the other way), the same top-1."""
    extraction = extract_tasks(load_model(str(quantized)))
    step = _output_step(quantized)
    for x in _inputs():
        ours = run_graph(extraction.graph, {"x": x}, impls=FUSED_OPS)[0]
        theirs = _onnxruntime(quantized, x)
        assert np.abs(ours - theirs).max() <= step * 1.001
        assert ours.argmax() == theirs.argmax()


def _output_step(path) -> float:
    """The scale the classifier's output is dequantized with (its quantization step)."""
    import onnx
    model = onnx.load(str(path))
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    last = [n for n in model.graph.node if n.op_type == "DequantizeLinear"][-1]
    return float(consts[last.input[1]])


def test_compiled_package_matches_onnxruntime(quantized, tmp_path):
    target = host_target(1)
    built = _package(tmp_path, quantized, target)
    assert sum(k.task_key.endswith("/int8") for k in built.tasks) == 6
    # the residual block's Add with its DequantizeLinear / QuantizeLinear nodes is one
    # generated function (tests/test_model_quantized_codegen.py)
    nodes = json.loads(built.graph_file.read_text())["nodes"]
    assert [n["op_type"] for n in nodes].count("TunerQuantizedAdd") == 1
    assert "Add" not in [n["op_type"] for n in nodes]
    package = load_package(tmp_path / "pkg")
    from tuner.replay.source import NoRecordWarning
    with pytest.warns(NoRecordWarning, match="6 of the 6 tasks"):
        compiled = tuner.compile_model(str(quantized), db=str(tmp_path / "empty.db"),
                                       threads=1)
    extraction = extract_tasks(load_model(str(quantized)))
    for x in _inputs():
        reference = run_graph(extraction.graph, {"x": x}, impls=FUSED_OPS)[0]
        # the kernels are exact: the package and the compiled model give the fused graph's
        # numpy result bit for bit
        np.testing.assert_array_equal(package(x)[0], reference)
        np.testing.assert_array_equal(compiled(x)[0], reference)
        theirs = _onnxruntime(quantized, x)
        assert package(x)[0].argmax() == theirs.argmax()


def test_tune_model_lists_and_tunes_the_int8_tasks(quantized, tmp_path, capsys):
    from tuner.cli import main

    assert main(["model", str(quantized), "--list"]) == 0
    listed = capsys.readouterr().out
    assert listed.count("/int8") == 6
    db = f"sqlite:///{tmp_path / 'records.db'}"
    assert main(["model", str(quantized), "--trials", "6", "--threads", "1", "--db", db]) == 0
    with RecordStore(db) as store:
        assert {t.dtype for t in store.tasks()} == {"int8"}


def test_a_layer_this_does_not_quantize_runs_in_float_with_a_note(tmp_path):
    """A weight zero point other than 0 (asymmetric weights) leaves the layer dequantized,
    in float: noted, and still computing what onnxruntime does."""
    import onnx
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(5)
    w = rng.integers(-100, 100, (4, 3, 3, 3)).astype(np.int8)
    consts = {"x_s": np.float32(0.02), "x_z": np.uint8(128), "w": w,
              "w_s": np.float32(0.01), "w_z": np.int8(3), "y_s": np.float32(0.05),
              "y_z": np.uint8(100)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "y_s", "y_z"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "y_s", "y_z"], ["y"])]
    graph = helper.make_graph(nodes, "asymmetric",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [1, 3, 6, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k)
                               for k, v in consts.items()])
    path = tmp_path / "asymmetric.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                ir_version=8), path)
    extraction = extract_tasks(load_model(str(path)))
    assert [u.task.dtype for u in extraction.tasks] == ["float32"]
    assert any("weight's zero point is not 0" in note for note in extraction.notes)
    x = rng.uniform(-1, 1, (1, 3, 6, 5)).astype(np.float32)
    ours = run_graph(extraction.graph, {"x": x}, impls=FUSED_OPS)[0]
    np.testing.assert_allclose(ours, _onnxruntime(path, x), atol=0.05 + 1e-6)


def conv_chain(rng):
    """Convolutions only (3x3 + ReLU, depthwise stride 2, 1x1 with an odd channel count), so
    that the operator form has no com.microsoft operators."""
    w = {"w1": randn(rng, 8, 3, 3, 3) * 0.3, "b1": randn(rng, 8) * 0.1,
         "w2": randn(rng, 8, 1, 3, 3) * 0.3, "w3": randn(rng, 7, 8, 1, 1) * 0.3}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1],
                              strides=[2, 2], group=8),
             helper.make_node("Conv", ["c2", "w3"], ["y"])]
    return make_model(nodes, {"x": (1, 3, 12, 10)}, "y", w, opset=13)


def _operator_form(model, folder):
    import onnx
    float_path, path = folder / "model.onnx", folder / "model.qoperator.onnx"
    onnx.save(model, float_path)
    quantization.quantize_static(str(float_path), str(path),
                                 _Reader(np.random.default_rng(1)),
                                 quant_format=quantization.QuantFormat.QOperator,
                                 activation_type=quantization.QuantType.QUInt8,
                                 per_channel=True)
    return path


def test_qlinear_operators_become_int8_tasks_computing_what_onnx_defines(tmp_path):
    """QLinearConv nodes become int8 tasks; the fused graph gives what the unfused one
    computes with ONNX's definitions of the operators (quant_ops.py, exact), bit for bit."""
    path = _operator_form(conv_chain(np.random.default_rng(4)), tmp_path)
    graph = load_model(str(path))
    assert [n.op_type for n in graph.nodes].count("QLinearConv") == 3
    extraction = extract_tasks(graph)
    assert [u.task.dtype for u in extraction.tasks] == ["int8"] * 3
    assert not [n for n in extraction.graph.nodes if n.op_type == "QLinearConv"]
    for x in _inputs(2):
        np.testing.assert_array_equal(
            run_graph(extraction.graph, {"x": x}, impls=FUSED_OPS)[0],
            run_graph(graph, {"x": x})[0])


def test_an_operator_form_with_contrib_operators_is_refused_in_one_line(tmp_path, capsys):
    """quantize_static's operator form of a residual network writes com.microsoft operators
    (QLinearAdd, QGemm, QLinearGlobalAveragePool): refused with one line naming one."""
    from tuner.cli import main

    path = _operator_form(small_cnn(np.random.default_rng(4)), tmp_path)
    assert main(["model", str(path), "--list"]) == 2
    err = capsys.readouterr().err
    assert "unsupported ONNX operator 'QLinearAdd' from domain 'com.microsoft'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("op", ["QLinearConv", "QLinearMatMul", "ConvInteger",
                                "MatMulInteger"])
def test_quant_ops_equal_onnxruntime(op):
    """The numpy operators against onnxruntime's, with 7-bit weights (which no saturation
    of onnxruntime's AVX2 kernels reaches): equal bit for bit."""
    from onnx import TensorProto, numpy_helper
    from tuner.network.quant_ops import QUANT_OPS

    rng = np.random.default_rng(2)
    conv = "Conv" in op
    x = rng.integers(0, 256, (1, 6, 7, 5) if conv else (5, 12)).astype(np.uint8)
    w = rng.integers(-64, 64, (4, 6, 3, 3) if conv else (12, 7)).astype(np.int8)
    channels = w.shape[0] if conv else w.shape[1]
    if op.startswith("QLinear"):
        consts = [np.float32(0.02), np.uint8(131), w,
                  rng.uniform(0.001, 0.01, channels).astype(np.float32) if conv
                  else np.float32(0.004), np.int8(0) if not conv else np.zeros(channels,
                                                                              np.int8),
                  np.float32(0.3), np.uint8(100)]
        names = ["xs", "xz", "w", "ws", "wz", "ys", "yz"]
        inputs = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
        out_type = TensorProto.UINT8
    else:
        consts, names = [w, np.uint8(131)], ["w", "xz"]
        inputs = ["x", "w", "xz"]
        out_type = TensorProto.INT32
    attrs = {"pads": [1, 1, 1, 1]} if conv else {}
    node = helper.make_node(op, inputs, ["y"], **attrs)
    graph = helper.make_graph([node], "q", [helper.make_tensor_value_info(
        "x", TensorProto.UINT8, list(x.shape))], [helper.make_tensor_value_info(
            "y", out_type, None)], [numpy_helper.from_array(np.asarray(v), k)
                                    for k, v in zip(names, consts)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              ir_version=8)
    theirs = ort.InferenceSession(model.SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    values = {"x": x, **dict(zip(names, consts))}
    ours = QUANT_OPS[op]([values[i] for i in inputs], attrs, 13)[0]
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


def _dynamic_mlp(tmp_path, activation: str = "relu", reduce_range: bool = False,
                 per_channel: bool = False):
    """Two MatMuls (rows of a 3-D activation) with a bias and ReLU (or GELU, as PyTorch
    exports it: Div, Erf, Add, Mul, Mul) between, quantized by quantize_dynamic:
    DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul per layer (weights of 7 bits with
    `reduce_range`, a weight scale per column with `per_channel`)."""
    import onnx
    rng = np.random.default_rng(6)
    w = {"w1": randn(rng, 16, 33) * 0.2, "b1": randn(rng, 33) * 0.1,
         "w2": randn(rng, 33, 15) * 0.2, "sqrt2": np.float32(np.sqrt(2)),
         "one": np.float32(1), "half": np.float32(0.5)}
    if activation == "relu":
        between = [helper.make_node("Relu", ["a1"], ["r1"])]
    else:
        between = [helper.make_node("Div", ["a1", "sqrt2"], ["g1"]),
                   helper.make_node("Erf", ["g1"], ["g2"]),
                   helper.make_node("Add", ["g2", "one"], ["g3"]),
                   helper.make_node("Mul", ["a1", "g3"], ["g4"]),
                   helper.make_node("Mul", ["g4", "half"], ["r1"])]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["a1"]), *between,
             helper.make_node("MatMul", ["r1", "w2"], ["y"])]
    float_path, path = tmp_path / "mlp.onnx", tmp_path / "mlp.dynamic.onnx"
    onnx.save(make_model(nodes, {"x": (1, 7, 16)}, "y", w, opset=13), float_path)
    quantization.quantize_dynamic(str(float_path), str(path), reduce_range=reduce_range,
                                  per_channel=per_channel)
    return path


@pytest.mark.parametrize("reduce_range, per_channel", [(False, False), (True, False),
                                                       (False, True)])
def test_dynamically_quantized_matmuls_become_int8_kernels(reduce_range, per_channel,
                                                           tmp_path):
    """quantize_dynamic's MatMulInteger with a zero point known at run time: an int8 matmul
    of the stored activation, and the zero point's share added after it; the fused graph,
    the compiled model and its package give what ONNX defines (quant_ops.py) bit for bit.
    In the package the share, the scale and the zero point are the dequantization's own
    (no numpy node makes them). 7-bit weights make matmuls of reduced range; weight scales
    per column are read per column."""
    path = _dynamic_mlp(tmp_path, reduce_range=reduce_range, per_channel=per_channel)
    graph = load_model(str(path))
    extraction = extract_tasks(graph)
    reduced = ",reduce_range=1" if reduce_range else ""
    assert [u.task.key for u in extraction.tasks] == [
        f"matmul/7x33x16/bias=0{reduced},relu=0/int8",
        f"matmul/7x15x33/bias=0{reduced},relu=0/int8"]
    assert "MatMulInteger" not in [n.op_type for n in extraction.graph.nodes]
    built = _package(tmp_path, path, host_target(2))
    # each product's Cast, Mul by the run-time scale and bias Add: one generated function
    # (tuner/network/quantized_codegen.py), exact as the nodes it replaces
    nodes = json.loads(built.graph_file.read_text())["nodes"]
    assert [n["op_type"] for n in nodes].count("TunerDequantizedProduct") == 2
    assert not [n for n in nodes if n["op_type"] == "Cast" and n["attributes"]["to"] == 1]
    # each DynamicQuantizeLinear: its range and its quantization, two generated functions
    assert "DynamicQuantizeLinear" not in [n["op_type"] for n in nodes]
    assert [n["op_type"] for n in nodes].count("TunerDynamicQuantize") == 2
    assert [n["op_type"] for n in nodes].count("TunerQuantizationRange") == 2
    assert not [n["op_type"] for n in nodes if not n["op_type"].startswith("Tuner")]
    assert [(n["attributes"]["dynamic"], n["attributes"]["per_channel"]) for n in nodes
            if n["op_type"] == "TunerDequantizedProduct"] == [(True, per_channel)] * 2
    package = load_package(tmp_path / "pkg")
    rng = np.random.default_rng(9)
    for _ in range(3):
        x = rng.uniform(-1, 1, (1, 7, 16)).astype(np.float32)
        exact = run_graph(graph, {"x": x})[0]
        np.testing.assert_array_equal(run_graph(extraction.graph, {"x": x},
                                                impls=FUSED_OPS)[0], exact)
        np.testing.assert_array_equal(package(x)[0], exact)
        if host_target(1).machine.dot_instruction == "vpdpbusd" or reduce_range:
            # on AVX2 onnxruntime's MatMulInteger saturates pairs of uint8 x int8 products
            # of full-range weights: measured on Zen 3, 36-70 of 231 int32 sums of a 7x16 by
            # 16x33 product off, by up to 21644; with VNNI or 7-bit weights it is exact, as
            # ours are everywhere
            theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
                None, {"x": x})[0]
            np.testing.assert_allclose(exact, theirs, rtol=1e-5, atol=1e-6)


def test_a_dynamically_quantized_product_takes_its_gelu_into_its_function(tmp_path):
    """The FFN's GELU after a dequantized product (bias, then the Erf chain) runs in the
    product's generated function: the package equals the ONNX graph but for the GELU's float32
    evaluation (tuner.codegen.vmath) against numpy's float64 Erf."""
    path = _dynamic_mlp(tmp_path, "gelu")
    graph = load_model(str(path))
    built = _package(tmp_path, path, host_target(1))
    nodes = json.loads(built.graph_file.read_text())["nodes"]
    products = [n for n in nodes if n["op_type"] == "TunerDequantizedProduct"]
    assert [p["attributes"]["gelu"] for p in products] == [1, 0]
    assert not {"Erf", "Div"} & {n["op_type"] for n in nodes}
    assert not [n for n in nodes if n["op_type"] == "Cast" and n["attributes"]["to"] == 1]
    package = load_package(tmp_path / "pkg")
    rng = np.random.default_rng(10)
    for _ in range(3):
        x = rng.uniform(-1, 1, (1, 7, 16)).astype(np.float32)
        np.testing.assert_allclose(package(x)[0], run_graph(graph, {"x": x})[0],
                                   rtol=1e-4, atol=1e-5)


def test_the_agreement_bench_compares_a_package_with_onnxruntime(quantized, tmp_path, capsys):
    """bench/quantized_agreement.py on a package of the small quantized CNN: it runs, and
    what it prints is what the package and onnxruntime give (top-1 on every input)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.quantized_agreement import main

    _package(tmp_path, quantized, host_target(1))
    assert main([str(quantized), str(tmp_path / "pkg"), "--inputs", "3"]) == 0
    printed = capsys.readouterr().out
    assert "top-1 (argmax of the first output) equal on 3/3" in printed
    assert "output steps" in printed and "onnxruntime unoptimised" in printed



VIEWED = {"MaxPool": ((), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
                      (1, 3, 5, 4)),
          "Reshape": (("shape",), {}, (1, 8, 27)),
          "Transpose": ((), {"perm": [0, 2, 3, 1]}, (1, 9, 8, 3))}


@pytest.mark.parametrize("op", sorted(VIEWED))
@pytest.mark.parametrize("same", [True, False])
def test_a_pool_or_view_between_equal_quantizations_acts_on_the_quantized_values(op, same):
    """DequantizeLinear -> MaxPool (padded, strided) or a view (Reshape, Transpose) ->
    QuantizeLinear of the same scale and zero point: one such node of the uint8 values, the
    same bytes exactly; with another output quantization the chain stays."""
    from tuner.network.graph import Graph, Node
    from tuner.network.quantized import quantized_passthroughs

    extra, attributes, shape = VIEWED[op]
    consts = {"s": np.float32(0.0371), "z": np.uint8(131),
              "s2": np.float32(0.0371 if same else 0.05), "z2": np.uint8(131),
              "shape": np.array([1, 8, 27], np.int64)}
    nodes = (Node("DequantizeLinear", "dq", ("x", "s", "z"), ("d",), {}),
             Node(op, "op", ("d",) + extra, ("p",), attributes),
             Node("QuantizeLinear", "q", ("p", "s2", "z2"), ("y",), {}))
    graph = Graph({"x": (1, 3, 9, 8)}, ("y",), nodes,
                  {k: np.asarray(v) for k, v in consts.items()},
                  {"x": (1, 3, 9, 8), "d": (1, 3, 9, 8), "p": shape, "y": shape}, 17, "g")
    rewritten = quantized_passthroughs(graph)
    if not same:
        assert rewritten is graph
        return
    assert [(n.op_type, n.inputs, n.outputs) for n in rewritten.nodes] == [
        (op, ("x",) + extra, ("y",))]
    rng = np.random.default_rng(3)
    for _ in range(5):
        x = rng.integers(0, 256, (1, 3, 9, 8)).astype(np.uint8)
        ours = run_graph(rewritten, {"x": x})[0]
        assert ours.dtype == np.uint8 and ours.shape == shape
        np.testing.assert_array_equal(ours, run_graph(graph, {"x": x})[0])


@pytest.mark.parametrize("reduce_range", [False, True])
def test_dynamically_quantized_convolutions_become_int8_kernels(reduce_range, tmp_path):
    """quantize_dynamic's ConvInteger (padded, strided, depthwise) as int8 conv2d tasks: the
    kernel pads the stored activation with the run-time zero point, and the zero point's
    share is subtracted after it, which is ONNX's padding after the subtraction. In the
    package no numpy node is left: the zero points operand is made from the range; the
    share, scale, bias per channel, Relu and a residual block's sum and Relu are the
    dequantization's; the MaxPool after it is generated as after a kernel. The fused graph and
    the package give the graph's output bit for bit, and onnxruntime's where its own sums
    are exact (7-bit weights, or VNNI)."""
    import onnx
    rng = np.random.default_rng(12)
    w = {"w1": randn(rng, 8, 3, 3, 3), "b1": randn(rng, 8), "w2": randn(rng, 16, 8, 3, 3),
         "b2": randn(rng, 16), "wp": randn(rng, 16, 8, 1, 1), "bp": randn(rng, 16),
         "w3": randn(rng, 16, 1, 3, 3)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["m1"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["m1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Conv", ["m1", "wp", "bp"], ["p"], strides=[2, 2]),
             helper.make_node("Add", ["c2", "p"], ["a"]),  # a residual block's two branches
             helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["ra", "w3"], ["y"], pads=[1, 1, 1, 1], group=16)]
    float_path, path = tmp_path / "cnn.onnx", tmp_path / "cnn.dynamic.onnx"
    onnx.save(make_model(nodes, {"x": (1, 3, 15, 13)}, "y", w, opset=13), float_path)
    quantization.quantize_dynamic(str(float_path), str(path), reduce_range=reduce_range)
    graph = load_model(str(path))
    assert [n.op_type for n in graph.nodes].count("ConvInteger") == 4
    extraction = extract_tasks(graph)
    keys = sorted(u.task.key for u in extraction.tasks)
    assert len(keys) == 4 and all(k.startswith("conv2d/") and k.endswith("/int8") for k in keys)
    assert {"groups=16", "stride=2"} <= {part for k in keys for part in k.split("/")[2].split(",")}
    assert "ConvInteger" not in [n.op_type for n in extraction.graph.nodes]
    built = _package(tmp_path, path, host_target(2))
    nodes = json.loads(built.graph_file.read_text())["nodes"]
    assert not [n["op_type"] for n in nodes if "kernel" not in n]  # the MaxPool generated too
    products = [n["attributes"] for n in nodes if n["op_type"] == "TunerDequantizedProduct"]
    assert [(p["row_channels"], p["relu"]) for p in products] == [(8, True)] + [(16, False)] * 3
    assert sorted((p["residual"], p["residual_relu"]) for p in products) == \
        [(False, False)] * 3 + [(True, True)]
    assert [n["op_type"] for n in nodes].count("TunerZeroPoints") == 3  # r1's is shared
    package = load_package(tmp_path / "pkg")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for _ in range(3):
        x = rng.standard_normal((1, 3, 15, 13)).astype(np.float32)
        exact = run_graph(graph, {"x": x})[0]
        np.testing.assert_array_equal(run_graph(extraction.graph, {"x": x},
                                                impls=FUSED_OPS)[0], exact)
        np.testing.assert_array_equal(package(x)[0], exact)
        if host_target(1).machine.dot_instruction == "vpdpbusd" or reduce_range:
            np.testing.assert_allclose(session.run(None, {"x": x})[0], exact, rtol=1e-5,
                                       atol=1e-5)


def _conv_integer_model(weight, weight_zero=None, **attributes):
    """One hand-written ConvInteger of a uint8 [1, 4, 9, 8] input whose zero point is 37."""
    import onnx
    from onnx import numpy_helper
    inputs = ["x", "w", "zx"] + (["zw"] if weight_zero is not None else [])
    constants = [numpy_helper.from_array(weight, "w"),
                 numpy_helper.from_array(np.array(37, np.uint8), "zx")]
    if weight_zero is not None:
        constants.append(numpy_helper.from_array(weight_zero, "zw"))
    return helper.make_model(helper.make_graph(
        [helper.make_node("ConvInteger", inputs, ["y"], name="conv", **attributes)],
        "conv_integer",
        [helper.make_tensor_value_info("x", onnx.TensorProto.UINT8, [1, 4, 9, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.INT32, None)], constants),
        opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_a_conv_integer_with_a_constant_zero_point_folds_it_into_the_bias(tmp_path):
    """A ConvInteger written by hand, its input zero point a constant: one int8 task, no node
    before it, and the int32 sums ONNX defines (quant_ops.conv_integer) bit for bit."""
    rng = np.random.default_rng(13)
    weight = rng.integers(-128, 128, (6, 2, 3, 3)).astype(np.int8)
    model = _conv_integer_model(weight, pads=[1, 1, 1, 1], strides=[2, 2], group=2)
    graph = load_model(model)
    extraction = extract_tasks(graph)
    assert [n.op_type for n in extraction.graph.nodes] == ["TunerConv"]
    assert extraction.tasks[0].task.key == ("conv2d/1x4x9x8x6x3x3/bias=1,dilation=1,groups=2,"
                                            "pad=1,relu=0,stride=2/int8")
    x = rng.integers(0, 256, (1, 4, 9, 8)).astype(np.uint8)
    np.testing.assert_array_equal(run_graph(extraction.graph, {"x": x}, impls=FUSED_OPS)[0],
                                  run_graph(graph, {"x": x})[0])


def test_a_conv_integer_this_does_not_take_runs_in_numpy_with_a_note():
    """A weight zero point other than 0, or strides the conv2d template does not take: the
    node stays, with a note naming it and why, and runs as ONNX defines it."""
    rng = np.random.default_rng(14)
    weight = rng.integers(-128, 128, (6, 4, 3, 3)).astype(np.int8)
    x = rng.integers(0, 256, (1, 4, 9, 8)).astype(np.uint8)
    for model, reason in (
            (_conv_integer_model(weight, np.full(6, 3, np.int8)),
             "its weight's zero point is not 0"),
            (_conv_integer_model(weight, strides=[1, 2]),
             "the conv2d template takes one stride")):
        graph = load_model(model)
        extraction = extract_tasks(graph)
        assert not extraction.tasks
        assert [n for n in extraction.notes if n.startswith("ConvInteger 'conv' runs in numpy: "
                                                            + reason)]
        np.testing.assert_array_equal(run_graph(extraction.graph, {"x": x})[0],
                                      run_graph(graph, {"x": x})[0])


def _product_graph(y_scale, shared: bool = False):
    """DequantizeLinear of two uint8 activations [2, 5, 6] and [2, 6, 3] (y's scale
    `y_scale`: one value, or one per row for a per-axis quantization), their MatMul and a
    QuantizeLinear; `shared`: x's dequantized value is a graph output too."""
    from tuner.network.graph import Graph, Node

    consts = {"sx": np.float32(0.02), "zx": np.uint8(117), "sy": np.asarray(y_scale, np.float32),
              "zy": np.full(np.shape(y_scale), 140, np.uint8), "so": np.float32(0.05),
              "zo": np.uint8(128)}
    nodes = (Node("DequantizeLinear", "dx", ("x", "sx", "zx"), ("fx",), {}),
             Node("DequantizeLinear", "dy", ("y", "sy", "zy"), ("fy",),
                  {"axis": 1} if np.ndim(y_scale) else {}),
             Node("MatMul", "mm", ("fx", "fy"), ("p",), {}),
             Node("QuantizeLinear", "q", ("p", "so", "zo"), ("out",), {}))
    shapes = {"x": (2, 5, 6), "y": (2, 6, 3), "fx": (2, 5, 6), "fy": (2, 6, 3), "p": (2, 5, 3),
              "out": (2, 5, 3)}
    return Graph({"x": (2, 5, 6), "y": (2, 6, 3)}, ("out", "fx") if shared else ("out",),
                 nodes, {k: np.asarray(v) for k, v in consts.items()}, shapes, 17, "g")


@pytest.mark.parametrize("shared", [False, True])
def test_a_product_of_two_quantized_activations_is_an_int8_batch_matmul(shared):
    """Its zero points subtracted in the kernel, requantized; a dequantized operand another
    node reads stays for it. Within one unit of the nodes run as ONNX defines them (float
    sums of dequantized values may round the other way), and mostly equal."""
    graph = _product_graph(0.03, shared)
    extraction = extract_tasks(graph)
    assert [u.task.key for u in extraction.tasks] == \
        ["batch_matmul/2x5x3x6/bias=0,out_type=1,relu=0/int8"]
    kept = [n.op_type for n in extraction.graph.nodes]
    assert kept == (["DequantizeLinear"] if shared else []) + ["TunerBatchMatMul"]
    rng = np.random.default_rng(0)
    for _ in range(5):
        feeds = {"x": rng.integers(0, 256, (2, 5, 6)).astype(np.uint8),
                 "y": rng.integers(0, 256, (2, 6, 3)).astype(np.uint8)}
        ours = run_graph(extraction.graph, feeds, impls=FUSED_OPS)[0]
        theirs = run_graph(graph, feeds)[0]
        assert ours.dtype == np.uint8
        assert np.abs(ours.astype(int) - theirs).max() <= 1
        assert (ours == theirs).mean() > 0.9


def test_a_product_of_an_activation_quantized_per_axis_stays_in_float_with_a_note():
    extraction = extract_tasks(_product_graph([0.03, 0.02, 0.04, 0.01, 0.05, 0.03]))
    assert not extraction.tasks or all(u.task.dtype == "float32" for u in extraction.tasks)
    assert "MatMul 'mm' runs in float: its operands are not uint8 activations quantized " \
        "per tensor" in extraction.notes


@pytest.mark.parametrize("out", ["QLinearMatMul", "MatMulInteger"])
def test_an_int8_batch_matmul_computes_what_onnxruntime_does_with_two_inputs(out, target1):
    """The int8 batch_matmul kernel (default schedule, this host) against onnxruntime's
    QLinearMatMul / MatMulInteger of two uint8 inputs with a zero point each: equal bit for
    bit (both sum exactly; the requantization multiplies the same float32 scale)."""
    from onnx import TensorProto, numpy_helper
    from tuner.codegen.jit import CompiledKernel
    from tuner.ir.schedule import apply_steps
    from tuner.ir.task import Task
    from tuner.search.default import default_lowered

    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (3, 9, 13)).astype(np.uint8)
    b = rng.integers(0, 256, (3, 13, 6)).astype(np.uint8)
    scales = [np.float32(0.021), np.float32(0.017), np.float32(0.9)]
    zeros = [np.uint8(121), np.uint8(140), np.uint8(97)]
    if out == "QLinearMatMul":
        consts = [scales[0], zeros[0], scales[1], zeros[1], scales[2], zeros[2]]
        names = ["as", "az", "bs", "bz", "ys", "yz"]
        inputs = ["a", "as", "az", "b", "bs", "bz", "ys", "yz"]
        out_type, kind = TensorProto.UINT8, 1
    else:
        consts, names = zeros[:2], ["az", "bz"]
        inputs, out_type, kind = ["a", "b", "az", "bz"], TensorProto.INT32, 0
    node = helper.make_node(out, inputs, ["y"])
    graph = helper.make_graph([node], "q", [
        helper.make_tensor_value_info("a", TensorProto.UINT8, list(a.shape)),
        helper.make_tensor_value_info("b", TensorProto.UINT8, list(b.shape))],
        [helper.make_tensor_value_info("y", out_type, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in zip(names, consts)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              ir_version=8)
    theirs = ort.InferenceSession(model.SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(
        None, {"a": a, "b": b})[0]
    dag = Task.create("batch_matmul", (3, 9, 6, 13), "int8", out_type=kind).dag()
    zero_points = np.array([zeros[0], zeros[2], zeros[1]], np.int32)
    scale = [np.full(6, scales[0] * scales[1] / scales[2], np.float32)] if kind else []
    steps, _ = default_lowered(dag, target1)
    ours = CompiledKernel(apply_steps(dag, steps), target1)(a, b, *scale, zero_points)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)
