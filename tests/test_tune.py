"""The search and the `tune` loop: determinism, resumption, interruption, seeding, ranking.

Nothing here asserts on speed: which schedule is faster is the benchmarks' business (shared
2-core machines whose CPU changes between sessions); these tests are about what is proposed,
in which order, and what is stored."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from costmodel.features import extract_features
from costmodel.xgb import ESTIMATE, XGBCostModel
from records import RecordsError, RecordStore
from tuner.search.annotate import expert_annotation
from tuner.measure.measurer import MeasureOptions, Measurer
from tuner.measure.result import ErrorKind, MeasureResult
from tuner.ir.schedule import apply_steps
from tuner.search.strategies import (EvolutionarySearch, OptunaSearch, RandomSearch, SearchConfig,
                          make_candidate)
from tuner.search.sketch import generate_sketches
from tuner.ir.target import host_target
from tuner.ir.task import Task
from tuner.search.tune import TuneConfig, tune

TASK = Task.create("matmul", (48, 40, 24), relu=True)
FAST = MeasureOptions(min_sample_s=2e-4, samples=3, max_total_s=0.1)


def _strategy(name, seed, target):
    rng = np.random.default_rng(seed)
    dag = TASK.dag()
    if name == "random":
        return RandomSearch(dag, target, rng)
    if name == "optuna":
        return OptunaSearch(dag, target, rng)
    return EvolutionarySearch(dag, target, rng, XGBCostModel(), extract_features)


@pytest.mark.parametrize("name", ["random", "optuna", "evolutionary"])
def test_same_seed_same_candidates(name, target1):
    runs = []
    for _ in range(2):
        strategy = _strategy(name, 7, target1)
        first = strategy.propose(12, set())
        # pretend measurements, so the model (evolutionary) and TPE (optuna) get involved
        fake = [MeasureResult(ErrorKind.NONE, "", (1e-4 * (1 + i % 5),), 1) for i in
                range(len(first))]
        strategy.observe(first, fake)
        second = strategy.propose(12, {c.key for c in first})
        runs.append([c.key for c in first + second])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == len(runs[0]) == 24  # never the same schedule twice


def test_tuning_resumes_without_measuring_again(tmp_path, target1):
    url = f"sqlite:///{tmp_path / 'resume.db'}"
    config = TuneConfig(trials=10, batch_size=5, seed=1)
    with RecordStore(url) as store, Measurer(target1, FAST) as measurer:
        first = tune(TASK, target1, store, measurer, config, XGBCostModel(), extract_features)
        second = tune(TASK, target1, store, measurer, TuneConfig(trials=10, batch_size=5, seed=1),
                      XGBCostModel(), extract_features)
        history = store.history(TASK, target1)
    assert first.trials_run == second.trials_run == 10
    assert len(history) == 20
    assert len({r.schedule_json for r in history}) == 20  # nothing measured twice
    assert [r.trial for r in history] == list(range(20))
    assert sum(r.strategy == "default" for r in history) == 1
    assert second.best_gflops >= first.best_gflops > 0


def test_tune_command_end_to_end(tmp_path):
    from tuner.cli import main
    db = str(tmp_path / "cli.db")
    code = main(["matmul", "--shape", "32,32,16", "--trials", "6", "--batch-size", "3",
                 "--db", db, "--threads", "1", "--quiet", "--strategy", "random"])
    assert code == 0
    with RecordStore(f"sqlite:///{db}") as store:
        assert store.count() == 6
    assert main(["show", "--db", db]) == 0
    assert main(["best", "--db", db]) == 0
    out = str(tmp_path / "best.json")
    assert main(["export", "--db", db, "-o", out]) == 0
    assert main(["import", "--db", str(tmp_path / "other.db"), out]) == 0


@pytest.mark.parametrize("argv, message", [
    (["conv2d", "--shape", "1,64,x"], "--shape expects N,C,H,W,K,R,S (7 positive integers), "
                                      "got '1,64,x'"),
    (["matmul", "--shape", "4,4"], "--shape expects M,N,K (3 positive integers), got '4,4'"),
    (["conv2d", "--shape", "1,6,8,8,4,3,3", "--groups", "4"], "groups=4 must divide C=6"),
    (["matmul", "--shape", "4,4,4", "--trials", "0"], "--trials: expects a positive integer"),
    (["matmul", "--shape", "4,4,4", "--strategy", "annealing"], "invalid choice: 'annealing'"),
    (["softmax", "--shape", "4"], "invalid choice: 'softmax'"),
    (["show", "--db", "/etc/hostname"], "is not a SQLite database"),
    (["show", "--db", "/tmp"], "Is a directory: '/tmp'"),
    (["matmul", "--shape", "-4,4,4"], "--shape expects M,N,K (3 positive integers), "
                                      "got '-4,4,4'"),
    (["matmul", "--shape", "8,8,8", "--threads", "999"],
     "--threads: expects at most"),
    (["matmul", "--shape", "100000,100000,100000", "--threads", "1"],
     "its operands and output take 111.8 GiB"),
    (["matmul", "--shape", "1,1,10000000000", "--threads", "1"],  # no linear divisor search
     "its operands and output take 74.5 GiB"),
    (["export", "-o", "/etc/hostname/best.json"], "cannot write /etc/hostname/best.json: Not a directory"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    from tuner.cli import main
    if "--db" not in argv:  # never the user's database: an empty one
        RecordStore(f"sqlite:///{tmp_path / 'r.db'}").close()
        argv = argv + ["--db", str(tmp_path / "r.db")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tune: error: ") and message in err and err.count("\n") == 1


SIGINT_AS_IN_A_TERMINAL = ("import signal, sys; "
                           "signal.signal(signal.SIGINT, signal.default_int_handler); "
                           "from tuner.cli import main; sys.exit(main(sys.argv[1:]))")


def test_ctrl_c_keeps_every_finished_batch(tmp_path):
    db = tmp_path / "interrupted.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    # `tune` as a terminal starts it: with SIGINT raising KeyboardInterrupt even where this
    # test runs with SIGINT ignored (a shell's background job), which children inherit
    proc = subprocess.Popen([sys.executable, "-c", SIGINT_AS_IN_A_TERMINAL, "matmul", "--shape",
                             "64,64,64", "--trials", "400", "--batch-size", "4", "--threads",
                             "1", "--db", str(db), "--quiet", "--strategy", "random"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    stored = 0
    while stored < 8 and time.time() < deadline:
        time.sleep(0.5)
        if db.exists():
            try:
                with RecordStore(f"sqlite:///{db}") as store:
                    stored = store.count()
            except RecordsError:  # created but not initialised yet
                stored = 0
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    with RecordStore(f"sqlite:///{db}") as store:
        records = store.history(Task.create("matmul", (64, 64, 64)), host_target(1))
    assert len(records) >= stored and len(records) % 4 == 0  # whole batches only


def _expert_keys(dag, target, sketches):
    """The canonical schedule of the expert register tile in every sketch that can hold it,
    computed here independently of the search's own seeds."""
    keys = []
    for sketch in sketches:
        ann = expert_annotation(dag, sketch, target)
        if ann is not None:
            keys.append(make_candidate(dag, target, sketch, ann).key)
    return keys


