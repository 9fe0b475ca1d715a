"""Transformer blocks (tuner/network/patterns.py, tasks.py, row_codegen.py): GELU in its erf and
tanh forms (one Gelu node, or the chains exporters write in either order) fused into the FFN's
matmul as its epilogue; LayerNorm and Softmax as single nodes or decomposed, generated in the
package; the attention products as batch_matmul tasks. Against onnxruntime through
`compile_model` and `load_package`, at odd sequence lengths and 1, 4 and 12 heads, masked and
unmasked."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from onnx import helper

import tuner
from model_builders import make_model, randn
from tuner.network.deploy import load_package
from tuner.network.fused import FUSED_OPS
from tuner.network.graph import load_model
from tuner.network.package import write_package
from tuner.replay.source import open_schedules
from tuner.ir.target import named_target
from tuner.network.runtime import run_graph
from tuner.network.tasks import extract_tasks
from tuner.replay.source import NoRecordWarning

ort = pytest.importorskip("onnxruntime")

HEAD = 4  # floats per head: small, so that 12 heads stay a small model


class Block:
    """A transformer encoder block written node by node as exporters write it."""

    def __init__(self, rng, gelu: str, norm: str, softmax: str, mask: bool, opset: int = 17):
        self.rng, self.nodes, self.weights = rng, [], {}
        self.gelu, self.norm, self.softmax, self.mask, self.opset = \
            gelu, norm, softmax, mask, opset

    def const(self, name, value):
        self.weights[name] = np.asarray(value)
        return name

    def node(self, op, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def linear(self, x, name, n_in, n_out):
        w = self.const(f"{name}.w", randn(self.rng, n_in, n_out) / math.sqrt(n_in))
        b = self.const(f"{name}.b", 0.1 * randn(self.rng, n_out))
        return self.node("Add", [self.node("MatMul", [x, w], f"{name}.mm"), b], name)

    def axes(self, name, node_attrs):
        """ReduceMean's axes: an attribute before opset 18, an input from it."""
        if self.opset >= 18:
            return [self.const(f"{name}.axes", np.array([-1], np.int64))], {}
        return [], {"axes": [-1], **node_attrs}

    def layer_norm(self, x, name, width):
        scale = self.const(f"{name}.g", self.rng.uniform(0.5, 1.5, width).astype(np.float32))
        bias = self.const(f"{name}.be", 0.1 * randn(self.rng, width))
        if self.norm in ("node", "node-nobias"):
            inputs = [x, scale] + ([bias] if self.norm == "node" else [])
            return self.node("LayerNormalization", inputs, name, axis=-1, epsilon=1e-5)
        extra, attrs = self.axes(f"{name}.mean", {})
        mean = self.node("ReduceMean", [x] + extra, f"{name}.mean", **attrs)
        d = self.node("Sub", [x, mean], f"{name}.d")
        if self.norm == "decomposed-pow":
            sq = self.node("Pow", [d, self.const(f"{name}.two", np.float32(2))], f"{name}.sq")
        else:
            sq = self.node("Mul", [d, d], f"{name}.sq")
        extra, attrs = self.axes(f"{name}.var", {})
        var = self.node("ReduceMean", [sq] + extra, f"{name}.var", **attrs)
        std = self.node("Sqrt", [self.node("Add", [var, self.const(
            f"{name}.eps", np.float32(1e-5))], f"{name}.ve")], f"{name}.std")
        n = self.node("Div", [d, std], f"{name}.n")
        return self.node("Add", [self.node("Mul", [n, scale], f"{name}.s"), bias], name)

    def activation(self, h):
        c = {"half": np.float32(0.5), "one": np.float32(1.0), "rt2": np.float32(math.sqrt(2)),
             "k": np.float32(0.044715), "three": np.float32(3),
             "s2p": np.float32(math.sqrt(2 / math.pi))}
        c = {k: self.const(f"c.{k}", v) for k, v in c.items()}
        if self.gelu in ("node", "node-tanh"):
            return self.node("Gelu", [h], "gelu",
                             approximate="none" if self.gelu == "node" else "tanh")
        if self.gelu == "erf":  # PyTorch: x * 0.5 * (1 + erf(x / sqrt(2)))
            e = self.node("Erf", [self.node("Div", [h, c["rt2"]], "g.div")], "g.erf")
            half = self.node("Mul", [h, c["half"]], "g.half")
            return self.node("Mul", [half, self.node("Add", [e, c["one"]], "g.add")], "gelu")
        if self.gelu == "erf-last":  # (x * (1 + erf(x / sqrt(2)))) * 0.5
            e = self.node("Erf", [self.node("Mul", [h, self.const(
                "irt2", np.float32(1 / math.sqrt(2)))], "g.div")], "g.erf")
            m = self.node("Mul", [h, self.node("Add", [c["one"], e], "g.add")], "g.mul")
            return self.node("Mul", [m, c["half"]], "gelu")
        cube = self.node("Pow", [h, c["three"]], "g.cube")  # tanh form, as HF's gelu_new
        inner = self.node("Add", [h, self.node("Mul", [cube, c["k"]], "g.k")], "g.inner")
        t = self.node("Tanh", [self.node("Mul", [inner, c["s2p"]], "g.s")], "g.tanh")
        m = self.node("Mul", [self.node("Mul", [h, c["half"]], "g.half"),
                              self.node("Add", [t, c["one"]], "g.add")], "gelu")
        return m

    def attention_softmax(self, scores, seq):
        if self.mask:
            scores = self.node("Add", [scores, "mask"], "scores.masked")
        if self.softmax == "node":
            return self.node("Softmax", [scores], "probs", axis=-1)
        extra = {} if self.opset >= 13 else {"axes": [-1]}
        axes = [self.const("sm.axes", np.array([-1], np.int64))] if self.opset >= 13 else []
        top = self.node("ReduceMax", [scores], "sm.max", axes=[-1]) if self.opset < 18 else \
            self.node("ReduceMax", [scores, axes[0]], "sm.max")
        e = self.node("Exp", [self.node("Sub", [scores, top], "sm.sub")], "sm.exp")
        total = self.node("ReduceSum", [e] + axes, "sm.sum", **extra)
        return self.node("Div", [e, total], "probs")

    def build(self, seq: int, heads: int, ffn: int):
        hidden = heads * HEAD
        split = self.const("split", np.array([1, seq, heads, HEAD], np.int64))
        merged = self.const("merged", np.array([1, seq, hidden], np.int64))

        def heads_of(x, name, perm):
            return self.node("Transpose", [self.node("Reshape", [x, split], f"{name}.r")],
                             f"{name}.t", perm=perm)

        x = "x"
        q = heads_of(self.linear(x, "q", hidden, hidden), "q", [0, 2, 1, 3])
        k = heads_of(self.linear(x, "k", hidden, hidden), "k", [0, 2, 3, 1])
        v = heads_of(self.linear(x, "v", hidden, hidden), "v", [0, 2, 1, 3])
        scores = self.node("Div", [self.node("MatMul", [q, k], "qk"), self.const(
            "scale", np.float32(math.sqrt(HEAD)))], "scores")
        probs = self.attention_softmax(scores, seq)
        context = self.node("Reshape", [self.node("Transpose", [self.node(
            "MatMul", [probs, v], "pv")], "pv.t", perm=[0, 2, 1, 3]), merged], "context")
        y = self.layer_norm(self.node("Add", [self.linear(context, "o", hidden, hidden), x],
                                      "o.res"), "ln1", hidden)
        h = self.activation(self.linear(y, "ffn1", hidden, ffn))
        out = self.node("Add", [self.linear(h, "ffn2", ffn, hidden), y], "ffn.res")
        out = self.layer_norm(out, "y", hidden)
        inputs = {"x": (1, seq, hidden)}
        if self.mask:
            inputs["mask"] = (1, 1, 1, seq)
        return make_model(self.nodes, inputs, "y", self.weights, self.opset)


