"""Timing a whole model, and its layers one by one, each library in a process of its own.

bench/model.py's figures come from here. As for single operators (bench/comparators.py says
why), each measurement runs in a fresh child (bench/child.py's `run_child`) with the thread
count in its environment, and uses the one timing protocol (tuner/measure/timing.py):

- "package": our model as it is deployed, `tuner.load_package` of the package `tune build
  --model` writes (kernels of the tuned schedules, weights packed once at load, numpy for the
  other operators; its threads are those the kernels were built for, and numpy's BLAS runs
  on the calling thread during a call, as the package holds it: tuner/network/runtime.py). A
  call returns freshly allocated outputs, as a user's call does.
- "onnxruntime": an InferenceSession of the same .onnx file, every graph optimisation on
  (its own fusions, GELU and LayerNorm included, are what we are compared with), inputs and
  outputs bound once with I/O binding as comparators.bound_run does for single operators.
- "numpy nodes": the package run `NODE_CALLS` times with every node it leaves to numpy timed
  inside the graph, one median per node: what of a package is still numpy, named.
- "layers": the tasks of a model one after another in one process, as our tuned kernel
  (comparators.tuned_kernel: replayed from the records, weights bound once) or as
  onnxruntime's single Conv / MatMul (comparators.time_comparator); one kind per process, and
  each onnxruntime session is gone (its thread pool with it) before the next is timed.

    python -m bench.model_timing '{"what": "onnxruntime", "path": "m.onnx", "threads": 1}'
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import defaultdict

import numpy as np

from bench.child import TIMEOUT_S, run_child
from bench.comparators import bound_run, kinds_for, session, time_comparator, tuned_kernel
from tuner.errors import TunerError
from tuner.ir.task import Task
from tuner.measure.timing import TimingResult, time_callable

MIN_SAMPLE_S = 0.01  # as comparators: a sample of a whole model is one call or a few
NODE_CALLS = 15  # runs of the package whose numpy nodes are timed, the median kept


def _feeds(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(shape).astype(np.float32)
            for name, shape in shapes.items()}


def time_package(directory: str) -> TimingResult:
    import tuner

    package = tuner.load_package(directory)
    feeds = _feeds(package.inputs)
    return time_callable(lambda: package(feeds), min_sample_s=MIN_SAMPLE_S)


def time_numpy_nodes(directory: str, calls: int = NODE_CALLS) -> list[dict]:
    """Each node the package runs in numpy (neither a kernel, a generated function nor a
    segment): its name, op type and median seconds per inference inside the graph, in graph
    order."""
    import tuner
    from tuner.network.ops import run_node
    from tuner.network.runtime import blas_on_calling_thread, run_graph

    package = tuner.load_package(directory)
    graph = package.graph
    feeds = _feeds(package.inputs)
    spent = defaultdict(list)

    def timed(node, args):
        start = time.perf_counter()
        outputs = run_node(node, args, graph.opset)
        spent[node.name].append(time.perf_counter() - start)
        return outputs

    impls = dict(package._impls)  # the package's own: kernels, generated functions, segments
    numpy_nodes = [node for node in graph.nodes if node.op_type not in impls]
    impls.update({node.op_type: timed for node in numpy_nodes})
    with blas_on_calling_thread():
        for _ in range(calls):
            run_graph(graph, feeds, impls)
    return [{"node": node.name, "op_type": node.op_type,
             "median_s": statistics.median(spent[node.name])} for node in numpy_nodes]


def time_onnxruntime_model(path: str, threads: int) -> TimingResult:
    import onnx

    sess = session(onnx.load(path), threads)
    feeds = _feeds({i.name: tuple(i.shape) for i in sess.get_inputs()})
    outputs = {o.name: tuple(o.shape) for o in sess.get_outputs()}
    if any(not isinstance(d, int) for shape in outputs.values() for d in shape):
        raise TunerError(f"{path}: an output shape is not static ({outputs}); bench/model.py "
                         f"times models with static shapes")
    return time_callable(bound_run(sess, feeds, outputs), min_sample_s=MIN_SAMPLE_S)


def time_layers(kind: str, tasks: list[Task], threads: int, db: str | None
                ) -> list[float | None]:
    """Median seconds of one call of each task as `kind` ("tuned" or "onnxruntime"); None
    for a task with no tuned record (nothing tuned to time) or no such comparator (attention's
    batch_matmul has none in onnxruntime alone)."""
    times = []
    for task in tasks:
        if kind != "tuned" and kind not in kinds_for(task):
            times.append(None)
            continue
        try:
            timing = (tuned_kernel(task, threads, db, None) if kind == "tuned"
                      else time_comparator(kind, task, threads))
        except Warning:  # tuned_kernel: no record of this task
            times.append(None)
            continue
        except TunerError as err:  # no such single operator (an int8 matmul with a bias)
            print(f"warning: {kind} on {task.key}: {err}", file=sys.stderr)
            times.append(None)
            continue
        times.append(timing.median_s)
    return times


# ---------------------------------------------------------------- one process per measurement
def _ask(request: dict, threads: int, timeout_s: float) -> dict | None:
    answer = run_child("bench.model_timing", [json.dumps(request)], threads, timeout_s)
    if answer is not None and "error" in answer:
        print(f"warning: {request['what']}: {answer['error']}", file=sys.stderr)
        return None
    return answer


def measure_model(what: str, location: str, threads: int,
                  timeout_s: float = TIMEOUT_S) -> float | None:
    """Median seconds of one inference, in a fresh process: `what` "package" (`location` the
    package directory) or "onnxruntime" (`location` the .onnx file). None if it failed."""
    answer = _ask({"what": what, "location": location, "threads": threads}, threads, timeout_s)
    return None if answer is None else float(answer["median_s"])


def measure_numpy_nodes(directory: str, threads: int, timeout_s: float = TIMEOUT_S
                        ) -> list[dict] | None:
    """`time_numpy_nodes` in a fresh process; None if the process failed."""
    answer = _ask({"what": "numpy nodes", "location": directory, "threads": threads},
                  threads, timeout_s)
    return None if answer is None else answer["nodes"]


def measure_layers(kind: str, tasks: list[Task], threads: int, db: str | None = None,
                   timeout_s: float = TIMEOUT_S) -> list[float | None]:
    """`time_layers` in a fresh process; all None if the process failed."""
    answer = _ask({"what": "layers", "kind": kind, "tasks": [t.to_json() for t in tasks],
                   "threads": threads, "db": db}, threads, timeout_s)
    return [None] * len(tasks) if answer is None else answer["layers_s"]


def main(argv: list[str] | None = None) -> int:
    """The child: one JSON request in argv, one JSON line out (`median_s`, `layers_s`,
    `nodes` or `error`)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    request = json.loads(argv[0])
    threads = int(request["threads"])
    try:
        if request["what"] == "layers":
            tasks = [Task.from_json(t) for t in request["tasks"]]
            answer = {"layers_s": time_layers(request["kind"], tasks, threads, request["db"])}
        elif request["what"] == "numpy nodes":
            answer = {"nodes": time_numpy_nodes(request["location"])}
        elif request["what"] == "package":
            answer = {"median_s": time_package(request["location"]).median_s}
        else:
            answer = {"median_s": time_onnxruntime_model(request["location"], threads).median_s}
    except TunerError as err:  # onnxruntime missing, a package for another CPU: an answer
        answer = {"error": str(err)}
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