def _evolutionary(target, use_seed, seed=3):
    return EvolutionarySearch(TASK.dag(), target, np.random.default_rng(seed), XGBCostModel(),
                              extract_features, SearchConfig(use_seed=use_seed))


def _split(search, proposals):
    """(seeds, ranked, random) parts of a batch, by position: the seeds first (no prediction),
    then the model's picks (each with its prediction), the epsilon share of random ones last."""
    n = len(proposals)
    n_random = round(n * search.config.epsilon)
    seeds = next((i for i, c in enumerate(proposals) if c.predicted is not None), n - n_random)
    return proposals[:seeds], proposals[seeds:n - n_random], proposals[n - n_random:]


def test_without_seed_the_search_has_no_expert_candidates(target1):
    """The search may find an expert tile on its own (then ranked by the model like any
    other), but nothing is put ahead of the model's ranking."""
    search = _evolutionary(target1, use_seed=False)
    assert search.seeds == []
    assert _expert_keys(search.dag, target1, search.sketches)  # this task has expert tiles
    proposals = search.propose(20, set())
    assert len(proposals) == 20 == len({c.key for c in proposals})
    seeds, ranked, random = _split(search, proposals)
    assert seeds == [] and len(ranked) == 19 and len(random) == 1
    assert all(c.predicted is not None for c in ranked)
    assert all(c.predicted is None for c in random)


