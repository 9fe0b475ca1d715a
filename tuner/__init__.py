"""tuner: an Ansor-style auto-tuner for tensor operators on the CPU it runs on.

The folders are the pipeline's stages, in the order data flows; a module imports only from
its own stage or from stages listed before it, with no import cycle (tests/test_layout.py
checks both), and each folder's __init__.py maps its modules.

    tuner/errors.py, version.py, buffers.py  leaves every stage may import
    tuner/ir/        define: Task, ComputeDAG, steps -> LoopNest, Target and Machine (the
                     hardware facts); templates/ (each operator's compute definition) is here
    tuner/codegen/   lower: LoopNest -> LLVM IR -> machine code (CompiledKernel), pseudo-code
    tuner/measure/   measure: compile, check and time candidates in worker processes
    records/         record: every measurement in any SQLAlchemy database; the JSON export
    costmodel/       learn: features of a loop nest, the XGBoost cost model
    tuner/search/    search: sketches, annotations, strategies, TaskTuner (the tune loop)
    tuner/replay/    replay: records -> chosen schedules -> callable, shared library + header
    tuner/network/   whole ONNX models: graph, numpy runtime, tasks, the task scheduler,
                     packages and their loader
    tuner/plot.py    search curves;  tuner/cli.py  the `tune` command, which wires it all

The search takes its records store and cost model as arguments: tuner/search/ imports neither
records/ nor costmodel/. One meaning per word: "model" is the ONNX model (tuner/network/,
`tune model`, `compile_model`), the other is always the "cost model"; "schedule" is a kernel's
loop steps, and the task scheduler allocates trials (tuner/network/task_scheduler.py).
"""

from tuner.version import __version__

__all__ = ["__version__", "build", "compile_model", "load_package", "select_schedule"]


def select_schedule(task, target, db: str | None = None, allow_foreign_target: bool = False):
    """The schedule to build for `task` on `target` from the records in `db` (a database
    URL or file, or a best-schedules JSON file; default: the user's records database). To
    choose for many tasks, open the records once: `tuner.replay.source.open_schedules`."""
    from tuner.replay.source import open_schedules

    with open_schedules(db) as source:
        return source.choose(task, target, allow_foreign_target)


def build(op: str, shape, *, db: str | None = None, threads: int | None = None,
          cpu: str | None = None, allow_foreign_target: bool = False, dtype: str = "float32",
          **attrs):
    """The best stored kernel for a task on this CPU (or the LLVM CPU `cpu`, as `tune --cpu`
    tuned it), callable on numpy arrays (tuner/replay/kernel.py). `dtype="int8"`: the
    uint8 x int8 kernel, whose inputs end with its [scale,] zero_points
    (tuner.ir.dag.Quantization)."""
    from tuner.ir.target import named_target
    from tuner.ir.task import Task
    from tuner.replay.kernel import build_choice

    task = Task.create(op, shape, dtype, **attrs)
    target = named_target(cpu, threads)
    return build_choice(select_schedule(task, target, db, allow_foreign_target))


def compile_model(model, *, db: str | None = None, threads: int | None = None,
                  inputs: dict | None = None, cpu: str | None = None,
                  allow_foreign_target: bool = False):
    """A whole ONNX model (path, ModelProto or loaded Graph) compiled for this CPU: the
    package `tune build --model` would write, built and loaded in this process (tuned kernels
    from `db` for its conv/matmul tasks, generated pools, LayerNorms and Softmaxes, numpy for
    the rest); call it with the input array or a dict by name, it returns the list of outputs
    (tuner/network/compiled.py)."""
    from tuner.network.compiled import compile_model as compile_graph

    return compile_graph(model, db, threads, inputs, cpu, allow_foreign_target)


def load_package(directory):
    """A model package written by `tune build --model` (tuner/network/package.py), run with
    numpy and ctypes alone: callable like `compile_model`'s result (tuner/network/deploy.py).
    Imports nothing of LLVM, XGBoost, onnx or the records database."""
    from tuner.network.deploy import load_package as load

    return load(directory)
