"""Sketch generation: Ansor's derivation rules, adapted to contractions.

A `Sketch` fixes the structure of a schedule and leaves the numbers open: the multi-level tiling
"SSRSRS" (four levels of each spatial axis around two of each reduction axis), where the output
tile is accumulated (cache_write), how padding is handled and which constant operands are
packed. `tuner/search/annotate.py` fills in tile sizes, the vector axis, unrolling and parallelism.

Rules are applied in order, as in TVM's auto_scheduler (sketch_policy_rules); each has a name, a
condition on the compute definition and an application that maps every partial sketch to one or
more sketches. A sketch records the names of the rules that made it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from tuner.ir.dag import ComputeDAG
from tuner.ir.layout import has_padding, local_padding_pays
from tuner.ir.machine import Machine

SPATIAL_LEVELS = 4   # S0 S1 S2 S3: parallel outer tiles, cache tiles, ..., the register tile
REDUCE_LEVELS = 2    # R0 R1: the reduction split once, so its inner part can be unrolled


@dataclass(frozen=True, slots=True)
class Sketch:
    rules: tuple[str, ...] = ()
    cache_write: str | None = None      # "S0" or "S1": accumulate below that tile level
    pad: str | None = None              # "inline", "root" or "local" for padded operands
    layout_rewrite: tuple[str, ...] = ()
    amx: bool = False                   # the register tile summed by AMX tiles

    @property
    def name(self) -> str:
        return "+".join(self.rules)

    def to_json(self) -> dict:
        return {"rules": list(self.rules), "cache_write": self.cache_write, "pad": self.pad,
                "layout_rewrite": list(self.layout_rewrite), "amx": self.amx}

    @staticmethod
    def from_json(data: dict) -> "Sketch":
        return Sketch(tuple(data["rules"]), data["cache_write"], data["pad"],
                      tuple(data["layout_rewrite"]), bool(data.get("amx", False)))


@dataclass(frozen=True, slots=True)
class SketchRule:
    name: str
    condition: Callable[[ComputeDAG], bool]
    apply: Callable[[ComputeDAG, Sketch], list[Sketch]]


def _named(sketch: Sketch, rule: str, **changes) -> Sketch:
    return replace(sketch, rules=sketch.rules + (rule,), **changes)


def _has_padding(dag: ComputeDAG) -> bool:
    return any(has_padding(op, dag.extents) for op in dag.inputs)


def _packable(dag: ComputeDAG) -> tuple[str, ...]:
    return tuple(op.name for op in (dag.lhs, dag.rhs) if op.constant)


RULES: tuple[SketchRule, ...] = (
    SketchRule("multi_level_tiling", lambda dag: True,
               lambda dag, s: [_named(s, "multi_level_tiling")]),
    # local accumulation of the output tile, at the cache level or the parallel level, or none
    # (an int8 kernel always sums in a local int32 tile)
    SketchRule("cache_write", lambda dag: True,
               lambda dag, s: [_named(s, "cache_write_S1", cache_write="S1"),
                               _named(s, "cache_write_S0", cache_write="S0")]
               + ([s] if dag.quant is None else [])),
    # bias, residual and ReLU are applied on write-back of the local tile instead of in
    # separate passes
    SketchRule("fuse_epilogue", lambda dag: bool(dag.addends or dag.activated),
               lambda dag, s: [_named(s, "fuse_epilogue") if s.cache_write else s]),
    SketchRule("pad", _has_padding,
               lambda dag, s: [_named(s, "inline_padding", pad="inline"),
                               _named(s, "pad_at_root", pad="root")]
               + ([_named(s, "pad_per_tile", pad="local")] if local_padding_pays(dag) else [])),
    SketchRule("layout_rewrite", lambda dag: bool(_packable(dag)),
               lambda dag, s: [_named(s, "layout_rewrite", layout_rewrite=_packable(dag)), s]),
)


def amx_applies(dag: ComputeDAG, machine: Machine) -> bool:
    """An int8 matmul of uint8 data and constant int8 weights on a CPU with AMX tiles, with
    more than one column and more than one dot group (a tile's columns are the vector loop,
    its groups the amx loop; tuner.ir.schedule.check_amx has the rest)."""
    return (machine.amx and dag.op == "matmul" and dag.quant is not None
            and not dag.quant.centered and dag.rhs.constant and dag.dot_axis is not None
            and dag.axis("j").extent > 1 and dag.axis("k").extent > 1)


def amx_sketch(dag: ComputeDAG) -> Sketch:
    """The AMX sketch: the tile accumulated at the cache level (S1), the weights packed in
    the groups of 4 rows a tile reads, A padded at the root where its last group overhangs
    K, and the epilogue on write-back."""
    sketch = _named(Sketch(), "multi_level_tiling")
    sketch = _named(sketch, "cache_write_S1", cache_write="S1")
    if dag.addends or dag.activated:
        sketch = _named(sketch, "fuse_epilogue")
    if _has_padding(dag):
        sketch = _named(sketch, "pad_at_root", pad="root")
    return _named(sketch, "amx_tiles", layout_rewrite=_packable(dag), amx=True)


def generate_sketches(dag: ComputeDAG, machine: Machine | None = None) -> list[Sketch]:
    """The sketches of `dag`; with `machine`, also those of its instructions (AMX tiles)."""
    sketches = [Sketch()]
    for rule in RULES:
        if rule.condition(dag):
            sketches = [new for s in sketches for new in rule.apply(dag, s)]
    if machine is not None and amx_applies(dag, machine):
        sketches.append(amx_sketch(dag))
    return sketches
