"""Running a model package with numpy and ctypes alone: the side of package.py that ships.

A deployed application does not carry the tuner: this module imports numpy, ctypes, json and
the numpy runtime of tuner.network (graph, ops, runtime; with threadpoolctl, a pure-Python module,
to hold numpy's BLAS to one thread while the kernels run), never LLVM, XGBoost, the records
database or onnx (graph.json is our own format). `load_package(dir)` reads graph.json, loads
the shared library with ctypes, binds each fused node to its kernel symbol with its constant
operands packed once (by the library's own pack functions: package.py says why at load time),
and runs the graph with `run_graph`, the kernels serving the fused nodes (and the pooling
nodes the library has a function for, pool_codegen.py) and numpy the rest. Each run of
consecutive kernel nodes is one call into the library, its segment function (segments.py says
why and how).

Each call allocates afresh every kernel output that a numpy node or the caller may see: a
buffer reused across calls would be shared with what the previous call returned whenever a
graph output is a kernel's output or a view of it (Reshape, Flatten), and np.empty costs far
less than any kernel. Only the values made and read inside one segment live in a reused arena.

Anything wrong with the directory (missing file, malformed or foreign-version graph.json,
unreadable weights, a library without the named symbol, a library for CPU features this machine
lacks) is a one-line TunerError naming the file, before anything runs.
"""

from __future__ import annotations

import ctypes
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tuner.buffers import aligned_copy, aligned_empty
from tuner.errors import TunerError
from tuner.network.graph import Graph, Node
from tuner.network.ops import run_node
from tuner.network.runtime import GraphRunner, check_supported
from tuner.network.segments import Segment, kernel_input, kernel_runs

FORMAT = "tuner-package"
FORMAT_VERSION = 2  # bump when graph.json's meaning changes; old packages are then refused
# Version 2 names each kernel operand's and output's element type (int8 kernels); a version 1
# package, whose kernels are all float32, reads the same.
READABLE_VERSIONS = (1, 2)
GRAPH_FILE = "graph.json"
WEIGHTS_FILE = "weights.npz"
LIBRARY_NAME = "tuner_kernels"  # libtuner_kernels.so, tuner_kernels.h
# LLVM's names of the instruction-set features a kernel library may use, and the names Linux
# gives them in /proc/cpuinfo: a package records the ones its target has, and a machine that
# lacks one is refused at load (the library would die of an illegal instruction instead).
CPU_FLAGS = {"sse4.1": "sse4_1", "sse4.2": "sse4_2", "ssse3": "ssse3", "popcnt": "popcnt",
             "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "bmi": "bmi1",
             "bmi2": "bmi2", "movbe": "movbe", "avx512f": "avx512f", "avx512dq": "avx512dq",
             "avx512cd": "avx512cd", "avx512bw": "avx512bw", "avx512vl": "avx512vl",
             "avx512ifma": "avx512ifma", "avx512vbmi": "avx512vbmi",
             "avx512vbmi2": "avx512_vbmi2", "avx512vnni": "avx512_vnni",
             "avx512bf16": "avx512_bf16", "avx512bitalg": "avx512_bitalg",
             "avx512vpopcntdq": "avx512_vpopcntdq", "avx512fp16": "avx512_fp16"}
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(llvm_features: str) -> list[str]:
    """The /proc/cpuinfo flags of the features an LLVM feature string turns on."""
    on = {f[1:] for f in llvm_features.split(",") if f.startswith("+")}
    return sorted(CPU_FLAGS[f] for f in on if f in CPU_FLAGS)