def test_with_seed_the_expert_tiles_are_proposed_first(target1):
    search = _evolutionary(target1, use_seed=True)
    experts = _expert_keys(search.dag, target1, search.sketches)
    assert len(experts) >= 2 and [c.key for c in search.seeds] == experts
    n = 2 * len(experts)  # seeds take at most half a batch: here all of them fit
    proposals = search.propose(n, set())
    seeds, ranked, _ = _split(search, proposals)
    assert [c.key for c in seeds] == experts and all(c.predicted is None for c in seeds)
    assert ranked and not set(experts) & {c.key for c in proposals[len(experts):]}
    # a measured seed is not proposed again; the others still come first, in order
    again = _evolutionary(target1, use_seed=True).propose(n, {experts[0]})
    assert [c.key for c in again[:len(experts) - 1]] == experts[1:]
    assert again[len(experts) - 1].predicted is not None
    assert experts[0] not in {c.key for c in again}


def test_seeds_take_at_most_half_a_batch(target1):
    search = _evolutionary(target1, use_seed=True)
    assert len(search.seeds) >= 2
    proposals = search.propose(4, set())
    assert [c.key for c in proposals[:2]] == [c.key for c in search.seeds[:2]]
    assert [c.predicted is None for c in proposals] == [True, True, False, False]


@pytest.mark.parametrize("use_seed", [False, True])
def test_before_any_measurement_proposals_are_ranked_by_the_prior(use_seed, target1):
    """An unfitted XGBCostModel predicts the analytic estimate (a feature column): the searched
    proposals carry that prediction and come best first; seeds come before them and random
    picks (the epsilon share) after them, neither with a prediction."""
    search = _evolutionary(target1, use_seed=use_seed)
    assert not search.cost_model.fitted
    proposals = search.propose(20, set())
    seeds, ranked, random = _split(search, proposals)
    assert [c.key for c in seeds] == [c.key for c in search.seeds]
    assert len(random) == 1 and random[0].predicted is None
    assert len(ranked) == 20 - len(seeds) - 1
    assert all(c.predicted is not None for c in ranked)
    for c in ranked:
        estimate = extract_features(apply_steps(search.dag, c.steps), target1)[ESTIMATE]
        assert c.predicted == float(estimate), (c.key, c.predicted, estimate)
    predicted = [c.predicted for c in ranked]
    assert predicted == sorted(predicted, reverse=True)
    # the prior tells candidates apart: the initial population is not all of one estimate,
    # and what it ranks first is at least as good as any of it (ties at the top are fine:
    # many tiles of a product this small saturate the estimate)
    population = [float(extract_features(apply_steps(search.dag, search.candidate(*g).steps),
                                         target1)[ESTIMATE])
                  for g in search._initial_population()]
    assert len(set(population)) > 1 and predicted[0] >= max(population)


def test_after_enough_measurements_the_model_is_fitted(target1):
    search = _evolutionary(target1, use_seed=False)
    first = search.propose(search.config.model_after, set())
    fake = [MeasureResult(ErrorKind.NONE, "", (1e-4 * (1 + i % 5),), 1)
            for i in range(len(first))]
    search.observe(first, fake)
    search.propose(1, set())  # the cost model is fitted before a proposal
    assert search.cost_model.fitted
    second = search.propose(8, {c.key for c in first})
    assert not {c.key for c in first} & {c.key for c in second}


