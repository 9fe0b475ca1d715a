"""A quantized residual Add as one generated function (tuner.network.quantized_codegen.py): which
DequantizeLinear / Add / [Relu] / QuantizeLinear chains `fuse_quantized_adds` takes, and the
compiled function against the numpy nodes it replaces, bit for bit, over random scales, zero
points and 8-bit types (saturating outputs included), element counts around the vector width
and past the parallel threshold, 1 and 2 threads, the host's vectors and AVX2's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from test_model_rows import Compiled
from tuner.ir.target import named_target
from tuner.network.graph import Graph, Node
from tuner.network.ops import run_node
from tuner.network.quantized_codegen import (DYNAMIC_QUANTIZE, PARALLEL_ELEMENTS,
                                             QUANTIZATION_RANGE, QUANTIZED_ADD,
                                             DequantizedProduct, QuantizedAdd,
                                             dequantized_product_ir, dynamic_quantize_ir,
                                             fuse_dynamic_quantizations, fuse_quantized_adds,
                                             quantization_range_ir, quantized_add_ir)
from tuner.ir.reference import gelu as gelu_values

TYPES = {"uint8": np.uint8, "int8": np.int8}
COUNTS = (1, 5, 8, 16, 23, 1000, PARALLEL_ELEMENTS + 13)


def _numpy_nodes(a, b, add: QuantizedAdd) -> np.ndarray:
    """What the five ONNX nodes compute, through the numpy runtime's own implementations."""
    def constant(value, dtype):
        return np.asarray(value, dtype)

    def dequantize(x, scale, zero, etype):
        node = Node("DequantizeLinear", "dq", ("x", "s", "z"), ("y",), {})
        return run_node(node, [x, constant(scale, np.float32), constant(zero, TYPES[etype])],
                        17)[0]

    total = run_node(Node("Add", "add", ("a", "b"), ("s",), {}),
                     [dequantize(a, add.a_scale, add.a_zero, add.a_type),
                      dequantize(b, add.b_scale, add.b_zero, add.b_type)], 17)[0]
    if add.relu:
        total = run_node(Node("Relu", "relu", ("s",), ("r",), {}), [total], 17)[0]
    quantize = Node("QuantizeLinear", "q", ("x", "s", "z"), ("y",), {})
    return run_node(quantize, [total, constant(add.y_scale, np.float32),
                               constant(add.y_zero, TYPES[add.y_type])], 17)[0]


def _random_add(rng) -> QuantizedAdd:
    def quantization():
        etype = str(rng.choice(list(TYPES)))
        info = np.iinfo(TYPES[etype])
        scale = float(np.float32(10 ** rng.uniform(-3, 0)))
        return scale, int(rng.integers(info.min, info.max + 1)), etype

    a, b, y = quantization(), quantization(), quantization()
    return QuantizedAdd(*a, *b, *y, relu=int(rng.integers(2)))


@pytest.mark.parametrize("cpu", [None, "x86-64-v3"], ids=["host", "256-bit"])
@pytest.mark.parametrize("threads", [1, 2])
def test_generated_function_equals_the_numpy_nodes(cpu, threads):
    rng = np.random.default_rng(threads + (cpu is None))
    target = named_target(cpu, threads)
    saturated = 0
    for count in COUNTS:
        for trial in range(4):
            add = _random_add(rng)
            if trial == 2:  # a small output step: most sums saturate
                add = replace(add, y_scale=add.y_scale / 64)
            a, b = (rng.integers(np.iinfo(TYPES[t]).min, np.iinfo(TYPES[t]).max + 1, count)
                    .astype(TYPES[t]) for t in (add.a_type, add.b_type))
            if trial == 3:  # b at its zero point and twice a's step out: every odd a - a_zero
                # is a tie, rounded to even only by a true division
                add = replace(add, relu=0, y_scale=float(np.float32(add.a_scale) * 2))
                b[:] = add.b_zero
            out = np.full(count, 77, TYPES[add.y_type])
            Compiled(quantized_add_ir("qadd", count, add, target.machine, threads), "qadd",
                     target, 3)(out, a, b)
            expected = _numpy_nodes(a, b, add)
            assert out.dtype == expected.dtype
            np.testing.assert_array_equal(out, expected, err_msg=f"{count} elements, {add}")
            info = np.iinfo(out.dtype)
            saturated += int(np.sum((out == info.min) | (out == info.max)))
    assert saturated > 0


# ------------------------------------------------------------------ which chains are fused
SHAPE = (1, 4, 3, 3)


