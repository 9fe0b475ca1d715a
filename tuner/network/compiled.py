"""A whole model compiled: tuned kernels for its tasks, numpy for everything else.

    model = tuner.compile_model("resnet50.onnx", db="records.db", threads=2)
    outputs = model(images)                  # or model({"input": images}); a list of arrays

`compile_model` is the package `tune build --model` would write (package.py), built in a
temporary directory and loaded at once (deploy.py), the directory removed: the shared library
stays mapped in the process after its file is gone. So a compiled model runs exactly what a
deployed package runs, at its speed: its runs of consecutive kernels as one call each
(segments.py), its pools, LayerNorms and Softmaxes as generated functions, the weights packed
once. (It used to call each kernel from Python and run the rest in numpy: a MobileNetV2-like
model took 1.42 ms that way against 0.87 ms as a package, on Zen 4 at 1 thread.) Like
`tune build`, it needs a C compiler to link the library.

Before anything is compiled, the graph is loaded, an operator the runtime cannot run is
refused and the tasks are extracted (tuner/network/tasks.py); each task gets the best record for
the target in `db`, else the default schedule.

The outputs are always a list in the model's output order, even for a single output: the same
as `run_graph` and onnxruntime's `InferenceSession.run`, so a caller never branches on how many
outputs a model has. A task with no tuned record makes one `NoRecordWarning` for the whole
model, with the count, rather than one per layer: a model of 50 layers tuned on another
machine would otherwise print 50 warnings that say the same thing.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np

from tuner.errors import TunerError
from tuner.network.deploy import Package, load_package
from tuner.network.graph import Graph, load_model
from tuner.network.package import PackageBuild, write_package
from tuner.network.runtime import check_supported
from tuner.replay.source import NoRecordWarning, open_schedules
from tuner.ir.target import Target


class CompiledModel:
    """A model ready to run: `model(x)` or `model({name: x})` -> list of output arrays."""

    def __init__(self, package: Package, built: PackageBuild, target: Target):
        self.package = package
        self.graph = package.graph  # as it runs: segments, generated functions, numpy nodes
        self.target = target
        self.notes = built.notes
        self.tasks = built.tasks  # each task's kernel symbol, occurrences, whether tuned

    @property
    def inputs(self) -> dict[str, tuple[int, ...]]:
        return self.package.inputs

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.package.outputs

    def __call__(self, feeds) -> list[np.ndarray]:
        return self.package(feeds)


def compile_model(model, db: str | None = None, threads: int | None = None,
                  inputs: dict[str, tuple[int, ...]] | None = None, cpu: str | None = None,
                  allow_foreign_target: bool = False) -> CompiledModel:
    """Compiles `model` (a path to an .onnx file, an `onnx.ModelProto`, or a loaded `Graph`)
    for this CPU (or the LLVM CPU `cpu`) and `threads` (default: every usable core), with the
    best schedules in `db` (as `tuner.build` reads them). `inputs` gives the shapes of inputs
    with symbolic dimensions (a batch `N`): a kernel is compiled for one shape."""
    from tuner.ir.target import named_target

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
    target = named_target(cpu, threads)
    with tempfile.TemporaryDirectory(prefix="tuner-model-") as directory, \
            open_schedules(db) as schedules:
        built = write_package(graph, directory, schedules, target,
                              allow_foreign_target=allow_foreign_target)
        package = load_package(directory)
    untuned = built.defaulted
    if untuned:
        share = sum(k.share for k in untuned)
        source = db or "the default records database"
        warnings.warn(f"{len(untuned)} of the {len(built.tasks)} tasks of the model "
                      f"({share:.0%} of its task FLOPs) have no tuned record for "
                      f"{target.cpu} with {target.threads} threads in {source}; they run the "
                      f"default schedule (`tune model` tunes them)", NoRecordWarning, stacklevel=2)
    return CompiledModel(package, built, target)
