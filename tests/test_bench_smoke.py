"""bench/: the peak kernel is sized from the machine model, comparators answer from a process
of their own, and the report's summary is computed as documented. Nothing asserts on speed.
bench/ is a package of the repository, not of the installed project: the repository root goes
on sys.path to import it.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from tuner.errors import TunerError
from tuner.ir.machine import describe
from tuner.ir.target import named_target
from tuner.ir.task import Task

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import comparators, peak  # noqa: E402
from bench.report import Row, summarize  # noqa: E402

AVX2 = "+avx,+avx2,+fma,-avx512f"
AVX512 = "+avx,+avx2,+avx512f,+fma"


def test_peak_kernel_fits_the_register_file():
    avx2 = peak.peak_shape(describe("x86-64-v3", AVX2))
    assert avx2.lanes == 8 and avx2.fused
    assert describe("x86-64-v3", AVX2).min_accumulators <= avx2.chains <= 16 - 2
    avx512 = peak.peak_shape(describe("znver5", AVX512))
    assert avx512.lanes == 16 and 8 <= avx512.chains <= 32 - 2


def test_peak_kernel_for_a_named_cpu_computes_what_it_claims():
    try:
        target = named_target("x86-64-v3", 1)
    except TunerError:
        pytest.skip("this host cannot run AVX2 code")
    shape = peak.peak_shape(target.machine)
    acc = np.arange(shape.chains * shape.lanes, dtype=np.float32).reshape(-1, shape.lanes)
    ab = np.stack([np.full(shape.lanes, 2.0), np.full(shape.lanes, 3.0)]).astype(np.float32)
    expected = acc + 5 * 2.0 * 3.0
    peak.fma_kernel(target)(5, acc.ctypes.data, ab.ctypes.data)
    np.testing.assert_array_equal(acc, expected)
    assert "ymm" in peak.kernel_assembly(target) and "zmm" not in peak.kernel_assembly(target)


def test_comparator_answers_from_a_child_process():
    task = Task.create("matmul", (32, 48, 16))
    assert comparators.measure_in_subprocess("numpy", task, 1) > 0
    # numpy has no convolution: no number, and no exception either
    conv = Task.create("conv2d", (1, 8, 8, 8, 8, 3, 3), pad=1)
    assert comparators.measure_in_subprocess("numpy", conv, 1) is None
    assert comparators.kinds_for(conv) == ("onnxruntime",)


@pytest.mark.parametrize("out_order", [12, 21])
def test_the_int8_comparator_times_a_matmul_stored_either_way(out_order):
    """onnxruntime's QLinearMatMul writes [M, N] whatever our out_order: a transposed task
    (attention's key projection) is timed too, not refused by onnxruntime for its shape."""
    pytest.importorskip("onnxruntime")
    task = Task.create("matmul", (8, 24, 12), "int8", out_type=1, out_order=out_order)
    assert comparators.time_comparator("onnxruntime", task, 1).median_s > 0


def test_report_summary_uses_the_best_peer_and_leaves_batch_matmul_out():
    rows = [Row("a", "conv2d", 1, 100.0, 50.0, onnxruntime=200.0, compile_s=[0.1, 0.3]),
            Row("b", "matmul", 1, 100.0, 50.0, numpy=50.0, onnxruntime=125.0,
                compile_s=[0.2]),
            Row("c", "batch_matmul", 1, 100.0, None, numpy=10.0, compile_s=[5.0])]
    assert rows[1].best_peer == 125.0 and rows[1].vs_peer == pytest.approx(0.8)
    s = summarize(rows)
    assert s.geomean_rows == 2
    assert s.geomean_vs_peer == pytest.approx(math.sqrt(0.5 * 0.8))
    assert (s.min_vs_peer, s.min_shape) == (pytest.approx(0.5), "a")
    assert s.compile_median_s == pytest.approx(0.25) and s.compile_max_s == 5.0


def test_report_summary_over_thread_counts_names_the_row():
    rows = [Row("a", "matmul", 1, 100.0, None, numpy=100.0),
            Row("a", "matmul", 2, 100.0, None, numpy=400.0)]
    s = summarize(rows)
    assert s.geomean_rows == 2 and s.min_shape == "a x2"
    assert s.geomean_vs_peer == pytest.approx(0.5)


def _target(cpu: str, features: str):
    from tuner.ir.target import Target
    return Target(cpu=cpu, features=features, triple="x86_64-unknown-linux-gnu", threads=1)


def test_comparators_run_with_the_targets_vector_isa():
    """numpy gets OpenBLAS's kernels for the target's ISA; for a target narrower than the
    host, onnxruntime (which cannot be restricted) is marked, and the best peer leaves it out."""
    host = _target("znver5", AVX512)
    assert comparators.isa_limits(host, host) == {
        "numpy": {"OPENBLAS_CORETYPE": "SkylakeX"}, "onnxruntime": {}}
    v3 = _target("x86-64-v3", AVX2)
    assert comparators.isa_limits(v3, host) == {
        "numpy": {"OPENBLAS_CORETYPE": "Haswell"}, "onnxruntime": None}
    assert comparators.isa_limits(v3, v3)["onnxruntime"] == {}
    row = Row("square", "matmul", 1, tuned=120.0, default=None, numpy=100.0,
              onnxruntime=240.0, wider_isa=["onnxruntime"])
    assert row.best_peer == 100.0 and row.vs_peer == pytest.approx(1.2)


def test_a_comparator_child_gets_the_environment_it_is_given():
    from bench import child
    env = child.child_env(2, {"OPENBLAS_CORETYPE": "Haswell"})
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and env["OPENBLAS_NUM_THREADS"] == "2"
    task = Task.create("matmul", (32, 48, 16))
    assert comparators.measure_in_subprocess(
        "numpy", task, 1, env={"OPENBLAS_CORETYPE": "Haswell"}) > 0


def test_the_report_times_our_kernel_replayed_from_the_records(tmp_path):
    """Kind "tuned" rebuilds the best record with tuner.build in a child process and times
    it like a peer; with no record for the task there is nothing to time (None, not the
    default schedule passed off as tuned). The report's ratios use the replayed figure."""
    from records import RecordStore
    from tuner import __version__
    from tuner.search.default import default_schedule
    from tuner.measure.result import ErrorKind, MeasureResult
    from tuner.ir.schedule import schedule_to_json
    from tuner.ir.target import host_target
    task = Task.create("matmul", (32, 48, 16))
    target = host_target(1)
    db = str(tmp_path / "r.db")
    with RecordStore(f"sqlite:///{db}") as store:
        store.add(task, target, schedule_to_json(default_schedule(task.dag(), target)),
                  MeasureResult(ErrorKind.NONE, costs_s=(1e-5,), number=1),
                  flops=task.dag().flops, trial=0, tuner_version=__version__)
    assert comparators.measure_in_subprocess("tuned", task, 1, db=db) > 0
    other = Task.create("matmul", (32, 48, 32))
    assert comparators.measure_in_subprocess("tuned", other, 1, db=db) is None
    row = Row("m", "matmul", 1, tuned=100.0, default=None, replayed=80.0, numpy=100.0)
    assert row.ours == 80.0 and row.vs_peer == pytest.approx(0.8)


def test_the_distributed_bench_tunes_on_pinned_tune_workers(tmp_path):
    """bench/distributed.py starts a `dask scheduler` and `tune worker`s as the README does
    (TLS with its certificates, a core each) and tunes a one-layer model on 1 and 2 of them
    and locally; every run stores its trials, the cluster runs' on the workers named."""
    pytest.importorskip("distributed")
    import json
    import shutil
    import subprocess

    import onnx
    from onnx import helper

    from model_builders import make_model, randn

    if not shutil.which("openssl"):
        pytest.skip("no openssl command (the README's certificates need it)")
    rng = np.random.default_rng(0)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                       {"x": (1, 4, 8, 8)}, "y", {"w": randn(rng, 8, 4, 3, 3)})
    onnx.save(model, tmp_path / "conv.onnx")
    out = tmp_path / "runs.jsonl"
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(root / "bench" / "distributed.py"),
                          str(tmp_path / "conv.onnx"), "--trials", "4", "--workers", "1", "2",
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    runs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["cluster"] for r in runs] == ["local", "1 pinned", "2 pinned"]
    assert all(r["trials"] == 4 and r["trials_per_s"] > 0 for r in runs)
    assert runs[0]["machines"] == [] and runs[1]["machines"] == ["worker0"]
    assert set(runs[2]["machines"]) <= {"worker0", "worker1"}


def test_the_proposals_bench_proposes_the_same_schedules_every_run(capsys):
    """bench/proposals.py: its digest is what a cheaper-proposals change must keep."""
    from bench import proposals

    digests = []
    for _ in range(2):
        assert proposals.main(["--rounds", "2", "--batch", "4"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 2 + len(proposals.TASKS) and "s a round" in lines[1]
        digests.append(lines[-1].rsplit(" ", 1)[1])
    assert digests[0] == digests[1] and len(digests[0]) == 12
