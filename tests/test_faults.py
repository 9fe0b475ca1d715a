"""Faults injected with real processes and real signals: a worker killed while idle or busy,
the tuner killed while a candidate hangs, Ctrl-C while the workers start, SIGTERM. Nothing
stored is lost, no worker outlives the tuner, and nothing prints a traceback.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import records_helpers as h

from records import RecordStore, RecordsError, schedule_hash
from tuner.ir.target import host_target
from tuner.ir.task import Task

TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def _tune(db: Path | str, trials: int, shape: str = "40,40,40") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuner.cli", "matmul", "--shape", shape,
                             "--trials", str(trials), "--batch-size", "4", "--threads", "1",
                             "--db", str(db), "--quiet", "--strategy", "random"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _stored(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with RecordStore(f"sqlite:///{db}") as store:
            return store.count()
    except RecordsError:  # created but not initialised yet
        return 0


def _wait_for_records(db: Path, n: int, timeout_s: float = 120) -> int:
    deadline = time.time() + timeout_s
    while (stored := _stored(db)) < n and time.time() < deadline:
        time.sleep(0.2)
    return stored


def _children(pid: int) -> dict[int, str]:
    """Live child processes of `pid`: pid -> command line."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out[int(entry.name)] = cmdline
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _runner_of(pid: int, timeout_s: float = 60) -> int:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        runners = [p for p, cmd in _children(pid).items() if '"role": "run"' in cmd]
        if runners:
            return runners[0]
        time.sleep(0.1)
    raise AssertionError("no runner worker appeared")


