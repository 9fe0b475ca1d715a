"""Model packages: `write_package` / `tune build --model` -> `load_package` agrees with the numpy
runtime and onnxruntime, runs in a fresh interpreter without LLVM, XGBoost, onnx or the records
database, and refuses a damaged package directory in one line naming the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import tuner
from model_builders import bn_node, bn_weights, make_model, randn
from test_model_onnxruntime import residual_blocks, transformer_residual
from records import RecordStore
from tuner.cli import main
from tuner.errors import TunerError
from tuner.network.graph import Graph, Node, load_model
from tuner.network.package import write_package
from tuner.replay.source import open_schedules
from tuner.ir.target import named_target
from tuner.network.runtime import run_graph
from tuner.network.tasks import extract_tasks

REPO = Path(__file__).resolve().parent.parent
# What a deployed application must not carry (the subprocess test checks sys.modules).
HEAVY_MODULES = ("llvmlite", "xgboost", "sqlalchemy", "records", "costmodel", "onnx",
                 "tuner.codegen.jit", "tuner.codegen.emit", "tuner.replay.aot",
                 "tuner.replay.kernel")


def conv_pool_gemm(rng):
    """Conv + BatchNorm + ReLU (one fused conv), pooling in numpy, Flatten, Gemm with a bias
    (one fused matmul); a symbolic batch given at load."""
    w = {"w": randn(rng, 8, 3, 3, 3), **bn_weights(rng, "bn", 8),
         "fc": randn(rng, 8 * 4 * 3, 5), "fb": randn(rng, 5)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             bn_node("bn", "c", "b"), helper.make_node("Relu", ["b"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["m"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["y"])]
    return make_model(nodes, {"x": ("N", 3, 9, 7)}, "y", w), {"x": (2, 3, 9, 7)}


def matmul_transpose(rng):
    """Rank-3 MatMul + Add + ReLU, then a transposed (non-contiguous) activation into a second
    MatMul, whose output keeps the leading dimensions; a depthwise-free second task."""
    w = {"w": randn(rng, 12, 10), "b": randn(rng, 10), "w2": randn(rng, 5, 3)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "w2"], ["y"])]
    return make_model(nodes, {"x": (2, 5, 12)}, "y", w), {}


def _feeds(graph, rng):
    return {name: randn(rng, *shape) for name, shape in graph.inputs.items()}


@pytest.fixture(scope="module")
def conv_package(tmp_path_factory, empty_db):
    """The conv_pool_gemm model, packaged once with default schedules (read-only: tests that
    damage it work on a copy)."""
    model, shapes = conv_pool_gemm(np.random.default_rng(1))
    out = tmp_path_factory.mktemp("conv_package")
    built = write_package(model, out, open_schedules(empty_db),
                          named_target(None, 1), inputs=shapes)
    return model, shapes, built


@pytest.mark.parametrize("build", [conv_pool_gemm, matmul_transpose, residual_blocks,
                                   transformer_residual], ids=lambda f: f.__name__)
def test_package_agrees_with_numpy_runtime_and_onnxruntime(build, tmp_path, empty_db):
    rng = np.random.default_rng(3)
    model, shapes = build(rng)
    built = write_package(model, tmp_path / "pkg", open_schedules(empty_db),
                          named_target(None, 1), inputs=shapes)
    assert built.tasks and built.defaulted == built.tasks  # no records: default schedules
    assert built.library.is_file() and built.header.is_file()
    with np.load(built.weights_file, allow_pickle=False) as npz:  # no pickled objects
        assert all(npz[key].dtype != object for key in npz.files)
    document = json.loads(built.graph_file.read_text())
    symbols = [n["kernel"]["symbol"] for n in document["nodes"] if "kernel" in n]
    tasks = [n["kernel"]["symbol"] for n in document["nodes"] if "task" in n.get("kernel", {})]
    assert sorted(tasks) == sorted(k.symbol for k in built.tasks)
    header = built.header.read_text()
    assert all(symbol in header for symbol in symbols)  # the tasks' and the pools

    package = tuner.load_package(tmp_path / "pkg")
    graph = load_model(model, shapes)
    feeds = _feeds(graph, rng)
    out = package(feeds)
    assert len(out) == 1 and out[0].dtype == np.float32
    np.testing.assert_allclose(out[0], run_graph(graph, feeds)[0], rtol=1e-4, atol=1e-5)
    single = package(feeds["x"])[0]  # the one input by position, and a second call
    np.testing.assert_array_equal(single, out[0])
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)[0]
    assert out[0].shape == expected.shape
    np.testing.assert_allclose(out[0], expected, rtol=1e-4, atol=1e-5)


def test_a_graph_without_tasks_keeps_tensor_attributes(tmp_path, empty_db):
    """No conv or matmul: no library; a tensor-valued attribute goes through the .npz."""
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    graph = Graph({"x": (2, 3)}, ("y",),
                  (Node("Constant", "k", (), ("c",), {"value": value}),
                   Node("Add", "add", ("x", "c"), ("y",))), {}, {}, 17)
    built = write_package(graph, tmp_path, open_schedules(empty_db), named_target(None, 1))
    assert built.library is None and built.tasks == ()
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(tuner.load_package(tmp_path)(x)[0], x + value)


def test_tuned_records_are_used_and_reported(tmp_path, empty_db):
    """A briefly tuned matmul task gets its record's schedule, the other the default."""
    from costmodel.features import extract_features
    from costmodel.xgb import XGBCostModel
    from tuner.measure.measurer import MeasureOptions, Measurer
    from tuner.ir.target import host_target
    from tuner.search.tune import TuneConfig, tune

    rng = np.random.default_rng(5)
    model, shapes = matmul_transpose(rng)
    graph = load_model(model, shapes)
    first = next(u.task for u in extract_tasks(graph).tasks if u.task.shape[2] == 12)
    db = tmp_path / "tuned.db"
    target = host_target(1)
    options = MeasureOptions(min_sample_s=2e-4, samples=3, max_total_s=0.1)
    with RecordStore(f"sqlite:///{db}") as store, Measurer(target, options) as measurer:
        tune(first, target, store, measurer, TuneConfig(trials=4, batch_size=4), XGBCostModel(),
             extract_features)
    built = write_package(graph, tmp_path / "pkg", open_schedules(str(db)), named_target(None, 1))
    tuned = {k.task_key: k for k in built.tasks}
    assert tuned[first.key].tuned and tuned[first.key].gflops > 0
    assert len(built.defaulted) == 1 and built.defaulted[0].task_key != first.key
    assert "tuned, from" in built.header.read_text()
    feeds = _feeds(graph, rng)
    np.testing.assert_allclose(tuner.load_package(tmp_path / "pkg")(feeds)[0],
                               run_graph(graph, feeds)[0], rtol=1e-4, atol=1e-5)