def host_cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The flags of this machine's first CPU in /proc/cpuinfo; None where there is none to
    read (not Linux), and then nothing is checked."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def check_cpu(document: dict, graph_file: Path, cpuinfo: Path = CPUINFO) -> None:
    """Refuses a package whose library uses instructions this machine does not have."""
    host = host_cpu_flags(cpuinfo)
    if host is None or not document.get("library"):
        return
    missing = [f for f in document["target"]["cpu_flags"] if f not in host]
    if missing:
        raise TunerError(f"'{graph_file}' was built for {document['target']['cpu']} and needs "
                         f"CPU features this machine lacks: {', '.join(missing)}; build the "
                         f"package on (or with --cpu for) this machine")


class _BoundKernel:
    """One fused node's kernel: its C function, its constant operands packed once, and where
    the node's runtime inputs (the activations) go among its arguments."""

    def __init__(self, function, arguments: list, input_shapes: list[tuple[int, ...]],
                 output_shape: tuple[int, ...], result_shape: tuple[int, ...],
                 input_dtypes: list[str] | None = None, output_dtype: str = "float32"):
        self.function = function
        # Per kernel operand: the address of a bound constant (held in `constants` so that
        # it stays valid), or None where the next runtime input goes.
        self.constants = [a for a in arguments if a is not None]
        self.arguments = [None if a is None else a.ctypes.data for a in arguments]
        self.input_shapes = input_shapes
        self.input_dtypes = input_dtypes or ["float32"] * len(input_shapes)
        self.output_shape, self.result_shape = output_shape, result_shape
        self.output_dtype = output_dtype

    def __call__(self, node: Node, args: list) -> list[np.ndarray]:
        given = iter([kernel_input(node.name, value, shape, dtype)
                      for value, shape, dtype in zip(args, self.input_shapes,
                                                     self.input_dtypes)])
        out = aligned_empty(self.output_shape, self.output_dtype)
        self.function(out.ctypes.data, *(next(given).ctypes.data if a is None else a
                                         for a in self.arguments))
        return [out.reshape(self.result_shape)]


class Package(GraphRunner):
    """A loaded package: `package(x)` or `package({name: x})` -> the list of outputs, in
    `outputs` order (float32 arrays, as the compiled model returns them)."""

    def __init__(self, directory: Path, graph: Graph, kernels: dict[str, _BoundKernel],
                 fused_types: set[str], library, info: dict):
        self.directory, self.graph, self.info = directory, graph, info
        self._library = library  # keeps the shared library loaded while kernels may run
        self._kernels = kernels  # by the fused node's (unique) output name
        self._impls = {op: self._run_fused for op in fused_types}

    def _run_fused(self, node: Node, args: list) -> list[np.ndarray]:
        kernel = self._kernels.get(node.outputs[0])
        if kernel is None:  # an op type some of whose nodes have a kernel (MaxPool)
            return run_node(node, args, self.graph.opset)
        return kernel(node, args)


