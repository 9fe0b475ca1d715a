"""The `tune` command: the only place that wires records/, costmodel/ and tuner/ together.

    tune conv2d --shape N,C,H,W,K,R,S [--stride S] [--pad P] [--dilation D] [--groups G]
    tune matmul --shape M,N,K            tune batch_matmul --shape B,M,N,K
        [--bias] [--relu | --relu6] [--residual] [--trials N] [--db URL] [--threads T] [--seed S]
        [--dtype int8 [--out-type int32|uint8|float32] [--reduce-range]]
        [--strategy evolutionary|optuna|random] [--batch-size B] [--json]
        [--cpu NAME] [--no-seed]
        [--cluster tls://HOST:8786 --tls-ca-file CA --tls-cert CERT --tls-key KEY | local:N]
    tune show     what the database holds: tasks, targets, records, best GFLOPS
    tune best     the best schedule of every task, as readable pseudo-code (or --json)
    tune export   the best schedule per (task, target) to a JSON file
    tune import   merge such a file into the database
    tune build    the best schedules as an object file, a shared library and a C header
                  (--model PATH.onnx: a whole model as a package tuner.load_package runs)
    tune plot     search curves as a PNG: of a task, a panel per task when the database holds
                  several, or (--model PATH.onnx) a model's estimated latency
                  (tuner/network/plot.py)
    tune model PATH.onnx [--list] [--input NAME=D1,D2,...] [--trials N] ...
                  every conv/matmul layer of a model, one budget (tuner/network/tuning.py)
    tune worker tls://HOST:8786 --tls-ca-file CA --tls-cert CERT --tls-key KEY [--cpu NAME]
        [--threads T]
                  measure for tuners that pass --cluster tls://HOST:8786 with certificates of
                  the same CA (tuner/measure/cluster.py); tcp:// on a trusted network only

Progress and logs go to stderr, results to stdout. Exit status: 0 done, 1 nothing valid found,
2 bad input (one line naming the bad value; `--debug` shows the traceback), 130 interrupted
(Ctrl-C) and 143 terminated (SIGTERM): everything measured before is stored.
"""

from __future__ import annotations

import argparse
import json
import sys

from tuner.errors import TunerError

OPS = ("conv2d", "matmul", "batch_matmul")
EXIT_OK, EXIT_NOTHING, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a tool whose reader went away


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the batch in flight is dropped, the rest is stored."""


def _on_sigterm(signum, frame):
    raise Terminated()


class UsageError(TunerError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, our exit status, no usage dump
        raise UsageError(message)


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            kind = "a positive integer" if low == 1 else f"an integer >= {low}"
            raise argparse.ArgumentTypeError(f"expects {kind}, got {text!r}")
        return value
    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _threads(text: str) -> int:
    """A thread count this process can run: more threads than its cores would be timed
    sharing cores, and stored under a target no kernel here can be measured for."""
    from tuner.ir.machine import usable_cores

    value, cores = _positive_int(text), usable_cores()
    if value > cores:
        raise argparse.ArgumentTypeError(
            f"expects at most {cores} (the cores this process may use), got {value}")
    return value


def _join_negative_values(argv: list[str]) -> list[str]:
    """`--shape -4,4,4` as `--shape=-4,4,4`: argparse takes a value that starts with '-'
    for an option, and would say "expected one argument" instead of what a shape must be."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--shape" and i + 1 < len(argv) and argv[i + 1].startswith("-") \
                and argv[i + 1][1:2].isdigit():
            out.append(f"--shape={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _add_cpu(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cpu", default=None, help="LLVM CPU name to generate code for "
                   "(znver3, znver4, skylake-avx512, x86-64-v3, x86-64-v4, ...; default: this "
                   "host); measured here, so this host must support its ISA")


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="SQLAlchemy URL or SQLite file of the records (default: "
                   "$TUNER_DB, else ~/.local/share/tuner/records.db)")