@pytest.mark.parametrize("use_seed", [False, True])
def test_tune_with_and_without_seed_stores_every_trial(use_seed, tmp_path, target1):
    """`tune --no-seed` is `SearchConfig(use_seed=False)`: it runs and records every trial,
    each searched one with the model's prediction; with seeds, the expert tiles are measured
    right after the default schedule, without a prediction."""
    url = f"sqlite:///{tmp_path / 'seed.db'}"
    config = TuneConfig(trials=8, batch_size=8, seed=5, search=SearchConfig(use_seed=use_seed))
    with RecordStore(url) as store, Measurer(target1, FAST) as measurer:
        result = tune(TASK, target1, store, measurer, config, XGBCostModel(), extract_features)
        history = store.history(TASK, target1)
    assert result.trials_run == 8 and result.best_schedule_json is not None
    assert [r.trial for r in history] == list(range(8))
    assert len({r.schedule_json for r in history}) == 8
    assert [r.strategy for r in history] == ["default"] + ["evolutionary"] * 7
    assert all(r.result.ok for r in history), [r.result for r in history if not r.result.ok]
    experts = _expert_keys(TASK.dag(), target1, generate_sketches(TASK.dag()))
    seeded = 3 if use_seed else 0  # seeds take at most half of the 7 searched slots
    assert [r.schedule_json for r in history[1:1 + seeded]] == experts[:seeded]
    assert [r.predicted is None for r in history] == [True] * (1 + seeded) + [False] * (7 - seeded)


@pytest.mark.parametrize("poison, message", [
    ({"schedule": [{"kind": "split", "axis": "zz", "factors": [4]}]}, "zz"),
    ({"schedule": [{"kind": "teleport", "loop": "i"}]}, "teleport"),
    ({"task": {"op": "matmul", "shape": [-32, 0, 16], "attrs": {"bias": False, "relu": False},
               "dtype": "float32"}}, "-32"),
])
def test_import_of_a_poisoned_file_stores_nothing(tmp_path, capsys, poison, message):
    """One record that this tuner could not apply rejects the whole file, naming it; the
    good records of that file are not stored either."""
    import json
    from tuner.cli import main
    db = str(tmp_path / "src.db")
    assert main(["matmul", "--shape", "16,16,16", "--trials", "2", "--batch-size", "2",
                 "--db", db, "--threads", "1", "--quiet", "--strategy", "random"]) == 0
    exported = tmp_path / "best.json"
    assert main(["export", "--db", db, "-o", str(exported)]) == 0
    data = json.loads(exported.read_text())
    bad = {**data["records"][0], **poison}
    data["records"].append(bad)
    exported.write_text(json.dumps(data))
    target_db = tmp_path / "dst.db"
    capsys.readouterr()
    assert main(["import", "--db", str(target_db), str(exported)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "record 1" in err and message in err, err
    assert "nothing of this file was imported" in err
    if target_db.exists():
        with RecordStore(f"sqlite:///{target_db}") as store:
            assert store.count() == 0


def test_a_closed_pipe_ends_quietly(tmp_path, capsys, monkeypatch):
    """`tune show | head`: the reader goes away; tune stops with 141 (128 + SIGPIPE) and no
    error message, as a Unix tool does."""
    from tuner.cli import main

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    RecordStore(f"sqlite:///{tmp_path / 'r.db'}").close()
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["show", "--db", str(tmp_path / "r.db")]) == 141
    assert capsys.readouterr().err == ""


def test_optuna_trials_of_candidates_never_measured_do_not_stay_running(target1):
    """A batch's candidates that were not measured (claimed by another process, dropped by a
    cluster) are never observed: the next proposal tells their trials as failed."""
    import optuna

    search = OptunaSearch(TASK.dag(), target1, np.random.default_rng(0))
    first = search.propose(4, set())
    search.observe(first[:2], [MeasureResult(ErrorKind.NONE, "", (1e-4,), 1)] * 2)
    second = search.propose(4, {c.key for c in first[:2]})
    states = [t.state for t in search.study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 2
    running = [t for t in search.study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert len(running) == len(second) == 4
