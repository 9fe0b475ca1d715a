"""A chosen schedule compiled in this process: what `tuner.build` returns.

    kernel = tuner.build("conv2d", shape=(1, 64, 56, 56, 64, 3, 3), stride=1, pad=1,
                         db="records.db")            # or a best-schedules JSON file
    out = kernel(data, weight)                        # or kernel.bind(weight=w)(data)

The schedule comes from tuner/replay/source.py (`ScheduleSource.choose`), with its loop nest.
Compiled kernels are cached in the process by (task, schedule, target, tuner version):
replaying a log twice compiles once. Machine code is never cached on disk: a cache file would
be code loaded from a file.
"""

from __future__ import annotations

from tuner.version import __version__
from tuner.codegen.jit import CompiledKernel
from tuner.codegen.pseudo import pseudo_code
from tuner.ir.schedule import schedule_to_json
from tuner.replay.source import Choice

_CACHE: dict[tuple[str, str, str, str], CompiledKernel] = {}


def compile_cached(choice: Choice) -> CompiledKernel:
    key = (choice.task.key, schedule_to_json(choice.steps), choice.target.key, __version__)
    kernel = _CACHE.get(key)
    if kernel is None:
        kernel = CompiledKernel(choice.nest, choice.target)
        _CACHE[key] = kernel
    return kernel


class ReplayedKernel:
    """A chosen schedule's compiled kernel, callable on numpy arrays, and how it was chosen
    (`tuned` False: no record, the default schedule)."""

    def __init__(self, kernel: CompiledKernel, choice: Choice):
        self.kernel, self.choice = kernel, choice
        self.tuned = choice.tuned
        self.task, self.target = choice.task, choice.target

    def __call__(self, *inputs):
        return self.kernel(*inputs)

    def bind(self, **constants):
        return self.kernel.bind(**constants)

    def pseudo_code(self) -> str:
        return pseudo_code(self.kernel.nest, self.target.machine)


def build_choice(choice: Choice) -> ReplayedKernel:
    return ReplayedKernel(compile_cached(choice), choice)
