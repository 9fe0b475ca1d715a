"""What is tuned: an operator with a concrete shape and attributes.

A `Task` is pure data with a canonical string key; the records database, the exported JSON and
the kernel cache all index by that key. The compute definition is derived from it by the
operator's template (`templates/<op>.py`), never stored: `task.dag()` builds it once per process
and returns the same frozen `ComputeDAG` after that (the search, the measurer, warm start and
every build ask for it many times).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

AttrValue = int | bool


@dataclass(frozen=True, slots=True)
class Task:
    op: str
    shape: tuple[int, ...]
    attrs: tuple[tuple[str, AttrValue], ...] = ()
    dtype: str = "float32"

    @staticmethod
    def create(op: str, shape, dtype: str = "float32", **attrs: AttrValue) -> "Task":
        """Builds a task with attributes in canonical (sorted) order and validates it."""
        from templates import get_template
        from templates._common import key_attrs

        template = get_template(op)
        shape = tuple(int(x) for x in shape)
        full = key_attrs(template.normalize_attrs(shape, attrs, dtype), template.DEFAULTS)
        task = Task(op, shape, tuple(sorted(full.items())), dtype)
        task.dag()  # validates shape and attributes with a clear ShapeError
        return task

    @property
    def attr_dict(self) -> dict[str, AttrValue]:
        return dict(self.attrs)

    @property
    def key(self) -> str:
        shape = "x".join(str(x) for x in self.shape)
        attrs = ",".join(f"{k}={int(v)}" for k, v in self.attrs)
        return f"{self.op}/{shape}/{attrs}/{self.dtype}"

    @staticmethod
    def from_key(key: str) -> "Task":
        from tuner.errors import TunerError

        try:
            op, shape, attrs, dtype = key.split("/")
            dims = tuple(int(x) for x in shape.split("x"))
            pairs = dict(kv.split("=") for kv in attrs.split(",")) if attrs else {}
            return Task.create(op, dims, dtype, **{k: int(v) for k, v in pairs.items()})
        except (ValueError, KeyError) as err:
            raise TunerError(f"malformed task key {key!r}: {err}") from None

    def to_json(self) -> dict:
        return {"op": self.op, "shape": list(self.shape), "attrs": dict(self.attrs),
                "dtype": self.dtype}

    @staticmethod
    def from_json(data: dict) -> "Task":
        return Task.create(data["op"], data["shape"], data.get("dtype", "float32"),
                           **data.get("attrs", {}))

    def dag(self):
        return _definition(self.op, self.shape, self.attrs, self.dtype)


# A definition is frozen data of a few kB; a process meets a few hundred tasks at most (a
# model's, and those of the records a cost model warm-starts from).
@functools.lru_cache(maxsize=4096)
def _definition(op: str, shape: tuple[int, ...], attrs: tuple[tuple[str, AttrValue], ...],
                dtype: str):
    from templates import get_template

    extra = {} if dtype == "float32" else {"dtype": dtype}
    return get_template(op).definition(shape, **dict(attrs), **extra)