def _graph(nodes, initializers=None, shapes=None, outputs=("y",)) -> Graph:
    consts = {"sa": np.float32(0.05), "za": np.uint8(128), "sb": np.float32(0.1),
              "zb": np.uint8(3), "sy": np.float32(0.2), "zy": np.int8(-5)}
    consts.update(initializers or {})
    known = {name: SHAPE for name in ("a", "b", "da", "db", "s", "r", "y")}
    known.update(shapes or {})
    return Graph({"a": SHAPE, "b": SHAPE}, outputs, tuple(nodes),
                 {k: np.asarray(v) for k, v in consts.items()}, known, 17, "g")


def _chain(relu=False, b_zero="zb"):
    nodes = [Node("DequantizeLinear", "dqa", ("a", "sa", "za"), ("da",), {}),
             Node("DequantizeLinear", "dqb", ("b", "sb", b_zero), ("db",), {}),
             Node("Add", "add", ("da", "db"), ("s",), {})]
    if relu:
        nodes.append(Node("Relu", "relu", ("s",), ("r",), {}))
    nodes.append(Node("QuantizeLinear", "q", ("r" if relu else "s", "sy", "zy"), ("y",), {}))
    return nodes


@pytest.mark.parametrize("relu", [False, True])
def test_a_chain_becomes_one_node_computing_the_same(relu):
    graph = _graph(_chain(relu))
    fused = fuse_quantized_adds(graph)
    assert [n.op_type for n in fused.nodes] == [QUANTIZED_ADD]
    node = fused.nodes[0]
    assert node.inputs == ("a", "b") and node.outputs == ("y",)
    assert QuantizedAdd(**node.attributes) == QuantizedAdd(np.float32(0.05), 128, "uint8",
                                                 np.float32(0.1), 3, "uint8",
                                                 np.float32(0.2), -5, "int8", int(relu))
    assert set(fused.initializers) == set()


def test_a_dequantized_value_read_elsewhere_stays_for_its_other_reader():
    nodes = _chain() + [Node("Relu", "other", ("da",), ("o",), {})]
    fused = fuse_quantized_adds(_graph(nodes, outputs=("y", "o")))
    assert [n.op_type for n in fused.nodes] == ["DequantizeLinear", QUANTIZED_ADD, "Relu"]
    assert fused.nodes[0].outputs == ("da",)


@pytest.mark.parametrize("case", ["broadcast", "per-axis scale", "int32 zero point",
                                  "no zero point", "sum read elsewhere", "float operand"])
def test_chains_it_cannot_run_stay_numpy_nodes(case):
    nodes, initializers, shapes, outputs = _chain(), {}, {}, ("y",)
    if case == "broadcast":
        shapes = {"b": (1, 4, 1, 1), "db": (1, 4, 1, 1)}
    elif case == "per-axis scale":
        initializers = {"sb": np.full(4, 0.1, np.float32)}
    elif case == "int32 zero point":
        initializers = {"zi": np.int32(0)}
        nodes = _chain(b_zero="zi")
    elif case == "no zero point":
        nodes[1] = Node("DequantizeLinear", "dqb", ("b", "sb"), ("db",), {})
    elif case == "sum read elsewhere":
        outputs = ("y", "s")
    else:
        nodes[1] = Node("Relu", "dqb", ("b",), ("db",), {})
    graph = _graph(nodes, initializers, shapes, outputs)
    assert fuse_quantized_adds(graph) is graph


