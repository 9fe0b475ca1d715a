"""Segments: a package runs each run of consecutive kernel nodes with one call into its
library (tuner/network/segments.py). The runs are maximal, the arena never gives two values
live at once the same bytes, and a segmented package computes what calling its kernels one by
one computes, from several threads at once too, with the values read outside a segment (by a
numpy node, as a graph output, from the middle of a run) handed out as fresh arrays."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import tuner
from model_builders import randn
from records import RecordStore
from tuner.errors import TunerError
from tuner.network.deploy import load_package
from tuner.network.graph import Node, load_model
from tuner.network.package import write_package
from tuner.replay.source import open_schedules
from tuner.ir.target import named_target
from tuner.network.runtime import run_graph
from tuner.network.segments import ALIGN, group_runs, kernel_runs, plan_arena, slot_bases


def _node(name, inputs, outputs, op="K"):
    return Node(op, name, tuple(inputs), tuple(outputs), {})


def test_kernel_runs_are_maximal():
    ops = ["K", "K", "N", "K", "N", "N", "K", "K", "K"]
    nodes = [_node(f"n{i}", [], [f"v{i}"], op) for i, op in enumerate(ops)]
    runs = kernel_runs(nodes, lambda n: n.op_type == "K")
    assert runs == [range(0, 2), range(3, 4), range(6, 9)]
    assert kernel_runs(nodes[2:3], lambda n: n.op_type == "K") == []
    assert slot_bases([3, 1, 4]) == [0, 4, 6]


@pytest.mark.parametrize("seed", range(30))
def test_grouped_runs_keep_every_dependency_and_are_no_more(seed):
    """Random DAGs of kernel (K) and numpy (N) nodes: the grouped order is a permutation in
    which every node comes after the nodes it reads, with at most as many runs of kernels as
    the given order; where a numpy node needs nothing of a run, the run is not split."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(2, 25))
    nodes = []
    for i in range(count):
        reads = [f"v{j}" for j in range(i) if rng.random() < 0.2]
        nodes.append(_node(f"n{i}", reads, [f"v{i}"], "K" if rng.random() < 0.6 else "N"))
    is_kernel = lambda n: n.op_type == "K"  # noqa: E731
    grouped = group_runs(nodes, is_kernel)
    assert sorted(n.name for n in grouped) == sorted(n.name for n in nodes)
    position = {n.outputs[0]: i for i, n in enumerate(grouped)}
    assert all(position[name] < position[n.outputs[0]] for n in grouped for name in n.inputs)
    assert len(kernel_runs(grouped, is_kernel)) <= len(kernel_runs(nodes, is_kernel))
    independent = [_node("a", [], ["a"]), _node("p", [], ["p"], "N"), _node("b", ["a"], ["b"])]
    assert [n.name for n in group_runs(independent, is_kernel)] == ["a", "b", "p"]