def test_a_fresh_interpreter_runs_the_package_without_the_tuner(tmp_path, empty_db):
    """Two threads, so the library's libgomp is loaded through ctypes too."""
    rng = np.random.default_rng(9)
    model, shapes = conv_pool_gemm(rng)
    write_package(model, tmp_path / "pkg", open_schedules(empty_db), named_target(None, 2),
                  inputs=shapes)
    x = randn(rng, *shapes["x"])
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, tuner\n"
        f"package = tuner.load_package({str(tmp_path / 'pkg')!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, package(np.load({str(tmp_path / 'x.npy')!r}))[0])\n"
        f"heavy = {HEAVY_MODULES!r}\n"
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""  # none of the heavy modules was imported
    expected = run_graph(load_model(model, shapes), {"x": x})[0]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-5)


def test_tune_build_model_writes_a_package(tmp_path, empty_db, capsys):
    rng = np.random.default_rng(11)
    model, shapes = conv_pool_gemm(rng)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    out = tmp_path / "pkg"
    assert main(["build", "--model", str(path), "-o", str(out), "--db", empty_db,
                 "--threads", "1", "--input", "x=3,3,9,7"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("default schedule, no record") == 2
    assert "load_package" in captured.out
    assert "2 of 2 tasks have no tuned record" in captured.err
    graph = load_model(model, {"x": (3, 3, 9, 7)})
    feeds = _feeds(graph, rng)
    np.testing.assert_allclose(tuner.load_package(out)(feeds)[0], run_graph(graph, feeds)[0],
                               rtol=1e-4, atol=1e-5)
    # The per-task ways of `tune build` are unchanged.
    assert main(["build", "--task", "matmul:4,8,6", "-o", str(tmp_path / "lib"), "--db",
                 empty_db, "--threads", "1"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--input", "x=3,a,9,7"], "expects NAME=D1,D2,..."),
    (["--input", "z=3,3,9,7"], "the model has no input 'z'"),
    (["--task", "matmul:4,8,6"], "build takes --model alone"),
    ([], "symbolic dimension"),
])
def test_tune_build_model_bad_input_is_one_line(tmp_path, empty_db, capsys, argv, message):
    model, _ = conv_pool_gemm(np.random.default_rng(0))
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    assert main(["build", "--model", str(path), "-o", str(tmp_path / "pkg"), "--db", empty_db,
                 "--threads", "1"] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def _rewrite_json(directory: Path, change) -> None:
    path = directory / "graph.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _drop_an_array(directory: Path) -> None:
    with np.load(directory / "weights.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files[1:]}
    np.savez(directory / "weights.npz", **arrays)


def _rename_kernel(document) -> None:
    next(n for n in document["nodes"] if "kernel" in n)["kernel"]["symbol"] = "nope"


DAMAGE = {
    "graph.json not JSON": (lambda d: (d / "graph.json").write_text("{not json"),
                            "graph.json' is not readable JSON"),
    "graph.json missing": (lambda d: (d / "graph.json").unlink(), "no graph.json in"),
    "foreign version": (lambda d: _rewrite_json(d, lambda g: g.update(version=99)),
                        "graph.json' is package format version 99"),
    "foreign format": (lambda d: _rewrite_json(d, lambda g: g.pop("format")),
                       "graph.json' is not a tuner model package graph"),
    "node without outputs": (lambda d: _rewrite_json(d, lambda g: g["nodes"][1].pop("outputs")),
                             "graph.json' is malformed: missing 'outputs'"),
    "weights missing": (lambda d: (d / "weights.npz").unlink(), "no weights.npz in"),
    "weights corrupt": (lambda d: (d / "weights.npz").write_bytes(b"PK\x03\x04garbage"),
                        "weights.npz' is not a readable weights file"),
    "weights lost an array": (_drop_an_array, "weights.npz' has no array 'a0'"),
    "library missing": (lambda d: (d / "libtuner_kernels.so").unlink(),
                        "no kernel library"),
    "unknown symbol": (lambda d: _rewrite_json(d, _rename_kernel),
                       "libtuner_kernels.so' has no function 'nope'"),
    "built for a wider CPU": (
        lambda d: _rewrite_json(d, lambda g: g["target"]["cpu_flags"].append("avx1024_fake")),
        "needs CPU features this machine lacks: avx1024_fake"),
}


def test_the_package_records_the_cpu_features_its_library_needs(conv_package, tmp_path):
    """graph.json lists the /proc/cpuinfo flags of the target's vector ISA (avx2 and fma at
    least on any target the tuner generates for), and this machine has them all."""
    from tuner.network.deploy import host_cpu_flags

    _, _, built = conv_package
    flags = json.loads((built.directory / "graph.json").read_text())["target"]["cpu_flags"]
    assert {"avx2", "fma"} <= set(flags)
    host = host_cpu_flags()
    assert host is None or set(flags) <= host
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2\n")
    assert host_cpu_flags(fake) == {"fpu", "sse2", "avx", "avx2"}


@pytest.mark.parametrize("damage", DAMAGE, ids=str)
def test_a_damaged_package_is_a_one_line_error(conv_package, tmp_path, damage):
    _, _, built = conv_package
    copy = tmp_path / "pkg"
    shutil.copytree(built.directory, copy)
    spoil, message = DAMAGE[damage]
    spoil(copy)
    with pytest.raises(TunerError) as caught:
        tuner.load_package(copy)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_no_package_directory(tmp_path):
    with pytest.raises(TunerError, match="no model package at"):
        tuner.load_package(tmp_path / "absent")
