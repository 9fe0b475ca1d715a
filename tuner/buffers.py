"""Buffers that start on a cache line: what our kernels read and write.

numpy starts a new array 16 bytes into an allocation, so a buffer's rows, 64 bytes apart in
a kernel's layout, each straddle two cache lines three times in four: every 64-byte load
(a 512-bit vector, a row of an AMX tile) then touches two lines. Measured on an Emerald Rapids
Xeon, one thread, an AMX int8 matmul 128x768x768: 3251 GOPS with its data, weights and output
on cache lines, 2015 with the data 16 bytes off, 1223 with all three (1024^3: 2863 against
1629). A process's buffers land one way or the other by chance, so the same kernel measured
1040 GOPS in one process and 2400 in the next. The tuner therefore measures, packs weights
into, and hands out buffers aligned to `ALIGN` (as onnxruntime's allocator does); a caller's
own arrays are taken as they are, where copying would cost more than it saves.

numpy only: the package loader (tuner/network/deploy.py) uses it too.
"""

from __future__ import annotations

import numpy as np

ALIGN = 64  # bytes: a cache line, and a 512-bit vector


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose first byte is on an `ALIGN` boundary."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(size + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + size].view(dtype).reshape(shape)


def is_aligned(array: np.ndarray) -> bool:
    return array.ctypes.data % ALIGN == 0


def aligned_clone(array: np.ndarray) -> np.ndarray:
    """A new C-contiguous copy of `array` on a cache line."""
    out = aligned_empty(array.shape, array.dtype)
    out[...] = array
    return out


def aligned_copy(array: np.ndarray) -> np.ndarray:
    """`array` itself if C-contiguous and aligned, else `aligned_clone(array)`."""
    if array.flags.c_contiguous and is_aligned(array):
        return array
    return aligned_clone(array)