@pytest.mark.parametrize("seed", range(20))
def test_the_arena_never_overlaps_live_values(seed):
    """Random chains with random extra readers: values live at the same time never share a
    byte, every offset is aligned, and a chain's arena is smaller than all its values."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(2, 14))
    nodes, sizes = [], {}
    for i in range(count):
        earlier = [f"v{j}" for j in range(i) if rng.random() < 0.3]
        inputs = ([f"v{i - 1}"] if i else ["x"]) + earlier
        nodes.append(_node(f"n{i}", inputs, [f"v{i}"]))
        sizes[f"v{i}"] = int(rng.integers(1, 5000)) * 4
    placed = {f"v{i}" for i in range(count) if rng.random() < 0.8}
    plan = plan_arena(nodes, sizes, placed)
    assert set(plan.offsets) == placed
    assert all(offset % ALIGN == 0 for offset in plan.offsets.values())
    last_read = {}
    for index, node in enumerate(nodes):
        for name in node.inputs:
            last_read[name] = index
    live = {f"v{i}": (i, max(i, last_read.get(f"v{i}", i))) for i in range(count)}
    for a in placed:
        for b in placed:
            if a < b and live[a][0] <= live[b][1] and live[b][0] <= live[a][1]:
                a0, b0 = plan.offsets[a], plan.offsets[b]
                assert a0 + sizes[a] <= b0 or b0 + sizes[b] <= a0, (a, b, plan)
            assert plan.size >= plan.offsets[a] + sizes[a]
    chain = [_node(f"c{i}", [f"c{i - 1}" if i else "x"], [f"c{i}"]) for i in range(6)]
    chain_plan = plan_arena(chain, {f"c{i}": 4096 for i in range(6)}, {f"c{i}" for i in range(6)})
    assert chain_plan.size == 2 * 4096  # ping-pong: one value in, one out


def split_runs(rng):
    """Two runs of kernels around a numpy AveragePool, which the graph lists between them
    though only the last kernel needs it: in the first run, r1 is read by the pool after the
    run, c2 is a graph output made in the middle of the run, c3 lives in the arena; odd
    sizes."""
    weights = {"w1": randn(rng, 6, 3, 3, 3), "w2": randn(rng, 5, 6, 1, 1),
               "w3": randn(rng, 4, 5, 3, 3), "w5": randn(rng, 3, 4, 1, 1),
               "w4": randn(rng, 7, 6, 1, 1)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"]),
             helper.make_node("Conv", ["c2", "w3"], ["c3"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c3", "w5"], ["c5"]),
             helper.make_node("AveragePool", ["r1"], ["m"], kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("Conv", ["m", "w4"], ["c4"])]
    outputs = ["c2", "c5", "c4"]
    graph = helper.make_graph(
        nodes, "split_runs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10, 9])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def split_package(tmp_path_factory):
    db = tmp_path_factory.mktemp("db") / "empty.db"
    RecordStore(f"sqlite:///{db}").close()
    model = split_runs(np.random.default_rng(5))
    out = tmp_path_factory.mktemp("split_package")
    built = write_package(model, out, open_schedules(str(db)), named_target(None, 2))
    return model, built


def test_each_run_of_kernels_is_one_segment_function(split_package):
    model, built = split_package
    document = json.loads(built.graph_file.read_text())
    kinds = ["kernel" in node for node in document["nodes"]]
    assert kinds == [True, True, True, True, False, True]  # the pool waits for the run
    assert [s["nodes"] for s in document["segments"]] == [[0, 1, 2, 3], [5]]
    header = built.header.read_text()
    for segment in document["segments"]:
        assert f"void {segment['function']}(void *const *slots);" in header
    package = load_package(built.directory)
    assert [n.op_type for n in package.graph.nodes] == ["TunerSegment0", "AveragePool",
                                                        "TunerSegment1"]
    first, _, second = package.graph.nodes
    # r1 is read after the first run (by the pool), c2 and c5 are graph outputs: c3, made and
    # read in the first run only, is its arena's one value; the second run is c4 alone
    assert first.inputs == ("x",) and set(first.outputs) == {"r1", "c2", "c5"}
    assert second.inputs == ("m",) and second.outputs == ("c4",)
    assert set(package._impls["TunerSegment0"].arena.offsets) == {"c3"}
    assert package._impls["TunerSegment1"].arena.size == 0


def test_segments_compute_what_the_kernels_one_by_one_compute(split_package):
    model, built = split_package
    graph = load_model(model)
    x = randn(np.random.default_rng(8), 1, 3, 10, 9)
    expected = run_graph(graph, {"x": x})
    one_by_one = load_package(built.directory, segments=False)(x)
    segmented = tuner.load_package(built.directory)
    first, second = segmented(x), segmented(x)
    for a, b, want in zip(first, one_by_one, expected):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-4)
    for a, b in zip(first, second):  # outputs are not reused between calls
        np.testing.assert_array_equal(a, b)
        assert not np.shares_memory(a, b)


def test_threads_calling_one_package_get_their_own_arena(tmp_path):
    """A chain of kernels whose middle values live in the arena, called from four Python
    threads at once on different inputs."""
    rng = np.random.default_rng(9)
    weights = {f"w{i}": randn(rng, 6, 6, 3, 3) for i in range(4)}
    nodes = [helper.make_node("Conv", ["x" if i == 0 else f"c{i - 1}", f"w{i}"], [f"c{i}"],
                              pads=[1, 1, 1, 1]) for i in range(4)]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 8, 8])],
        [helper.make_tensor_value_info("c3", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    db = tmp_path / "empty.db"
    RecordStore(f"sqlite:///{db}").close()
    built = write_package(model, tmp_path / "pkg", open_schedules(str(db)), named_target(None, 1))
    package = tuner.load_package(built.directory)
    assert package._impls["TunerSegment0"].arena.size > 0
    inputs = [randn(rng, 1, 6, 8, 8) for _ in range(4)]
    expected = [package(x)[0] for x in inputs]
    reference = run_graph(load_model(model), {"x": inputs[0]})[0]
    np.testing.assert_allclose(expected[0], reference, rtol=1e-4, atol=1e-3 * abs(reference).max())
    wrong = []

    def work(index):
        for _ in range(20):
            if not np.array_equal(package(inputs[index])[0], expected[index]):
                wrong.append(index)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong


def test_views_join_the_run_of_the_kernels_that_made_their_input(tmp_path):
    """Conv, GlobalAveragePool, Flatten, Gemm: one segment, the Flatten a view in it; a
    Flatten and a Reshape read after the run (graph outputs) come out as new arrays of
    their shape; the Reshape of the model input, which no kernel made, stays numpy."""
    rng = np.random.default_rng(11)
    weights = {"w": randn(rng, 6, 3, 3, 3), "fw": randn(rng, 6, 5), "fb": randn(rng, 5),
               "shape": np.array([1, 3, 7, 9], np.int64),
               "flat": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["xr"]),
             helper.make_node("Conv", ["xr", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"]),
             helper.make_node("Reshape", ["c", "flat"], ["cf"])]
    outputs = ["y", "f", "cf"]
    graph = helper.make_graph(
        nodes, "views", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 63])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    db = tmp_path / "empty.db"
    RecordStore(f"sqlite:///{db}").close()
    built = write_package(model, tmp_path / "pkg", open_schedules(str(db)), named_target(None, 2))
    document = json.loads(built.graph_file.read_text())
    views = {n["outputs"][0] for n in document["nodes"] if "view" in n}
    assert views == {"f", "cf"} and document["nodes"][0]["outputs"] == ["xr"]
    assert [s["nodes"] for s in document["segments"]] == [[1, 2, 3, 4, 5]]
    package = tuner.load_package(built.directory)
    assert [n.op_type for n in package.graph.nodes] == ["Reshape", "TunerSegment0"]
    x = randn(rng, 1, 3, 63)
    expected = run_graph(load_model(model), {"x": x})
    one_by_one = load_package(built.directory, segments=False)(x)
    first, second = package(x), package(x)
    for got, node_by_node, want in zip(first, one_by_one, expected):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, node_by_node)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for a, b in zip(first, second):  # outputs are not reused between calls
        assert not np.shares_memory(a, b)


def _with_segments(built, tmp_path, change):
    """A copy of the package whose graph.json's segment list `change` has edited."""
    copy = tmp_path / "pkg"
    shutil.copytree(built.directory, copy)
    document = json.loads((copy / "graph.json").read_text())
    change(document["segments"])
    (copy / "graph.json").write_text(json.dumps(document))
    return copy


@pytest.mark.parametrize("nodes", [[0, 2], [0], [], [1], [-1], [0, 1, 2]])
def test_a_segment_that_is_not_a_run_of_kernels_is_refused(split_package, tmp_path, nodes):
    copy = _with_segments(split_package[1], tmp_path,
                          lambda segments: segments[0].update(nodes=nodes))
    with pytest.raises(TunerError, match="segment 0 is not a run of kernel nodes"):
        tuner.load_package(copy)


def test_segments_for_other_runs_are_refused(split_package, tmp_path):
    copy = _with_segments(split_package[1], tmp_path, lambda segments: segments.pop())
    with pytest.raises(TunerError, match="1 segments for 2 runs of kernel nodes"):
        tuner.load_package(copy)


def test_a_segment_function_missing_from_the_library_is_refused(split_package, tmp_path):
    copy = _with_segments(split_package[1], tmp_path, lambda segments: segments[1].update(
        function="tuner_kernels_segment9"))
    with pytest.raises(TunerError, match="has no function 'tuner_kernels_segment9'"):
        tuner.load_package(copy)
