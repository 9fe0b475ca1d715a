"""Generated pools in model packages (tuner/network/pool_codegen.py): MaxPool's windows, and its
results against numpy's MaxPool, bit for bit, over random kernel sizes, strides, pads,
dilations, ceil_mode and auto_pad; GlobalAveragePool's against the mean; at 1 and 2 threads
and 256- and 512-bit vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import tuner
from model_builders import randn
from tuner.network.deploy import load_package
from tuner.network.ops import OPS
from tuner.network.package import write_package
from tuner.replay.source import open_schedules
from tuner.ir.target import named_target
from tuner.network.pool_codegen import pool_windows


def test_taps_in_the_padding_are_replaced_by_taps_inside():
    windows = pool_windows((1, 2, 5, 6), {"kernel_shape": [3, 2], "strides": [2, 2],
                                          "pads": [1, 1, 1, 1]})
    assert windows.out_shape == (1, 2, 3, 4)
    assert windows.rows == ((0, 0, 1), (1, 2, 3), (3, 4, 3))
    assert windows.cols == ((0, 0), (1, 2), (3, 4), (5, 5))


@pytest.mark.parametrize("shape, attrs", [
    ((1, 2, 5), {"kernel_shape": [3]}),  # 1-D
    ((1, 2, 4, 4), {"kernel_shape": [2, 2], "pads": [3, 0, 0, 0]}),  # a row of pads only
])
def test_pools_it_does_not_generate(shape, attrs):
    assert pool_windows(shape, attrs) is None


def random_pools(rng, count: int) -> list[dict]:
    pools = []
    for _ in range(count):
        kernel = [int(rng.integers(1, 5)), int(rng.integers(1, 5))]
        attrs = {"kernel_shape": kernel,
                 "strides": [int(rng.integers(1, 4)), int(rng.integers(1, 4))]}
        if rng.random() < 0.3:
            attrs["dilations"] = [int(rng.integers(1, 3)), int(rng.integers(1, 3))]
        if rng.random() < 0.25:
            attrs["auto_pad"] = str(rng.choice(["SAME_UPPER", "SAME_LOWER", "VALID"]))
        else:
            attrs["pads"] = [int(rng.integers(0, k)) for k in kernel * 2]
        if rng.random() < 0.3:
            attrs["ceil_mode"] = 1
        pools.append(attrs)
    return pools


@pytest.mark.parametrize("seed", range(4))
def test_numpys_max_pool_is_the_maximum_over_each_window(seed):
    """The numpy MaxPool the generated one is checked against, against the definition: the
    largest of the window's taps inside the input; its input left as it was."""
    rng = np.random.default_rng(seed)
    for attrs in random_pools(rng, 8):
        x = randn(rng, 1, 2, int(rng.integers(3, 12)), int(rng.integers(3, 12)))
        before = x.copy()
        out = OPS["MaxPool"]([x], attrs, 17)[0]
        np.testing.assert_array_equal(x, before)
        windows = pool_windows(x.shape, attrs)
        if windows is None:
            continue
        assert out.shape == windows.out_shape
        for i, rows in enumerate(windows.rows):
            for j, cols in enumerate(windows.cols):
                want = x[0][:, list(rows)][:, :, list(cols)].max(axis=(1, 2))
                np.testing.assert_array_equal(out[0, :, i, j], want, err_msg=str(attrs))


def conv_then_pools(rng, pools: list[dict], size: tuple[int, int]):
    """A convolution (a kernel) whose output is a graph output and the input of each pool,
    each pool's output a graph output too."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])]
    outputs = ["c"]
    for i, attrs in enumerate(pools):
        nodes.append(helper.make_node("MaxPool", ["c"], [f"p{i}"], **attrs))
        outputs.append(f"p{i}")
    graph = helper.make_graph(
        nodes, "pools", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, *size])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        [numpy_helper.from_array(randn(rng, 5, 3, 3, 3), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cpu", ["x86-64-v3", None], ids=["256-bit", "host"])
@pytest.mark.parametrize("seed", [0, 1])
def test_generated_pools_match_numpy(tmp_path, empty_db, threads, cpu, seed):
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(5, 40)), int(rng.integers(5, 40)))
    pools = random_pools(rng, 6)
    model = conv_then_pools(rng, pools, size)
    built = write_package(model, tmp_path, open_schedules(empty_db), named_target(cpu, threads))
    document = json.loads(built.graph_file.read_text())
    generated = [n for n in document["nodes"] if n["op_type"] == "MaxPool" and "kernel" in n]
    assert len(generated) == len(pools)
    assert len(document["segments"]) == 1  # the conv and every pool: one call
    x = randn(rng, 1, 3, *size)
    for package in (tuner.load_package(tmp_path), load_package(tmp_path, segments=False)):
        conv, *pooled = package(x)
        for attrs, out in zip(pools, pooled):
            np.testing.assert_array_equal(out, OPS["MaxPool"]([conv], attrs, 17)[0],
                                          err_msg=str(attrs))


def test_a_pool_of_a_model_input_stays_in_numpy(tmp_path, empty_db):
    """Only a kernel's output is known to be float32 and to sit next to a kernel."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[2, 2]),
             helper.make_node("Conv", ["m", "w"], ["y"])]
    graph = helper.make_graph(
        nodes, "input_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                            [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(randn(rng, 4, 3, 1, 1), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    built = write_package(model, tmp_path, open_schedules(empty_db), named_target(None, 1))
    document = json.loads(built.graph_file.read_text())
    assert ["kernel" in n for n in document["nodes"]] == [False, True]
    x = randn(rng, 1, 3, 6, 6)
    pooled = OPS["MaxPool"]([x], {"kernel_shape": [2, 2]}, 17)[0]
    expected = np.einsum("nchw,kc->nkhw", pooled, numpy_helper.to_array(
        graph.initializer[0])[:, :, 0, 0])
    np.testing.assert_allclose(tuner.load_package(tmp_path)(x)[0], expected, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cpu", ["x86-64-v3", None], ids=["256-bit", "host"])
@pytest.mark.parametrize("size", [(3, 5), (7, 7), (40, 43)])  # under a vector, a few, a loop
def test_generated_global_average_pools_match_numpy(tmp_path, empty_db, threads, cpu, size):
    rng = np.random.default_rng(size[0])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"])]
    graph = helper.make_graph(
        nodes, "gap", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, *size])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("c", "g")],
        [numpy_helper.from_array(randn(rng, 37, 3, 3, 3), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    built = write_package(model, tmp_path, open_schedules(empty_db), named_target(cpu, threads))
    document = json.loads(built.graph_file.read_text())
    assert ["kernel" in n for n in document["nodes"]] == [True, True]
    assert document["segments"][0]["nodes"] == [0, 1]
    x = randn(rng, 1, 3, *size)
    for package in (tuner.load_package(tmp_path), load_package(tmp_path, segments=False)):
        conv, pooled = package(x)
        assert pooled.shape == (1, 37, 1, 1)
        expected = conv.astype(np.float64).mean(axis=(2, 3), keepdims=True)
        np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6 * abs(conv).max())