# ------------------------------------------------------------------ dequantized products
@pytest.mark.parametrize("cpu", [None, "x86-64-v3"], ids=["host", "256-bit"])
@pytest.mark.parametrize("threads", [1, 2])
def test_dequantized_product_equals_the_numpy_nodes(cpu, threads):
    rng = np.random.default_rng(5 + threads)
    target = named_target(cpu, threads)
    shapes = [(1, 1), (3, 5), (2, 8), (4, 13), (7, 771), (PARALLEL_ELEMENTS // 24 + 1, 24)]
    for (rows, width), bias, gelu in zip(shapes * 3, [True, False] * 9,
                                          [0] * 6 + [1] * 6 + [2] * 6):
        # past 2^24 a sum's conversion to float32 rounds: both round to nearest even
        sums = rng.integers(-(1 << 26), 1 << 26, (rows, width)).astype(np.int32)
        sums[:, ::2] //= 1 << 10
        scale = np.float32(10 ** rng.uniform(-8, -6.5)).reshape(())  # sums to about +-20
        row = rng.standard_normal(width).astype(np.float32)
        product = DequantizedProduct(rows, width, bias, gelu)
        out = np.full((rows, width), np.nan, np.float32)
        arrays = [out, sums, np.asarray(scale).reshape(1)] + ([row] if bias else [])
        Compiled(dequantized_product_ir("dq", product, target.machine, threads), "dq",
                 target, len(arrays))(*arrays)
        expected = run_node(Node("Mul", "mul", ("c", "s"), ("m",), {}),
                            [run_node(Node("Cast", "cast", ("x",), ("c",), {"to": 1}),
                                      [sums], 17)[0], scale], 17)[0]
        if bias:
            expected = run_node(Node("Add", "add", ("m", "b"), ("a",), {}),
                                [expected, row], 17)[0]
        what = f"{rows}x{width}, bias {bias}, gelu {gelu}"
        if not gelu:
            np.testing.assert_array_equal(out, expected, err_msg=what)
        else:
            want = gelu_values(expected.astype(np.float64), {1: "none", 2: "tanh"}[gelu])
            np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6, err_msg=what)



# ------------------------------------------------------------------ dynamic quantizations
def _dynamic_values(rng, count: int, kind: str) -> np.ndarray:
    """float32 activations: mixed signs, all positive, all negative, all zero (scale 1), or
    values on the quantization grid of their own range plus half a step (ties)."""
    x = (rng.standard_normal(count) * 10 ** rng.uniform(-2, 2)).astype(np.float32)
    if kind == "positive":
        return np.abs(x)
    if kind == "negative":
        return -np.abs(x)
    if kind == "zero":
        return np.zeros(count, np.float32)
    if kind == "ties":  # a range of 255 steps of 0.5: every x / scale is k + 0.5 exactly
        x = (rng.integers(-100, 100, count) + 0.5).astype(np.float32) * np.float32(0.5)
        x[:2] = [-63.75, 63.75][:count]
        return x
    return x


@pytest.mark.parametrize("cpu", [None, "x86-64-v3"], ids=["host", "256-bit"])
@pytest.mark.parametrize("threads", [1, 2])
def test_dynamic_quantization_equals_the_numpy_node(cpu, threads):
    """The range and the quantization functions against the numpy runtime's
    DynamicQuantizeLinear, bit for bit: the scale, the zero point and every output, over
    counts around the vector width and past the parallel threshold."""
    rng = np.random.default_rng(20 + threads + (cpu is None))
    target = named_target(cpu, threads)
    kinds = ("mixed", "positive", "negative", "zero", "ties")
    for count in COUNTS:
        range_fn = Compiled(quantization_range_ir("qrange", count, target.machine), "qrange",
                            target, 2)
        quantize_fn = Compiled(dynamic_quantize_ir("dq", count, target.machine, threads),
                               "dq", target, 3)
        for kind in kinds:
            x = _dynamic_values(rng, count, kind)
            params = np.full(2, np.nan, np.float32)
            range_fn(params, x)
            out = np.full(count, 7, np.uint8)
            quantize_fn(out, x, params)
            y, scale, zero = run_node(Node("DynamicQuantizeLinear", "d", ("x",),
                                           ("y", "s", "z"), {}), [x], 17)
            what = f"{count} elements, {kind}"
            assert params[0] == scale and params[1] == zero, (what, params, scale, zero)
            np.testing.assert_array_equal(out, y, err_msg=what)


def test_dynamic_quantization_becomes_two_functions_and_gathers():
    """The node's three outputs: the quantized tensor from DYNAMIC_QUANTIZE, the scale and
    the zero point gathered from QUANTIZATION_RANGE's two floats; run by the numpy runtime's
    implementations of the new nodes' parts they equal the original node's."""
    from tuner.network.runtime import run_graph
    from tuner.network.quant_ops import dynamic_quantize_linear

    node = Node("DynamicQuantizeLinear", "dql", ("x",), ("y", "s", "z"), {})
    graph = Graph({"x": (3, 5)}, ("y", "s", "z"), (node,), {},
                  {"x": (3, 5), "y": (3, 5), "s": (), "z": ()}, 17, "g")
    fused = fuse_dynamic_quantizations(graph)
    kinds = [n.op_type for n in fused.nodes]
    assert kinds == [QUANTIZATION_RANGE, "Gather", "Gather", "Cast", DYNAMIC_QUANTIZE]
    params = fused.nodes[0].outputs[0]
    assert fused.shapes[params] == (2,) and graph.shapes.get(params) is None
    x = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    y, scale, zero = dynamic_quantize_linear([x], {}, 17)
    # the generated nodes' work in numpy: the two floats, then the graph's gathers and cast
    impls = {QUANTIZATION_RANGE: lambda node, args: [np.array([scale, zero], np.float32)],
             DYNAMIC_QUANTIZE: lambda node, args: [y]}
    s, z = run_graph(fused, {"x": x}, impls=impls)[1:]
    assert s.shape == () and s.dtype == np.float32 and s == scale
    assert z.shape == () and z.dtype == np.uint8 and z == zero
    # a node with an unknown input shape stays
    assert fuse_dynamic_quantizations(Graph({"x": (3, 5)}, ("y",), (node,), {}, {}, 17,
                                            "g")).nodes == (node,)
