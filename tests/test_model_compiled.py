"""`tuner.compile_model`: generated models run with compiled kernels for their tasks agree
with onnxruntime and with the numpy runtime; weights are bound once; bad models are one-line
errors raised before anything is compiled."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

import tuner  # noqa: E402
from model_builders import make_model, randn  # noqa: E402
from records import RecordStore  # noqa: E402
from test_model_onnxruntime import (MODELS, conv_bn_relu, matmul_add_relu,  # noqa: E402
                                    residual_blocks, symbolic_batch, transformer_residual)
from tuner.errors import TunerError  # noqa: E402
from tuner.network.graph import load_model  # noqa: E402
from tuner.network.runtime import run_graph  # noqa: E402
from tuner.replay.source import NoRecordWarning  # noqa: E402


@pytest.fixture
def empty_db(tmp_path):
    path = tmp_path / "empty.db"
    RecordStore(f"sqlite:///{path}").close()
    return str(path)


def _check(build, db, threads=1, seed=11):
    rng = np.random.default_rng(seed)
    model, shapes = build(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoRecordWarning)
        compiled = tuner.compile_model(model, db=db, threads=threads, inputs=shapes or None)
    feeds = {name: randn(rng, *shape) for name, shape in compiled.inputs.items()}
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    outputs = compiled(feeds)
    numpy_outputs = run_graph(load_model(model, shapes), feeds)
    assert isinstance(outputs, list) and len(outputs) == len(expected)
    for out, ref, plain in zip(outputs, expected, numpy_outputs):
        assert out.shape == ref.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out, plain, rtol=1e-4, atol=1e-4)
    return compiled, feeds, outputs


def depthwise_relu6_fused(rng):
    """A depthwise convolution with symmetric pads, then Clip(0, 6): one task, ReLU6 fused;
    inputs large enough that the clip at 6 is reached."""
    w = {"w": 3 * randn(rng, 6, 1, 3, 3), "lo": np.float32(0), "hi": np.float32(6)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], group=6, pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    return make_model(nodes, {"x": (1, 6, 9, 9)}, "y", w), {}


@pytest.mark.parametrize("build", MODELS + [depthwise_relu6_fused], ids=lambda f: f.__name__)
def test_compiled_model_agrees_with_onnxruntime(build, empty_db):
    """Conv + BatchNorm folded, odd shapes with stride 2, depthwise with ReLU6, a rank-3
    matmul, Gemm with transB/alpha/beta, a symbolic batch given with inputs=, and models
    without tasks."""
    _check(build, empty_db)


@pytest.mark.parametrize("build", [conv_bn_relu, matmul_add_relu, residual_blocks,
                                   transformer_residual], ids=lambda f: f.__name__)
def test_compiled_model_on_two_threads(build, empty_db):
    compiled, _, _ = _check(build, empty_db, threads=2)
    assert compiled.target.threads == 2


def test_single_input_array_or_dict_and_repeated_calls(empty_db):
    """The bound kernels reuse their packed weights: calling again on new inputs gives new
    outputs, not the first ones."""
    compiled, feeds, first = _check(symbolic_batch, empty_db)
    ((name, x),) = feeds.items()
    np.testing.assert_array_equal(compiled(x)[0], first[0])
    other = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    second = compiled({name: other})[0]
    assert not np.allclose(second, first[0])
    np.testing.assert_array_equal(compiled(other)[0], second)


def test_untuned_tasks_warn_once_with_their_count(empty_db):
    rng = np.random.default_rng(1)
    model, _ = conv_bn_relu(rng)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = tuner.compile_model(model, db=empty_db, threads=1)
    messages = [str(w.message) for w in caught if issubclass(w.category, NoRecordWarning)]
    assert len(messages) == 1 and messages[0].startswith("1 of the 1 tasks of the model")
    assert [k.tuned for k in compiled.tasks] == [False]
    assert compiled.tasks[0].occurrences == 1


def _unsupported():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("NonMaxSuppression", ["c"], ["y"], name="nms")]
    return make_model(nodes, {"x": (1, 2, 5, 5)}, "y",
                      {"w": randn(np.random.default_rng(0), 3, 2, 3, 3)})


def test_bad_models_are_one_line_errors_before_compiling(tmp_path, empty_db, monkeypatch):
    import tuner.network.compiled as compiled_module

    def no_build(*args, **kwargs):
        raise AssertionError("nothing may be compiled for a model that cannot run")
    monkeypatch.setattr(compiled_module, "write_package", no_build)
    with pytest.raises(TunerError, match=r"unsupported ONNX operator 'NonMaxSuppression' "
                                         r"\(node 'nms'\)"):
        tuner.compile_model(_unsupported(), db=empty_db)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a model")
    with pytest.raises(TunerError, match="is not a readable ONNX model"):
        tuner.compile_model(str(bad), db=empty_db)
    with pytest.raises(TunerError, match="no ONNX file at"):
        tuner.compile_model(str(tmp_path / "missing.onnx"), db=empty_db)
    model, _ = symbolic_batch(np.random.default_rng(0))
    with pytest.raises(TunerError, match="symbolic dimension"):
        tuner.compile_model(model, db=empty_db)
    with pytest.raises(TunerError, match="takes a path to an .onnx file"):
        tuner.compile_model(42, db=empty_db)


def test_wrong_input_shape_is_a_one_line_error(empty_db):
    compiled, feeds, _ = _check(conv_bn_relu, empty_db)
    ((name, x),) = feeds.items()
    with pytest.raises(TunerError, match=f"input '{name}' expects shape 2,3,9,7"):
        compiled(x[:1])
