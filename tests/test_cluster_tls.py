"""TLS between tuner, scheduler and workers (tuner/measure/tls.py), with a real Dask
scheduler, real `tune worker` processes and the README's certificates
(tests/cluster_helpers.py):

- over tls://, `tune worker` and `tune --cluster` tune end to end, and nothing of the records
  URL is sent to the workers;
- the TLS scheduler refuses a peer with no certificate or one of another CA, and a plain
  tcp:// tuner or worker; each refused `tune` says so in one line and exits 2, no hang;
- TLS flags and files are checked before anything connects; Dask's configuration stands in
  for a flag left out.

The checks on what workers answer: tests/test_cluster_answers.py."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest

pytest.importorskip("distributed")

import tuner.measure.cluster as cluster  # noqa: E402
from cluster_helpers import one_error_line, tls_flags  # noqa: E402
from records import RecordStore  # noqa: E402
from tuner import cli  # noqa: E402
from tuner.errors import TunerError  # noqa: E402
from tuner.ir.target import host_target  # noqa: E402
from tuner.ir.task import Task  # noqa: E402
from tuner.measure.cluster import target_resource  # noqa: E402
from tuner.measure.tls import TlsFiles, cluster_security  # noqa: E402

TASK = Task.create("matmul", (24, 24, 24))
TUNE = ["matmul", "--shape", "24,24,24", "--threads", "1", "--quiet"]
SUBPROCESS_S = 120  # a refused `tune worker` that hung instead would fail the test here


@pytest.fixture
def tls_scheduler(cluster_certificates):
    """A Dask scheduler (no workers) on tls:// with the README's scheduler certificate; the
    LocalCluster object itself talks to it with the tuner's."""
    from distributed import LocalCluster
    from distributed.security import Security

    def path(name: str) -> str:
        return str(cluster_certificates / name)

    security = Security(tls_ca_file=path("ca.pem"), tls_scheduler_cert=path("scheduler.pem"),
                        tls_scheduler_key=path("scheduler.key"),
                        tls_client_cert=path("tuner.pem"), tls_client_key=path("tuner.key"),
                        require_encryption=True)
    with LocalCluster(n_workers=0, processes=True, security=security, dashboard_address=None,
                      silence_logs=40) as scheduler:
        assert scheduler.scheduler_address.startswith("tls://")
        yield scheduler


