"""`tune model`: the task table, a whole model tuned with one small budget into one store,
resumed by a second run and then run by `compile_model` with tuned kernels only; bad models and
options are one-line errors with exit 2 before anything is tuned."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

import tuner  # noqa: E402
from model_builders import make_model, randn  # noqa: E402
from records import RecordStore  # noqa: E402
from test_model_onnxruntime import symbolic_batch  # noqa: E402
from tuner.cli import main  # noqa: E402
from tuner.network.graph import load_model  # noqa: E402
from tuner.network.tasks import extract_tasks  # noqa: E402
from tuner.replay.source import NoRecordWarning  # noqa: E402
from tuner.ir.target import host_target  # noqa: E402

FAST = ["--threads", "1", "--quiet", "--strategy", "random"]


def _save(tmp_path, build, name="model.onnx"):
    model, shapes = build(np.random.default_rng(5))
    path = tmp_path / name
    onnx.save(model, str(path))
    return str(path), model, shapes


def _repeated_conv(rng):
    """Two convolutions of the same task (counted twice) and one the template cannot take."""
    w = {f"w{i}": randn(rng, 4, 4, 3, 3) for i in range(3)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[0, 1, 1, 0], name="odd")]
    return make_model(nodes, {"x": (1, 4, 8, 8)}, "y", w), {}


def test_list_prints_the_task_table_and_notes(tmp_path, capsys):
    path, model, _ = _save(tmp_path, _repeated_conv)
    assert main(["model", path, "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (use,) = extract_tasks(load_model(model)).tasks
    assert use.occurrences == 2
    assert lines[1] == f"          2 100.0%  {use.task.key}"
    assert len(lines) == 3 and lines[2].startswith("note: Conv 'odd' runs in numpy")


def test_tune_model_spends_one_budget_resumes_and_compiles(tmp_path, capsys):
    path, model, shapes = _save(tmp_path, symbolic_batch)
    db = str(tmp_path / "model.db")
    argv = ["model", path, "--input", "x=3,3,7,7", "--db", db, "--batch-size", "2"] + FAST
    assert main(argv + ["--trials", "6"]) == 0
    tasks = [u.task for u in extract_tasks(load_model(model, shapes)).tasks]
    assert len(tasks) == 2
    target = host_target(1)
    with RecordStore(f"sqlite:///{db}") as store:
        first = [len(store.history(t, target)) for t in tasks]
    assert sum(first) == 6 and min(first) >= 2  # the warm-up gave each task a batch
    out = capsys.readouterr().out
    assert "trials    6 in" in out and "estimated" in out
    # a second run continues: the stored trials are history, nothing is measured twice
    assert main(argv + ["--trials", "4"]) == 0
    with RecordStore(f"sqlite:///{db}") as store:
        histories = [store.history(t, target) for t in tasks]
    assert sum(map(len, histories)) == 10
    for history in histories:
        assert len({r.schedule_json for r in history}) == len(history)
        assert [r.trial for r in history] == list(range(len(history)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoRecordWarning)
        compiled = tuner.compile_model(path, db=db, threads=1, inputs=shapes)
    assert all(k.tuned for k in compiled.tasks)
    feeds = {"x": randn(np.random.default_rng(0), *shapes["x"])}
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(compiled(feeds)[0], expected[0], rtol=1e-4, atol=1e-4)


def _unsupported(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("TopK", ["c", "k"], ["y", "i"], name="topk")]
    model = make_model(nodes, {"x": (1, 2, 5, 5)}, "y",
                       {"w": randn(np.random.default_rng(0), 3, 2, 3, 3),
                        "k": np.array([2], np.int64)})
    path = tmp_path / "unsupported.onnx"
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("case, extra, message", [
    ("unsupported", [], "unsupported ONNX operator 'TopK' (node 'topk')"),
    ("garbage", [], "is not a readable ONNX model"),
    ("missing", [], "no ONNX file at"),
    ("symbolic", [], "symbolic dimension"),
    ("symbolic", ["--input", "x=3,3,a,7"], "--input: expects NAME=D1,D2,... (positive "
                                           "integers), got 'x=3,3,a,7'"),
    ("symbolic", ["--input", "y=3,3,7,7"], "the model has no input 'y'"),
    ("symbolic", ["--input", "x=3,3,7,7", "--input", "x=2,3,7,7"], "names the same input twice"),
    ("symbolic", ["--input", "x=3,3,7"], "input 'x' expects 4 positive dimensions"),
    ("symbolic", ["--input", "x=3,3,7,7", "--trials", "1"],
     "a budget of 1 trials is less than the 2 tasks"),
])
def test_bad_models_and_options_are_one_line_errors(case, extra, message, tmp_path, capsys):
    if case == "unsupported":
        path = _unsupported(tmp_path)
    elif case == "garbage":
        path = str(tmp_path / "garbage.onnx")
        (tmp_path / "garbage.onnx").write_bytes(b"\x08\x01garbage")
    elif case == "missing":
        path = str(tmp_path / "missing.onnx")
    else:
        path, _, _ = _save(tmp_path, symbolic_batch)
    db = tmp_path / "errors.db"
    assert main(["model", path, "--db", str(db)] + FAST + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("tune: error: ") and message in err and err.count("\n") == 1, err
    if db.exists():
        with RecordStore(f"sqlite:///{db}") as store:
            assert store.count() == 0


@pytest.mark.parametrize("argv, cold", [
    (["model", "m.onnx"], True),                      # a model's layers: as in the graph
    (["model", "m.onnx", "--weights", "warm"], False),
    (["matmul", "--shape", "8,8,8"], False),          # one layer: as a loop leaves them
    (["matmul", "--shape", "8,8,8", "--weights", "cold"], True),
])
def test_weights_are_timed_cold_for_models_and_warm_for_layers(argv, cold):
    from tuner.cli import _measure_options, build_parser
    assert _measure_options(build_parser().parse_args(argv)).cold_weights is cold
