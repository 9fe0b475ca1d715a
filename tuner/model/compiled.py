"""A whole model compiled: tuned kernels for its tasks, numpy for everything else.

    model = tuner.compile_model("resnet50.onnx", db="records.db", threads=2)
    outputs = model(images)                  # or model({"input": images}); a list of arrays

`compile_model` loads the graph (tuner/model/graph.py), refuses an operator the runtime cannot
run before anything is compiled, extracts the tasks (tuner/model/tasks.py) and builds each task
once through the same replay path as `tuner.build` (best record of the task for this target in
`db`, else the default schedule). Every fused node then gets that kernel bound to its own
folded weights: the weights are converted and packed into the kernel's layout once, here, not
on every call. Running the model is `run_graph` with the fused node types served by those bound
kernels, so a compiled model computes exactly what the numpy runtime computes, only faster.

The outputs are always a list in the model's output order, even for a single output: the same
as `run_graph` and onnxruntime's `InferenceSession.run`, so a caller never branches on how many
outputs a model has. A task with no tuned record makes one `NoRecordWarning` for the whole
model, with the count, rather than one per layer: a model of 50 layers tuned on another
machine would otherwise print 50 warnings that say the same thing.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from tuner.errors import TunerError
from tuner.model.fused import FUSED_OPS
from tuner.model.graph import Graph, Node, load_model
from tuner.model.runtime import GraphRunner, check_supported
from tuner.model.tasks import Extraction, extract_tasks
from tuner.replay import BuiltKernel, NoRecordWarning, build_choice
from tuner.target import Target
from tuner.task import Task


@dataclass(frozen=True, slots=True)
class TaskKernel:
    """The kernel serving a task of the model, and whether it was tuned."""

    task: Task
    occurrences: int
    tuned: bool
    gflops: float | None  # as measured when tuned


class CompiledModel(GraphRunner):
    """A model ready to run: `model(x)` or `model({name: x})` -> list of output arrays."""

    def __init__(self, extraction: Extraction, target: Target,
                 kernels: dict[Task, BuiltKernel]):
        self.graph = extraction.graph
        self.target = target
        self.notes = extraction.notes
        self.kernels = tuple(TaskKernel(use.task, use.occurrences, kernels[use.task].tuned,
                                        kernels[use.task].choice.gflops)
                             for use in extraction.tasks)
        consts = self.graph.initializers
        self._bound, self._runtime = {}, {}
        for node in self.graph.nodes:
            if node.op_type in FUSED_OPS:
                kernel = kernels[node.attributes["task"]]
                operands = kernel.kernel.dag.inputs
                self._bound[node.name] = kernel.bind(**_constants(node, operands, consts))
                # the node's inputs the kernel reads at run time: the layer's input and,
                # fused, the residual
                self._runtime[node.name] = [i for i, op in enumerate(operands)
                                            if not op.constant]
        self._impls = {"TunerConv": self._run_conv, "TunerMatMul": self._run_matmul,
                       "TunerBatchMatMul": self._run_batch_matmul}

    def _run_conv(self, node: Node, args: list) -> list[np.ndarray]:
        return [self._bound[node.name](*(args[i] for i in self._runtime[node.name]))]

    def _run_matmul(self, node: Node, args: list) -> list[np.ndarray]:
        x = args[0]  # rank >= 2: the leading dimensions are the matmul's rows
        rows = [args[i].reshape(-1, args[i].shape[-1]) for i in self._runtime[node.name]]
        out = self._bound[node.name](*rows)
        return [out.reshape(x.shape[:-1] + (out.shape[-1],))]


    def _run_batch_matmul(self, node: Node, args: list) -> list[np.ndarray]:
        dag = self._bound[node.name].kernel.dag
        out = self._bound[node.name](args[0].reshape(dag.lhs.array_shape),
                                     args[1].reshape(dag.rhs.array_shape))
        return [out.reshape(node.attributes["result_shape"])]


def _constants(node: Node, operands, consts: dict) -> dict[str, np.ndarray]:
    """The fused node's weight (and bias) by the names of the kernel's constant operands:
    weight/bias for conv2d, b/bias for matmul (templates/)."""
    return {op.name: consts[value] for op, value in zip(operands, node.inputs) if op.constant}


def compile_model(model, db: str | None = None, threads: int | None = None,
                  inputs: dict[str, tuple[int, ...]] | None = None, cpu: str | None = None,
                  allow_foreign_target: bool = False) -> CompiledModel:
    """Compiles `model` (a path to an .onnx file, an `onnx.ModelProto`, or a loaded `Graph`)
    for this CPU (or the LLVM CPU `cpu`) and `threads` (default: every usable core), with the
    best schedules in `db` (as `tuner.build` reads them). `inputs` gives the shapes of inputs
    with symbolic dimensions (a batch `N`): a kernel is compiled for one shape."""
    from tuner import select_schedule
    from tuner.target import named_target

    if isinstance(model, Graph):
        if inputs:
            raise TunerError("inputs= applies to an ONNX model; this Graph is already loaded "
                             "with static shapes")
        graph = model
    elif isinstance(model, (str, os.PathLike)) or hasattr(model, "SerializeToString"):
        graph = load_model(model, inputs)
    else:
        raise TunerError(f"compile_model takes a path to an .onnx file, an onnx.ModelProto or "
                         f"a Graph, got {type(model).__name__}")
    check_supported(graph)
    extraction = extract_tasks(graph)
    check_supported(extraction.graph, FUSED_OPS)
    target = named_target(cpu, threads)
    kernels: dict[Task, BuiltKernel] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NoRecordWarning)
        for use in extraction.tasks:
            kernels[use.task] = build_choice(
                select_schedule(use.task, target, db, allow_foreign_target))
    for w in caught:
        if not issubclass(w.category, NoRecordWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    untuned = [use for use in extraction.tasks if not kernels[use.task].tuned]
    if untuned:
        share = sum(use.share for use in untuned)
        source = db or "the default records database"
        warnings.warn(f"{len(untuned)} of the {len(extraction.tasks)} tasks of the model "
                      f"({share:.0%} of its task FLOPs) have no tuned record for "
                      f"{target.cpu} with {target.threads} threads in {source}; they run the "
                      f"default schedule (`tune model` tunes them)", NoRecordWarning, stacklevel=2)
    return CompiledModel(extraction, target, kernels)
