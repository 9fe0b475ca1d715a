"""Running a package's consecutive kernel nodes with one call into its library.

Called from Python one at a time, each kernel node costs some 5 us of interpreter time around
the kernel (the graph loop, checking and converting its inputs, allocating its output, the
ctypes call): on Zen 5, MobileNetV2 packaged for 2 threads (53 kernel nodes) took 0.31 ms with
every kernel replaced by a C function that does nothing, against 2.3 ms in all, and more than
the whole of its difference to onnxruntime. So a package's library also has one function per
*segment*, a maximal run of consecutive kernel nodes in graph order:

    void <library>_segment<k>(void *const *slots);

It calls the run's kernels in order, kernel j with slots[b_j], slots[b_j + 1], ...,
slots[b_j + operands_j] as (out, operand...), where b_j = the sum over i < j of
1 + operands_i (`slot_bases`). The loader fills the slots: a kernel's constants (its packed
weights) once; the values made and read only inside the segment once per calling thread, in an
arena every call of that thread reuses; and per call, the segment's inputs and the values read
after it (new arrays each call: the caller may be handed them, as with any graph output).

A Reshape, Flatten, Squeeze or Unsqueeze of a value the run made is a *view*: the same bytes
under another shape, so it joins the run without a call (the classifier's Flatten between a
pool and a Gemm used to end one segment and start another; each segment boundary costs a
return to Python, some 0.1 ms after large kernels on Zen 3). Its readers in the run get its
root's pointer, and where it is read after the run, its root's new array, reshaped.

The arena is planned by liveness (`plan_arena`): a value's bytes are free for another once its
last reader has run, so the arena holds a few activations rather than all of them, and the
same memory, still in cache, serves the next call. A kernel's output never shares bytes with
its own inputs (the kernels assume it: their pointers are `restrict`), since a value is freed
only after the node that last reads it.

This module is part of what a deployed package runs: numpy and ctypes only.
"""

from __future__ import annotations

import ctypes
import heapq
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tuner.errors import TunerError
from tuner.buffers import ALIGN, aligned_copy, aligned_empty
from tuner.ir.dag import as_element_type
from tuner.network.graph import Node



def group_runs(nodes: Sequence[Node], is_kernel: Callable[[Node], bool]) -> list[Node]:
    """`nodes` (in a topological order) in another topological order with fewer, longer runs
    of kernel nodes: each next node is the first ready one (in the given order) of the same
    kind as the node before it, kernel or not, and only when there is none the first ready
    one of the other kind. A numpy node that does not need a run's kernels then waits until
    the run ends instead of splitting it. The given order is kept where the greedy one has
    more runs."""
    made = {name: index for index, node in enumerate(nodes) for name in node.outputs}
    needs = [{made[name] for name in node.inputs if name in made} for node in nodes]
    readers: list[list[int]] = [[] for _ in nodes]
    for index, needed in enumerate(needs):
        for producer in needed:
            readers[producer].append(index)
    waiting = [len(needed) for needed in needs]
    ready: dict[bool, list[int]] = {True: [], False: []}  # heaps of node indices, by kind
    for index, node in enumerate(nodes):
        if not waiting[index]:
            heapq.heappush(ready[is_kernel(node)], index)
    order: list[Node] = []
    kind = bool(nodes) and is_kernel(nodes[0])
    while len(order) < len(nodes):
        kind = kind if ready[kind] else not kind
        pick = heapq.heappop(ready[kind])
        order.append(nodes[pick])
        for reader in readers[pick]:
            waiting[reader] -= 1
            if not waiting[reader]:
                heapq.heappush(ready[is_kernel(nodes[reader])], reader)
    if len(kernel_runs(order, is_kernel)) > len(kernel_runs(nodes, is_kernel)):
        return list(nodes)
    return order


def kernel_runs(nodes: Sequence[Node], is_kernel: Callable[[Node], bool],
                is_view: Callable[[Node], bool] = lambda node: False) -> list[range]:
    """The maximal runs of consecutive nodes that `is_kernel`, as index ranges; a node that
    `is_view` continues a run whose nodes made its input (module docstring)."""
    runs, start, made = [], None, set()
    for index, node in enumerate(nodes):
        if is_kernel(node) or (start is not None and is_view(node)
                               and node.inputs[0] in made):
            if start is None:
                start, made = index, set()
            made.update(node.outputs)
        elif start is not None:
            runs.append(range(start, index))
            start = None
    if start is not None:
        runs.append(range(start, len(nodes)))
    return runs


def slot_bases(operand_counts: Sequence[int]) -> list[int]:
    """Where each kernel's slots start: kernel j's out is slot b_j, its operands follow."""
    bases, total = [], 0
    for count in operand_counts:
        bases.append(total)
        total += 1 + count
    return bases


@dataclass(frozen=True, slots=True)
class ArenaPlan:
    offsets: dict[str, int]  # value name -> byte offset in the arena
    size: int  # bytes


