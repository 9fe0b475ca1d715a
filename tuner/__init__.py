"""tuner: an Ansor-style auto-tuner for tensor operators on the CPU it runs on.

Where things live (data flows top to bottom):

    templates/<op>.py      Task -> ComputeDAG: what an operator computes (tuner/dag.py)
    tuner/schedule.py      steps (JSON) -> LoopNest, with legality checks (ScheduleError)
    tuner/default.py       a register-blocked schedule for any contraction, before tuning
    tuner/codegen.py       LoopNest -> LLVM IR (explicit vectors, unrolling, tails, OpenMP)
    tuner/irutil.py        symbolic indices and IR helpers for codegen
    tuner/vmath.py         float32 exp, erf, tanh, GELU as branch-free IR (epilogues, rows)
    tuner/jit.py           IR -> machine code for the host; Kernel callable on numpy arrays
    tuner/pseudo.py        LoopNest -> readable pseudo-code
    tuner/sketch.py        Ansor's derivation rules: sketches of a ComputeDAG
    tuner/annotate.py      tile sizes, vector axis, unrolling, parallelism: sample / mutate
    tuner/search.py        evolutionary (cost model), random and Optuna TPE strategies
    tuner/tune.py          the loop: propose, measure, record, learn
    tuner/replay.py        replay: tuner.build(op, shape, db=...) -> a callable kernel
    tuner/aot.py           object file + shared library + C header for C/C++ builds
    tuner/cli.py           the `tune` command
    tuner/measure.py       candidates -> MeasureResult, in worker processes (measure_worker.py)
    tuner/timing.py        the timing protocol shared by measurement and benchmarks
    tuner/task.py          Task: operator, shape, attributes, canonical key
    tuner/target.py        Target: CPU name, features, threads, canonical key
    tuner/result.py        MeasureResult and ErrorKind
    tuner/errors.py        TunerError, ShapeError, ScheduleError, CodegenError
    tuner/machine.py       Machine: lanes, registers, FMA rate, caches (the hardware facts)
    tuner/cpu_probe.py     which vector ISA LLVM generates for a named CPU (--cpu)
    tuner/layout.py        layout facts: padding, packed layouts, access classes, code size
    tuner/model/           ONNX models: load + fold (graph), numpy runtime, task extraction,
                           the task scheduler, packages, compile_model (a package in-process)
    tuner/version.py       __version__ (a leaf, so records/ can stamp records without cycles)
"""

from tuner.version import __version__

__all__ = ["__version__", "build", "compile_model", "load_package", "select_schedule"]


def select_schedule(task, target, db: str | None = None, allow_foreign_target: bool = False):
    """The schedule to build for `task` on `target` from the records in `db` (a database
    URL or file, or a best-schedules JSON file; default: the user's records database)."""
    from records import best_records
    from tuner.lowered import schedule_applies
    from tuner.replay import select_schedule as choose

    records, source = best_records(task, db, schedule_applies)
    return choose(task, target, records, source, allow_foreign_target)


def build(op: str, shape, *, db: str | None = None, threads: int | None = None,
          cpu: str | None = None, allow_foreign_target: bool = False, **attrs):
    """The best stored kernel for a task on this CPU (or the LLVM CPU `cpu`, as `tune --cpu`
    tuned it), callable on numpy arrays (tuner/replay.py). This function and tuner/cli.py are
    where records/ and tuner/ are wired together."""
    from tuner.replay import build_choice
    from tuner.target import named_target
    from tuner.task import Task

    task = Task.create(op, shape, **attrs)
    target = named_target(cpu, threads)
    return build_choice(select_schedule(task, target, db, allow_foreign_target))


def compile_model(model, *, db: str | None = None, threads: int | None = None,
                  inputs: dict | None = None, cpu: str | None = None,
                  allow_foreign_target: bool = False):
    """A whole ONNX model (path, ModelProto or loaded Graph) compiled for this CPU: the
    package `tune build --model` would write, built and loaded in this process (tuned kernels
    from `db` for its conv/matmul tasks, generated pools, LayerNorms and Softmaxes, numpy for
    the rest); call it with the input array or a dict by name, it returns the list of outputs
    (tuner/model/compiled.py)."""
    from tuner.model.compiled import compile_model as compile_graph

    return compile_graph(model, db, threads, inputs, cpu, allow_foreign_target)


def load_package(directory):
    """A model package written by `tune build --model` (tuner/model/package.py), run with
    numpy and ctypes alone: callable like `compile_model`'s result (tuner/model/deploy.py).
    Imports nothing of LLVM, XGBoost, onnx or the records database."""
    from tuner.model.deploy import load_package as load

    return load(directory)
