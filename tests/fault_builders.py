"""Builders that hand the measurement runner deliberately broken kernels.

Each returns what `tuner.measure.worker.build` returns, but the object file comes from a few
lines of hand-written LLVM IR instead of a schedule, so the runner meets a kernel that
segfaults, one that never returns and one that computes the wrong thing.
"""

from tuner.codegen.jit import target_machine
from tuner.ir.llvm_init import llvm
from tuner.ir.target import Target
from tuner.ir.task import Task

ARGS = {"matmul": 3, "batch_matmul": 3, "conv2d": 3}


def _object(request: dict, body: str) -> dict:
    task = Task.from_json(request["task"])
    n_args = 1 + len(task.dag().inputs)
    params = ", ".join(f"ptr %p{i}" for i in range(n_args))
    module = llvm.parse_assembly(f"define void @kernel({params}) {{\n{body}\n}}\n")
    target = Target.from_json(request["target"])
    return {"ok": True, "object": target_machine(target, reloc="pic").emit_object(module),
            "compile_s": 0.0}


def segfault(request: dict) -> dict:
    return _object(request, "  store volatile float 1.0, ptr null\n  ret void")


def hang(request: dict) -> dict:
    return _object(request, "entry:\n  br label %spin\nspin:\n"
                            "  %x = load volatile float, ptr %p0\n  br label %spin")


def wrong(request: dict) -> dict:
    size = 1
    for d in Task.from_json(request["task"]).dag().output.array_shape:
        size *= d
    return _object(request, f"""entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%next, %loop]
  %p = getelementptr float, ptr %p0, i64 %i
  store float 1.0, ptr %p
  %next = add i64 %i, 1
  %done = icmp eq i64 %next, {size}
  br i1 %done, label %exit, label %loop
exit:
  ret void""")


def slow(request: dict) -> dict:
    """A correct build that takes a second: time for a test to kill a worker mid-batch."""
    import time

    from tuner.measure.worker import build

    time.sleep(1.0)
    return build(request)


def by_schedule(request: dict) -> dict:
    """Picks the fault from the first split factor, so one batch can mix them."""
    from tuner.measure.worker import build
    from tuner.ir.schedule import schedule_from_json

    steps = schedule_from_json(request["schedule"])
    factor = steps[0].factors[0] if steps else 0
    return {1: segfault, 2: hang, 3: wrong}.get(factor, build)(request)