@pytest.mark.parametrize("moment", ["idle", "busy"])
def test_a_killed_runner_is_replaced_and_the_run_completes(tmp_path, moment):
    """kill -9 of the runner (as the out-of-memory killer would) at a random point: while it
    waits for work between batches, or while it times; the run still measures every trial
    it was asked for and exits 0."""
    db = tmp_path / "w.db"
    proc = _tune(db, 24)
    runner = _runner_of(proc.pid)
    if moment == "busy":
        _wait_for_records(db, 4)
    os.kill(runner, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert _stored(db) == 24


HANGING_PARENT = textwrap.dedent("""
    import json, sys
    from tuner.measure.measurer import MeasureInput, MeasureOptions, Measurer
    from tuner.ir.target import host_target
    from tuner.ir.task import Task
    from tuner.search.default import default_schedule
    task = Task.create("matmul", (16, 16, 16))
    target = host_target(1)
    with Measurer(target, MeasureOptions(builder="fault_builders:hang",
                                         run_timeout_s=600)) as m:
        print(json.dumps([w.proc.pid for w in m._builders + [m._runner]]), flush=True)
        m.measure([MeasureInput(task, default_schedule(task.dag(), target))])
""")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_no_worker_outlives_a_killed_tuner(tmp_path, how):
    """The tuner killed while its runner spins in a hanging candidate: the workers die with
    it, and none prints a traceback about the broken pipe."""
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(TESTS), ENV["PYTHONPATH"]])}
    proc = subprocess.Popen([sys.executable, "-c", HANGING_PARENT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    workers = json.loads(proc.stdout.readline())
    runner = workers[-1]
    deadline = time.time() + 60  # until the runner is busy with the hanging kernel
    while time.time() < deadline and _cpu_ticks(runner) < 50:
        time.sleep(0.1)
    os.kill(proc.pid, how)
    proc.wait(timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not [w for w in workers if _alive(w)]
    err = proc.stderr.read()
    assert "Traceback" not in err, err


def _cpu_ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@pytest.mark.parametrize("delay_s", [0.2, 0.6, 1.2])
def test_ctrl_c_while_the_workers_start(tmp_path, delay_s):
    """SIGINT to the tuner's process group (what the terminal sends) early in the run:
    exit 130, one line, no worker traceback, and no worker left behind."""
    db = tmp_path / "c.db"
    proc = subprocess.Popen([sys.executable, "-m", "tuner.cli", "matmul", "--shape", "40,40,40",
                             "--trials", "50", "--threads", "1", "--db", str(db), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)
    time.sleep(delay_s)
    workers = list(_children(proc.pid))
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # 130, or killed by the SIGINT itself (which a shell also reports as 130): Python ends
    # that way now and then when the signal lands while the workers start (seen 1 in 12
    # under load, after the one-line message). 0: the interrupt came before the handler.
    assert proc.returncode in (130, -signal.SIGINT, 0), err
    assert "Traceback" not in err and "Fatal Python error" not in err, err
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not [w for w in workers if _alive(w)]


def test_sigterm_keeps_every_finished_batch(tmp_path):
    db = tmp_path / "t.db"
    proc = _tune(db, 400, "64,64,64")
    stored = _wait_for_records(db, 8)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated" in err and err.count("\n") == 1, err
    with RecordStore(f"sqlite:///{db}") as store:
        records = store.history(Task.create("matmul", (64, 64, 64)), host_target(1))
    assert len(records) >= stored and len(records) % 4 == 0  # whole batches only


@pytest.mark.parametrize("backend", ["file"] + (["postgresql"] if h.POSTGRES_URL else []))
def test_three_tuners_on_one_task_measure_disjoint_schedules(tmp_path, backend):
    """Three `tune` processes with the same seed (so the same proposals, the worst case) on
    one task and one log: every schedule is measured once, trials are numbered without a
    gap or a collision, and each process still measures its whole budget."""
    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp_path / 'shared.db'}" if backend == "file" else \
            stack.enter_context(h.scratch_database(h.POSTGRES_URL))
        _tune_three_at_once(url)


def _tune_three_at_once(url: str) -> None:
    procs = [_tune(url, 12, "24,24,24") for _ in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    with RecordStore(url) as store:
        task, target = Task.create("matmul", (24, 24, 24)), host_target(1)
        records = store.history(task, target)
        assert store.claims(task, target) == []  # measured or released: none left
    assert len(records) == 36
    assert len({r.schedule_json for r in records}) == 36
    assert sorted(r.trial for r in records) == list(range(36))


HANGING_TUNER = textwrap.dedent("""
    import sys
    from records import RecordStore
    from tuner.measure.measurer import MeasureOptions, Measurer
    from tuner.ir.target import host_target
    from tuner.ir.task import Task
    from tuner.search.tune import TuneConfig, tune
    target = host_target(1)
    with RecordStore(sys.argv[1]) as store, Measurer(target, MeasureOptions(
            builder=sys.argv[2], run_timeout_s=600)) as m:
        tune(Task.create("matmul", (24, 24, 24)), target, store, m,
             TuneConfig(trials=4, batch_size=4, strategy="random"))
""")


def test_the_claims_of_a_killed_tuner_lapse(tmp_path):
    """kill -9 while the batch in flight hangs: its claims stay in the log, and the next
    tuner (same seed: it proposes that batch again) measures those schedules, their owner
    being gone, instead of skipping them for the claims' lease."""
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    task, target = Task.create("matmul", (24, 24, 24)), host_target(1)
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(TESTS), ENV["PYTHONPATH"]])}
    proc = subprocess.Popen([sys.executable, "-c", HANGING_TUNER, url, "fault_builders:hang"],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    claimed: list = []
    while time.time() < deadline and len(claimed) < 4:
        time.sleep(0.2)
        with contextlib.suppress(RecordsError):  # the log may not be made yet
            with RecordStore(url) as store:
                claimed = store.claims(task, target)
    assert len(claimed) == 4 and all(c[1].split("/")[1] == str(proc.pid) for c in claimed)
    proc.kill()
    proc.wait()
    again = subprocess.run([sys.executable, "-c", HANGING_TUNER, url,
                            "tuner.measure.worker:build"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    with RecordStore(url) as store:
        assert store.claims(task, target) == []
        measured = {schedule_hash(r.schedule_json) for r in store.history(task, target)}
    assert measured == {c[0] for c in claimed}