def _add_tuning_options(p: argparse.ArgumentParser, trials_help: str,
                        weights: str = "warm") -> None:
    """The options of every command that tunes (one layer, or a whole model)."""
    from tuner.search.tune import STRATEGIES

    p.add_argument("--trials", type=_positive_int, default=200, help=trials_help)
    p.add_argument("--batch-size", type=_positive_int, default=16,
                   help="candidates measured and committed per round (default 16)")
    p.add_argument("--strategy", choices=STRATEGIES, default="evolutionary")
    p.add_argument("--threads", type=_threads, default=None,
                   help="threads the kernel runs on (default: all usable cores)")
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.add_argument("--no-seed", action="store_true",
                   help="do not measure the expert register tile first: search alone")
    p.add_argument("--weights", choices=("cold", "warm"), default=weights,
                   help=f"time candidates with their weights read from memory on each call, "
                   f"as in a model whose other layers evict them (cold), or as a loop leaves "
                   f"them in cache (warm); default {weights}")
    _add_cpu(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--cluster", metavar="ADDRESS", help="measure on the workers of a Dask "
                   "scheduler (tls://HOST:8786 with --tls-*, or tcp://HOST:8786 on a trusted "
                   "network only; start `tune worker ADDRESS` on each target machine), or "
                   "local:N for N worker processes on this machine (TLS with a certificate "
                   "made for the run)")
    _add_tls(p, "this tuner")
    _add_db(p)


def _add_tls(p: argparse.ArgumentParser, whose: str) -> None:
    """Dask's TLS flags, by Dask's names (tuner/measure/tls.py); not given: Dask's
    configuration (distributed.comm.tls.*)."""
    p.add_argument("--tls-ca-file", metavar="CA", help="with a tls:// scheduler: the cluster's "
                   "CA certificate (PEM); only peers with certificates it signed are accepted")
    p.add_argument("--tls-cert", metavar="CERT", help=f"with a tls:// scheduler: {whose}'s "
                   "certificate (PEM), signed by the CA")
    p.add_argument("--tls-key", metavar="KEY", help=f"with a tls:// scheduler: {whose}'s "
                   "private key (PEM), unless it follows the certificate in its file")


def _tls_files(args):
    from tuner.measure.tls import TlsFiles

    return TlsFiles(args.tls_ca_file, args.tls_cert, args.tls_key)