def load_package(directory, segments: bool = True) -> Package:
    """The package `tuner.network.package.write_package` (`tune build --model`) wrote. With
    `segments` False, each kernel node is called from Python rather than each run of them by
    its segment function (tuner/network/segments.py): for probes that time nodes one by one."""
    root = Path(directory)
    if not root.is_dir():
        raise TunerError(f"no model package at '{root}' (a directory `tune build --model` "
                         f"writes)")
    graph_file, weights_file = root / GRAPH_FILE, root / WEIGHTS_FILE
    document = _read_document(graph_file)
    try:
        nodes_json = list(document["nodes"])
        library_name = document["library"]
        keys = {str(key) for key in document["initializers"].values()}
        for entry in nodes_json:
            for value in entry["attributes"].values():
                keys.update(_tensor_keys(value))
        check_cpu(document, graph_file)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise TunerError(f"'{graph_file}' is malformed: {_detail(err)}") from None
    arrays = _read_arrays(weights_file, keys)
    library = _open_library(root / library_name) if library_name else None
    try:
        initializers = {name: arrays[key]
                        for name, key in document["initializers"].items()}
        kernels, nodes, fused_types, views = {}, [], set(), {}
        for entry in nodes_json:
            node = Node(str(entry["op_type"]), str(entry["name"]),
                        tuple(map(str, entry["inputs"])), tuple(map(str, entry["outputs"])),
                        {k: _attribute(v, arrays) for k, v in entry["attributes"].items()},
                        str(entry.get("domain", "")))
            if "view" in entry:
                views[node.outputs[0]] = tuple(int(d) for d in entry["view"]["result_shape"])
            if "kernel" in entry:
                if library is None:
                    raise TunerError(f"'{graph_file}' names kernels but no library")
                kernel, runtime = _bind(entry["kernel"], node, initializers, library,
                                        weights_file)
                kernels[node.outputs[0]] = kernel
                fused_types.add(node.op_type)
                # Its constants are bound (packed) in the kernel: the node reads the rest.
                node = Node(node.op_type, node.name, runtime, node.outputs, {}, node.domain)
            nodes.append(node)
        if segments:
            nodes, runners = _segmented(nodes, document.get("segments", []), kernels, views,
                                        set(document["outputs"]), library, graph_file)
            fused_types.update(runners)
        still_read = {i for n in nodes for i in n.inputs} | set(document["outputs"])
        graph = Graph({i["name"]: tuple(int(d) for d in i["shape"]) for i in document["inputs"]},
                      tuple(document["outputs"]), tuple(nodes),
                      {k: v for k, v in initializers.items() if k in still_read},
                      {}, int(document["opset"]), str(document.get("name", "")))
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as err:
        raise TunerError(f"'{graph_file}' is malformed: {_detail(err)}") from None
    package = Package(root, graph, kernels, fused_types, library, document)
    if segments:
        package._impls.update(runners)
    check_supported(graph, package._impls)
    return package


SEGMENT_OP = "TunerSegment"


def _segmented(nodes: list[Node], specs: list, kernels: dict, views: dict,
               graph_outputs: set[str], library, graph_file: Path) -> tuple[list[Node], dict]:
    """The nodes with each segment's run of kernel nodes (and views) replaced by one node
    that its segment function runs, and the implementations of those nodes by op type (one
    per segment: `TunerSegment<k>`)."""
    replaced, runners = {}, {}
    # A segment function calls the kernels it was built for on the slots it is given: a
    # segment that does not name exactly those nodes would pass them the wrong pointers.
    runs = kernel_runs(nodes, lambda node: node.outputs[0] in kernels,
                       lambda node: node.outputs[0] in views)
    if specs and len(specs) != len(runs):
        raise TunerError(f"'{graph_file}' is malformed: {len(specs)} segments for "
                         f"{len(runs)} runs of kernel nodes")
    for number, (spec, run_range) in enumerate(zip(specs, runs)):
        indices = [int(i) for i in spec["nodes"]]
        if indices != list(run_range):
            raise TunerError(f"'{graph_file}' is malformed: segment {number} is not a run of "
                             f"kernel nodes: {indices}")
        run = [nodes[i] for i in indices]
        after = graph_outputs | {name for node in nodes[indices[-1] + 1:]
                                 for name in node.inputs}
        function = _function(library, str(spec["function"]),
                             [ctypes.POINTER(ctypes.c_void_p)])
        segment = Segment(function, run, [kernels[n.outputs[0]] for n in run
                                          if n.outputs[0] in kernels], after, views)
        op_type = f"{SEGMENT_OP}{number}"
        runners[op_type] = segment
        replaced[indices[0]] = Node(op_type, f"segment{number}", segment.inputs,
                                    segment.outputs, {})
        replaced.update((i, None) for i in indices[1:])
    rewritten = [replaced.get(i, node) for i, node in enumerate(nodes)]
    return [node for node in rewritten if node is not None], runners