def plan_arena(nodes: Sequence[Node], sizes: Mapping[str, int], placed: set[str]
               ) -> ArenaPlan:
    """Byte offsets for the values in `placed` (outputs of `nodes` that no later node reads),
    each live from the node that writes it to the last of `nodes` that reads it: the first
    ALIGN-aligned gap among the values live at that point that is large enough."""
    last_read = {}
    for index, node in enumerate(nodes):
        for name in node.inputs:
            last_read[name] = index
    live: dict[str, tuple[int, int]] = {}
    offsets, top = {}, 0
    for index, node in enumerate(nodes):
        for name in node.outputs:
            if name in placed:
                size = -(-sizes[name] // ALIGN) * ALIGN
                offset = _first_fit(sorted(live.values()), size)
                live[name] = (offset, offset + size)
                offsets[name] = offset
                top = max(top, offset + size)
        for name in [n for n in live if last_read.get(n, index) <= index]:
            del live[name]
    return ArenaPlan(offsets, top)


def _first_fit(blocks: list[tuple[int, int]], size: int) -> int:
    cursor = 0
    for start, stop in blocks:
        if start - cursor >= size:
            return cursor
        cursor = max(cursor, stop)
    return cursor


def kernel_input(reader: str, value, shape: tuple[int, ...],
                 dtype: str = "float32") -> np.ndarray:
    """`value` as the contiguous array of `dtype` a kernel reads as an operand of `shape`, or
    the one-line error naming the node `reader` when its size is not that shape's, or when
    an int8 kernel's integer operand gets values its type does not hold."""
    array = np.ascontiguousarray(as_element_type(value, dtype, f"the input of node "
                                                                f"'{reader}'"))
    if array.size != math.prod(shape):
        raise TunerError(f"node '{reader}' got an input of shape {array.shape}; its kernel "
                         f"takes {shape}")
    return array


class Segment:
    """One segment of a loaded package, run as one node: `segment(node, args)` -> the values
    read after it, for `inputs` given in that order.

    `nodes` are the run's nodes, those of kernels with the runtime (non-constant) operands as
    inputs; `kernels` the bound kernels of those not in `views` (`deploy._BoundKernel`: per
    operand a constant's address or None for the next runtime input, and the output's shape);
    `views` the shapes of the run's views by name; `read_after` the names of the values that
    nodes after the run or the graph's outputs read."""

    def __init__(self, function, nodes: Sequence[Node], kernels: Sequence, read_after: set[str],
                 views: Mapping[str, tuple[int, ...]] = {}):
        self.function = function
        root = {}  # a view -> the value whose bytes it is
        for node in nodes:
            if node.outputs[0] in views:
                root[node.outputs[0]] = root.get(node.inputs[0], node.inputs[0])
        self.views = {name: (root[name], tuple(views[name])) for name in root}
        self.outputs = tuple(name for node in nodes for name in node.outputs
                             if name in read_after)
        nodes = [Node(n.op_type, n.name, tuple(root.get(i, i) for i in n.inputs), n.outputs)
                 for n in nodes if n.outputs[0] not in root]
        produced = {name for node in nodes for name in node.outputs}
        self.inputs = tuple(dict.fromkeys(name for node in nodes for name in node.inputs
                                          if name not in produced))
        bases = slot_bases([len(k.arguments) for k in kernels])
        self.slot_count = bases[-1] + 1 + len(kernels[-1].arguments)
        self.constants: list[tuple[int, int]] = []  # (slot, address)
        self.value_slots: dict[str, list[int]] = {}
        self.input_shapes: dict[str, list[tuple[str, tuple[int, ...], str]]] = {}
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # out, result
        self.dtypes: dict[str, str] = {}  # of the values the kernels write
        for node, kernel, base in zip(nodes, kernels, bases):
            self.value_slots.setdefault(node.outputs[0], []).append(base)
            self.shapes[node.outputs[0]] = (kernel.output_shape, kernel.result_shape)
            self.dtypes[node.outputs[0]] = kernel.output_dtype
            runtime = iter(zip(node.inputs, kernel.input_shapes, kernel.input_dtypes))
            for position, address in enumerate(kernel.arguments, start=base + 1):
                if address is not None:
                    self.constants.append((position, address))
                    continue
                name, shape, dtype = next(runtime)
                self.value_slots.setdefault(name, []).append(position)
                if name in self.inputs:
                    self.input_shapes.setdefault(name, []).append((node.name, shape, dtype))
        self._kernels = list(kernels)  # they hold the constants the slots point to
        sizes = {name: math.prod(out) * np.dtype(self.dtypes[name]).itemsize
                 for name, (out, _) in self.shapes.items()}
        # a value read after the run, itself or through a view, gets a new array each call
        returned = {self.views[name][0] if name in self.views else name
                    for name in self.outputs}
        self._returned = tuple(name for name in self.shapes if name in returned)
        self.arena = plan_arena(nodes, sizes, produced - returned)
        self._local = threading.local()

    def _slots(self):
        """This thread's slots, the constants and the arena's values filled in."""
        slots = getattr(self._local, "slots", None)
        if slots is None:
            arena = np.empty(self.arena.size + ALIGN, np.uint8)
            base = -arena.ctypes.data % ALIGN + arena.ctypes.data
            slots = (ctypes.c_void_p * self.slot_count)()
            for slot, address in self.constants:
                slots[slot] = address
            for name, offset in self.arena.offsets.items():
                for slot in self.value_slots[name]:
                    slots[slot] = base + offset
            self._local.arena, self._local.slots = arena, slots
        return slots

    def __call__(self, node: Node, args: list) -> list[np.ndarray]:
        slots = self._slots()
        held = []  # the inputs' arrays live until the call returns
        for name, value in zip(self.inputs, args):
            array = value
            for reader, shape, dtype in self.input_shapes[name]:
                array = kernel_input(reader, array, shape, dtype)
            array = aligned_copy(array)  # a numpy node's or the caller's (tuner/buffers.py)
            held.append(array)
            for slot in self.value_slots[name]:
                slots[slot] = array.ctypes.data
        arrays = {}
        for name in self._returned:
            out = aligned_empty(self.shapes[name][0], self.dtypes[name])
            for slot in self.value_slots[name]:
                slots[slot] = out.ctypes.data
            arrays[name] = out
        self.function(slots)
        return [arrays[self.views[name][0]].reshape(self.views[name][1]) if name in self.views
                else arrays[name].reshape(self.shapes[name][1]) for name in self.outputs]
