"""int8 tasks through the whole kernel pipeline: tuning from the command line, the records,
replay with `tuner.build`, the C library and header, and the errors of bad input."""

import shutil

import numpy as np
import pytest

import tuner
from records import RecordStore
from tuner.cli import main
from tuner.errors import ShapeError, TunerError
from tuner.ir.target import host_target
from tuner.ir.task import Task
from conftest import c_program_calls_int8_matmul
from tuner.replay.aot import build_library, c_name, task_from_spec

MATMUL = Task.create("matmul", (12, 24, 30), "int8", bias=True, out_type=1)
CONV = Task.create("conv2d", (1, 6, 9, 10, 8, 3, 3), "int8", pad=1, relu=1, out_type=2)
# weights of reduced range (tuner.ir.dag.REDUCED_WEIGHT_RANGE): a task of its own
REDUCED = Task.create("matmul", (12, 24, 30), "int8", bias=True, out_type=1, reduce_range=True)
# a product of two uint8 activations, both zero points subtracted in the kernel
BATCH = Task.create("batch_matmul", (3, 7, 10, 9), "int8", relu=1, out_type=1)


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('int8') / 'records.db'}"
    base = ["--trials", "6", "--batch-size", "6", "--threads", "1", "--db", url]
    assert main(["matmul", "--shape", "12,24,30", "--dtype", "int8", "--out-type", "uint8",
                 "--bias"] + base) == 0
    assert main(["conv2d", "--shape", "1,6,9,10,8,3,3", "--pad", "1", "--relu", "--dtype",
                 "int8", "--out-type", "float32"] + base) == 0
    assert main(["matmul", "--shape", "12,24,30", "--dtype", "int8", "--out-type", "uint8",
                 "--bias", "--reduce-range"] + base) == 0
    assert main(["batch_matmul", "--shape", "3,7,10,9", "--dtype", "int8", "--out-type",
                 "uint8", "--relu"] + base) == 0
    return url


def test_int8_records_are_their_own_tasks(tuned_db, capsys):
    with RecordStore(tuned_db) as store:
        tasks = {t.key for t, *_ in store.summary()}
    assert tasks == {MATMUL.key, CONV.key, REDUCED.key, BATCH.key}
    assert REDUCED.key == MATMUL.key.replace("out_type=1", "out_type=1,reduce_range=1")
    assert MATMUL.key.endswith("/int8") and "out_type=1" in MATMUL.key
    # a float32 task's key is as it always was: no out_type, float32 last
    assert Task.create("matmul", (12, 24, 30), bias=True).key == \
        "matmul/12x24x30/bias=1,relu=0/float32"
    assert main(["best", "--db", tuned_db]) == 0
    out = capsys.readouterr().out
    assert "uint8((acc + bias[j]) * scale)" in out
    # the instruction the record's CPU sums a group with, reduced range or not
    machine = host_target(1).machine
    for reduced in (False, True):
        assert f"dot product ({machine.int8_instruction(reduced)}) over" in out
    # the batch_matmul's: int16 pairs (vpdpwssd with VNNI, else vpmaddwd)
    assert f"dot product ({machine.int8_instruction(False, centered=True)}) over" in out
    assert " - zero_points[0]) * (" in out and " - zero_points[2])\n" in out


def test_build_replays_the_best_int8_kernel_exactly(tuned_db):
    for task in (MATMUL, CONV, REDUCED, BATCH):
        kernel = tuner.build(task.op, task.shape, dtype="int8", db=tuned_db, threads=1,
                             **task.attr_dict)
        assert kernel.tuned
        dag = task.dag()
        inputs = dag.random_inputs(np.random.default_rng(3))
        np.testing.assert_array_equal(kernel(*inputs), dag.reference(*inputs))


