"""The benchmark report: tuned kernels against numpy, onnxruntime and the machine's peak.

For every shape of shared/bench/shapes.json (or `--shapes`: bench/odd_shapes.json has one
shape per kind of layer the libraries serve worst) and every thread count: tune with the
evolutionary search (`--trials` new trials per shape, the default schedule included, as a user's
run would),
then time numpy / onnxruntime on the same shape, and put both next to the FP32 FMA peak of the
same target at the same threads (bench/peak.py), all measured in this run on this machine.

What makes the figures honest:
- each comparator, and the peak, runs in a process of its own (bench/comparators.py), never in
  the one that tuned our kernels: a thread pool still spinning in one library steals a core
  from the next at two threads;
- our side of each ratio is the best record of the search rebuilt the way a user gets it
  (`tuner.build`, weights bound once) and timed like the peers, in a process of its own; each
  is timed `--rounds` times, interleaved, and its best kept, so a neighbour that takes a
  core for a while does not decide a ratio (the search's own figure is shown beside it);
- the ratio that sums a shape up is against its *best* peer (the faster of numpy and
  onnxruntime that implement it), and the summary reports the geomean over the conv2d and
  matmul shapes together with the worst shape, not only the best. batch_matmul keeps its row
  but stays out of the geomean: its only peer is numpy looping over BLAS calls;
- numpy runs OpenBLAS's kernels for the target's vector ISA (OPENBLAS_CORETYPE: its
  CPUID detection lags new CPUs); code generated for a narrower ISA than the host's (`--cpu
  x86-64-v3` on an AVX-512 host) is compared only with peers restricted to that ISA, and a
  peer that cannot be (onnxruntime) is timed and shown, marked, but not compared against;
- the header says what the machine is (the machine model the kernels were sized for, its
  measured peak) and how busy it was (load average): a shared two-core machine is;
- what a trial costs is reported too: the tuning wall time, and the compile time per
  candidate from the records this run measured.

Records go to one SQLite database per (CPU, threads, expert seed on / off) in `--out`, so a
rerun continues that configuration's search (`--trials` more) instead of starting over, and
runs with and without the seed never mix. report.md, report.json and report.png are written
there too.

    python bench/report.py [--trials 64] [--threads 1 2] [--cpu NAME] [--no-seed]
                           [--only resnet50.res2.3x3 ...] [--shapes bench/odd_shapes.json]
                           [--out report]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.comparators import isa_limits, measure_in_subprocess, measure_peers  # noqa: E402
from bench.kernels import SHAPES, load_tasks  # noqa: E402
from bench.peak import measure_peak_in_subprocess  # noqa: E402
from costmodel.features import extract_features  # noqa: E402
from costmodel.xgb import XGBCostModel  # noqa: E402
from records import RecordStore  # noqa: E402
from tuner.errors import TunerError  # noqa: E402
from tuner.measure.measurer import Measurer  # noqa: E402
from tuner.ir.lowered import schedule_applies  # noqa: E402
from tuner.plot import Figure, to_png  # noqa: E402
from tuner.search.strategies import SearchConfig  # noqa: E402
from tuner.ir.target import Target, host_target, named_target  # noqa: E402
from tuner.ir.task import Task  # noqa: E402
from tuner.search.tune import TuneConfig, tune  # noqa: E402

GEOMEAN_OPS = ("conv2d", "matmul")
BUSY_LOAD = 0.5  # 1-minute load average before the run above which the figures are suspect


@dataclass
class Row:
    """One shape at one thread count."""
    shape: str
    op: str
    threads: int
    tuned: float                  # GFLOPS of the best record (this run's or an earlier one)
    default: float | None         # GFLOPS of the default schedule
    replayed: float | None = None  # the best record rebuilt by tuner.build, timed like the peers
    numpy: float | None = None
    onnxruntime: float | None = None
    tuning_s: float = 0.0         # wall time of this run's tuning of the shape
    trials: int = 0               # measured in this run
    records: int = 0              # in the database, earlier runs included
    compile_s: list[float] = field(default_factory=list)  # this run's, per candidate
    # comparators that used a wider vector ISA than the target's (comparators.isa_limits):
    # timed and shown, not compared against
    wider_isa: list[str] = field(default_factory=list)

    @property
    def best_peer(self) -> float | None:
        peers = [g for kind, g in (("numpy", self.numpy), ("onnxruntime", self.onnxruntime))
                 if g and kind not in self.wider_isa]
        return max(peers) if peers else None

    @property
    def ours(self) -> float:
        """What the ratios use: the replayed kernel, timed with the peers' protocol."""
        return self.replayed or self.tuned

    @property
    def vs_peer(self) -> float | None:
        return ratio(self.ours, self.best_peer)

    @property
    def compile_median_s(self) -> float | None:
        return statistics.median(self.compile_s) if self.compile_s else None

    @property
    def compile_max_s(self) -> float | None:
        return max(self.compile_s) if self.compile_s else None


