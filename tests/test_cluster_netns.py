"""Tuning across real network hosts: two network namespaces joined by a veth pair, the Dask
scheduler and a PostgreSQL store in one (with the tuner), a `tune worker` in the other. The
tuner reaches the worker only through the scheduler's address on the veth link, over TLS with
the README's certificates (one per machine, as the README makes them), and every record lands
in the PostgreSQL store, naming the worker that measured it; a plain tcp:// worker on the other
host is refused in one line.

Needs root, `ip netns` and PostgreSQL's server binaries (.ci/run installs them and runs as
root); elsewhere it is skipped, saying which of them is missing."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pytest.importorskip("psycopg")

from cluster_helpers import tls_flags  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _run(*command: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, check=check, **kwargs)


def _netns_allowed() -> str | None:
    """None, or why this test cannot run here."""
    if os.geteuid() != 0:
        return "network namespaces need root (.ci/run runs as root)"
    if not shutil.which("ip"):
        return "no `ip` command (iproute2)"
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        return "no PostgreSQL server binaries (.ci/run installs them)"
    probe = f"tuner-probe-{os.getpid()}"
    done = _run("ip", "netns", "add", probe, check=False)
    if done.returncode:
        return f"`ip netns add` is not allowed here: {done.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


@pytest.fixture
def two_hosts():
    """Namespaces A (10.X.0.1) and B (10.X.0.2) on a veth pair; removed afterwards."""
    reason = _netns_allowed()
    if reason:
        pytest.skip(reason)
    tag = os.getpid() % 100000
    subnet = 10 + os.getpid() % 200
    a, b = f"tuner-a-{tag}", f"tuner-b-{tag}"
    hosts = {a: f"10.{subnet}.0.1", b: f"10.{subnet}.0.2"}
    try:
        _run("ip", "netns", "add", a)
        _run("ip", "netns", "add", b)
        _run("ip", "link", "add", f"tva{tag}", "type", "veth", "peer", "name", f"tvb{tag}")
        for ns, dev in ((a, f"tva{tag}"), (b, f"tvb{tag}")):
            _run("ip", "link", "set", dev, "netns", ns)
            _run("ip", "-n", ns, "addr", "add", f"{hosts[ns]}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b, hosts
    finally:
        for ns in (a, b):
            _run("ip", "netns", "del", ns, check=False)


def _in(ns: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *command]


@pytest.fixture
def postgres_in(two_hosts):
    """A PostgreSQL server listening on namespace A's address only."""
    a, b, hosts = two_hosts
    bin_dir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1]).parent
    folder = tempfile.mkdtemp(prefix="tuner-pg-")
    shutil.chown(folder, "postgres")
    data = f"{folder}/data"
    _run("runuser", "-u", "postgres", "--", str(bin_dir / "initdb"), "-D", data, "-A",
         "trust", "-U", "postgres")
    with open(f"{data}/pg_hba.conf", "a") as f:  # the tuner connects over A's address
        f.write(f"host all all {hosts[a]}/24 trust\n")
    _run(*_in(a, "runuser", "-u", "postgres", "--", str(bin_dir / "pg_ctl"), "-D", data,
              "-l", f"{folder}/log", "-w", "-o",
              f"-p 5432 -k {folder} -c listen_addresses={hosts[a]} -c fsync=off", "start"))
    try:
        yield f"postgresql+psycopg://postgres@{hosts[a]}:5432/postgres"
    finally:
        _run(*_in(a, "runuser", "-u", "postgres", "--", str(bin_dir / "pg_ctl"), "-D", data,
                  "-m", "immediate", "-w", "stop"), check=False)
        shutil.rmtree(folder, ignore_errors=True)


def test_tune_across_two_network_hosts_over_tls(two_hosts, postgres_in, cluster_certificates):
    a, b, hosts = two_hosts
    address = f"tls://{hosts[a]}:8786"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # `dask scheduler` as the README runs it, on A's address
    scheduler = subprocess.Popen(_in(a, sys.executable, "-m", "distributed.cli.dask_scheduler",
                                     "--host", hosts[a], "--port", "8786", "--no-dashboard",
                                     *tls_flags(cluster_certificates, "scheduler")),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 env=env)
    worker = subprocess.Popen(_in(b, sys.executable, "-m", "tuner.cli", "worker", address,
                                  "--threads", "1", "--name", "host-b",
                                  *tls_flags(cluster_certificates, "worker1")),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=env)
    try:
        tuned = _run(*_in(a, sys.executable, "-m", "tuner.cli", "matmul", "--shape",
                          "24,24,24", "--trials", "6", "--batch-size", "3", "--threads", "1",
                          "--quiet", "--json", "--cluster", address, "--db", postgres_in,
                          *tls_flags(cluster_certificates, "tuner")),
                     check=False, env=env, timeout=600)
        assert tuned.returncode == 0, tuned.stderr
        assert json.loads(tuned.stdout)["trials"] == 6
        shown = _run(*_in(a, sys.executable, "-m", "tuner.cli", "show", "--db", postgres_in),
                     env=env, timeout=120)
        assert "measured by host-b (6)" in shown.stdout, shown.stdout
        # B is another host: it reaches A over the veth link, and finds nothing of A's on its
        # own loopback
        reached = _run(*_in(b, sys.executable, "-c", "import socket; socket.create_connection("
                            f"('{hosts[a]}', 5432), timeout=3)"), check=False, env=env)
        assert reached.returncode == 0
        loopback = _run(*_in(b, sys.executable, "-c", "import socket; socket.create_connection("
                             "('127.0.0.1', 5432), timeout=3)"), check=False, env=env)
        assert loopback.returncode != 0
        # a worker on B that joins A's scheduler over plain tcp:// is refused, in one line
        plain = _run(*_in(b, sys.executable, "-m", "tuner.cli", "worker",
                          f"tcp://{hosts[a]}:8786", "--threads", "1"),
                     check=False, env=env, timeout=120)
        assert plain.returncode == 2, plain.stderr
        assert plain.stderr.strip().splitlines()[-1].startswith(
            f"tune: error: the Dask scheduler at tcp://{hosts[a]}:8786 closed the connection "
            f"in the handshake"), plain.stderr
    finally:
        for proc in (worker, scheduler):
            proc.terminate()
        for proc in (worker, scheduler):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
