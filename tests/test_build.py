"""Replay in builds: from the database, from the exported JSON, as a C library."""

import shutil
import subprocess

import numpy as np
import pytest

import tuner
from conftest import assert_matches_reference
from costmodel.features import extract_features
from costmodel.xgb import XGBCostModel
from records import NewRecord, RecordStore, export_best
from tuner.replay.aot import build_library, c_name, task_from_spec
from tuner.errors import TunerError
from tuner.measure.measurer import MeasureOptions, Measurer
from tuner import select_schedule
from tuner.replay.source import NoRecordWarning
from tuner.measure.result import ErrorKind, MeasureResult
from tuner.ir.target import Target, host_target
from tuner.ir.task import Task
from tuner.search.tune import TuneConfig, tune

CONV = Task.create("conv2d", (1, 8, 12, 12, 16, 3, 3), pad=1, bias=True, relu=True)
MATMUL = Task.create("matmul", (40, 48, 24))


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("build") / "records.db"
    target = host_target(1)
    options = MeasureOptions(min_sample_s=2e-4, samples=3, max_total_s=0.1)
    with RecordStore(f"sqlite:///{path}") as store, Measurer(target, options) as measurer:
        for task in (CONV, MATMUL):
            tune(task, target, store, measurer, TuneConfig(trials=6, batch_size=6),
                 XGBCostModel(), extract_features)
    return str(path)


def _inputs(task):
    return task.dag().random_inputs(np.random.default_rng(4))


def test_build_from_the_database_and_from_exported_json(tuned_db, tmp_path):
    kernel = tuner.build("conv2d", (1, 8, 12, 12, 16, 3, 3), pad=1, bias=True, relu=True,
                         db=tuned_db, threads=1)
    assert kernel.tuned and kernel.choice.gflops > 0
    with RecordStore(f"sqlite:///{tuned_db}") as store:
        best = store.best(CONV, host_target(1))
    from tuner.ir.schedule import schedule_to_json
    assert schedule_to_json(kernel.choice.steps) == best.schedule_json
    inputs = _inputs(CONV)
    assert_matches_reference(CONV.dag(), kernel(*inputs), inputs)
    bound = kernel.bind(weight=inputs[1], bias=inputs[2])
    np.testing.assert_array_equal(bound(inputs[0]), kernel(*inputs))
    out = np.full(CONV.dag().output.array_shape, np.nan, dtype=np.float32)
    assert bound(inputs[0], out=out) is out
    np.testing.assert_array_equal(out, kernel(*inputs))
    for bad in (np.empty(3, np.float32), out.astype(np.float64), out.T):
        with pytest.raises(TunerError, match="out must be a writeable C-contiguous float32"):
            bound(inputs[0], out=bad)

    exported = tmp_path / "best.json"
    with RecordStore(f"sqlite:///{tuned_db}") as store:
        assert export_best(store, exported) == 2
    from_json = tuner.build("conv2d", (1, 8, 12, 12, 16, 3, 3), pad=1, bias=True, relu=True,
                            db=str(exported), threads=1)
    assert from_json.tuned and from_json.choice.steps == kernel.choice.steps
    assert from_json.kernel is kernel.kernel  # the same schedule is not compiled twice


def test_no_record_falls_back_to_the_default_with_a_warning(tmp_path):
    empty = tmp_path / "empty.db"
    RecordStore(f"sqlite:///{empty}").close()
    with pytest.warns(NoRecordWarning, match="building the default schedule"):
        kernel = tuner.build("matmul", (40, 48, 24), db=str(empty), threads=1)
    assert kernel.tuned is False
    inputs = _inputs(MATMUL)
    assert_matches_reference(MATMUL.dag(), kernel(*inputs), inputs)
    with pytest.raises(TunerError, match="no records database at"):
        tuner.build("matmul", (40, 48, 24), db=str(tmp_path / "missing.db"))


