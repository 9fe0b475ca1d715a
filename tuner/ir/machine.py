"""The machine model: every hardware fact that schedules, the search and the cost model use.

A kernel's speed on a CPU depends on a handful of facts, and the machines this tuner runs on
differ in every one of them (2 cores each, but AMD Zen 3 with AVX2 and 16 ymm registers, Zen 4
with double-pumped AVX-512, Zen 5 and Intel parts with two 512-bit FMA pipes and 32 zmm
registers have all been seen). They live here and nowhere else, and are passed down:

- **vector width and register count** follow from the ISA LLVM generates for: AVX-512 gives
  16 float lanes and 32 registers, AVX/AVX2 8 lanes and 16 registers, SSE 4 lanes and 16. A
  register tile sized for one ISA spills on the other (24 zmm accumulators become 48 ymm).
- **FMA issue rate and latency** decide how many independent accumulators a register tile
  needs to keep the FMA pipes busy (rate x latency) and the peak per cycle. They are
  micro-architecture facts LLVM does not expose, so they come from the table below by CPU
  name; an unknown name gets the common case, two pipes of latency 4.
- **the integer dot product** for int8 kernels: `vpdpbusd` where the CPU has AVX512-VNNI or
  AVX-VNNI (4 uint8 x int8 products summed into each int32 lane), else `vpmaddwd` (2 int16
  products per int32 lane, the bytes widened first), or for weights of reduced range
  `vpmaddubsw` (`Machine.int8_instruction`); tuner/codegen/quantized.py.
- **AMX tiles** (Intel Sapphire Rapids and later: `amx-tile` + `amx-int8`): 8 tile registers
  of at most 16 rows x 64 bytes, and `tdpbusd`, which adds to a 16 x 16 int32 tile the
  products of a 16-row tile of uint8 (64 bytes, 16 groups of 4 per row) and a tile of int8 in
  groups of 4 (16 group rows x 16 columns x 4 bytes): 16384 multiply-accumulates per
  instruction, where one 512-bit vpdpbusd does 64. Measured on an Emerald Rapids Xeon (one
  thread), onnxruntime's AMX QGEMM ran a 1024^3 product at 1306-1497 GOPS against 687-760 for
  our vpdpbusd kernel at its peak. `Machine.amx` says whether the CPU has it; the tile facts
  are the constants below, the code tuner/codegen/amx.py.
- **cache sizes** are read from sysfs (the host's: code tuned for another CPU is still
  measured here), with typical sizes when sysfs is missing.

`Target` (tuner/ir/target.py) carries the CPU name and LLVM features; `Target.machine` derives
this model from them, so the target key (and every stored record) stays as it was.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

# Vector FMA instructions of the full vector width issued per cycle, by LLVM CPU name.
# Zen 1 splits 256-bit ops in two; Zen 4 runs 512-bit ops on its two 256-bit pipes (one zmm
# FMA per cycle); Zen 5 server parts and Intel server/Rocket Lake parts have two 512-bit pipes.
FMA_PER_CYCLE = {
    "znver1": 1, "znver2": 2, "znver3": 2, "znver4": 1, "znver5": 2,
    "icelake-client": 1, "tigerlake": 1, "cannonlake": 1,
}
DEFAULT_FMA_PER_CYCLE = 2
FMA_LATENCY_CYCLES = 4      # FP32 FMA latency on every x86 core above (Zen 1-5, Skylake on)
LOADS_PER_CYCLE = 2         # vector loads per cycle (Zen 3-5 and Intel since Haswell: 2-3)
CACHE_LINE_BYTES = 64
# AMX (Intel Advanced Matrix Extensions): tile registers and the shape of one tile, the same on
# every CPU that has them (palette 1), and the bytes of one dot group (4 uint8 x int8).
AMX_TILES = 8
AMX_TILE_ROWS = 16
AMX_TILE_COLUMNS = 16   # int32 sums in a 64-byte row of an accumulator tile
AMX_TILE_BYTES = 64
AMX_GROUP_BYTES = 4
# When sysfs does not say (some containers): sizes common to the CPUs above, per core.
TYPICAL_CACHES = {1: 32 << 10, 2: 1 << 20, 3: 16 << 20}


@dataclass(frozen=True, slots=True)
class Machine:
    cpu: str                  # LLVM's CPU name code is generated for
    vector_bits: int          # 512 (AVX-512), 256 (AVX, AVX2) or 128 (SSE)
    vector_registers: int     # architectural vector registers: 32 zmm, or 16 ymm / xmm
    has_fma: bool             # fused multiply-add instructions (else mul + add)
    fma_per_cycle: int        # full-width vector FMAs issued per cycle per core
    fma_latency: int          # cycles from an FMA to the next one on its result
    loads_per_cycle: int      # vector loads per cycle per core
    l1d_bytes: int            # per core
    l2_bytes: int             # per core
    l3_bytes: int             # shared
    cores: int                # cores this process may use
    cache_line_bytes: int = CACHE_LINE_BYTES
    dot_instruction: str = "pmaddwd"  # "vpdpbusd" (VNNI) or "pmaddwd": int8 dot products
    amx: bool = False         # AMX tiles with int8 dot products (amx-tile + amx-int8)

    @property
    def lanes(self) -> int:
        """float32 lanes of one vector register."""
        return self.vector_bits // 32

    @property
    def min_accumulators(self) -> int:
        """Independent accumulator vectors that hide the FMA latency at full issue rate."""
        return self.fma_per_cycle * self.fma_latency

    @property
    def flops_per_cycle(self) -> int:
        """FP32 peak per core per cycle: two flops per lane per FMA."""
        return 2 * self.lanes * (self.fma_per_cycle if self.has_fma else 1)

    @property
    def int8_macs_per_cycle(self) -> int:
        """int8 multiply-accumulates per core per cycle at the dot instruction's issue rate,
        taken as the FMA's: vpdpbusd sums 4 products per int32 lane, vpmaddwd 2 (and needs an
        add beside it)."""
        per_lane = 4 if self.dot_instruction == "vpdpbusd" else 2
        return per_lane * self.lanes * self.fma_per_cycle

    def int8_instruction(self, reduced_range: bool, centered: bool = False) -> str:
        """The instruction an int8 dot group is summed by: vpdpbusd where the CPU has VNNI;
        else vpmaddubsw (pairs of uint8 x int8 products summed to int16, then pairs of those
        by vpmaddwd with ones) when the weights are of reduced range, so that no pair
        saturates; else vpmaddwd on operands widened to int16. Operands whose zero points
        the kernel subtracts (`centered`, tuner.ir.dag.Quantization) are int16 by then, which
        vpmaddwd multiplies, and VNNI's vpdpwssd, which adds its pair sums to the
        accumulator too."""
        if centered:
            return "vpdpwssd" if self.dot_instruction == "vpdpbusd" else "pmaddwd"
        if self.dot_instruction == "vpdpbusd":
            return "vpdpbusd"
        return "pmaddubsw" if reduced_range else "pmaddwd"

    def accumulator_budget(self, operand_vectors: int) -> int:
        """Accumulator vectors a register tile may hold next to `operand_vectors` live
        operands (the loaded vectors of one reduction step and a broadcast)."""
        return max(1, self.vector_registers - operand_vectors)

    def to_json(self) -> dict:
        return {f: getattr(self, f) for f in self.__slots__}


def dot_instruction_of(features: str) -> str:
    """The int8 dot-product instruction code for `features` can use."""
    enabled = {f[1:] for f in features.split(",") if f.startswith("+")}
    return "vpdpbusd" if enabled & {"avx512vnni", "avxvnni"} else "pmaddwd"


def has_amx(features: str) -> bool:
    """Whether code for `features` may use AMX int8 tiles."""
    enabled = {f[1:] for f in features.split(",") if f.startswith("+")}
    return {"amx-tile", "amx-int8"} <= enabled


def amx_tile_counts(rows: int, columns: int) -> tuple[int, int] | None:
    """(row tiles, column tiles) of an AMX register tile of `rows` x `columns` int32 sums,
    or None where its accumulator tiles, one A tile per row tile and one B tile per column
    tile do not fit the tile registers together."""
    rt = -(-rows // AMX_TILE_ROWS)
    ct = -(-columns // AMX_TILE_COLUMNS)
    return (rt, ct) if rt * ct + rt + ct <= AMX_TILES else None


def isa_of(features: str) -> tuple[int, int, bool]:
    """(vector bits, vector registers, FMA) from an LLVM feature string ('+avx2,-avx512f')."""
    enabled = {f[1:] for f in features.split(",") if f.startswith("+")}
    if "avx512f" in enabled:
        return 512, 32, True
    if "avx" in enabled:
        return 256, 16, "fma" in enabled
    return 128, 16, "fma" in enabled


@cache
def host_caches() -> tuple[int, int, int]:
    """(L1d, L2, L3) bytes of cpu0, from sysfs."""
    sizes = dict(TYPICAL_CACHES)
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return sizes[1], sizes[2], sizes[3]
    for entry in entries:
        if not entry.startswith("index"):
            continue
        try:
            with open(f"{base}/{entry}/level") as f:
                level = int(f.read())
            with open(f"{base}/{entry}/type") as f:
                kind = f.read().strip()
            with open(f"{base}/{entry}/size") as f:
                size = _parse_size(f.read().strip())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and level in sizes:
            sizes[level] = size
    return sizes[1], sizes[2], sizes[3]


def _parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


@cache
def describe(cpu: str, features: str) -> Machine:
    """The machine model of code generated for `cpu` with `features`, measured on this host."""
    bits, registers, fma = isa_of(features)
    l1, l2, l3 = host_caches()
    return Machine(cpu=cpu, vector_bits=bits, vector_registers=registers, has_fma=fma,
                   fma_per_cycle=FMA_PER_CYCLE.get(cpu, DEFAULT_FMA_PER_CYCLE),
                   fma_latency=FMA_LATENCY_CYCLES, loads_per_cycle=LOADS_PER_CYCLE,
                   l1d_bytes=l1, l2_bytes=l2, l3_bytes=l3,
                   cores=usable_cores(), dot_instruction=dot_instruction_of(features),
                   amx=has_amx(features))