def feeds_for(rng, model, seq, mask):
    feeds = {"x": randn(rng, *[d.dim_value for d in
                               model.graph.input[0].type.tensor_type.shape.dim])}
    if mask:  # the last positions masked out, as a padded batch is
        keep = (np.arange(seq) < max(1, seq - seq // 3)).astype(np.float32)
        feeds["mask"] = ((1.0 - keep) * -10000.0).reshape(1, 1, 1, seq)
    return feeds


def onnxruntime_outputs(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


# (gelu, norm, softmax, mask, seq, heads, opset): every form at least once, odd lengths
BLOCKS = [
    ("erf", "node", "node", False, 7, 4, 17),
    ("erf-last", "node-nobias", "decomposed", True, 50, 1, 17),
    ("tanh", "decomposed-pow", "node", True, 1, 12, 17),
    ("node", "decomposed-mul", "decomposed", False, 13, 4, 20),
    ("node-tanh", "decomposed-pow", "node", True, 197, 4, 20),
]


@pytest.mark.parametrize("gelu, norm, softmax, mask, seq, heads, opset", BLOCKS)
def test_blocks_are_extracted_with_their_operators_whole(gelu, norm, softmax, mask, seq,
                                                         heads, opset):
    model = Block(np.random.default_rng(seq), gelu, norm, softmax, mask, opset).build(
        seq, heads, 24)
    extraction = extract_tasks(load_model(model))
    ops = [n.op_type for n in extraction.graph.nodes]
    keys = {use.task.key for use in extraction.tasks}
    form = 2 if "tanh" in gelu else 1
    assert any(f"gelu={form}" in key for key in keys), keys
    assert ops.count("TunerBatchMatMul") == 2
    assert ops.count("LayerNormalization") == 2 and ops.count("Softmax") == 1
    assert not {"Erf", "Tanh", "Gelu", "ReduceMean", "ReduceMax", "Exp", "Pow", "Div"} \
        & set(ops)  # the scores' scale is folded into the query's projection
    # Q, V and the context are read and written where the projections keep them, K is
    # written transposed by its projection: only the mask's Add stays in numpy
    numpy_ops = [op for op in ops if not op.startswith("Tuner")
                 and op not in ("LayerNormalization", "Softmax")]
    assert numpy_ops == (["Add"] if mask else [])
    hidden = heads * HEAD
    assert f"matmul/{seq}x{hidden}x{hidden}/bias=1,out_order=21,relu=0/float32" in keys
    assert {f"batch_matmul/{heads}x{seq}x{seq}x{HEAD}/a_order=213,bias=0,relu=0/float32",
            f"batch_matmul/{heads}x{seq}x{HEAD}x{seq}/b_order=213,bias=0,out_order=213,"
            f"relu=0/float32"} <= keys


@pytest.mark.parametrize("gelu, norm, softmax, mask, seq, heads, opset", BLOCKS)
def test_blocks_agree_with_onnxruntime(tmp_path, empty_db, gelu, norm, softmax, mask, seq,
                                       heads, opset):
    rng = np.random.default_rng(seq + heads)
    model = Block(rng, gelu, norm, softmax, mask, opset).build(seq, heads, 24)
    feeds = feeds_for(rng, model, seq, mask)
    expected = onnxruntime_outputs(model, feeds)
    graph = load_model(model)
    threads = 2 if seq % 2 else 1
    with pytest.warns(NoRecordWarning):  # default schedules: the empty records
        compiled = tuner.compile_model(graph, db=empty_db, threads=threads)
    built = write_package(graph, tmp_path, open_schedules(empty_db), named_target(None, threads))
    document = json.loads(built.graph_file.read_text())
    generated = {n["op_type"] for n in document["nodes"] if "kernel" in n}
    softmax = "TunerMaskedSoftmax" if mask else "Softmax"  # the mask's Add in its function
    assert {"TunerMatMul", "TunerBatchMatMul", "LayerNormalization", softmax} <= generated
    assert all("kernel" in n for n in document["nodes"])  # nothing left to numpy
    assert len(document["segments"]) == 1
    package = tuner.load_package(tmp_path)
    for runner in (compiled, package, load_package(tmp_path, segments=False)):
        out = runner(feeds)[0]
        assert out.shape == expected.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    assert np.array_equal(run_graph(graph, feeds)[0].shape, expected.shape)


def test_a_chain_that_is_not_gelu_stays_in_numpy():
    """x·(1 + erf(x/√2)) without the half, and SiLU-like x·tanh(x): closed elementwise runs
    that compute something else."""
    rng = np.random.default_rng(0)
    w = {"w": randn(rng, 6, 5), "rt2": np.float32(math.sqrt(2)), "one": np.float32(1)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Div", ["m", "rt2"], ["d"]),
             helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]),
             helper.make_node("Mul", ["m", "a"], ["g"]),
             helper.make_node("Tanh", ["g"], ["t"]),
             helper.make_node("Mul", ["g", "t"], ["y"])]
    model = make_model(nodes, {"x": (3, 6)}, "y", w)
    extraction = extract_tasks(load_model(model))
    assert [u.task.attr_dict.get("gelu", 0) for u in extraction.tasks] == [0]
    assert [n.op_type for n in extraction.graph.nodes][1:] == ["Div", "Erf", "Add", "Mul",
                                                               "Tanh", "Mul"]


def test_a_gelu_whose_inner_value_is_read_elsewhere_is_not_fused():
    rng = np.random.default_rng(1)
    w = {"w": randn(rng, 6, 5), "rt2": np.float32(math.sqrt(2)), "one": np.float32(1),
         "half": np.float32(0.5)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Div", ["m", "rt2"], ["d"]),
             helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]),
             helper.make_node("Mul", ["m", "a"], ["g"]),
             helper.make_node("Mul", ["g", "half"], ["h"]),
             helper.make_node("Add", ["h", "e"], ["y"])]  # reads erf's output too
    extraction = extract_tasks(load_model(make_model(nodes, {"x": (3, 6)}, "y", w)))
    assert [u.task.attr_dict.get("gelu", 0) for u in extraction.tasks] == [0]