def test_a_record_from_another_target_is_refused_unless_allowed(tmp_path):
    db = tmp_path / "foreign.db"
    foreign = Target("x86_64-unknown-linux-gnu", "znver4", "+avx,+avx512f", 2)
    from tuner.search.default import default_schedule
    from tuner.ir.schedule import schedule_to_json
    steps = schedule_to_json(default_schedule(MATMUL.dag(), foreign))
    with RecordStore(f"sqlite:///{db}") as store:
        store.add_many(MATMUL, foreign, [NewRecord(steps, MeasureResult(ErrorKind.NONE, "",
                                                                        (1e-5,), 1), 0)])
    with pytest.raises(TunerError, match="tuned on another target \\(znver4, 2 threads"):
        tuner.build("matmul", (40, 48, 24), db=str(db), threads=1)
    kernel = tuner.build("matmul", (40, 48, 24), db=str(db), threads=1,
                         allow_foreign_target=True)
    assert kernel.tuned and kernel.choice.record_target == foreign
    inputs = _inputs(MATMUL)
    assert_matches_reference(MATMUL.dag(), kernel(*inputs), inputs)


C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include "tuner_kernels.h"

static float *load(const char *path, size_t n) {
    float *p = malloc(n * sizeof(float));
    FILE *f = fopen(path, "rb");
    if (!f || fread(p, sizeof(float), n, f) != n) { perror(path); exit(1); }
    fclose(f);
    return p;
}

