"""`tune plot` on several tasks (a panel each) and `tune plot --model` (the model's estimated
latency over trials and wall time, a panel per task); the latency curve is undefined until
every task has a record and never rises after; bad input is one line and exit 2. The figures
are checked through the functions that build them (their axes), not through pixels."""

from __future__ import annotations

import numpy as np
import pytest

import tuner.network.plot
import tuner.plot
from records import NewRecord, RecordStore
from tuner.cli import main
from tuner.network.plot import model_latency_curve
from tuner.network.tasks import TaskUse
from tuner.measure.result import ErrorKind, MeasureResult
from tuner.ir.target import host_target
from tuner.ir.task import Task

PNG = b"\x89PNG\r\n\x1a\n"
MATMUL = Task.create("matmul", (32, 32, 32))
CONV = Task.create("conv2d", (1, 4, 8, 8, 4, 3, 3), pad=1)


def _result(cost_s: float | None, timestamp: float) -> MeasureResult:
    if cost_s is None:
        return MeasureResult(ErrorKind.CRASH, "crash", (), 0, 0.1, timestamp)
    return MeasureResult(ErrorKind.NONE, "", (cost_s,), 1, 0.1, timestamp)


def _fill(store, task, target, costs, start: float, step: float = 2.0) -> None:
    """One record per cost (None: a failed candidate), `step` seconds apart from `start`."""
    store.add_many(task, target, [NewRecord(
        f'[{{"kind":"split","axis":"i","factors":[{i + 1}]}}]', _result(c, start + step * i), i,
        strategy="random") for i, c in enumerate(costs)])


def _capture(monkeypatch, module, name) -> list:
    """Wraps the figure builder `module.name` so that the test sees the figure it built."""
    built, original = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]
    monkeypatch.setattr(module, name, wrapper)
    return built


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("tune: error: ") and "\n" not in err, err
    return err