def test_a_layer_norm_over_another_axis_is_left_decomposed():
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1]),
             helper.make_node("Sub", ["x", "mean"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["var"], axes=[1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["std"]),
             helper.make_node("Div", ["d", "std"], ["y"])]
    model = make_model(nodes, {"x": (2, 5, 3)}, "y", {"eps": np.float32(1e-5)})
    graph = load_model(model)
    rewritten = extract_tasks(graph).graph
    assert "LayerNormalization" not in [n.op_type for n in rewritten.nodes]
    x = randn(rng, 2, 5, 3)
    np.testing.assert_allclose(run_graph(rewritten, x)[0], run_graph(graph, x)[0])


def test_a_softmax_whose_exponentials_are_an_output_is_left_decomposed():
    nodes = [helper.make_node("Exp", ["x"], ["e"]),
             helper.make_node("ReduceSum", ["e", "axes"], ["s"]),
             helper.make_node("Div", ["e", "s"], ["y"])]
    model = make_model(nodes, {"x": (2, 5)}, "y", {"axes": np.array([-1], np.int64)})
    graph = load_model(model)
    graph = type(graph)(graph.inputs, ("y", "e"), graph.nodes, graph.initializers,
                        graph.shapes, graph.opset, graph.name)
    assert "Softmax" not in [n.op_type for n in extract_tasks(graph).graph.nodes]


# quantize_dynamic's blocks: (gelu, norm, softmax, mask, seq, heads, opset) of BLOCKS, and
# whether its weight scales are per channel
DYNAMIC_BLOCKS = [BLOCKS[0] + (False,), BLOCKS[1] + (True,), BLOCKS[3] + (False,)]


@pytest.mark.parametrize("gelu, norm, softmax, mask, seq, heads, opset, per_channel",
                         DYNAMIC_BLOCKS)
def test_dynamically_quantized_blocks_agree_with_onnxruntime(tmp_path, empty_db, gelu, norm,
                                                             softmax, mask, seq, heads, opset,
                                                             per_channel):
    """A block quantized by quantize_dynamic (7-bit weights, so that onnxruntime's own
    MatMulInteger is exact on AVX2 too): one DynamicQuantizeLinear of the hidden state for
    the three projections; each projection's dequantization, with the run-time scale and
    zero point, its bias, GELU or residual, is one generated function; the scores' scale is
    folded into the query's weight scale, and the key's projection writes K^T. Only the
    input's Reshape stays a numpy node, one run of kernels does the rest, and the package
    agrees with onnxruntime on the same file."""
    import onnx
    quantization = pytest.importorskip("onnxruntime.quantization")
    rng = np.random.default_rng(seq + heads)
    model = Block(rng, gelu, norm, softmax, mask, opset).build(seq, heads, 24)
    onnx.save(model, tmp_path / "block.onnx")
    quantization.quantize_dynamic(tmp_path / "block.onnx", tmp_path / "block.int8.onnx",
                                  reduce_range=True, per_channel=per_channel,
                                  extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    quantized = onnx.load(tmp_path / "block.int8.onnx")
    feeds = feeds_for(rng, model, seq, mask)
    expected = onnxruntime_outputs(quantized, feeds)
    graph = load_model(quantized)
    assert [n.op_type for n in graph.nodes].count("DynamicQuantizeLinear") == 4
    built = write_package(graph, tmp_path / "pkg", open_schedules(empty_db),
                          named_target(None, 1))
    document = json.loads(built.graph_file.read_text())
    nodes = document["nodes"]
    assert [n["op_type"] for n in nodes if "kernel" not in n] == ["Reshape"]
    assert len(document["segments"]) == 1
    hidden = heads * HEAD
    assert any(t.task_key.startswith(f"matmul/{seq}x{hidden}x{hidden}/bias=0,out_order=21")
               for t in built.tasks)
    products = [n["attributes"] for n in nodes if n["op_type"] == "TunerDequantizedProduct"]
    assert len(products) == 6 and all(p["dynamic"] for p in products)
    assert [p["row_channels"] for p in products].count(hidden) == 1  # the key's, as K^T
    assert all(p["per_channel"] == per_channel for p in products)
    assert sorted((p["gelu"] > 0, p["residual"]) for p in products) == \
        [(False, False)] * 3 + [(False, True)] * 2 + [(True, False)]
    out = tuner.load_package(tmp_path / "pkg")(feeds)[0]
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


class _Calibration:
    """quantize_static's calibration reader: `count` random feeds of the block."""

    def __init__(self, rng, model, seq, mask, count: int = 8):
        self.feeds = iter([feeds_for(rng, model, seq, mask) for _ in range(count)])

    def get_next(self):
        return next(self.feeds, None)


def _output_step(model) -> float:
    """The scale of the block's last DequantizeLinear: its output's quantization step."""
    import onnx
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    last = [n for n in model.graph.node if n.op_type == "DequantizeLinear"][-1]
    return float(consts[last.input[1]])


STATIC_BLOCKS = [BLOCKS[0] + (False,), BLOCKS[1] + (True,), BLOCKS[3] + (False,)]


@pytest.mark.parametrize("gelu, norm, softmax, mask, seq, heads, opset, reduce_range",
                         STATIC_BLOCKS)
def test_statically_quantized_attention_products_become_int8_tasks(
        tmp_path, empty_db, gelu, norm, softmax, mask, seq, heads, opset, reduce_range):
    """A block quantized by quantize_static (QDQ): the Reshape and Transpose that split the
    heads, each between a DequantizeLinear and a QuantizeLinear of the same quantization,
    move the quantized values, and the two products of activations become int8 batch_matmul
    tasks reading the quantized query and value where the projections wrote them (order
    213), the scores·V product writing the context in place and requantized; the GELU's
    quantized elementwise chain is one table lookup. The package
    equals the graph its fused nodes' exact references run bit for bit, and onnxruntime,
    unoptimised (the nodes as ONNX defines them), within one output step."""
    import onnx
    quantization = pytest.importorskip("onnxruntime.quantization")
    rng = np.random.default_rng(seq + heads)
    model = Block(rng, gelu, norm, softmax, mask, opset).build(seq, heads, 24)
    onnx.save(model, tmp_path / "block.onnx")
    quantization.quantize_static(str(tmp_path / "block.onnx"), str(tmp_path / "block.q.onnx"),
                                 _Calibration(rng, model, seq, mask),
                                 reduce_range=reduce_range)
    quantized = onnx.load(tmp_path / "block.q.onnx")
    graph = load_model(quantized)
    extraction = extract_tasks(graph)
    products = [u.task for u in extraction.tasks if u.task.op == "batch_matmul"]
    assert sorted(t.key for t in products) == sorted([
        f"batch_matmul/{heads}x{seq}x{seq}x{HEAD}/a_order=213,bias=0,out_type=1,relu=0/int8",
        f"batch_matmul/{heads}x{seq}x{HEAD}x{seq}/b_order=213,bias=0,out_order=213,"
        f"out_type=1,relu=0/int8"])
    assert not [n for n in extraction.notes if "MatMul" in n]
    built = write_package(graph, tmp_path / "pkg", open_schedules(empty_db),
                          named_target(None, 1))
    package = tuner.load_package(tmp_path / "pkg")
    step = _output_step(quantized)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    unoptimised = ort.InferenceSession(quantized.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
    assert sum(k.task_key.startswith("batch_matmul") for k in built.tasks) == 2
    # the GELU's chain of quantized elementwise nodes is one table (quantized_tables.py)
    kept = [n["op_type"] for n in json.loads(built.graph_file.read_text())["nodes"]]
    assert "TunerTableLookup" in kept and "Erf" not in kept and "Gelu" not in kept
    for _ in range(3):
        feeds = feeds_for(rng, model, seq, mask)
        out = package(feeds)[0]
        np.testing.assert_array_equal(out, run_graph(extraction.graph, feeds,
                                                     impls=FUSED_OPS)[0])
        assert np.abs(out - unoptimised.run(None, feeds)[0]).max() <= step * 1.001
