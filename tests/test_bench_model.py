"""bench/models.py and bench/model.py: the generated models are the architectures they claim
(layer and task counts, FLOPs) and compute what onnxruntime computes on them; the model report
runs end to end on a tiny model with a tiny budget, and a rerun with the same budget resumes
(measures nothing more). Nothing asserts on speed. bench/ is a package of the repository: the
repository root goes on sys.path to import it.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

from model_builders import make_model, randn  # noqa: E402
from tuner.network.graph import load_model  # noqa: E402
from tuner.network.runtime import run_graph  # noqa: E402
from tuner.network.tasks import extract_tasks  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import model as model_report  # noqa: E402
from bench.models import MODELS  # noqa: E402

# name: (conv/matmul layers, distinct tasks, GFLOPs of those layers (2 x MACs), tolerance);
# a layer with a fused skip connection (residual) is a task apart from the same layer without
EXPECTED = {"resnet50": (54, 25, (7.5, 8.5), 1e-4),       # 53 convs + the classifier
            "mobilenetv2": (53, 31, (0.55, 0.65), 1e-4),  # 52 convs + the classifier
            # Q, V, K (written transposed: a task apart), output, FFN in and out; Q·Kᵀ, scores·V
            "bert_layer": (8, 7, (1.7, 1.9), 1e-4)}


@pytest.mark.parametrize("name", list(MODELS))
def test_generated_model_is_the_architecture_and_agrees_with_onnxruntime(name):
    model = MODELS[name]()
    onnx.checker.check_model(model, full_check=True)
    layers, tasks, gflops, tol = EXPECTED[name]
    graph = load_model(model)
    extraction = extract_tasks(graph)
    assert sum(u.occurrences for u in extraction.tasks) == layers
    assert len(extraction.tasks) == tasks
    total = sum(u.occurrences * u.flops for u in extraction.tasks) / 1e9
    assert gflops[0] < total < gflops[1]
    (input_name, shape), = graph.inputs.items()
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None,
                                                                            {input_name: x})[0]
    ours = run_graph(graph, x)[0]
    assert ours.shape == expected.shape and ours.dtype == np.float32
    assert np.isfinite(expected).all() and np.abs(expected).max() > 0.1  # not vanished
    np.testing.assert_allclose(ours, expected, rtol=tol, atol=tol)


def _tiny(path: Path) -> Path:
    """A conv + ReLU, pooling and a classifier: two tasks, a few numpy operators."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[8, 8]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    model = make_model(nodes, {"x": (1, 4, 8, 8)}, "y",
                       {"w": randn(rng, 8, 4, 3, 3), "fw": randn(rng, 5, 8),
                        "fb": randn(rng, 5)})
    onnx.save(model, str(path))
    return path


def test_model_report_runs_end_to_end_and_resumes(tmp_path, capsys):
    path = _tiny(tmp_path / "tiny.onnx")
    out = tmp_path / "out"
    argv = ["--models", "--onnx", str(path), "--trials", "4", "--threads", "1",
            "--rounds", "1", "--out", str(out)]
    assert model_report.main(argv) == 0
    text = (out / "report.md").read_text()
    assert "| tiny | 1 | 2 | 4 | 4 / 4 |" in text and "load average" in text
    assert "python bench/model.py --models --onnx" in text
    (run,) = json.loads((out / "report.json").read_text())["runs"]
    assert run["package_s"] > 0 and run["onnxruntime_s"] > 0
    assert all(layer["ours_s"] > 0 and layer["onnxruntime_s"] > 0 for layer in run["layers"])
    assert run["kernels_s"] > 0 and run["remainder_s"] is not None
    # AveragePool has no generated function: it and the Flatten of its result are numpy's
    assert [node["op_type"] for node in run["numpy_nodes"]] == ["AveragePool", "Flatten"]
    assert all(n["median_s"] > 0 for n in run["numpy_nodes"]) and "| AveragePool |" in text
    assert (out / "tiny.threads1" / "graph.json").exists()

    assert model_report.main(argv) == 0  # the budget is spent: nothing more to measure
    (again,) = json.loads((out / "report.json").read_text())["runs"]
    assert again["trials_run"] == 0 and again["trials_total"] == 4


def test_model_report_refuses_a_budget_below_one_trial_per_task(tmp_path, capsys):
    path = _tiny(tmp_path / "tiny.onnx")
    with pytest.raises(SystemExit) as exit_info:
        model_report.main(["--models", "--onnx", str(path), "--trials", "1",
                           "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "less than tiny's 2 tasks" in capsys.readouterr().err