int main(void) {
    float *data = load("data.bin", 1 * 8 * 12 * 12);
    float *weight = load("weight.bin", 16 * 8 * 3 * 3);
    float *bias = load("bias.bin", 16);
    float *out = malloc(CONV_OUT * sizeof(float));
#ifdef CONV_PACKED
    float *packed = malloc(CONV_PACKED * sizeof(float));
    CONV_PACK(packed, weight);
    CONV_FN(out, data, packed, bias);
#else
    CONV_FN(out, data, weight, bias);
#endif
    float *a = load("a.bin", 40 * 24), *b = load("b.bin", 24 * 48);
    float *c = malloc(MM_OUT * sizeof(float));
#ifdef MM_PACKED
    float *bp = malloc(MM_PACKED * sizeof(float));
    MM_PACK(bp, b);
    MM_FN(c, a, bp);
#else
    MM_FN(c, a, b);
#endif
    FILE *f = fopen("out.bin", "wb");
    fwrite(out, sizeof(float), CONV_OUT, f);
    fwrite(c, sizeof(float), MM_OUT, f);
    fclose(f);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_a_c_program_links_the_exported_library(tuned_db, tmp_path):
    target = host_target(2)  # the library runs on both cores through libgomp: tuned on one
    choices = [select_schedule(t, target, tuned_db, allow_foreign_target=True)
               for t in (CONV, MATMUL)]
    lib = build_library(choices, tmp_path / "out")
    header = lib.header.read_text()
    conv, mm = c_name(CONV), c_name(MATMUL)
    assert f"void {conv}(" in header and f"task:     {CONV.key}" in header
    assert "steps:" in header and "target:" in header
    defines = [f"-DCONV_FN={conv}", f"-DMM_FN={mm}", f"-DCONV_OUT={CONV.dag().output.size}",
               f"-DMM_OUT={MATMUL.dag().output.size}"]
    for prefix, name, operand in (("CONV", conv, "weight"), ("MM", mm, "b")):
        packed = f"{name.upper()}_{operand.upper()}_PACKED_FLOATS"
        if packed in header:
            defines += [f"-D{prefix}_PACKED={packed}", f"-D{prefix}_PACK={name}_pack_{operand}"]
    data, weight, bias = _inputs(CONV)
    a, b = _inputs(MATMUL)
    for name, arr in (("data", data), ("weight", weight), ("bias", bias), ("a", a), ("b", b)):
        arr.astype(np.float32).tofile(tmp_path / "out" / f"{name}.bin")
    (tmp_path / "out" / "main.c").write_text(C_PROGRAM)
    subprocess.run(["cc", "-O2", "-std=c99", "-o", "main", "main.c", *defines, "-I.", "-L.",
                    "-ltuner_kernels", "-Wl,-rpath,$ORIGIN"], cwd=tmp_path / "out", check=True)
    subprocess.run(["./main"], cwd=tmp_path / "out", check=True)
    result = np.fromfile(tmp_path / "out" / "out.bin", dtype=np.float32)
    n = CONV.dag().output.size
    conv_out = result[:n].reshape(CONV.dag().output.array_shape)
    mm_out = result[n:].reshape(MATMUL.dag().output.array_shape)
    assert_matches_reference(CONV.dag(), conv_out, (data, weight, bias))
    assert_matches_reference(MATMUL.dag(), mm_out, (a, b))


def test_task_specs_and_c_names():
    task = task_from_spec("conv2d:1,64,56,56,64,3,3:pad=1,stride=1")
    assert task == Task.create("conv2d", (1, 64, 56, 56, 64, 3, 3), pad=1)
    assert c_name(task) == "tuner_conv2d_1x64x56x56x64x3x3_s1_p1_d1_g1"
    with pytest.raises(TunerError, match="--task expects OP:SHAPE"):
        task_from_spec("conv2d")
    with pytest.raises(TunerError, match="with integers"):
        task_from_spec("matmul:4,4,x")


POINTWISE = Task.create("conv2d", (1, 8, 6, 6, 16, 1, 1))
# what a tuner whose 1x1 convolution had output rows and columns (no pixel axis) stored
OLDER_DEFINITION = '[{"axis":"ow","factors":[2],"kind":"split"}]'


def test_a_record_of_an_older_compute_definition_is_skipped_and_kept(tmp_path, capsys):
    """A log written before the pointwise convolution got its pixel axis: its fastest record
    no longer applies. Builds, `tune best`, `tune export`, `tune build --all` and a resumed
    `tune` use the fastest record that does apply; the old one stays in the log."""
    from tuner import cli
    from tuner.search.default import default_schedule
    from tuner.ir.schedule import schedule_to_json

    db = tmp_path / "older.db"
    target = host_target(1)
    applies = schedule_to_json(default_schedule(POINTWISE.dag(), target))
    flops = POINTWISE.dag().flops

    def result(seconds):
        return MeasureResult(ErrorKind.NONE, "", (seconds,) * 3, 10, 0.1, 1.7e9)
    with RecordStore(f"sqlite:///{db}") as store:
        store.add_many(POINTWISE, target, [NewRecord(OLDER_DEFINITION, result(1e-7), 0),
                                           NewRecord(applies, result(1e-5), 1)],
                       flops=flops, tuner_version="0.1.0")

    kernel = tuner.build("conv2d", POINTWISE.shape, db=str(db), threads=1)
    assert kernel.tuned and schedule_to_json(kernel.choice.steps) == applies
    inputs = _inputs(POINTWISE)
    assert_matches_reference(POINTWISE.dag(), kernel(*inputs), inputs)

    assert cli.main(["best", "--db", str(db), "--json"]) == 0
    import json
    shown = json.loads(capsys.readouterr().out)
    assert [json.dumps(r["schedule"], sort_keys=True, separators=(",", ":")) for r in shown] \
        == [applies]
    exported = tmp_path / "best.json"
    assert cli.main(["export", "--db", str(db), "-o", str(exported)]) == 0
    from records import read_best
    assert [r.schedule_json for r in read_best(exported)] == [applies]
    assert cli.main(["build", "--all", "--db", str(db), "--threads", "1",
                     "-o", str(tmp_path / "lib")]) == 0
    assert cli.main(["conv2d", "--shape", "1,8,6,6,16,1,1", "--trials", "2", "--threads", "1",
                     "--strategy", "random", "--db", str(db)]) == 0
    with RecordStore(f"sqlite:///{db}") as store:
        kept = {r.schedule_json for r in store.history(POINTWISE, target)}
        assert OLDER_DEFINITION in kept and applies in kept and len(kept) == 4
        assert store.best(POINTWISE, target).schedule_json == OLDER_DEFINITION