def _detail(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    if isinstance(err, KeyError):
        return f"missing {text}"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _read_document(path: Path) -> dict:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise TunerError(f"no {path.name} in '{path.parent}': not a model package") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TunerError(f"'{path}' is not readable JSON: {_detail(err)}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise TunerError(f"'{path}' is not a tuner model package graph (no \"format\": "
                         f"\"{FORMAT}\")")
    if document.get("version") not in READABLE_VERSIONS:
        raise TunerError(f"'{path}' is package format version {document.get('version')!r}; "
                         f"this tuner reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))}: rebuild it with "
                         f"`tune build --model`")
    return document


def _read_arrays(path: Path, keys: set[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = sorted(keys - set(npz.files))
            if missing:
                raise TunerError(f"'{path}' has no array '{missing[0]}', which "
                                 f"{GRAPH_FILE} names")
            return {key: npz[key] for key in keys}
    except FileNotFoundError:
        raise TunerError(f"no {path.name} in '{path.parent}': the package has lost its "
                         f"weights") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise TunerError(f"'{path}' is not a readable weights file: {_detail(err)}") from None


def _open_library(path: Path):
    if not path.is_file():
        raise TunerError(f"no kernel library '{path}'")
    try:
        return ctypes.CDLL(str(path.resolve()))
    except OSError as err:
        raise TunerError(f"'{path}' cannot be loaded: {_detail(err)}") from None


def _function(library, symbol: str, argtypes: list):
    try:
        function = getattr(library, symbol)
    except AttributeError:
        raise TunerError(f"'{library._name}' has no function '{symbol}'") from None
    function.argtypes = argtypes
    function.restype = None
    return function


def _bind(spec: dict, node: Node, initializers: dict, library, weights_file: Path):
    """The fused node's kernel with its constants packed, and the names of its runtime
    inputs (in operand order)."""
    operands = spec["operands"]
    if len(operands) != len(node.inputs):
        raise TunerError(f"'{weights_file.parent / GRAPH_FILE}' is malformed: node "
                         f"'{node.name}' has {len(node.inputs)} inputs for "
                         f"{len(operands)} kernel operands")
    arguments, runtime, input_shapes, input_dtypes = [], [], [], []
    for operand, source in zip(operands, node.inputs):
        shape = tuple(int(d) for d in operand["shape"])
        dtype = operand.get("dtype", "float32")  # packages of float32 kernels name none
        if not operand["constant"]:
            arguments.append(None)
            runtime.append(source)
            input_shapes.append(shape)
            input_dtypes.append(dtype)
            continue
        array = initializers[source]
        if array.shape != shape:
            raise TunerError(f"'{weights_file}': '{source}' has shape {array.shape}, the "
                             f"kernel {spec['symbol']} takes {shape}")
        array = kernel_input(node.name, array, shape, dtype).reshape(shape)
        if operand["packed"]:
            pack = _function(library, operand["packed"]["function"], [ctypes.c_void_p] * 2)
            dst = aligned_empty(tuple(int(d) for d in operand["packed"]["shape"]),
                                operand["packed"].get("dtype", dtype))
            pack(dst.ctypes.data, array.ctypes.data)
            array = dst
        arguments.append(aligned_copy(array))  # a packed one already is
    function = _function(library, spec["symbol"], [ctypes.c_void_p] * (1 + len(operands)))
    kernel = _BoundKernel(function, arguments, input_shapes,
                          tuple(int(d) for d in spec["output_shape"]),
                          tuple(int(d) for d in spec["result_shape"]), input_dtypes,
                          spec.get("output_dtype", "float32"))
    return kernel, tuple(runtime)


def _tensor_keys(value) -> list[str]:
    if isinstance(value, Mapping):
        return [str(value["tensor"])] if "tensor" in value else list(map(str, value["tensors"]))
    return []


def _attribute(value, arrays: dict[str, np.ndarray]):
    """The inverse of package._attribute_json."""
    if isinstance(value, Mapping):
        if "tensor" in value:
            return arrays[value["tensor"]]
        return [arrays[k] for k in value["tensors"]]
    return value