def test_plot_of_several_tasks_draws_a_panel_each(tmp_path, monkeypatch):
    db = tmp_path / "two.db"
    with RecordStore(f"sqlite:///{db}") as store:
        _fill(store, MATMUL, host_target(1), [1e-4, None, 5e-5, 8e-5], 1000.0)
        _fill(store, CONV, host_target(1), [2e-4, 1e-4, None], 1001.0)
    grids = _capture(monkeypatch, tuner.plot, "task_grid")
    png = tmp_path / "tasks.png"
    assert main(["plot", "--db", str(db), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == PNG
    assert len(grids) == 1 and len(grids[0].axes) == 2
    titles = [ax.get_title() for ax in grids[0].axes]
    assert titles[0].startswith("matmul 32x32x32") and titles[1].startswith("conv2d 1x4x8x8")
    # --task still picks one, drawn as the two-panel search curves of a single task
    assert main(["plot", "--db", str(db), "--task", "matmul:32,32,32", "-o", str(png)]) == 0
    assert len(grids) == 1


def test_latency_is_undefined_until_every_task_has_a_record_then_never_rises(tmp_path):
    with RecordStore(f"sqlite:///{tmp_path / 'c.db'}") as store:
        target = host_target(1)
        _fill(store, MATMUL, target, [4e-4, None, 1e-4, 3e-4], 1000.0)  # at 1000, 1002, ...
        _fill(store, CONV, target, [None, 2e-4, 5e-4, 1e-4], 1001.0)    # at 1001, 1003, ...
        histories = [store.history(MATMUL, target), store.history(CONV, target)]
    uses = [TaskUse(MATMUL, 2, 1.0, 0.5, ("a", "b")), TaskUse(CONV, 1, 1.0, 0.5, ("c",))]
    curve = model_latency_curve(uses, histories)
    assert list(curve.trials) == list(range(1, 9))
    assert list(curve.elapsed_s) == list(range(8))
    # conv's first record (t=1001) failed, its first valid one is the 4th measurement
    assert np.isnan(curve.latency_s[:3]).all()
    np.testing.assert_allclose(curve.latency_s[3:], [1e-3, 4e-4, 4e-4, 4e-4, 3e-4])
    assert curve.missing == ()
    assert model_latency_curve(uses, [histories[0], []]).missing == (1,)


def test_tune_plot_model_after_tune_model(tmp_path, monkeypatch, capsys):
    onnx = pytest.importorskip("onnx")
    from test_model_onnxruntime import symbolic_batch
    from tuner.network.graph import load_model
    from tuner.network.tasks import extract_tasks

    proto, shapes = symbolic_batch(np.random.default_rng(5))
    path = str(tmp_path / "model.onnx")
    onnx.save(proto, path)
    db = str(tmp_path / "model.db")
    assert main(["model", path, "--input", "x=3,3,7,7", "--db", db, "--trials", "6",
                 "--batch-size", "2", "--threads", "1", "--quiet", "--strategy", "random"]) == 0
    capsys.readouterr()
    figures = _capture(monkeypatch, tuner.network.plot, "model_curves")
    png = tmp_path / "model.png"
    argv = ["plot", "--model", path, "--input", "x=3,3,7,7", "--db", db, "-o", str(png)]
    assert main(argv) == 0
    assert png.read_bytes()[:8] == PNG
    uses = extract_tasks(load_model(path, shapes)).tasks
    assert len(uses) == 2 and len(figures) == 1 and len(figures[0].axes) == 2 + len(uses)
    assert "estimated latency" in capsys.readouterr().out
    with RecordStore(f"sqlite:///{db}") as store:
        histories = [store.history(u.task, host_target(1)) for u in uses]
    curve = model_latency_curve(uses, histories)
    assert len(curve.trials) == 6 and curve.missing == ()
    defined = curve.latency_s[~np.isnan(curve.latency_s)]
    assert len(defined) >= 1 and (np.diff(defined) <= 0).all()
    assert np.isnan(curve.latency_s[0])  # the first measurement covers one task of two

    # bad input: one line, exit 2, nothing written
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("not a model")
    other_db = tmp_path / "other.db"
    with RecordStore(f"sqlite:///{other_db}") as store:
        _fill(store, MATMUL, host_target(1), [1e-4], 1000.0)
    for bad, expected in (
            (["--model", path, "--input", "x=3,3,7,7", "--db", str(other_db)], "no records"),
            (["--model", str(not_onnx), "--db", db], "not a readable ONNX model"),
            (["--model", path, "--input", "y=3,3,7,7", "--db", db], "no input 'y'"),
            (["--model", path, "--input", "x=3,3,7,7", "--db", db, "--threads", "2"],
             "no records"),
            (["--model", path, "--input", "x=3,3,7,7", "--task", "matmul:32,32,32",
              "--db", db], "not both"),
            (["--input", "x=3,3,7,7", "--db", db], "goes with --model")):
        out = tmp_path / "bad.png"
        assert main(["plot", *bad, "-o", str(out)]) == 2, bad
        assert expected in _one_line_error(capsys), bad
        assert not out.exists()


def _record(task, target, trial: int, cost_s: float | None, timestamp: float):
    from records import Record

    return Record(trial, task, target, f'[{{"kind":"split","axis":"i","factors":[{trial + 1}]}}]',
                  _result(cost_s, timestamp), task.dag().flops, "test", None, "random", trial)


def _overlaps(fig) -> list[str]:
    """Pairs of the figure's texts that overlap once drawn: its title, each panel's title and
    axis labels, and each legend box."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [("figure title", fig._suptitle.get_window_extent(renderer))]
    for k, ax in enumerate(fig.axes):
        if ax.get_title():
            boxes.append((f"title of panel {k}", ax.title.get_window_extent(renderer)))
        if ax.get_legend() is not None:
            boxes.append((f"legend of panel {k}", ax.get_legend().get_window_extent(renderer)))
        if ax.get_xlabel():
            boxes.append((f"x label of panel {k}", ax.xaxis.label.get_window_extent(renderer)))
    return [f"{a} / {b}" for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:]
            if box_a.overlaps(box_b)]


@pytest.mark.parametrize("tasks", [1, 4, 18, 50])
def test_model_figure_lays_out_title_legends_and_panels_apart(tasks):
    """Issue 27's paper cut: the title sat on the top panels' legend box. Nothing overlaps at
    1, 4, 18 or 50 task panels (the figure is drawn and its text boxes compared)."""
    target = host_target(1)
    uses, histories = [], []
    for i in range(tasks):
        task = Task.create("matmul", (8 + i, 16, 16))
        uses.append(TaskUse(task, 1 + i % 3, task.dag().flops, 1.0 / tasks, (f"n{i}",)))
        histories.append([_record(task, target, t, 1e-4 / (1 + t + i), 1000.0 + 10 * i + t)
                          for t in range(4)])
    fig = tuner.network.plot.model_curves(uses, histories, f"model on {target.cpu}: {tasks}")
    assert not _overlaps(fig)
    grid = tuner.plot.task_grid({f"task {i}": {"random": h} for i, h in enumerate(histories)},
                                title="tasks")
    assert not _overlaps(grid)


def test_the_overlap_check_sees_an_overlap():
    """The check above can fail: a figure whose title is drawn on its panel's legend."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], label="curve")
    ax.legend(loc="upper center")
    fig.suptitle("title", y=0.85)
    assert any("figure title" in pair for pair in _overlaps(fig))