def build_parser() -> argparse.ArgumentParser:
    from templates import get_template

    parser = _Parser(prog="tune", description="Find fast loop schedules for tensor operators "
                     "on this CPU, and keep every measurement.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for op in OPS:
        form = get_template(op).SHAPE_FORM
        p = sub.add_parser(op, help=f"tune {op} ({form})",
                           description=f"Tune {op} for one shape on this CPU.")
        p.add_argument("--shape", required=True, help=f"{form}, comma separated")
        if op == "conv2d":
            p.add_argument("--stride", type=_positive_int, default=1)
            p.add_argument("--pad", type=_nonnegative_int, default=0)
            p.add_argument("--dilation", type=_positive_int, default=1)
            p.add_argument("--groups", type=_positive_int, default=1,
                           help="groups; C for depthwise")
        p.add_argument("--bias", action="store_true", help="add a bias per output channel")
        p.add_argument("--relu", action="store_const", const=1, default=0,
                       help="apply ReLU to the output")
        p.add_argument("--relu6", dest="relu", action="store_const", const=6,
                       help="apply ReLU6 (ReLU clipped at 6) to the output")
        if op != "batch_matmul":
            p.add_argument("--residual", action="store_true",
                           help="add an input of the output's shape before the ReLU (a skip "
                           "connection)")
        _add_dtype(p, weights=op != "batch_matmul")
        _add_tuning_options(p, "candidates to measure in this run (default 200)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
    p = sub.add_parser("show", help="list the tasks and targets in the database")
    _add_db(p)
    p = sub.add_parser("best", help="the best schedule of every task in the database")
    _add_db(p)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("export", help="write the best schedule per (task, target) to JSON")
    _add_db(p)
    p.add_argument("-o", "--output", required=True, help="the JSON file to write")
    p = sub.add_parser("build", help="compile the best schedules into a library + C header",
                       description="Compile the best stored schedule of each task for this "
                       "CPU into an object file, a shared library and a C header.")
    p.add_argument("op", nargs="?", choices=OPS, help="the operator (or use --task / --all)")
    p.add_argument("--shape", help="the shape of OP")
    for flag in ("--stride", "--dilation", "--groups"):
        p.add_argument(flag, type=_positive_int, default=1)
    p.add_argument("--pad", type=_nonnegative_int, default=0)
    p.add_argument("--bias", action="store_true")
    p.add_argument("--relu", action="store_const", const=1, default=0)
    p.add_argument("--relu6", dest="relu", action="store_const", const=6)
    p.add_argument("--residual", action="store_true")
    _add_dtype(p)
    p.add_argument("--task", action="append", default=[],
                   help="OP:SHAPE[:k=v,...], e.g. conv2d:1,64,56,56,64,3,3:pad=1 "
                   "(dtype=int8 for an int8 task); repeatable")
    p.add_argument("--all", action="store_true",
                   help="every task with a record for this target in --db")
    p.add_argument("--model", help="an ONNX file: write a package of the whole model (its "
                   "kernels' library and header, graph.json, weights.npz) for tuner.load_package")
    p.add_argument("--input", action="append", default=[], type=_model_input,
                   metavar="NAME=D1,D2,...", help="with --model: the shape of an input with "
                   "symbolic dimensions; repeatable")
    p.add_argument("--db", help="a database (as for tuning) or a JSON file from `tune export`")
    p.add_argument("--threads", type=_threads, default=None)
    _add_cpu(p)
    p.add_argument("--allow-foreign-target", action="store_true",
                   help="use a schedule tuned on another CPU when this one has none")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--name", default="tuner_kernels", help="library name (default tuner_kernels)")
    p = sub.add_parser("plot", help="search curves of a task, of every task or of a model, "
                       "as a PNG", description="Plot best GFLOPS over trials and wall time for "
                       "every strategy that measured a task (a panel per task when there are "
                       "several), or with --model a model's estimated latency.")
    _add_db(p)
    p.add_argument("--task", help="the task key (as `tune show` prints it) or OP:SHAPE[:k=v]; "
                   "default: every task in the database, a panel each")
    p.add_argument("--model", help="an ONNX file: its estimated latency (occurrences x best "
                   "latency of its tasks) against trials and wall time, and a panel per task")
    p.add_argument("--input", action="append", default=[], type=_model_input,
                   metavar="NAME=D1,D2,...", help="with --model: the shape of an input with "
                   "symbolic dimensions; repeatable")
    p.add_argument("--cpu", default=None, help="only records for this CPU (the name `tune "
                   "show` prints)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="only records for this thread count")
    p.add_argument("-o", "--output", required=True, help="the PNG file to write")
    p = sub.add_parser("import", help="merge a best-schedules JSON file into the database")
    _add_db(p)
    p.add_argument("file", help="a file written by `tune export`")
    p = sub.add_parser("worker", help="measure for tuners on other machines (Dask)",
                       description="Join a Dask scheduler as a worker that measures candidates "
                       "for this machine's target (one at a time), until stopped. It runs what "
                       "the scheduler sends it: join a tls:// scheduler with certificates of "
                       "the cluster's CA, or a tcp:// one on a trusted network only.")
    p.add_argument("scheduler", help="the scheduler's address, e.g. tls://HOST:8786")
    _add_tls(p, "this worker")
    p.add_argument("--threads", type=_threads, default=None,
                   help="threads the kernels run on (default: all usable cores); a tuner's "
                   "--threads must match")
    _add_cpu(p)
    p.add_argument("--name", help="the worker's name in the cluster (default: HOST-PID)")
    p = sub.add_parser("model", help="tune every layer of an ONNX model",
                       description="Tune the conv/matmul tasks of an ONNX model with one trial "
                       "budget, spent where it shortens the model's estimated latency most.")
    p.add_argument("path", help="the .onnx file")
    p.add_argument("--list", action="store_true",
                   help="print the task table (occurrences, share of FLOPs) and stop")
    p.add_argument("--input", action="append", default=[], type=_model_input,
                   metavar="NAME=D1,D2,...", help="the shape of an input with symbolic "
                   "dimensions (a batch N); repeatable")
    _add_tuning_options(p, "candidates to measure in this run, for all tasks together "
                        "(default 200)", weights="cold")
    return parser


def _model_input(text: str) -> tuple[str, tuple[int, ...]]:
    """--input NAME=1,3,224,224 -> ('NAME', (1, 3, 224, 224))."""
    name, _, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not name or not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expects NAME=D1,D2,... (positive integers), "
                                         f"got '{text}'")
    return name, shape


def parse_shape(op: str, text: str) -> tuple[int, ...]:
    from templates import get_template

    form = get_template(op).SHAPE_FORM
    count = form.count(",") + 1
    parts = text.split(",")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != count or any(d < 1 for d in dims):
        raise UsageError(f"--shape expects {form} ({count} positive integers), got '{text}'")
    return dims


def _add_dtype(p, weights: bool = True) -> None:
    """--dtype and the int8 options; `weights`: the second operand is a constant weight
    (conv2d, matmul), not a second uint8 activation (batch_matmul)."""
    from tuner.ir.dag import OUT_TYPES

    what = "uint8 inputs times int8 weights" if weights else \
        "uint8 A times uint8 B, less their zero points,"
    p.add_argument("--dtype", choices=("float32", "int8"), default="float32",
                   help=f"int8: {what} summed in int32 (default float32)")
    p.add_argument("--out-type", choices=OUT_TYPES, default=None,
                   help="with --dtype int8: write the int32 sums (default), requantize them "
                   "to uint8 or dequantize them to float32 (scale and zero points are inputs)")
    if weights:
        p.add_argument("--reduce-range", action="store_true",
                       help="with --dtype int8: every weight lies in [-64, 64] (onnxruntime's "
                       "reduce_range), which CPUs without VNNI sum faster, exactly "
                       "(vpmaddubsw)")


def _task_from_args(op: str, args):
    from tuner.ir.task import Task

    attrs = {"bias": args.bias, "relu": args.relu}
    if getattr(args, "residual", False):
        attrs["residual"] = True
    if op == "conv2d":
        attrs.update(stride=args.stride, pad=args.pad, dilation=args.dilation,
                     groups=args.groups)
    dtype = getattr(args, "dtype", "float32")
    from tuner.ir.dag import OUT_TYPES

    out_type = getattr(args, "out_type", None)
    if out_type is not None:
        if dtype != "int8":
            raise UsageError(f"--out-type {out_type} is for --dtype int8")
        attrs["out_type"] = OUT_TYPES.index(out_type)
    if getattr(args, "reduce_range", False):
        if dtype != "int8":
            raise UsageError("--reduce-range is for --dtype int8")
        attrs["reduce_range"] = True
    return Task.create(op, parse_shape(op, args.shape), dtype, **attrs)


def _open_store(db: str | None):
    from records import RecordStore, resolve_db_url

    return RecordStore(resolve_db_url(db))


def _tune_config(args):
    """The tune loop's settings from the options `_add_tuning_options` adds."""
    from tuner.search.strategies import SearchConfig
    from tuner.search.tune import TuneConfig

    return TuneConfig(trials=args.trials, batch_size=args.batch_size, strategy=args.strategy,
                      seed=args.seed, search=SearchConfig(use_seed=not args.no_seed))


def _measure_options(args):
    from tuner.measure.measurer import MeasureOptions
    return MeasureOptions(cold_weights=args.weights == "cold")


def _workers(measurer) -> str:
    """The progress bar's note of the cluster workers in use (none for local measurement)."""
    describe = getattr(measurer, "describe", None)
    return f", {describe()}" if describe else ""


def _measurer(args, target):
    """The worker processes of this machine, or with --cluster a Dask cluster's workers
    (tuner/measure/cluster.py)."""
    tls = _tls_files(args)
    if args.cluster:
        from tuner.measure.cluster import ClusterMeasurer
        return ClusterMeasurer(args.cluster, target, _measure_options(args), tls=tls)
    if tls.flags():
        raise UsageError(f"{', '.join(tls.flags())} go with --cluster tls://HOST:PORT")
    from tuner.measure.measurer import Measurer
    return Measurer(target, _measure_options(args))


def tuner_factory(target, store, measurer, config, lowering=None):
    """`make_tuner(task) -> TaskTuner`: a task's tuner wired to the store, the measurer and
    an XGBoost cost model of its own; the tuners made by one factory share one warm start
    (other tasks' records as features, each lowered once) and the `lowering` pool, if any
    (tuner/search/lowering.py: the search's genomes lowered on every core)."""
    from costmodel.features import extract_features
    from costmodel.xgb import XGBCostModel
    from tuner.search.tune import TaskTuner, WarmStart

    warm_start = WarmStart(store, target, extract_features, config.warm_start_records)

    def make_tuner(task):
        return TaskTuner(task, target, store, measurer, config, XGBCostModel(),
                         extract_features, warm_start, lowering)
    return make_tuner


def _progress_bar(args, total: int, desc: str):
    """A tqdm bar on stderr counting trials, or None with --quiet."""
    if args.quiet:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="trial", file=sys.stderr, dynamic_ncols=True)


def _cmd_tune(args) -> int:
    from tuner.codegen.pseudo import pseudo_code
    from tuner.ir.lowered import lowered
    from tuner.ir.target import named_target
    from tuner.measure.measurer import check_task_fits_memory
    from tuner.search.lowering import LoweringPool

    task = _task_from_args(args.command, args)
    check_task_fits_memory(task)
    target = named_target(args.cpu, args.threads)
    config = _tune_config(args)
    store = _open_store(args.db)
    bar = _progress_bar(args, args.trials, f"tuning {task.op}")

    def progress(p) -> None:  # called inside the `with` below, where `measurer` is bound
        if bar is not None:
            bar.update(p.trials_done - bar.n)
            bar.set_postfix_str(f"best {p.best_gflops:.1f} GFLOPS, {p.errors} failed"
                                + _workers(measurer))

    try:
        with store, _measurer(args, target) as measurer, LoweringPool() as lowering:
            result = tuner_factory(target, store, measurer, config, lowering)(task).run(
                on_progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if result.best_schedule_json is None:
        print(f"tune: no valid schedule found for {task.key} in {result.trials_run} trials",
              file=sys.stderr)
        return EXIT_NOTHING
    nest = lowered(task, result.best_schedule_json)  # applies: the tuner chose it
    summary = {
        "task": task.key, "target": target.key, "trials": result.trials_run,
        "failed": result.errors, "best_gflops": round(result.best_gflops, 2),
        "default_gflops": None if result.default_gflops is None
        else round(result.default_gflops, 2),
        "tuning_s": round(result.elapsed_s, 1), "db": store.display_url,
        "schedule": json.loads(result.best_schedule_json),
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return EXIT_OK
    print(f"task      {task.key}")
    print(f"target    {target.cpu}, {target.threads} thread(s)")
    print(f"trials    {result.trials_run} in {result.elapsed_s:.1f} s ({result.errors} failed)")
    line = f"best      {result.best_gflops:.1f} GFLOPS"
    if result.default_gflops:
        line += (f"  (default schedule {result.default_gflops:.1f} GFLOPS, "
                 f"x{result.best_gflops / result.default_gflops:.2f})")
    print(line)
    print(f"records   {store.display_url}")
    print("schedule:")
    for text in pseudo_code(nest, target.machine).splitlines():
        print("  " + text)
    return EXIT_OK


def _cmd_show(args) -> int:
    with _open_store(args.db) as store:
        rows = store.summary()
        machines = store.machines()
        print(f"{store.display_url}: {store.count()} records")
    for task, target, n, failed, best in rows:
        gflops = f"{best.gflops:8.1f} GFLOPS" if best else "   no valid record"
        print(f"{task.key:70s} {target.cpu:>12s} x{target.threads}  {n:5d} records "
              f"({failed} failed)  best {gflops}")
        by = machines.get((task.key, target.key))
        if by:  # measured on cluster workers (tune --cluster)
            print("    measured by " + ", ".join(f"{m} ({k})" for m, k in sorted(by.items()))
                  + (f", this machine ({n - sum(by.values())})" if n > sum(by.values()) else ""))
    return EXIT_OK


def _cmd_best(args) -> int:
    from tuner.codegen.pseudo import pseudo_code
    from tuner.ir.lowered import lowered, schedule_applies

    with _open_store(args.db) as store:
        best = store.best_per_task(usable=schedule_applies)
    if args.json:
        print(json.dumps([{"task": r.task.key, "target": r.target.key,
                           "gflops": round(r.gflops, 2),
                           "schedule": json.loads(r.schedule_json)} for r in best], indent=1))
        return EXIT_OK if best else EXIT_NOTHING
    for r in best:
        print(f"# {r.task.key} on {r.target.cpu} x{r.target.threads}: {r.gflops:.1f} GFLOPS")
        # lowered: cached when it was chosen
        print(pseudo_code(lowered(r.task, r.schedule_json), r.target.machine))
        print()
    return EXIT_OK if best else EXIT_NOTHING


def _cmd_export(args) -> int:
    from records import export_best
    from tuner.ir.lowered import schedule_applies

    with _open_store(args.db) as store:
        count = export_best(store, args.output, usable=schedule_applies)
    print(f"wrote the best schedule of {count} (task, target) pairs to {args.output}")
    return EXIT_OK if count else EXIT_NOTHING


def check_imported(records, path) -> None:
    """Every record of an imported file must be one this tuner can use: its task valid for
    its operator (as `Task.create` checks shapes and attributes) and its schedule applicable
    to that task. The first that is not rejects the whole file, naming it: a stored record
    that cannot be applied would break `tune best`, `tune build` and tuning that task."""
    from tuner.ir.schedule import apply_steps, schedule_from_json
    from tuner.ir.task import Task

    for r in records:
        where = f"{path}: record {r.id} ({r.task.key})"
        try:
            task = Task.create(r.task.op, r.task.shape, dtype=r.task.dtype,
                               **dict(r.task.attrs))
            if task.key != r.task.key:
                raise TunerError(f"task key {r.task.key} is not canonical (expected {task.key})")
            apply_steps(task.dag(), schedule_from_json(r.schedule_json))
        except (TunerError, KeyError, TypeError, ValueError) as err:
            raise UsageError(f"{where}: {err}; nothing of this file was imported") from None


def _cmd_import(args) -> int:
    from records import read_best

    records = read_best(args.file)
    check_imported(records, args.file)
    with _open_store(args.db) as store:
        added, present = store.import_records(records)
    print(f"imported {added} records from {args.file} ({present} already present)")
    return EXIT_OK


def _cmd_build(args) -> int:
    import warnings

    from tuner.ir.target import named_target
    from tuner.replay.aot import build_library, task_from_spec
    from tuner.replay.source import NoRecordWarning, open_schedules

    if args.model or args.input:
        return _build_model(args)
    tasks = [task_from_spec(spec) for spec in args.task]
    if args.op:
        if not args.shape:
            raise UsageError(f"build {args.op} needs --shape")
        tasks.append(_task_from_args(args.op, args))
    target = named_target(args.cpu, args.threads)
    with open_schedules(args.db) as schedules:
        if args.all:
            found = schedules.tasks(target)
            tasks += [t for t in dict.fromkeys(found) if t not in tasks]
        if not tasks:
            raise UsageError("build needs OP --shape ..., --task OP:SHAPE[:k=v,...] or --all")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NoRecordWarning)
            choices = [schedules.choose(task, target, args.allow_foreign_target)
                       for task in tasks]
    for w in caught:
        print(f"tune: warning: {w.message}", file=sys.stderr)
    lib = build_library(choices, args.output, args.name)
    for choice, symbol in zip(choices, lib.symbols):
        how = f"{choice.gflops:.1f} GFLOPS when tuned" if choice.tuned else "default schedule"
        print(f"{symbol}  ({how})")
    print(f"wrote {lib.object_file}, {lib.shared_library} and {lib.header}")
    return EXIT_OK


def _build_model(args) -> int:
    """`tune build --model`: the package of a whole model (tuner/network/package.py)."""
    from tuner.ir.target import named_target
    from tuner.network.package import write_package
    from tuner.replay.source import open_schedules

    if not args.model:
        raise UsageError("--input goes with --model PATH.onnx")
    if args.op or args.task or args.all:
        raise UsageError("build takes --model alone, not with OP, --task or --all")
    inputs = dict(args.input)
    if len(inputs) != len(args.input):
        raise UsageError("--input names the same input twice")
    target = named_target(args.cpu, args.threads)
    with open_schedules(args.db) as schedules:
        built = write_package(args.model, args.output, schedules, target, inputs,
                              args.allow_foreign_target, args.name)
    for note in built.notes:
        print(f"tune: note: {note}", file=sys.stderr)
    if built.defaulted:
        print(f"tune: warning: {len(built.defaulted)} of {len(built.tasks)} tasks have no "
              f"tuned record for this target in {built.source}: default schedules",
              file=sys.stderr)
    for kernel in built.tasks:
        how = (f"{kernel.gflops:.1f} GFLOPS when tuned" if kernel.tuned
               else "default schedule, no record")
        print(f"{kernel.symbol}  x{kernel.occurrences}  ({how})")
    library = f"{built.library}, {built.header}, " if built.library else ""
    print(f"wrote {library}{built.graph_file} and {built.weights_file}; run it with "
          f"tuner.load_package('{built.directory}')")
    return EXIT_OK


def _plotted_target(target, args) -> bool:
    """Whether `tune plot` shows records of `target`: --cpu and --threads narrow it."""
    return ((args.cpu is None or target.cpu == args.cpu)
            and (args.threads is None or target.threads == args.threads))


def _cmd_plot(args) -> int:
    from tuner.replay.aot import task_from_spec
    from tuner.plot import by_strategy, search_curves, task_grid, task_label

    if args.model or args.input:
        return _plot_model(args)
    with _open_store(args.db) as store:
        rows = [row for row in store.summary() if _plotted_target(row[1], args)]
        if args.task:
            wanted = args.task if "/" in args.task else task_from_spec(args.task).key
            rows = [row for row in rows if row[0].key == wanted]
        pairs = {(t.key, g.key): (t, g) for t, g, *_ in rows}
        if not pairs:
            raise UsageError(f"no records of {args.task or 'any task'} in {store.display_url}"
                             + (" for that --cpu/--threads" if args.cpu or args.threads else ""))
        histories = {(t, g): store.history(t, g) for t, g in pairs.values()}
    if len(histories) == 1:
        ((task, target), history), = histories.items()
        fig = search_curves(by_strategy(history),
                            title=f"{task.key} on {target.cpu} x{target.threads}")
    else:
        fig = task_grid({f"{task_label(t.key)} on {g.cpu} x{g.threads}": by_strategy(h)
                         for (t, g), h in histories.items()},
                        title=f"{len(histories)} tasks/targets in {store.display_url}")
    fig.savefig(args.output, dpi=110)
    count = sum(map(len, histories.values()))
    print(f"wrote {args.output} ({count} records, {len(histories)} panel(s))")
    return EXIT_OK


def _plot_model(args) -> int:
    """`tune plot --model`: the model's estimated latency and its tasks' curves, from the
    records of one target (the only one that measured its tasks, or the one --cpu and
    --threads name)."""
    from pathlib import Path

    from tuner.network.plot import model_curves, model_latency_curve
    from tuner.network.tasks import extract_tasks

    if not args.model:
        raise UsageError("--input goes with --model PATH.onnx")
    if args.task:
        raise UsageError("plot takes --model or --task, not both")
    uses = extract_tasks(_model_graph(args.model, args.input)).tasks
    if not uses:
        raise UsageError(f"{args.model} has no conv/matmul layer to tune: no curve to draw")
    keys = {u.task.key for u in uses}
    with _open_store(args.db) as store:
        targets = {g.key: g for t, g, *_ in store.summary()
                   if t.key in keys and _plotted_target(g, args)}
        if not targets:
            raise UsageError(f"no records of the tasks of {args.model} in {store.display_url}"
                             + (" for that --cpu/--threads" if args.cpu or args.threads else ""))
        if len(targets) > 1:
            listed = "; ".join(f"{g.cpu} x{g.threads}" for g in targets.values())
            raise UsageError(f"records of {args.model} for several targets, pick one with "
                             f"--cpu and --threads: {listed}")
        (target,) = targets.values()
        histories = [store.history(u.task, target) for u in uses]
    curve = model_latency_curve(uses, histories)
    fig = model_curves(uses, histories, f"{Path(args.model).name} on {target.cpu} "
                       f"x{target.threads}: {len(uses)} tasks")
    fig.savefig(args.output, dpi=110)
    if curve.missing:
        print(f"tune: note: {len(curve.missing)} of {len(uses)} tasks have no valid record "
              f"on {target.cpu} x{target.threads}: the model's latency is undefined",
              file=sys.stderr)
        latency = "undefined"
    else:
        latency = f"{curve.latency_s[-1] * 1e3:.3f} ms"
    print(f"wrote {args.output} ({len(curve.trials)} records of {len(uses)} tasks; estimated "
          f"latency {latency})")
    return EXIT_OK


def _model_graph(path: str, inputs: list[tuple[str, tuple[int, ...]]]):
    """The model at `path` with the --input shapes, one line of error for a malformed file or
    a bad --input."""
    from tuner.network.graph import load_model

    shapes = dict(inputs)
    if len(shapes) != len(inputs):
        raise UsageError("--input names the same input twice")
    return load_model(path, shapes)


def _load_model_tasks(args):
    """The model's task table, refusing a malformed file, a bad --input or an operator the
    runtime cannot run (one line each) before anything is tuned."""
    from tuner.network.runtime import check_supported
    from tuner.network.tasks import extract_tasks

    graph = _model_graph(args.path, args.input)
    check_supported(graph)
    return extract_tasks(graph)


def _cmd_model(args) -> int:
    from tuner.measure.measurer import check_task_fits_memory
    from tuner.network.tuning import tune_model
    from tuner.ir.target import named_target
    from tuner.search.lowering import LoweringPool

    extraction = _load_model_tasks(args)
    if args.list:
        print(f"{'occurrences':>11s} {'FLOPs':>6s}  task")
        for use in extraction.tasks:
            print(f"{use.occurrences:11d} {use.share:6.1%}  {use.task.key}")
        for note in extraction.notes:
            print(f"note: {note}")
        return EXIT_OK
    if not extraction.tasks:
        print(f"tune: {args.path} has no conv/matmul layer to tune; numpy runs all of it",
              file=sys.stderr)
        return EXIT_NOTHING
    for use in extraction.tasks:
        check_task_fits_memory(use.task)
    target = named_target(args.cpu, args.threads)
    store = _open_store(args.db)
    bar = _progress_bar(args, args.trials, "tuning model")

    def progress(p) -> None:  # called inside the `with` below, where `measurer` is bound
        if bar is not None:
            bar.update(p.trials_done - bar.n)
            latency = "-" if p.latency_s is None else f"{p.latency_s * 1e3:.3f} ms"
            bar.set_postfix_str(f"model ~{latency}" + _workers(measurer))

    try:
        with store, _measurer(args, target) as measurer, LoweringPool() as lowering:
            config = _tune_config(args)
            result = tune_model(extraction.tasks, target, store, config,
                                tuner_factory(target, store, measurer, config, lowering),
                                progress)
    finally:
        if bar is not None:
            bar.close()
    print(f"{'occurrences':>11s} {'trials':>7s} {'GFLOPS':>8s} {'ms (all)':>9s}  task")
    for t in result.tasks:
        gflops = "-" if t.best_s is None else f"{t.best_gflops:8.1f}"
        total = "-" if t.best_s is None else f"{t.best_s * t.use.occurrences * 1e3:9.3f}"
        print(f"{t.use.occurrences:11d} {t.trials_before + t.trials_run:7d} {gflops:>8s} "
              f"{total:>9s}  {t.use.task.key}")
    latency = "-" if result.latency_s is None else f"{result.latency_s * 1e3:.3f} ms"
    print(f"trials    {result.trials_run} in {result.elapsed_s:.1f} s on {target.cpu}, "
          f"{target.threads} thread(s)")
    print(f"latency   {latency} estimated for the tasks (occurrences x best latency; the "
          f"layers numpy runs are not counted)")
    print(f"records   {store.display_url}")
    return EXIT_OK if result.latency_s is not None else EXIT_NOTHING


def _cmd_worker(args) -> int:
    """`tune worker SCHEDULER`: a Dask worker measuring for this machine's target."""
    from tuner.ir.target import named_target
    from tuner.measure.cluster_worker import serve_worker, target_resource

    target = named_target(args.cpu, args.threads)
    print(f"tune: worker for {target.cpu}, {target.threads} thread(s) ({target_resource(target)}) "
          f"joining {args.scheduler}", file=sys.stderr, flush=True)
    serve_worker(args.scheduler, target, args.name, _tls_files(args))
    return EXIT_OK


COMMANDS = {"plot": _cmd_plot, "worker": _cmd_worker, "show": _cmd_show, "best": _cmd_best,
            "export": _cmd_export, "import": _cmd_import, "build": _cmd_build,
            "model": _cmd_model}


def _discard_stdout() -> None:
    """Points stdout at /dev/null, so that the interpreter's flush at exit does not fail on
    the closed pipe once more (and print a second error)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is no file: nothing to flush
        pass


def main(argv: list[str] | None = None) -> int:
    import signal

    argv = _join_negative_values(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: SIGTERM stays with whoever handles it
        previous = None
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS.get(args.command, _cmd_tune)(args)
    except BrokenPipeError:  # `tune best | head`: the reader has all it wanted
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except (TunerError, OSError) as err:  # OSError: a path the user gave (-o, --db, HOME)
        if debug:
            raise
        print(f"tune: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        print(f"tune: {'terminated' if terminated else 'interrupted'}; every finished batch "
              f"is stored", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
