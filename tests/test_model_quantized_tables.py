"""Elementwise chains of one quantized tensor as 256-entry tables (tuner/network/
quantized_tables.py): which chains are taken, and that the table and the package's generated
lookup give the nodes' own bytes, exactly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import tuner
from tuner.ir.target import named_target
from tuner.network.graph import Graph, Node, load_model
from tuner.network.package import write_package
from tuner.network.quantized_tables import TABLE_LOOKUP, fuse_quantized_tables
from tuner.network.runtime import run_graph
from tuner.replay.source import open_schedules


def _gelu_nodes(x_zero, x_type):
    """quantize_static's GELU (x * 0.5 * (1 + erf(x / sqrt 2))) of the 8-bit x: a
    DequantizeLinear and a QuantizeLinear around each node, as the module docstring draws."""
    from onnx import TensorProto, helper, numpy_helper

    kind = {"uint8": np.uint8, "int8": np.int8}[x_type]
    consts = {"sx": np.float32(0.043), "zx": kind(x_zero), "s1": np.float32(0.031),
              "z1": kind(x_zero), "s2": np.float32(0.0079), "z2": np.uint8(128),
              "s3": np.float32(0.0081), "z3": np.uint8(0), "s4": np.float32(0.05),
              "z4": np.uint8(30), "s5": np.float32(0.026), "z5": np.uint8(25),
              "root2": np.float32(math.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}
    nodes = [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["dx"]),
             helper.make_node("Div", ["dx", "root2"], ["div"]),
             helper.make_node("QuantizeLinear", ["div", "s1", "z1"], ["q1"]),
             helper.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["d1"]),
             helper.make_node("Erf", ["d1"], ["erf"]),
             helper.make_node("QuantizeLinear", ["erf", "s2", "z2"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["d2"]),
             helper.make_node("Add", ["d2", "one"], ["add"]),
             helper.make_node("QuantizeLinear", ["add", "s3", "z3"], ["q3"]),
             helper.make_node("DequantizeLinear", ["q3", "s3", "z3"], ["d3"]),
             helper.make_node("Mul", ["dx", "d3"], ["mul"]),
             helper.make_node("QuantizeLinear", ["mul", "s4", "z4"], ["q4"]),
             helper.make_node("DequantizeLinear", ["q4", "s4", "z4"], ["d4"]),
             helper.make_node("Mul", ["d4", "half"], ["gelu"]),
             helper.make_node("QuantizeLinear", ["gelu", "s5", "z5"], ["y"])]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    elem = TensorProto.UINT8 if x_type == "uint8" else TensorProto.INT8
    return nodes, inits, elem


def _gelu_model(x_type="uint8", shape=(2, 7, 300)):
    from onnx import TensorProto, helper

    nodes, inits, elem = _gelu_nodes(3 if x_type == "int8" else 131, x_type)
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", elem,
                                                                              list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=8)


@pytest.mark.parametrize("x_type", ["uint8", "int8"])
def test_a_quantized_gelu_chain_is_one_table_of_the_nodes_own_bytes(x_type, tmp_path,
                                                                  empty_db):
    """The fifteen nodes are one lookup; its table is what the nodes give for each of the
    256 bytes, and the package's generated lookup gives the nodes' bytes on a tensor of
    them (blocks shared among two threads)."""
    shape = (3, 41, 300)  # more than one block of the lookup function
    graph = load_model(_gelu_model(x_type, shape))
    fused = fuse_quantized_tables(graph)
    assert [(n.op_type, n.inputs[0]) for n in fused.nodes] == [(TABLE_LOOKUP, "x")]
    assert fused.nodes[0].attributes == {"x_type": x_type, "y_type": "uint8"}
    every = np.arange(256, dtype=np.uint8).view(x_type).reshape(1, 1, 256)
    table = fused.initializers[fused.nodes[0].inputs[1]]
    small = load_model(_gelu_model(x_type, (1, 1, 256)))
    np.testing.assert_array_equal(table, run_graph(small, {"x": every})[0].reshape(256))
    built = write_package(graph, tmp_path / "pkg", open_schedules(empty_db),
                          named_target(None, 2))
    assert "x_type" in built.graph_file.read_text()
    package = tuner.load_package(tmp_path / "pkg")
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, shape).astype(np.uint8).view(x_type)
    out = package({"x": x})[0]
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, run_graph(graph, {"x": x})[0])


QUANT = {"s": np.float32(0.1), "z": np.uint8(100), "t": np.float32(0.2), "w": np.uint8(10)}


@pytest.mark.parametrize("case", ["vector constant", "read elsewhere", "two tensors",
                                  "not elementwise", "requantization only"])
def test_chains_that_are_not_one_byte_functions_stay(case):
    """A constant of several elements (per position), an intermediate value another node
    reads, two quantized tensors, a node that mixes elements, and a bare requantization
    (DequantizeLinear then QuantizeLinear) are left as they are."""
    consts = dict(QUANT, c=np.float32(2))
    second = "c"
    outputs = ("y",)
    first = "x"
    if case == "vector constant":
        consts["c"] = np.full(5, 2, np.float32)
    if case == "two tensors":
        second = "dx2"
    nodes = [Node("DequantizeLinear", "dq", (first, "s", "z"), ("dx",), {}),
             Node("DequantizeLinear", "dq2", ("x2", "s", "z"), ("dx2",), {}),
             Node("Mul", "mul", ("dx", second), ("m",), {}),
             Node("QuantizeLinear", "q", ("m", "t", "w"), ("y",), {})]
    if case == "read elsewhere":
        outputs = ("y", "m")
    if case == "not elementwise":
        nodes[2] = Node("Softmax", "mul", ("dx",), ("m",), {"axis": -1})
    if case == "requantization only":
        nodes[3] = Node("QuantizeLinear", "q", ("dx", "t", "w"), ("y",), {})
        del nodes[2]
    graph = Graph({"x": (4, 5), "x2": (4, 5)}, outputs, tuple(nodes),
                  {k: np.asarray(v) for k, v in consts.items()}, {}, 17, "g")
    assert fuse_quantized_tables(graph) is graph


@pytest.mark.parametrize("etype", ["uint8", "int8"])
def test_a_package_quantizes_and_dequantizes_with_generated_functions(etype, tmp_path, empty_db):
    """QuantizeLinear and DequantizeLinear of one scale and zero point (here around a
    Softmax, which a package generates too): generated functions, no numpy node left, and
    the bytes and floats numpy gives (the dequantized value is an output too: the Softmax
    would not show a zero point's shift), on a tensor of a partial last vector and more
    elements than one thread takes (2 threads), at values that round half to even and
    saturate."""
    from onnx import TensorProto, helper, numpy_helper

    kind = {"uint8": np.uint8, "int8": np.int8}[etype]
    shape = (3, 97, 131)
    consts = {"s": np.float32(0.0625), "z": kind(7), "t": np.float32(1 / 255), "w": kind(-3)
              if etype == "int8" else kind(3)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Softmax", ["d"], ["p"], axis=-1),
             helper.make_node("QuantizeLinear", ["p", "t", "w"], ["y"])]
    elem = TensorProto.UINT8 if etype == "uint8" else TensorProto.INT8
    model = helper.make_model(helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", elem, None),
         helper.make_tensor_value_info("d", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    graph = load_model(model)
    built = write_package(graph, tmp_path / "pkg", open_schedules(empty_db),
                          named_target(None, 2))
    document = json.loads(built.graph_file.read_text())
    assert [n["op_type"] for n in document["nodes"] if "kernel" not in n] == []
    rng = np.random.default_rng(5)
    x = rng.uniform(-20, 20, shape).astype(np.float32)
    x[0, 0, :8] = [0.03125, 0.09375, -0.03125, 1e9, -1e9, 0.5, 7.96875, -8.03125]  # ties
    ours, theirs = tuner.load_package(tmp_path / "pkg")({"x": x}), run_graph(graph, {"x": x})
    assert ours[0].dtype == kind and ours[1].dtype == np.float32
    for out, expected in zip(ours, theirs):  # the bytes, and the dequantized floats
        np.testing.assert_array_equal(out, expected)
