"""The domain errors of the tuner.

Every error a user can cause with bad input derives from `TunerError`, so the command line can
print its message in one line and exit 2 without a traceback. The search catches only
`ScheduleError`: a step that does not apply to a compute definition.
"""


class TunerError(Exception):
    """Bad input or a state the tuner refuses; the message names the bad value."""


class ShapeError(TunerError):
    """An operator shape or attribute that does not describe a valid computation."""


class ScheduleError(TunerError):
    """A schedule step that does not apply to the loop nest it is applied to."""


class CodegenError(TunerError):
    """LLVM refused the generated module (a bug in code generation, never user input)."""


def one_line(err: BaseException) -> str:
    """An exception's message on one line (a library's may span several), for a TunerError
    that quotes it."""
    return " ".join(str(err).split()) or type(err).__name__
