"""tuner: an Ansor-style auto-tuner for tensor operators on the CPU it runs on.

Where things live (data flows top to bottom):

    templates/<op>.py      Task -> ComputeDAG: what an operator computes (tuner/dag.py)
    tuner/schedule.py      steps (JSON) -> LoopNest, with legality checks (ScheduleError)
    tuner/default.py       a register-blocked schedule for any contraction, before tuning
    tuner/codegen.py       LoopNest -> LLVM IR (explicit vectors, unrolling, tails, OpenMP)
    tuner/irutil.py        symbolic indices and IR helpers for codegen
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
"""

__version__ = "0.1.0"


def build(op: str, shape, **kwargs):
    """The best stored kernel for a task on this CPU, callable on numpy arrays
    (see tuner/replay.py)."""
    from tuner.replay import build as _build

    return _build(op, shape, **kwargs)