@dataclass
class Section:
    """Every shape at one thread count, with the peak of the same target at that count."""
    threads: int
    peak: float | None
    db: str
    rows: list[Row] = field(default_factory=list)


@dataclass(frozen=True)
class Summary:
    geomean_vs_peer: float | None  # over the conv2d and matmul shapes that have a peer
    geomean_rows: int
    min_vs_peer: float | None      # the worst of those shapes, and which
    min_shape: str | None
    compile_median_s: float | None
    compile_max_s: float | None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def summarize(rows: list[Row]) -> Summary:
    """The summary of `rows`; rows of several thread counts are named "shape xN"."""
    several = len({r.threads for r in rows}) > 1
    ratios = {f"{r.shape} x{r.threads}" if several else r.shape: r.vs_peer
              for r in rows if r.op in GEOMEAN_OPS and r.vs_peer}
    geomean = math.exp(statistics.fmean(math.log(v) for v in ratios.values())) \
        if ratios else None
    worst = min(ratios, key=ratios.get) if ratios else None
    compile_s = [c for r in rows for c in r.compile_s]
    return Summary(geomean, len(ratios), ratios.get(worst), worst,
                   statistics.median(compile_s) if compile_s else None,
                   max(compile_s) if compile_s else None)


# ------------------------------------------------------------------------------ measuring
def db_path(out: Path, target: Target, threads: int, seed: bool) -> Path:
    """One database per configuration, so reruns resume it and configurations never mix."""
    return out / f"records.{target.cpu}.threads{threads}.{'seed' if seed else 'noseed'}.db"


def stored_shape(name: str, task: Task, target: Target, store) -> Row:
    """A shape as the store holds it, without tuning (`--retime`): the best record, the
    default schedule's, and the compile times of every record."""
    history = store.history(task, target)
    ok = [r for r in history if r.result.ok and schedule_applies(r)]
    if not ok:
        raise TunerError(f"{name}: no measured record of {task.key} on {target.key} to retime")
    default = [r.gflops for r in ok if r.strategy == "default"]
    return Row(name, task.op, target.threads, max(r.gflops for r in ok),
               max(default) if default else None, records=len(history),
               compile_s=[r.result.compile_s for r in history if r.result.compile_s > 0])


def tune_shape(name: str, task: Task, target: Target, store, measurer, config: TuneConfig) -> Row:
    """Tunes one shape (continuing what the store holds) and reads this run's records back."""
    if config.trials == 0:
        return stored_shape(name, task, target, store)
    first_trial = store.next_trial(task, target)
    result = tune(task, target, store, measurer, config, XGBCostModel(), extract_features)
    history = store.history(task, target)
    # only this run's candidates; 0 s means it never reached the compiler (invalid schedule)
    compile_s = [r.result.compile_s for r in history
                 if r.trial >= first_trial and r.result.compile_s > 0]
    return Row(name, task.op, target.threads, result.best_gflops, result.default_gflops,
               tuning_s=result.elapsed_s, trials=result.trials_run, records=len(history),
               compile_s=compile_s)


def run_section(tasks, target: Target, threads: int, peak: float | None, out: Path,
                trials: int, seed: bool, cpu: str | None = None, rounds: int = 2) -> Section:
    """Tunes every shape at `threads`; then, once the tuner's worker processes are gone,
    times the best kernel of each (replayed from the records) and its comparators, one
    process each, `rounds` times over all the shapes, and keeps each one's best: a neighbour
    that takes a core for a while slows one round of one of them, not the ratio."""
    target = target.with_threads(threads)
    db = db_path(out, target, threads, seed)
    section = Section(threads, peak, str(db))
    config = TuneConfig(trials=trials, search=SearchConfig(use_seed=seed))
    with RecordStore(f"sqlite:///{db}") as store, Measurer(target) as measurer:
        for name, task in tasks:
            row = tune_shape(name, task, target, store, measurer, config)
            section.rows.append(row)
            print(f"  {name} x{threads}: tuned {row.tuned:.1f} GFLOPS in "
                  f"{row.tuning_s:.0f} s", flush=True)
    limits = isa_limits(target, host_target(1))
    for _ in range(rounds):
        for (name, task), row in zip(tasks, section.rows):
            replayed = measure_in_subprocess("tuned", task, threads, db=str(db), cpu=cpu)
            peers = measure_peers(task, threads, limits)
            row.replayed = best_of(row.replayed, replayed)
            row.numpy = best_of(row.numpy, peers.get("numpy"))
            row.onnxruntime = best_of(row.onnxruntime, peers.get("onnxruntime"))
            row.wider_isa = sorted(set(row.wider_isa) | {kind for kind in peers
                                                        if limits.get(kind) is None})
            print(f"  {name} x{threads}: replayed {fmt(replayed)}, numpy "
                  f"{fmt(peers.get('numpy'))}, onnxruntime {fmt(peers.get('onnxruntime'))} "
                  f"GFLOPS", flush=True)
    return section


