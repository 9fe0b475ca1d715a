"""Task extraction: which tasks a graph yields, how often, what is fused and folded, and the
one-line errors for models that cannot be run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper  # noqa: E402

from model_builders import bn_weights, make_model, randn  # noqa: E402
from test_model_onnxruntime import (asymmetric_conv, conv_bn_relu, gemm_trans_b,  # noqa: E402
                                    matmul_add_relu, residual_blocks, symbolic_batch,
                                    transformer_residual)
import tuner  # noqa: E402
from tuner.errors import TunerError  # noqa: E402
from tuner.ir.target import named_target  # noqa: E402
from tuner.network.package import write_package  # noqa: E402
from tuner.replay.source import open_schedules  # noqa: E402
from tuner.network.fused import FUSED_OPS  # noqa: E402
from tuner.network.graph import load_model  # noqa: E402
from tuner.network.ops import erf  # noqa: E402
from tuner.network.runtime import check_supported, run_graph, unsupported_ops  # noqa: E402
from tuner.network.tasks import extract_tasks  # noqa: E402
from tuner.ir.task import Task  # noqa: E402


def _rng():
    return np.random.default_rng(3)


def _only_task(model, shapes=None):
    extraction = extract_tasks(load_model(model, shapes))
    assert len(extraction.tasks) == 1
    return extraction, extraction.tasks[0]


def test_conv_bn_relu_is_one_task_with_the_batchnorm_folded():
    rng = _rng()
    model, _ = conv_bn_relu(rng)
    extraction, row = _only_task(model)
    assert row.task == Task.create("conv2d", (2, 3, 9, 7, 8, 3, 3), pad=1, bias=True, relu=True)
    assert row.occurrences == 1 and row.share == 1.0
    assert [n.op_type for n in extraction.graph.nodes] == ["TunerConv"]
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    factor = init["bn_scale"] / np.sqrt(init["bn_var"].astype(np.float64) + 1e-3)
    node = extraction.graph.nodes[0]
    weight, bias = (extraction.graph.initializers[name] for name in node.inputs[1:])
    np.testing.assert_allclose(weight, init["w"] * factor[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(bias, init["bn_bias"] - init["bn_mean"] * factor, rtol=1e-6,
                               atol=1e-6)


def test_identical_layers_are_one_task_counted_with_their_flops_share():
    rng = _rng()
    weights = {"w1": randn(rng, 4, 4, 3, 3), "w2": randn(rng, 4, 4, 3, 3),
               "w3": randn(rng, 8, 4, 1, 1), **bn_weights(rng, "bn", 4)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "w2"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["b"], ["br"]),
             helper.make_node("Conv", ["br", "w3"], ["y"])]
    extraction = extract_tasks(load_model(make_model(nodes, {"x": (1, 4, 6, 6)}, "y", weights)))
    rows = {r.task.shape: r for r in extraction.tasks}
    big, small = rows[(1, 4, 6, 6, 4, 3, 3)], rows[(1, 4, 6, 6, 8, 1, 1)]
    assert (big.occurrences, small.occurrences) == (2, 1)
    assert big.nodes == tuple(n.name for n in extraction.graph.nodes[:2])
    assert big.flops == 2 * 4 * 36 * 4 * 9 and small.flops == 2 * 8 * 36 * 4
    assert math.isclose(big.share, 2 * big.flops / (2 * big.flops + small.flops))
    assert extraction.tasks[0] is big and math.isclose(big.share + small.share, 1.0)


def test_matmul_over_flattened_leading_dims_and_gemm_transb():
    _, row = _only_task(matmul_add_relu(_rng())[0])
    assert row.task == Task.create("matmul", (10, 10, 12), bias=True, relu=True)
    _, row = _only_task(gemm_trans_b(_rng())[0])
    assert row.task == Task.create("matmul", (3, 7, 9), bias=True, relu=False)


def test_a_conv_the_template_cannot_express_stays_numpy_with_a_note():
    extraction = extract_tasks(load_model(asymmetric_conv(_rng())[0]))
    assert extraction.tasks == ()
    assert [n.op_type for n in extraction.graph.nodes] == ["Conv"]
    assert "symmetric pad" in extraction.notes[0]


@pytest.mark.parametrize("opset", [9, 13])
def test_clip_0_6_is_the_relu6_epilogue_and_other_clips_stay(opset):
    """Clip(0, 6) after a layer is its ReLU6 epilogue (bounds as attributes before opset 11,
    as constant inputs after); a Clip with other bounds stays a numpy node, noted."""
    rng = _rng()
    for (low, high), fused in (((0, 6), True), ((0, 4), False)):
        weights = {"w": randn(rng, 4, 1, 3, 3)}
        if opset >= 11:
            weights.update(lo=np.float32(low), hi=np.float32(high))
            clip = helper.make_node("Clip", ["c", "lo", "hi"], ["y"])
        else:
            clip = helper.make_node("Clip", ["c"], ["y"], min=float(low), max=float(high))
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], group=4, pads=[1, 1, 1, 1]), clip]
        graph = load_model(make_model(nodes, {"x": (1, 4, 5, 5)}, "y", weights, opset=opset))
        extraction = extract_tasks(graph)
        task = extraction.tasks[0].task
        assert task.attr_dict["groups"] == 4
        assert task.attr_dict["relu"] == (6 if fused else 0)
        kinds = [n.op_type for n in extraction.graph.nodes]
        assert kinds == (["TunerConv"] if fused else ["TunerConv", "Clip"])
        assert fused or any("neither ReLU" in note for note in extraction.notes)
        x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32) * 4
        expected = run_graph(graph, x)[0]
        assert expected.max() == high
        np.testing.assert_allclose(run_graph(extraction.graph, x, FUSED_OPS)[0], expected,
                                   rtol=1e-5, atol=1e-5)


def test_a_skip_connection_is_the_residual_of_one_layer():
    """ResNet blocks: each Add of two activations (and the Relu after it) is fused into one
    layer as its residual, the projection shortcut's Add into one of its two chains only, and
    each fused node sits where all its inputs exist; the outputs do not change."""
    rng = _rng()
    model, _ = residual_blocks(rng)
    graph = load_model(model)
    extraction = extract_tasks(graph)
    # the strided 1x1 projection reads its pixels through a MaxPool of stride 2
    assert [n.op_type for n in extraction.graph.nodes] == ["TunerConv", "MaxPool"] + \
        ["TunerConv"] * 2
    nodes = [n for n in extraction.graph.nodes if n.op_type == "TunerConv"]
    residual = [n for n in nodes if n.attributes["task"].attr_dict.get("residual")]
    assert len(residual) == 2 and all(n.attributes["task"].attr_dict["relu"] == 1
                                      for n in residual)
    assert residual[0].inputs[-1] == "x"
    produced = {"x"} | set(extraction.graph.initializers)
    for node in extraction.graph.nodes:
        assert set(node.inputs) <= produced, node.name
        produced.update(node.outputs)
    feeds = {"x": randn(rng, 1, 6, 9, 11)}
    np.testing.assert_allclose(run_graph(extraction.graph, feeds, FUSED_OPS)[0],
                               run_graph(graph, feeds)[0], rtol=1e-5, atol=1e-5)


def test_a_transformer_residual_is_fused_into_the_matmul():
    extraction, row = _only_task(transformer_residual(_rng())[0])
    assert row.task == Task.create("matmul", (14, 12, 12), bias=True, residual=True)
    assert [n.op_type for n in extraction.graph.nodes] == ["TunerMatMul", "LayerNormalization"]


def test_adds_that_are_not_skip_connections_are_not_residuals():
    """A broadcast Add of an activation of another shape stays numpy, and so does anything
    but a ReLU after a residual (the bias was added before it: a Mul cannot fold)."""
    rng = _rng()
    weights = {"w": randn(rng, 4, 3, 1, 1), "w2": randn(rng, 4, 3, 1, 1),
               "s": randn(rng, 1, 4, 1, 1)}  # two weights: equal Convs would be one
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("ReduceMean", ["c"], ["m"], axes=[2, 3], keepdims=1),
             helper.make_node("Conv", ["x", "w2"], ["d"]),
             helper.make_node("Add", ["d", "m"], ["y"])]
    extraction = extract_tasks(load_model(make_model(nodes, {"x": (1, 3, 4, 4)}, "y", weights)))
    assert sorted(n.op_type for n in extraction.graph.nodes) == \
        ["Add", "ReduceMean", "TunerConv", "TunerConv"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Conv", ["x", "w2"], ["d"]),
             helper.make_node("Add", ["c", "d"], ["a"]),
             helper.make_node("Mul", ["a", "s"], ["y"])]
    model = make_model(nodes, {"x": (1, 3, 4, 4)}, "y", weights)
    extraction = extract_tasks(load_model(model))
    assert [n.op_type for n in extraction.graph.nodes] == ["TunerConv", "TunerConv", "Mul"]
    feeds = {"x": randn(rng, 1, 3, 4, 4)}
    np.testing.assert_allclose(run_graph(extraction.graph, feeds, FUSED_OPS)[0],
                               run_graph(load_model(model), feeds)[0], rtol=1e-5, atol=1e-6)


def test_a_layer_whose_output_is_read_twice_is_not_fused():
    rng = _rng()
    weights = {"w": randn(rng, 4, 3, 1, 1)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["c", "r"], ["y"])]
    model = make_model(nodes, {"x": (1, 3, 4, 4)}, "y", weights)
    extraction, row = _only_task(model)
    assert not row.task.attr_dict["relu"]
    feeds = {"x": randn(rng, 1, 3, 4, 4)}
    np.testing.assert_allclose(run_graph(extraction.graph, feeds, FUSED_OPS)[0],
                               run_graph(load_model(model), feeds)[0], rtol=1e-6)


def test_symbolic_batch_needs_its_shape_and_shape_arithmetic_is_folded():
    model, shapes = symbolic_batch(_rng())
    with pytest.raises(TunerError, match=r"input 'x' has a symbolic dimension 0 \('N'\)"):
        load_model(model)
    graph = load_model(model, shapes)
    assert [n.op_type for n in graph.nodes] == ["Conv", "Reshape", "MatMul"]
    tasks = {r.task.op: r.task for r in extract_tasks(graph).tasks}
    assert tasks["conv2d"].shape == (3, 3, 7, 7, 4, 3, 3)
    assert tasks["matmul"].shape == (3, 6, 100)
    with pytest.raises(TunerError, match="no input 'y'"):
        load_model(model, {"y": (1, 3, 7, 7)})
    with pytest.raises(TunerError, match="input 'x' expects 4 positive dimensions"):
        load_model(model, {"x": (3, 7, 7)})


def test_constant_of_shape_subgraphs_fold_into_initializers():
    shape_input = np.array([4, 3, 1, 1], np.int64)
    nodes = [helper.make_node("ConstantOfShape", ["ws"], ["w"],
                              value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.5])),
             helper.make_node("Conv", ["x", "w"], ["y"])]
    graph = load_model(make_model(nodes, {"x": (1, 3, 2, 2)}, "y", {"ws": shape_input}))
    assert [n.op_type for n in graph.nodes] == ["Conv"]
    np.testing.assert_array_equal(graph.initializers["w"], np.full((4, 3, 1, 1), 0.5, np.float32))
    assert extract_tasks(graph).tasks[0].task.shape == (1, 3, 2, 2, 4, 1, 1)


def _model_with_outputs(nodes, inputs: dict, outputs: list[str], weights: dict):
    graph = helper.make_graph(
        nodes, "generated",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(s))
         for n, s in inputs.items()],
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs],
        [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_nodes_that_compute_what_an_earlier_one_does_are_merged():
    """quantize_dynamic's attention: each projection reshapes and quantizes the same hidden
    state through a shape constant of its own. One Reshape and one DynamicQuantizeLinear
    remain, their readers read them, and the results do not change; a node that writes a
    graph output stays, as do nodes with other attributes or other constants."""
    shape = np.array([6, 4], np.int64)
    weights = {"s1": shape, "s2": shape.copy(), "s3": shape.copy(),
               "other": np.array([4, 6], np.int64)}
    nodes = [helper.make_node("Reshape", ["x", s], [f"r{i}"])
             for i, s in enumerate(("s1", "s2", "s3"), 1)]
    nodes += [helper.make_node("Reshape", ["x", "other"], ["r4"]),
              helper.make_node("DynamicQuantizeLinear", ["r1"], ["q1", "sc1", "zp1"]),
              helper.make_node("DynamicQuantizeLinear", ["r2"], ["q2", "sc2", "zp2"]),
              helper.make_node("Cast", ["q1"], ["f1"], to=onnx.TensorProto.FLOAT),
              helper.make_node("Cast", ["q2"], ["f2"], to=onnx.TensorProto.FLOAT),
              helper.make_node("Cast", ["q2"], ["i2"], to=onnx.TensorProto.INT32),
              helper.make_node("Mul", ["f1", "sc1"], ["d1"]),
              helper.make_node("Mul", ["f2", "sc2"], ["d2"]),
              helper.make_node("Add", ["d1", "d2"], ["y1"]),
              helper.make_node("Relu", ["r3"], ["y2"]),
              helper.make_node("Relu", ["r1"], ["y3"]),
              helper.make_node("Softmax", ["r2"], ["y4"], axis=0),
              helper.make_node("Softmax", ["r1"], ["y5"], axis=1),
              helper.make_node("Cast", ["i2"], ["y6"], to=onnx.TensorProto.FLOAT),
              helper.make_node("Relu", ["r4"], ["y7"])]
    model = _model_with_outputs(nodes, {"x": (4, 6)}, [f"y{i}" for i in range(1, 8)], weights)
    graph = load_model(model)
    count = {op: sum(n.op_type == op for n in graph.nodes) for op in
             ("Reshape", "DynamicQuantizeLinear", "Cast", "Mul", "Relu", "Softmax")}
    assert count == {"Reshape": 2, "DynamicQuantizeLinear": 1, "Cast": 3, "Mul": 1,
                     "Relu": 3, "Softmax": 2}
    x = _rng().standard_normal((4, 6)).astype(np.float32)
    got = run_graph(graph, {"x": x})
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for mine, theirs in zip(got, session.run(None, {"x": x})):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-6)


def test_random_draws_are_never_merged():
    nodes = [helper.make_node("RandomNormalLike", ["x"], ["a"], seed=1.0),
             helper.make_node("RandomNormalLike", ["x"], ["b"], seed=1.0),
             helper.make_node("Add", ["a", "b"], ["y"])]
    graph = load_model(make_model(nodes, {"x": (2, 3)}, "y", {}))
    assert [n.op_type for n in graph.nodes] == ["RandomNormalLike", "RandomNormalLike", "Add"]


def test_an_unsupported_operator_is_one_line_naming_it_and_its_node():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="act"),
             helper.make_node("Hardmax", ["r"], ["y"], name="pick")]
    graph = load_model(make_model(nodes, {"x": (2, 3)}, "y", {}))
    assert [n.name for n in unsupported_ops(graph)] == ["pick"]
    for call in (lambda: check_supported(graph), lambda: run_graph(graph, np.ones((2, 3)))):
        with pytest.raises(TunerError) as err:
            call()
        assert str(err.value) == "unsupported ONNX operator 'Hardmax' (node 'pick')"


@pytest.mark.parametrize("content", [b"this is not a protobuf \xff\xfe", b""],
                         ids=["garbage", "empty"])
def test_a_malformed_file_is_one_line_naming_the_path(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(TunerError) as err:
        load_model(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_truncated_file_is_one_line_naming_the_path(tmp_path):
    data = conv_bn_relu(_rng())[0].SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(TunerError) as err:
        load_model(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(TunerError, match="no ONNX file at"):
        load_model(tmp_path / "missing.onnx")


def test_feeds_are_checked_against_the_input_shapes():
    graph = load_model(conv_bn_relu(_rng())[0])
    with pytest.raises(TunerError, match="input 'x' expects shape 2,3,9,7, got 1,3,9,7"):
        run_graph(graph, np.zeros((1, 3, 9, 7), np.float32))
    with pytest.raises(TunerError, match="inputs are x; got z"):
        run_graph(graph, {"z": np.zeros((2, 3, 9, 7), np.float32)})


def test_erf_is_accurate_to_1e7():
    x = np.linspace(-6, 6, 200_001)
    exact = np.array([math.erf(v) for v in x])
    assert np.abs(erf(x) - exact).max() < 1e-7


@pytest.mark.parametrize("strides", [(2, 2), (3, 2)])
def test_a_strided_pointwise_conv_is_a_subsample_and_a_conv_of_stride_one(
        strides, tmp_path, empty_db):
    """A 1x1 Conv of stride s and no padding: a MaxPool with a 1x1 window and stride s (its
    pixels, exactly), shared by the two convolutions of that input, and conv2d tasks of
    stride 1 on the pixels; the same outputs. In a package the MaxPool is a generated
    function after the kernel that makes its input: no numpy node."""
    rng = _rng()
    weights = {"w0": randn(rng, 5, 3, 3, 3), "w1": randn(rng, 4, 5, 1, 1),
               "w2": randn(rng, 6, 5, 1, 1), "b2": randn(rng, 6)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1"], ["y1"], strides=list(strides)),
             helper.make_node("Conv", ["r0", "w2", "b2"], ["c2"], strides=list(strides)),
             helper.make_node("Relu", ["c2"], ["y2"])]
    model = make_model(nodes, {"x": (1, 3, 11, 10)}, "y1", weights)
    model.graph.output.append(helper.make_tensor_value_info("y2", 1, None))
    graph = load_model(model)
    extraction = extract_tasks(graph)
    assert [n.op_type for n in extraction.graph.nodes] == ["TunerConv", "MaxPool",
                                                           "TunerConv", "TunerConv"]
    oh, ow = (11 - 1) // strides[0] + 1, (10 - 1) // strides[1] + 1
    assert sorted(u.task.key for u in extraction.tasks)[1:] == sorted(
        f"conv2d/1x5x{oh}x{ow}x{k}x1x1/bias={b},dilation=1,groups=1,pad=0,relu={b},"
        f"stride=1/float32" for k, b in ((4, 0), (6, 1)))
    feeds = {"x": randn(rng, 1, 3, 11, 10)}
    expected = run_graph(graph, feeds)
    for ours, theirs in zip(run_graph(extraction.graph, feeds, FUSED_OPS), expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    built = write_package(graph, tmp_path / "pkg", open_schedules(empty_db),
                          named_target(None, 1))
    document = json.loads(built.graph_file.read_text())
    assert [n["op_type"] for n in document["nodes"] if "kernel" not in n] == []
    for ours, theirs in zip(tuner.load_package(tmp_path / "pkg")(feeds), expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