def test_an_int8_kernel_refuses_floats_and_out_of_range_values(tuned_db):
    kernel = tuner.build("matmul", (12, 24, 30), dtype="int8", db=tuned_db, threads=1,
                         bias=True, out_type=1)
    a, b, bias, scale, zero_points = MATMUL.dag().random_inputs(np.random.default_rng(0))
    with pytest.raises(TunerError, match="a must be a uint8 array .* got float32"):
        kernel(a.astype(np.float32), b, bias, scale, zero_points)
    with pytest.raises(TunerError, match=r"b must be a int8 array .*values in \[-200"):
        kernel(a, np.full(b.shape, -200), bias, scale, zero_points)
    # integers that fit are taken as they come (a list of zero points, an int64 bias)
    same = kernel(a, b, bias.astype(np.int64), scale, [int(v) for v in zero_points])
    np.testing.assert_array_equal(same, kernel(a, b, bias, scale, zero_points))


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("task", [MATMUL, REDUCED], ids=["full", "reduced"])
def test_a_c_program_calls_the_int8_library(task, tuned_db, tmp_path):
    choices = [tuner.select_schedule(t, host_target(1), tuned_db)
               for t in (MATMUL, REDUCED, BATCH)]
    lib = build_library(choices, tmp_path)
    header = lib.header.read_text()
    # what each zero point is: the batch_matmul's third is its b's
    assert header.count("/* zero_points: a's, the output's */") == 2
    assert header.count("/* zero_points: a's, the output's, b's (subtracted from both) */") == 1
    name = c_name(task)
    assert name == "tuner_matmul_12x24x30_bias_int8_u8out" + \
        ("_reduced" if task is REDUCED else "")
    assert f"void {name}(uint8_t *restrict out, const uint8_t *restrict a" in header
    assert "#include <stdint.h>" in header
    # the reduced kernel's declaration says what its weight may hold; the other's does not
    assert header.count("/* every b value in [-64, 64]: others give wrong sums */") == 1
    packed = f"{name.upper()}_B_PACKED_ELEMENTS"
    dag = task.dag()
    a, b, bias, scale, zero_points = dag.random_inputs(np.random.default_rng(5))
    out = c_program_calls_int8_matmul(tmp_path, name, (12, 24, 30),
                                      (a, b, bias, scale, zero_points), packed in header)
    np.testing.assert_array_equal(out, dag.reference(a, b, bias, scale, zero_points))


def test_int8_task_specs():
    task = task_from_spec("matmul:12,24,30:dtype=int8,bias=1,out_type=1")
    assert task == MATMUL
    with pytest.raises(ShapeError, match="dtype expects one of float32, int8, got 'int4'"):
        task_from_spec("matmul:12,24,30:dtype=int4")


@pytest.mark.parametrize("argv, message", [
    (["matmul", "--shape", "8,8,8", "--out-type", "uint8"],
     "--out-type uint8 is for --dtype int8"),
    (["matmul", "--shape", "8,8,8", "--dtype", "int8", "--residual"],
     "int8 matmul takes no a residual"),
    (["conv2d", "--shape", "1,8,8,8,8,3,3", "--dtype", "int8", "--relu6"],
     "int8 conv2d takes relu=0 or relu=1, got relu=6"),
    (["batch_matmul", "--shape", "2,8,8,8", "--dtype", "int8", "--reduce-range"],
     "unrecognized arguments: --reduce-range"),
    (["batch_matmul", "--shape", "2,8,8,8", "--dtype", "int8", "--relu6"],
     "int8 batch_matmul takes relu=0 or relu=1, got relu=6"),
    (["conv2d", "--shape", "1,8,8,8,8,3,3", "--reduce-range"],
     "--reduce-range is for --dtype int8"),
])
def test_bad_int8_input_is_one_line(argv, message, tmp_path, capsys):
    code = main(argv + ["--trials", "1", "--db", f"sqlite:///{tmp_path / 'r.db'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_int8_batch_matmul_takes_only_what_its_template_has():
    with pytest.raises(ShapeError, match="batch_matmul has no attribute 'reduce_range'"):
        Task.create("batch_matmul", (2, 8, 8, 8), "int8", reduce_range=True)
    with pytest.raises(ShapeError, match="out_type is for int8 kernels; this one is float32"):
        Task.create("batch_matmul", (2, 8, 8, 8), out_type=1)
    # the float32 task's key is as it always was
    assert Task.create("batch_matmul", (2, 8, 8, 8)).key == \
        "batch_matmul/2x8x8x8/bias=0,relu=0/float32"


def test_int8_records_export_import_and_replay_from_the_json(tuned_db, tmp_path):
    exported = tmp_path / "best.json"
    assert main(["export", "--db", tuned_db, "-o", str(exported)]) == 0
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["import", str(exported), "--db", other]) == 0
    with RecordStore(other) as store:
        assert {t.key for t in store.tasks()} == {MATMUL.key, CONV.key, REDUCED.key,
                                                  BATCH.key}
    kernel = tuner.build("matmul", (12, 24, 30), dtype="int8", db=str(exported), threads=1,
                         bias=True, out_type=1)
    assert kernel.tuned
    inputs = MATMUL.dag().random_inputs(np.random.default_rng(8))
    np.testing.assert_array_equal(kernel(*inputs), MATMUL.dag().reference(*inputs))