def best_of(a: float | None, b: float | None) -> float | None:
    return max((x for x in (a, b) if x), default=None)


# ------------------------------------------------------------------------------ writing
def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def header_lines(target: Target, peaks: dict[int, float | None],
                 load: tuple[float, float | None], trials: int, seed: bool) -> list[str]:
    host = host_target(1)
    peak_text = ", ".join(f"{n} thread(s) {fmt(g)} GFLOPS" for n, g in peaks.items())
    notes = []
    limits = isa_limits(target, host)
    if target.cpu != host.cpu:
        wider = [kind for kind, env in limits.items() if env is None]
        notes.append(f"- the tuned kernels use only {target.cpu}'s ISA"
                     + (f"; {' and '.join(wider)} cannot be restricted to it and use(s) this "
                        f"host's wider vectors: marked *, shown but not compared against"
                        if wider else ""))
    matched = [f"{kind} with {', '.join(f'{k}={v}' for k, v in env.items())}"
               for kind, env in limits.items() if env]
    if matched:
        notes.append(f"- comparators run with {target.cpu}'s vector ISA: {'; '.join(matched)}")
    if load[0] > BUSY_LOAD:
        notes.append(f"- **warning**: load average {load[0]:.2f} before this run started: "
                     f"other processes shared the cores, every figure is low and noisy")
    return [f"- CPU: code generated for **{target.cpu}**, measured on this host "
            f"({host.cpu}, {target.triple}, {target.machine.cores} usable cores)",
            f"- machine model: `{json.dumps(target.machine.to_json())}`",
            f"- FP32 FMA peak of this target, measured in this run (bench/peak.py): {peak_text}",
            f"- load average (1 min): {load[0]:.2f} at the start"
            + (f", {load[1]:.2f} at the end" if load[1] is not None else ""),
            f"- search: evolutionary, {trials} new trials per shape, default schedule included, "
            f"expert seed {'on' if seed else 'off'}"] + notes


