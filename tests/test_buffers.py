"""Buffers on cache lines (tuner/buffers.py): what the tuner measures with, packs weights into
and hands out, whatever offset numpy's allocator gives."""

import numpy as np
import pytest

from tuner.buffers import ALIGN, aligned_copy, aligned_empty, is_aligned
from tuner.codegen.jit import CompiledKernel
from tuner.ir.target import host_target
from tuner.ir.task import Task
from tuner.search.default import default_lowered


@pytest.mark.parametrize("shape, dtype", [((3, 5), np.float32), ((7,), np.uint8),
                                          ((2, 3, 4), np.int32), ((0,), np.float32)])
def test_aligned_empty_starts_on_a_cache_line(shape, dtype):
    for _ in range(8):  # numpy's own offsets vary from one allocation to the next
        array = aligned_empty(shape, dtype)
        assert array.shape == shape and array.dtype == dtype and array.flags.c_contiguous
        assert array.ctypes.data % ALIGN == 0 or array.size == 0
        array[...] = 1  # writeable, and its own memory
        assert (array == 1).all()


def test_aligned_copy_copies_only_what_is_off_a_line():
    raw = np.arange(100, dtype=np.uint8)
    off = raw[(-raw.ctypes.data % ALIGN) + 1:][:32]  # one byte past a line
    assert not is_aligned(off)
    copy = aligned_copy(off)
    assert is_aligned(copy) and np.array_equal(copy, off) and copy is not off
    assert aligned_copy(copy) is copy
    strided = np.arange(20, dtype=np.float32)[::2]
    assert np.array_equal(aligned_copy(strided), strided)


def test_a_kernel_packs_and_writes_into_aligned_buffers():
    rng = np.random.default_rng(0)
    target = host_target(1)
    for task in (Task.create("matmul", (9, 20, 13), bias=True),
                 Task.create("matmul", (9, 20, 13), "int8", out_type=1)):
        dag = task.dag()
        kernel = CompiledKernel(default_lowered(dag, target)[1], target)
        inputs = dag.random_inputs(rng)
        off = []
        for array in inputs:  # each input one element off a line
            raw = np.empty(array.size + 64, array.dtype)
            start = (-raw.ctypes.data % ALIGN) // array.itemsize + 1
            view = raw[start:start + array.size].reshape(array.shape)
            view[...] = array
            off.append(view)
        args = kernel.pack(*off)
        assert all(is_aligned(a) for a in args)
        assert is_aligned(kernel.new_output())
        np.testing.assert_allclose(kernel(*off), dag.reference(*inputs),
                                   rtol=dag.tolerance()[0], atol=dag.tolerance()[1])
