import os
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from tuner.ir.cpu_probe import probe
from tuner.ir.target import Target, host_target


@pytest.fixture(scope="session")
def target1():
    return host_target(1)


@pytest.fixture(scope="session")
def target2():
    return host_target(2)


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> str:
    """The path of an empty records database (SQLite), one per test module: what is built
    from it has no tuned schedule, so its kernels are the default ones."""
    from records import RecordStore

    path = tmp_path_factory.mktemp("db") / "empty.db"
    RecordStore(f"sqlite:///{path}").close()
    return str(path)


@cache
def generated_target(cpu: str, threads: int) -> Target:
    """The target `named_target(cpu, threads)` makes, without its check that this host can run
    the code: code for a CPU may be generated on any host; only running it needs its ISA. For
    tests that emit, compile and read code; one that calls a kernel also calls
    `skip_unless_host_runs`. `cpu` must be a name LLVM knows: the probe runs in this process,
    which LLVM ends on an unknown one."""
    host = host_target(threads)
    return Target(host.triple, cpu, ",".join(probe(cpu)), host.threads)


def skip_unless_host_runs(target: Target) -> None:
    """Skips the calling test from here on if this host lacks an ISA feature of `target`'s
    code (x86-64-v4 on an AVX2 machine): called after the checks of the generated code,
    before the first call of a kernel, so those checks still run on every host."""
    host = host_target(1)
    have = {f for f in host.features.split(",") if f.startswith("+")}
    missing = [f[1:] for f in target.features.split(",") if f.startswith("+") and f not in have]
    if missing:
        pytest.skip(f"the host ({host.cpu}) has no {', '.join(missing)}: {target.cpu} code "
                    f"can be generated here, not run")


def kernel_assembly(nest, target) -> str:
    """The assembly of `nest`'s kernel for `target`, optimised as it is compiled."""
    from tuner.codegen.emit import emit_llvm
    from tuner.codegen.jit import optimize, target_machine

    return target_machine(target).emit_assembly(optimize(str(emit_llvm(nest, target)), target))


def c_program_calls_int8_matmul(folder, name: str, shape: tuple[int, int, int], inputs,
                                packed: bool) -> np.ndarray:
    """The uint8 output of the library's int8 matmul `name` (bias, requantized to uint8), as
    a C program of its own computes it in `folder`, which holds libtuner_kernels.so and its
    header: the inputs read from files, the weight packed by the library's pack function
    (`packed`) or copied as it is."""
    import subprocess

    m, n, k = shape
    for label, arr in zip(("a", "b", "bias", "scale", "zp"), inputs):
        arr.tofile(folder / f"{label}.bin")
    pack = f"{name}_pack_b(b_packed, b);" if packed else f"memcpy(b_packed, b, {k * n});"
    size = f"{name.upper()}_B_PACKED_BYTES" if packed else str(k * n)
    (folder / "main.c").write_text(f"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tuner_kernels.h"
static void *load(const char *path, size_t bytes) {{
    void *p = malloc(bytes); FILE *f = fopen(path, "rb");
    if (!f || fread(p, 1, bytes, f) != bytes) exit(3);
    fclose(f); return p;
}}
int main(void) {{
    uint8_t *a = load("a.bin", {m} * {k});
    int8_t *b = load("b.bin", {k} * {n});
    int32_t *bias = load("bias.bin", 4 * {n});
    float *scale = load("scale.bin", 4 * {n});
    int32_t *zp = load("zp.bin", 8);
    void *b_packed = malloc({size});
    {pack}
    static uint8_t out[{m} * {n}];
    {name}(out, a, b_packed, bias, scale, zp);
    FILE *f = fopen("out.bin", "wb"); fwrite(out, 1, sizeof out, f); fclose(f);
    return 0;
}}
""")
    subprocess.run(["cc", "-O2", "-std=c99", "-o", "main", "main.c", "-I.", "-L.",
                    "-ltuner_kernels", "-Wl,-rpath,$ORIGIN"], cwd=folder, check=True)
    subprocess.run(["./main"], cwd=folder, check=True, timeout=120)
    return np.fromfile(folder / "out.bin", dtype=np.uint8).reshape(m, n)


def assert_matches_reference(dag, out, inputs):
    rtol, atol = dag.tolerance()
    np.testing.assert_allclose(out, dag.reference(*inputs), rtol=rtol, atol=atol)


def assert_sampled_schedule_matches_reference(rng, target):
    """A random task, a random sketch of it and an annotation sampled for `target`: the
    kernel it makes computes what numpy does."""
    from schedule_gen import random_task
    from tuner.search.annotate import sample, to_steps
    from tuner.codegen.jit import CompiledKernel
    from tuner.ir.schedule import apply_steps
    from tuner.search.sketch import generate_sketches

    dag = random_task(rng).dag()
    sketches = generate_sketches(dag)
    sketch = sketches[int(rng.integers(len(sketches)))]
    ann = sample(rng, dag, sketch, target)
    kernel = CompiledKernel(apply_steps(dag, to_steps(dag, sketch, ann, target)), target)
    inputs = dag.random_inputs(rng)
    assert_matches_reference(dag, kernel(*inputs), inputs)


@pytest.fixture(scope="session")
def cluster_certificates(tmp_path_factory):
    """The folder of the README's cluster certificates (tests/cluster_tls.py)."""
    from cluster_helpers import make_certificates
    return make_certificates(tmp_path_factory.mktemp("cluster-ca"))


@pytest.fixture(scope="session")
def stranger_certificates(tmp_path_factory):
    """The same recipe run again: a CA the cluster does not know, and its certificates."""
    from cluster_helpers import make_certificates
    return make_certificates(tmp_path_factory.mktemp("stranger-ca"))


@pytest.fixture
def worker_path(monkeypatch):
    """Dask's worker processes import the tests' helper modules (fault builders, forged
    workers) as measure workers do."""
    tests = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