def table_lines(section: Section) -> list[str]:
    lines = [f"## {section.threads} thread(s), peak {fmt(section.peak)} GFLOPS", "",
             "| shape | tuned (search) | replayed | default | numpy | onnxruntime | "
             "ours / best peer | ours / peak | tuning s | trials | compile s median | "
             "compile s max |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in section.rows:
        earlier = r.records - r.trials
        trials = f"{r.trials} (+{earlier} earlier)" if earlier else str(r.trials)
        mark = {kind: "*" if kind in r.wider_isa else "" for kind in ("numpy", "onnxruntime")}
        lines.append(f"| {r.shape} | {r.tuned:.1f} | {fmt(r.replayed)} | {fmt(r.default)} | "
                     f"{fmt(r.numpy)}{mark['numpy']} | "
                     f"{fmt(r.onnxruntime)}{mark['onnxruntime']} | {fmt(r.vs_peer, 2)} | "
                     f"{fmt(ratio(r.ours, section.peak), 2)} | {r.tuning_s:.0f} | {trials} | "
                     f"{fmt(r.compile_median_s, 3)} | {fmt(r.compile_max_s, 3)} |")
    return lines + [""] + summary_lines(summarize(section.rows), f"{section.threads} thread(s)")


def summary_lines(s: Summary, label: str) -> list[str]:
    return [f"- {label}: geomean ours / best peer over {s.geomean_rows} conv2d and matmul "
            f"rows: **{fmt(s.geomean_vs_peer, 2)}** (batch_matmul excluded)",
            f"- {label}: lowest ours / best peer: {fmt(s.min_vs_peer, 2)} ({s.min_shape or '-'})",
            f"- {label}: compile time per candidate: median {fmt(s.compile_median_s, 3)} s, "
            f"max {fmt(s.compile_max_s, 3)} s"]


def write_markdown(path: Path, header: list[str], sections: list[Section]) -> str:
    lines = ["# Benchmark report", ""] + header + [""]
    for section in sections:
        lines += table_lines(section) + [""]
    if len(sections) > 1:
        lines += ["## Overall", ""] + summary_lines(
            summarize([r for s in sections for r in s.rows]), "all thread counts") + [""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


def write_json(path: Path, target: Target, load: tuple[float, float], trials: int, seed: bool,
               sections: list[Section]) -> None:
    def row_json(r: Row, peak: float | None) -> dict:
        return asdict(r) | {"ours": r.ours, "best_peer": r.best_peer, "vs_peer": r.vs_peer,
                            "vs_peak": ratio(r.ours, peak),
                            "compile_median_s": r.compile_median_s,
                            "compile_max_s": r.compile_max_s}

    data = {"cpu": target.cpu, "host_cpu": host_target(1).cpu, "triple": target.triple,
            "features": target.features, "machine": target.machine.to_json(),
            "load_average": {"start": load[0], "end": load[1]}, "trials": trials,
            "seed": seed, "geomean_ops": list(GEOMEAN_OPS),
            "sections": [{"threads": s.threads, "peak_gflops": s.peak, "db": s.db,
                          "rows": [row_json(r, s.peak) for r in s.rows],
                          "summary": asdict(summarize(s.rows))} for s in sections],
            "summary": asdict(summarize([r for s in sections for r in s.rows]))}
    path.write_text(json.dumps(data, indent=1) + "\n")


def write_chart(path: Path, target: Target, sections: list[Section], trials: int) -> None:
    fig = Figure(figsize=(max(8, 1.1 * max(len(s.rows) for s in sections)),
                          4.5 * len(sections)))
    axes = fig.subplots(len(sections), 1, squeeze=False)[:, 0]
    width = 0.27
    for ax, section in zip(axes, sections):
        rows = section.rows
        x = range(len(rows))
        for k, (label, attr) in enumerate((("tuned", "ours"), ("numpy", "numpy"),
                                           ("onnxruntime", "onnxruntime"))):
            ax.bar([i + (k - 1) * width for i in x], [getattr(r, attr) or 0 for r in rows],
                   width, label=label)
        if section.peak:
            ax.axhline(section.peak, color="black", linestyle="--", linewidth=1,
                       label=f"FP32 peak {section.peak:.0f}")
        ax.set_xticks(list(x), [r.shape for r in rows], rotation=30, ha="right", fontsize=8)
        top = max([section.peak or 0] + [g or 0 for r in rows
                                         for g in (r.ours, r.numpy, r.onnxruntime)])
        ax.set_ylim(0, 1.25 * top)  # room for the legend above the bars
        ax.set_ylabel("GFLOPS")
        ax.set_title(f"{target.cpu}, {section.threads} thread(s), {trials} trials per shape")
        ax.legend(fontsize=8, loc="upper left", ncols=4)
    fig.tight_layout()
    path.write_bytes(to_png(fig))


# ------------------------------------------------------------------------------ main
def selected_tasks(only: list[str] | None, shapes: Path = SHAPES) -> list[tuple[str, Task]]:
    tasks = load_tasks(shapes)
    unknown = set(only or ()) - {name for name, _ in tasks}
    if unknown:
        raise TunerError(f"unknown shape(s) {', '.join(sorted(unknown))}; shapes.json has "
                         f"{', '.join(name for name, _ in tasks)}")
    return [(name, task) for name, task in tasks if not only or name in only]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64, help="new trials per shape (0: no "
                        "tuning, time again what the databases in --out hold)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpu", help="LLVM CPU name to generate code for (default: this one)")
    parser.add_argument("--no-seed", dest="seed", action="store_false",
                        help="search without the expert register tile in its population")
    parser.add_argument("--only", nargs="*", help="shape names to run")
    parser.add_argument("--rounds", type=int, default=2, help="times each kernel and "
                        "comparator is timed after tuning (each in a fresh process; best kept)")
    parser.add_argument("--shapes", type=Path, default=SHAPES,
                        help="shapes file (default: the public shapes, shared/bench/shapes.json;"
                        " bench/odd_shapes.json has the odd ones)")
    parser.add_argument("--out", default="report", help="folder for report.md, report.json, "
                        "report.png and the records databases")
    args = parser.parse_args(argv)
    try:
        target = named_target(args.cpu, 1)
        tasks = selected_tasks(args.only, args.shapes)
    except TunerError as err:
        parser.error(str(err))
    except (OSError, ValueError, KeyError, TypeError) as err:
        parser.error(f"cannot read shapes from {args.shapes}: {err!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    start_load = os.getloadavg()[0]
    # each in its own process, before tuning starts, at the thread counts of the tables
    peaks = {n: measure_peak_in_subprocess(args.cpu, n) for n in args.threads}
    print("\n".join(header_lines(target, peaks, (start_load, None), args.trials, args.seed)),
          flush=True)
    try:
        sections = [run_section(tasks, target, n, peaks[n], out, args.trials, args.seed,
                                args.cpu, args.rounds) for n in args.threads]
    except TunerError as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 2
    load = (start_load, os.getloadavg()[0])

    header = header_lines(target, peaks, load, args.trials, args.seed)
    print(write_markdown(out / "report.md", header, sections))
    write_json(out / "report.json", target, load, args.trials, args.seed, sections)
    write_chart(out / "report.png", target, sections, args.trials)
    print(f"wrote {out / 'report.md'}, {out / 'report.json'} and {out / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