def _tune_worker(address: str, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuner.cli", "worker", address, "--threads",
                             "1", *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _refused_worker_line(address: str, *flags: str) -> str:
    """The error line of a `tune worker` that must stop by itself, with status 2."""
    worker = _tune_worker(address, *flags)
    _, err = worker.communicate(timeout=SUBPROCESS_S)
    assert worker.returncode == cli.EXIT_USAGE, err
    (line,) = [text for text in err.splitlines() if text.startswith("tune: error: ")]
    assert "Traceback" not in err, err
    return line


def test_tune_worker_and_a_tuner_tune_over_tls(tls_scheduler, cluster_certificates, tmp_path,
                                               capsys, monkeypatch):
    from distributed import Client

    address = tls_scheduler.scheduler_address
    worker = _tune_worker(address, "--name", "target-machine",
                          *tls_flags(cluster_certificates, "worker1"))
    try:
        with Client(tls_scheduler) as client:
            deadline = time.monotonic() + 60
            while not client.scheduler_info()["workers"] and time.monotonic() < deadline:
                time.sleep(0.2)
            (address_of_worker, info), = client.scheduler_info()["workers"].items()
            assert address_of_worker.startswith("tls://") and info["name"] == "target-machine"
            assert info["resources"] == {target_resource(host_target(1)): 1}
        submitted = []
        submit = Client.submit

        def recording_submit(self, function, *args, **kwargs):
            submitted.append((function, args, kwargs))
            return submit(self, function, *args, **kwargs)

        monkeypatch.setattr(Client, "submit", recording_submit)
        db = tmp_path / "s3cret-password.db"
        status = cli.main(TUNE + ["--trials", "6", "--batch-size", "3", "--cluster", address,
                                  "--db", str(db), "--json",
                                  *tls_flags(cluster_certificates, "tuner")])
        assert status == cli.EXIT_OK, capsys.readouterr().err
        with RecordStore(f"sqlite:///{db}") as store:
            history = store.history(TASK, host_target(1))
        assert len(history) == 6 and all(r.result.ok for r in history)
        assert {r.result.machine for r in history} == {"target-machine"}
        # what went to the workers: chunks of data, nothing of the records' URL
        assert submitted and {f for f, _, _ in submitted} == {cluster.measure_chunk}
        assert "s3cret" not in repr([args for _, args, _ in submitted])
        capsys.readouterr()
        assert cli.main(["show", "--db", str(db)]) == cli.EXIT_OK
        assert "measured by target-machine (6)" in capsys.readouterr().out
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode in (0, cli.EXIT_TERMINATED), err
    assert "joining " + address in err


def test_the_tls_scheduler_refuses_whoever_has_no_certificate_of_its_ca(
        tls_scheduler, cluster_certificates, stranger_certificates, tmp_path, capsys):
    from distributed import Client

    address = tls_scheduler.scheduler_address
    host, port = address[len("tls://"):].rsplit(":", 1)
    # TLS with the right CA, but no certificate of one's own: the scheduler hangs up
    context = ssl.create_default_context(cafile=str(cluster_certificates / "ca.pem"))
    context.check_hostname = False
    try:
        with context.wrap_socket(socket.create_connection((host, int(port)), timeout=30)) as tls:
            answered = tls.recv(1)
    except (ssl.SSLError, ConnectionError):
        answered = b""
    assert answered == b""

    db = ["--db", str(tmp_path / "r.db")]
    tune = TUNE + ["--trials", "2", "--cluster", address] + db
    mixed = ["--tls-ca-file", str(cluster_certificates / "ca.pem"),
             "--tls-cert", str(stranger_certificates / "tuner.pem"),
             "--tls-key", str(stranger_certificates / "tuner.key")]
    for flags in (tls_flags(stranger_certificates, "tuner"), mixed):  # each side refuses
        assert cli.main(tune + flags) == cli.EXIT_USAGE
        line = one_error_line(capsys)
        assert f"the Dask scheduler at {address} and this tuner refused each other's TLS " \
               f"certificate" in line, line
    plain = "tcp://" + address[len("tls://"):]
    assert cli.main(TUNE + ["--trials", "2", "--cluster", plain] + db) == cli.EXIT_USAGE
    line = one_error_line(capsys)
    assert f"the Dask scheduler at {plain} closed the connection in the handshake" in line
    assert "if it runs TLS, join it at its tls:// address" in line
    assert cli.main(tune) == cli.EXIT_USAGE
    assert f"the tls:// scheduler {address} needs --tls-ca-file and --tls-cert" in \
        one_error_line(capsys)

    line = _refused_worker_line(address, *tls_flags(stranger_certificates, "worker1"))
    assert "and this worker refused each other's TLS certificate" in line, line
    line = _refused_worker_line(plain)
    assert f"the Dask scheduler at {plain} closed the connection in the handshake" in line
    with Client(tls_scheduler) as client:
        assert client.scheduler_info()["workers"] == {}
    with RecordStore(f"sqlite:///{tmp_path / 'r.db'}") as store:
        assert store.count() == 0


def test_tls_flags_and_files_are_checked_before_anything_connects(cluster_certificates,
                                                                  tmp_path, capsys):
    flags = tls_flags(cluster_certificates, "tuner")
    nowhere = "tls://127.0.0.1:9"  # nothing listens there: each error comes first
    db = ["--db", str(tmp_path / "r.db")]
    cases = [
        (["--cluster", "tcp://127.0.0.1:9", *flags],
         "--tls-ca-file, --tls-cert, --tls-key are for a tls:// scheduler; "
         "'tcp://127.0.0.1:9' is a plain tcp:// address"),
        (["--cluster", "local:1", *flags], "local:1 makes its own certificate for the run"),
        (flags, "--tls-ca-file, --tls-cert, --tls-key go with --cluster tls://HOST:PORT"),
        (["--cluster", nowhere, *flags[:3], str(tmp_path / "absent.pem")],
         f"--tls-cert '{tmp_path / 'absent.pem'}': no such file"),
        (["--cluster", nowhere, *flags[:5], str(cluster_certificates / "worker1.key")],
         "cannot load the TLS files (--tls-ca-file "),
        (["--cluster", nowhere, "--tls-ca-file", str(cluster_certificates / "tuner.key"),
          *flags[2:]], "cannot load the TLS files"),
    ]
    for extra, expected in cases:
        assert cli.main(TUNE + ["--trials", "2", *extra] + db) == cli.EXIT_USAGE, extra
        line = one_error_line(capsys)
        assert expected in line, (extra, line)
    assert cli.main(["worker", "tcp://127.0.0.1:9", *tls_flags(cluster_certificates,
                                                               "worker1")]) == cli.EXIT_USAGE
    assert "are for a tls:// scheduler" in capsys.readouterr().err


def test_dask_configuration_gives_the_tls_files_a_flag_leaves_out(cluster_certificates):
    import dask

    ca, worker1, tuner = (str(cluster_certificates / f) for f in
                          ("ca.pem", "worker1.pem", "tuner.pem"))
    with dask.config.set({"distributed.comm.tls.ca-file": ca,
                          "distributed.comm.tls.client.cert": tuner,
                          "distributed.comm.tls.client.key": tuner[:-4] + ".key",
                          "distributed.comm.tls.worker.cert": worker1,
                          "distributed.comm.tls.worker.key": worker1[:-4] + ".key"}):
        client = cluster_security("tls://h:8786", TlsFiles(), "client")
        assert (client.tls_ca_file, client.tls_client_cert) == (ca, tuner)
        worker = cluster_security("tls://h:8786", TlsFiles(cert=tuner,
                                                            key=tuner[:-4] + ".key"), "worker")
        assert (worker.tls_ca_file, worker.tls_worker_cert) == (ca, tuner)  # the flag wins
    with dask.config.set({"distributed.comm.tls.client.cert": "/nowhere/tuner.pem"}):
        with pytest.raises(TunerError, match="distributed.comm.tls.client.cert "
                                             "'/nowhere/tuner.pem': no such file"):
            cluster_security("tls://h:8786", TlsFiles(ca_file=ca), "client")


def _run_against_a_silent_listener(args_for) -> tuple[int, str]:
    """(exit status, address) of `tune` with `args_for(address)`, where the address is a
    listener that accepts the connection and never speaks (a scheduler that hangs, or
    something else on its port). Run on a thread, so that a hang fails the test."""
    import threading

    codes: list[int] = []
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        run = threading.Thread(target=lambda: codes.append(cli.main(args_for(address))),
                               daemon=True)
        run.start()
        run.join(60)  # a bound on a hang, not a measure of speed
    assert not run.is_alive() and codes, f"tune {args_for(address)} still waits"
    return codes[0], address


def test_tune_worker_gives_up_on_a_scheduler_that_never_answers(monkeypatch, capsys):
    """`tune worker` stops with one line once JOIN_TIMEOUT_S has passed (shortened here),
    where a Dask worker would wait for ever."""
    import tuner.measure.cluster_worker as cluster_worker

    monkeypatch.setattr(cluster_worker, "JOIN_TIMEOUT_S", 1.0)
    code, address = _run_against_a_silent_listener(lambda address: ["worker", address])
    assert code != cli.EXIT_OK
    joining, line = capsys.readouterr().err.strip().splitlines()  # what it tried, and why not
    assert joining.startswith("tune: worker for ") and joining.endswith(f"joining {address}")
    assert line == (f"tune: error: cannot reach the Dask scheduler at {address}: no answer "
                    f"within 1 s"), line


def test_a_tuner_gives_up_on_a_scheduler_that_never_answers(monkeypatch, capsys, tmp_path):
    """The same with --cluster: one line once CONNECT_TIMEOUT_S has passed (shortened here);
    Dask's client alone would wait in its handshake for ever."""
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1.0)
    code, address = _run_against_a_silent_listener(lambda address: TUNE + [
        "--trials", "2", "--cluster", address, "--db", str(tmp_path / "r.db")])
    assert code != cli.EXIT_OK
    line = one_error_line(capsys)
    assert line == (f"tune: error: cannot reach the Dask scheduler at {address}: no answer "
                    f"within 1 s"), line
