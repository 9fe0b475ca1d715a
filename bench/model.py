"""The model report: whole models tuned, packaged and run against onnxruntime, layer by layer.

For each model (bench/models.py's ResNet-50, MobileNetV2 and BERT-base encoder layer, or any
.onnx file with static shapes given by `--onnx`) and each thread count:

1. tune: `tune_model` (the task scheduler over the model's tasks, tuner/network/tuning.py) into
   `--out`/records.<model>.db until the model's tasks have a budget of records for this target
   together (`--trials` per model, or `--per-task` times its number of tasks, the issue's
   "60 trials x number of tasks"); a rerun with the same budget measures nothing more, a larger
   one continues;
2. package: `write_package`, as `tune build --model` does, into `--out`/<model>.threads<N>/;
3. time end to end, each in a fresh process (bench/model_timing.py): our package loaded with
   `tuner.load_package` (what an application runs: the tuned kernels and numpy for the other
   operators) and an onnxruntime session of the same file with I/O binding, `--rounds` times
   interleaved, the best of each kept;
4. time each task alone, in one process per library, `--rounds` times interleaved, the best
   kept: our kernel (replayed from the records, weights bound) and onnxruntime's single
   Conv / MatMul of the task's shape. Ours includes the
   fused bias, residual and ReLU, onnxruntime's single operator does not (its whole-model run
   fuses them its own way), so per layer ours does slightly more work. A layer's time is one
   call times its occurrences; what the package takes beyond the sum of its kernels is the
   numpy remainder (the operators numpy runs, the graph walk, and the cache misses a kernel
   timed alone in a loop does not see: bench/model_nodes.py measures those per node);
5. time each node the package still runs in numpy, inside the graph (model_timing's
   "numpy nodes"): the report names them, with their share of the package's latency.

Latency ratios are ours / onnxruntime: below 1 we are faster; a layer above 1 loses.
report.md and report.json go to `--out`, with the machine, the load average before and after
and the command that ran.

    python bench/model.py [--models resnet50 mobilenetv2 bert_layer] [--onnx FILE ...]
                          [--trials 400 | --per-task 60] [--threads 1 2] [--rounds 2]
                          [--out report-models]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.model_timing import measure_layers, measure_model, measure_numpy_nodes  # noqa: E402
from bench.models import MODELS, write_models  # noqa: E402
from bench.report import BUSY_LOAD, fmt, ratio  # noqa: E402
from records import RecordStore  # noqa: E402
from tuner.errors import TunerError  # noqa: E402
from tuner.measure.measurer import MeasureOptions, Measurer  # noqa: E402
from tuner.network.graph import load_model  # noqa: E402
from tuner.network.package import write_package  # noqa: E402
from tuner.replay.source import open_schedules  # noqa: E402
from tuner.ir.target import named_target  # noqa: E402
from tuner.network.runtime import check_supported  # noqa: E402
from tuner.network.tasks import Extraction, extract_tasks  # noqa: E402
from tuner.network.tuning import tune_model  # noqa: E402
from tuner.search.lowering import LoweringPool  # noqa: E402
from tuner.ir.target import Target, host_target  # noqa: E402
from tuner.cli import tuner_factory  # noqa: E402
from tuner.search.tune import TuneConfig  # noqa: E402

DEFAULT_TRIALS = 400  # per model and thread count: a warm-up batch for each of ~30 tasks, more


@dataclass
class Layer:
    """One task of a model at one thread count; times are of one call."""
    task: str
    occurrences: int
    share: float                  # of the model's task FLOPs
    trials: int                   # records of the task for this target, earlier runs included
    ours_s: float | None = None   # None: no tuned record, or the child failed
    onnxruntime_s: float | None = None

    @property
    def ours_total_s(self) -> float | None:
        return self.ours_s and self.ours_s * self.occurrences

    @property
    def onnxruntime_total_s(self) -> float | None:
        return self.onnxruntime_s and self.onnxruntime_s * self.occurrences

    @property
    def vs_onnxruntime(self) -> float | None:
        return ratio(self.ours_s, self.onnxruntime_s)


@dataclass
class ModelRun:
    """One model at one thread count."""
    model: str
    threads: int
    budget: int                   # records to tune up to
    trials_run: int               # in this run
    trials_total: int             # records of the model's tasks for this target
    tuning_s: float               # wall time of this run's tuning
    db: str                       # the records
    package: str                  # the package directory
    package_s: float | None = None       # end to end, one inference
    onnxruntime_s: float | None = None
    layers: list[Layer] = field(default_factory=list)
    numpy_nodes: list[dict] | None = None  # {"node", "op_type", "median_s"}, in graph order

    @property
    def vs_onnxruntime(self) -> float | None:
        return ratio(self.package_s, self.onnxruntime_s)

    @property
    def numpy_s(self) -> float | None:
        """The nodes the package runs in numpy, timed inside the graph, added up."""
        return None if self.numpy_nodes is None else sum(n["median_s"]
                                                         for n in self.numpy_nodes)

    @property
    def kernels_s(self) -> float | None:
        """Our kernels, each timed alone, times occurrences; None if one is missing."""
        times = [layer.ours_total_s for layer in self.layers]
        return sum(times) if all(times) else None

    @property
    def remainder_s(self) -> float | None:
        """What the package spends outside its kernels: the numpy-run operators and the rest."""
        return self.package_s - self.kernels_s if self.package_s and self.kernels_s else None


# ------------------------------------------------------------------------------ measuring
def model_tasks(path: Path) -> Extraction:
    graph = load_model(path)
    check_supported(graph)
    return extract_tasks(graph)


def stored_trials(store, extraction: Extraction, target: Target) -> list[int]:
    return [len(store.history(use.task, target)) for use in extraction.tasks]


def tune_and_package(name: str, path: Path, extraction: Extraction, threads: int, out: Path,
                     budget: int) -> ModelRun:
    """Tunes the model's tasks up to `budget` records in all for this target, then writes
    its package built from the best of them."""
    target = host_target(threads)
    db = out / f"records.{name}.db"
    with RecordStore(f"sqlite:///{db}") as store:
        before = sum(stored_trials(store, extraction, target))
        trials_run, tuning_s = 0, 0.0
        if budget > before:
            bar = tqdm(total=budget - before, desc=f"tuning {name} x{threads}", unit="trial",
                       file=sys.stderr, dynamic_ncols=True)
            with bar, Measurer(target, MeasureOptions(cold_weights=True)) as measurer, \
                    LoweringPool() as lowering:
                config = TuneConfig(trials=budget - before)
                result = tune_model(extraction.tasks, target, store, config,
                                    tuner_factory(target, store, measurer, config, lowering),
                                    lambda p: bar.update(p.trials_done - bar.n))
            trials_run, tuning_s = result.trials_run, result.elapsed_s
        stored = stored_trials(store, extraction, target)
    package = out / f"{name}.threads{threads}"
    write_package(path, package, open_schedules(str(db)), named_target(None, threads))
    layers = [Layer(use.task.key, use.occurrences, use.share, n)
              for use, n in zip(extraction.tasks, stored)]
    print(f"  {name} x{threads}: {trials_run} trials in {tuning_s:.0f} s "
          f"({sum(stored)} stored), package {package}", flush=True)
    return ModelRun(name, threads, budget, trials_run, sum(stored), tuning_s, str(db),
                    str(package), layers=layers)


def time_run(run: ModelRun, path: Path, extraction: Extraction, rounds: int) -> None:
    """End to end `rounds` times (package and onnxruntime interleaved, best kept), then each
    task alone, one process per library, `rounds` times interleaved too (a shared host's
    noise doubled a layer's time in one pass: 6.01 against 3.25 ms on Zen 3)."""
    for _ in range(rounds):
        run.package_s = best_of(run.package_s, measure_model("package", run.package,
                                                             run.threads))
        run.onnxruntime_s = best_of(run.onnxruntime_s, measure_model("onnxruntime", str(path),
                                                                     run.threads))
    tasks = [use.task for use in extraction.tasks]
    ours: list[float | None] = [None] * len(tasks)
    theirs: list[float | None] = [None] * len(tasks)
    for _ in range(rounds):
        ours = list(map(best_of, ours, measure_layers("tuned", tasks, run.threads, run.db)))
        theirs = list(map(best_of, theirs, measure_layers("onnxruntime", tasks, run.threads)))
    for layer, o, t in zip(run.layers, ours, theirs):
        layer.ours_s, layer.onnxruntime_s = o, t
    run.numpy_nodes = measure_numpy_nodes(run.package, run.threads)
    print(f"  {run.model} x{run.threads}: package {ms(run.package_s)} ms, onnxruntime "
          f"{ms(run.onnxruntime_s)} ms, kernels {ms(run.kernels_s)} ms", flush=True)


def best_of(a: float | None, b: float | None) -> float | None:
    return min((x for x in (a, b) if x), default=None)


# ------------------------------------------------------------------------------ writing
def ms(seconds: float | None) -> str:
    return fmt(seconds and seconds * 1e3, 3)


def header_lines(target: Target, load: tuple[float, float], budget: str, rounds: int,
                 command: str) -> list[str]:
    lines = [f"- CPU: **{target.cpu}** ({target.triple}, {target.machine.cores} usable cores)",
             f"- machine model: `{json.dumps(target.machine.to_json())}`",
             f"- load average (1 min): {load[0]:.2f} at the start, {load[1]:.2f} at the end",
             f"- command: `{command}`",
             f"- tuning: task scheduler, evolutionary search, {budget} per model and thread "
             f"count, candidates timed with their weights cold as `tune model` does (records "
             f"in `records.<model>.db`, resumed by a rerun)",
             f"- ours: the package `tune build --model` writes, run by `tuner.load_package`; "
             f"onnxruntime: a session of the same file, all graph optimisations, I/O binding; "
             f"each in its own process, best of {rounds} interleaved rounds",
             "- ratios are latency ours / onnxruntime: below 1 we are faster",
             f"- layers: one call of each task alone (ours with bias, residual and ReLU fused, "
             f"onnxruntime's single Conv/MatMul without) x occurrences, best of {rounds} "
             f"interleaved rounds; numpy rest = package minus the sum of our kernels"]
    if load[0] > BUSY_LOAD:
        lines.append(f"- **warning**: load average {load[0]:.2f} before this run started: "
                     f"other processes shared the cores, every figure is low and noisy")
    return lines


def summary_lines(runs: list[ModelRun]) -> list[str]:
    lines = ["| model | threads | tasks | trials this run | stored / budget | tuning s | "
             "ours ms | onnxruntime ms | ours / onnxruntime | our kernels ms | numpy rest ms | "
             "numpy nodes ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.model} | {r.threads} | {len(r.layers)} | {r.trials_run} | "
                     f"{r.trials_total} / {r.budget} | {r.tuning_s:.0f} | {ms(r.package_s)} | "
                     f"{ms(r.onnxruntime_s)} | {fmt(r.vs_onnxruntime, 2)} | "
                     f"{ms(r.kernels_s)} | {ms(r.remainder_s)} | {ms(r.numpy_s)} |")
    return lines


def layer_lines(run: ModelRun) -> list[str]:
    """The layers by our time, largest first (where the time goes); a losing ratio in bold."""
    lines = [f"## {run.model}, {run.threads} thread(s)", "",
             "| task | occurrences | FLOPs share | trials | ours ms (all) | "
             "onnxruntime ms (all) | ours / onnxruntime |", "|---|---|---|---|---|---|---|"]
    for layer in sorted(run.layers, key=lambda x: -(x.ours_total_s or 0)):
        vs = fmt(layer.vs_onnxruntime, 2)
        lines.append(f"| `{layer.task}` | {layer.occurrences} | {layer.share:.1%} | "
                     f"{layer.trials} | {ms(layer.ours_total_s)} | "
                     f"{ms(layer.onnxruntime_total_s)} | "
                     f"{f'**{vs}**' if (layer.vs_onnxruntime or 0) > 1 else vs} |")
    lines += ["", f"- our kernels {ms(run.kernels_s)} ms + numpy rest "
                  f"{ms(run.remainder_s)} ms = package {ms(run.package_s)} ms"]
    if run.numpy_nodes is None:
        return lines + ["- the nodes left to numpy could not be timed"]
    share = fmt(run.numpy_s / run.package_s, 3) if run.package_s else "–"
    lines += [f"- nodes the package runs in numpy: {len(run.numpy_nodes)}, "
              f"{ms(run.numpy_s)} ms inside the graph ({share} of the package)"]
    if run.numpy_nodes:
        lines += ["", "| numpy node | op | ms |", "|---|---|---|"]
        lines += [f"| `{n['node']}` | {n['op_type']} | {ms(n['median_s'])} |"
                  for n in sorted(run.numpy_nodes, key=lambda n: -n["median_s"])]
    return lines


def write_report(out: Path, header: list[str], runs: list[ModelRun]) -> str:
    lines = ["# Model report", ""] + header + ["", "## Summary", ""] + summary_lines(runs)
    for run in runs:
        lines += [""] + layer_lines(run)
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)

    def run_json(r: ModelRun) -> dict:
        return asdict(r) | {"vs_onnxruntime": r.vs_onnxruntime, "kernels_s": r.kernels_s,
                            "remainder_s": r.remainder_s, "numpy_s": r.numpy_s,
                            "layers": [asdict(x) | {"vs_onnxruntime": x.vs_onnxruntime}
                                       for x in r.layers]}

    target = host_target(1)
    data = {"cpu": target.cpu, "triple": target.triple, "machine": target.machine.to_json(),
            "header": header, "runs": [run_json(r) for r in runs]}
    (out / "report.json").write_text(json.dumps(data, indent=1) + "\n")
    return text


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS),
                        help="built-in models (bench/models.py); none with --models alone")
    parser.add_argument("--onnx", nargs="*", type=Path, default=[],
                        help="other .onnx files (static shapes) to report on")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--trials", type=int, default=DEFAULT_TRIALS,
                        help="records per model and thread count to tune up to (a warm-up "
                        "batch needs at least one per task)")
    budget.add_argument("--per-task", type=int, help="budget per model: this many trials "
                        "times its number of tasks, instead of --trials")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2,
                        help="end-to-end timings per side, interleaved, best kept")
    parser.add_argument("--out", type=Path, default=Path("report-models"),
                        help="folder for the models, records, packages, report.md/json")
    args = parser.parse_args(argv)
    counts = [args.trials, args.rounds, *args.threads]
    if min(counts + ([] if args.per_task is None else [args.per_task])) < 1:
        parser.error("--trials, --per-task, --threads and --rounds take positive integers")
    command = shlex.join(["python", "bench/model.py"] + (sys.argv[1:] if argv is None
                                                         else list(argv)))
    args.out.mkdir(parents=True, exist_ok=True)
    paths = write_models(args.out, args.models) | {p.stem: p for p in args.onnx}
    if not paths:
        parser.error("no model: name --models or give --onnx files")
    try:
        extractions = {name: model_tasks(path) for name, path in paths.items()}
    except TunerError as err:
        parser.error(str(err))
    budgets = {}
    for name, extraction in extractions.items():
        if not extraction.tasks:
            parser.error(f"{name} has no conv/matmul layer to tune")
        budgets[name] = (args.per_task * len(extraction.tasks) if args.per_task
                         else args.trials)
        if budgets[name] < len(extraction.tasks):
            parser.error(f"a budget of {budgets[name]} trials is less than {name}'s "
                         f"{len(extraction.tasks)} tasks; each needs at least one trial")

    start_load = os.getloadavg()[0]
    runs = []
    try:
        for threads in args.threads:
            for name, path in paths.items():
                run = tune_and_package(name, path, extractions[name], threads, args.out,
                                       budgets[name])
                time_run(run, path, extractions[name], args.rounds)
                runs.append(run)
    except TunerError as err:
        print(f"model report: error: {err}", file=sys.stderr)
        return 2
    budget_text = (f"{args.per_task} trials per task" if args.per_task
                   else f"up to {args.trials} trials")
    header = header_lines(host_target(1), (start_load, os.getloadavg()[0]), budget_text,
                          args.rounds, command)
    print(write_report(args.out, header, runs))
    print(f"wrote {args.out / 'report.md'} and {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
