"""Generated models run by our numpy runtime, as loaded and after task extraction (fused nodes
in numpy and in the templates' references), against onnxruntime on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

from model_builders import bn_node, bn_weights, make_model, randn  # noqa: E402
from tuner.network.fused import FUSED_OPS, reference_impls  # noqa: E402
from tuner.network.graph import load_model  # noqa: E402
from tuner.network.runtime import run_graph  # noqa: E402
from tuner.network.tasks import extract_tasks  # noqa: E402

RNG_SEED = 7


def conv_bn_relu(rng):
    w = {"w": randn(rng, 8, 3, 3, 3), **bn_weights(rng, "bn", 8)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             bn_node("bn", "c", "b"), helper.make_node("Relu", ["b"], ["y"])]
    return make_model(nodes, {"x": (2, 3, 9, 7)}, "y", w), {}


def odd_conv_bias_pool(rng):
    """Odd sizes, stride 2, a separate per-channel Add as bias, pooling with ceil_mode."""
    w = {"w": randn(rng, 5, 3, 3, 3), "b": randn(rng, 1, 5, 1, 1)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[3, 3], strides=[2, 2],
                              ceil_mode=1),
             helper.make_node("AveragePool", ["m"], ["y"], kernel_shape=[2, 2],
                              pads=[1, 1, 0, 0], count_include_pad=1)]
    return make_model(nodes, {"x": (1, 3, 13, 11)}, "y", w), {}


def depthwise_relu6(rng):
    w = {"w": randn(rng, 6, 1, 3, 3), "wb": randn(rng, 6), "lo": np.float32(0),
         "hi": np.float32(6)}
    nodes = [helper.make_node("Conv", ["x", "w", "wb"], ["c"], group=6, strides=[2, 2],
                              auto_pad="SAME_UPPER"),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    return make_model(nodes, {"x": (1, 6, 10, 10)}, "y", w), {}


def asymmetric_conv(rng):
    """Pads the template cannot express: the Conv stays a numpy node."""
    w = {"w": randn(rng, 4, 2, 2, 3)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[0, 1, 1, 0], dilations=[2, 1])]
    return make_model(nodes, {"x": (1, 2, 7, 8)}, "y", w), {}


def matmul_add_relu(rng):
    """Rank-3 activations times a 2-D weight: a matmul over the flattened leading dims."""
    w = {"w": randn(rng, 12, 10), "b": randn(rng, 10)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    return make_model(nodes, {"x": (2, 5, 12)}, "y", w), {}


def gemm_trans_b(rng):
    w = {"w": randn(rng, 7, 9), "c": randn(rng, 7)}
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1, alpha=0.5, beta=2.0)]
    return make_model(nodes, {"x": (3, 9)}, "y", w), {}


def symbolic_batch(rng):
    """A symbolic batch, flattened into a Gemm through exporter-style Shape arithmetic."""
    w = {"w": randn(rng, 4, 3, 3, 3), "fc": randn(rng, 4 * 25, 6),
         "zero": np.array([0], np.int64), "minus": np.array([-1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Shape", ["c"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Concat", ["n", "minus"], ["shape"], axis=0),
             helper.make_node("Reshape", ["c", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    return make_model(nodes, {"x": ("N", 3, 7, 7)}, "y", w), {"x": (3, 3, 7, 7)}


def encoder_bits(rng):
    """The transformer ops: LayerNormalization, GELU with Erf, Softmax (opset 13 axis),
    a product of two activations, Transpose, Unsqueeze/Squeeze with axes inputs."""
    w = {"g": rng.uniform(0.5, 1.5, 8).astype(np.float32), "be": randn(rng, 8),
         "half": np.float32(0.5), "one": np.float32(1.0), "rt2": np.float32(np.sqrt(2)),
         "ax": np.array([1], np.int64)}
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "be"], ["ln"], axis=-1),
             helper.make_node("Div", ["ln", "rt2"], ["d"]),
             helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]),
             helper.make_node("Mul", ["ln", "e1"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["gelu"]),
             helper.make_node("Transpose", ["gelu"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["gelu", "t"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["p"], axis=1),
             helper.make_node("Unsqueeze", ["p", "ax"], ["u"]),
             helper.make_node("Squeeze", ["u", "ax"], ["y"])]
    return make_model(nodes, {"x": (2, 6, 8)}, "y", w), {}


def legacy_softmax_lrn(rng):
    """Opset 9: Softmax flattens at its axis; LRN; Flatten; Sum."""
    nodes = [helper.make_node("LRN", ["x"], ["l"], size=3, alpha=1e-3, beta=0.75, bias=1.0),
             helper.make_node("Sum", ["l", "x", "x"], ["s"]),
             helper.make_node("Softmax", ["s"], ["p"], axis=1),
             helper.make_node("Flatten", ["p"], ["y"], axis=2)]
    return make_model(nodes, {"x": (2, 5, 3, 4)}, "y", {}, opset=9), {}


def residual_blocks(rng):
    """Two ResNet blocks: an identity shortcut (Add of the block input, then Relu) and a
    projection shortcut computed after the main branch (a strided 1x1 conv + BN), whose Add
    closes two chains; odd sizes."""
    w = {"w1": randn(rng, 6, 6, 3, 3), **bn_weights(rng, "bn1", 6),
         "w2": randn(rng, 10, 6, 3, 3), **bn_weights(rng, "bn2", 10),
         "w3": randn(rng, 10, 6, 1, 1), **bn_weights(rng, "bn3", 10)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             bn_node("bn1", "c1", "b1"),
             helper.make_node("Add", ["b1", "x"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             bn_node("bn2", "c2", "b2"),
             helper.make_node("Conv", ["r1", "w3"], ["c3"], strides=[2, 2]),
             bn_node("bn3", "c3", "b3"),
             helper.make_node("Add", ["b3", "b2"], ["a2"]),
             helper.make_node("Relu", ["a2"], ["y"])]
    return make_model(nodes, {"x": (1, 6, 9, 11)}, "y", w), {}


def transformer_residual(rng):
    """A transformer layer's output projection: rank-3 MatMul, bias Add, residual Add of the
    layer input (no ReLU), then LayerNormalization."""
    w = {"w": randn(rng, 12, 12), "b": randn(rng, 12),
         "g": rng.uniform(0.5, 1.5, 12).astype(np.float32), "be": randn(rng, 12)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Add", ["x", "a"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "g", "be"], ["y"], axis=-1)]
    return make_model(nodes, {"x": (2, 7, 12)}, "y", w), {}


MODELS = [conv_bn_relu, odd_conv_bias_pool, depthwise_relu6, asymmetric_conv, matmul_add_relu,
          gemm_trans_b, symbolic_batch, encoder_bits, legacy_softmax_lrn, residual_blocks,
          transformer_residual]


@pytest.mark.parametrize("build", MODELS, ids=lambda f: f.__name__)
def test_generated_model_agrees_with_onnxruntime(build):
    rng = np.random.default_rng(RNG_SEED)
    model, shapes = build(rng)
    graph = load_model(model, shapes)
    feeds = {name: randn(rng, *shape) for name, shape in graph.inputs.items()}
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)[0]
    rewritten = extract_tasks(graph).graph
    for out in (run_graph(graph, feeds)[0], run_graph(rewritten, feeds, FUSED_OPS)[0],
                run_graph(rewritten, feeds, reference_impls())[0]):
        assert out.shape == expected.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
