"""The search curves of a whole model: what `tune plot --model PATH.onnx` draws.

    model_latency_curve(uses, histories) -> LatencyCurve   the model's estimated latency after
                                                           each measurement of any of its tasks
    model_curves(uses, histories, title) -> Figure          that curve against trials and wall
                                                           time, and a small panel per task

The estimate is the task scheduler's (tuner/network/tuning.py): the sum over tasks of occurrences
x the best latency measured so far; the layers numpy runs are not counted. A task without a
valid record has no latency, and no default stands in for it (the default schedule's time is
a measurement like any other, and the first round of a task stores it): the curve is undefined
until every task has a record, as the progress bar of `tune model` shows no latency until then,
and the figure says how many tasks still have none. Measurements of all tasks are merged in
the order they were taken (their timestamps), so "trials" counts the model's trials, and wall
time is measured from the first of them (pauses between runs included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tuner.network.tasks import TaskUse
from tuner.plot import by_strategy, draw_task_panel, task_label


@dataclass(frozen=True, slots=True, eq=False)
class LatencyCurve:
    trials: np.ndarray       # 1..n over all tasks' records, in measurement order
    elapsed_s: np.ndarray    # wall time of each since the first
    latency_s: np.ndarray    # the model's estimate after it; NaN while a task has no record
    missing: tuple[int, ...]  # indices (into `uses`) of tasks with no valid record at the end


def model_latency_curve(uses: Sequence[TaskUse], histories: Sequence[list]) -> LatencyCurve:
    """`histories[i]` holds the records of `uses[i].task` on one target (any order)."""
    events = sorted(((r.result.timestamp, i, r.trial, r) for i, records in enumerate(histories)
                     for r in records), key=lambda e: e[:3])
    best_s = np.full(len(uses), np.inf)
    weights = np.array([u.occurrences for u in uses], dtype=float)
    latency = np.full(len(events), np.nan)
    for k, (_, i, _, record) in enumerate(events):
        if record.result.ok:
            best_s[i] = min(best_s[i], record.result.median_s)
        if np.isfinite(best_s).all():
            latency[k] = float(weights @ best_s)
    stamps = np.array([e[0] for e in events], dtype=float)
    elapsed = stamps - stamps[0] if len(stamps) else stamps
    missing = tuple(int(i) for i in np.flatnonzero(~np.isfinite(best_s)))
    return LatencyCurve(np.arange(1, len(events) + 1), elapsed, latency, missing)


def model_curves(uses: Sequence[TaskUse], histories: Sequence[list], title: str = "",
                 columns: int = 3):
    """Two wide panels (latency in ms against the model's trials and against wall time) over
    a grid of one small panel per task (its best GFLOPS against its own trials, each candidate
    a point colored by strategy): where the model's time went, which task still improves."""
    curve = model_latency_curve(uses, histories)
    columns = max(1, min(columns, len(uses)))
    rows = -(-len(uses) // columns)
    # constrained layout keeps the title, each panel's title and legend clear of one another
    # at any number of tasks (tight_layout let the title sit on the top panels' legends)
    fig = Figure(figsize=(max(12.0, 4.2 * columns), 4.5 + 3.2 * rows), layout="constrained")
    grid = fig.add_gridspec(1 + rows, 2 * columns, height_ratios=[1.4] + [1.0] * rows)
    by_trial = fig.add_subplot(grid[0, :columns])
    by_time = fig.add_subplot(grid[0, columns:], sharey=by_trial)
    defined = ~np.isnan(curve.latency_s)
    label = (f"estimated latency ({curve.latency_s[defined][-1] * 1e3:.3f} ms)"
             if defined.any() else "estimated latency")
    for ax, x in ((by_trial, curve.trials), (by_time, curve.elapsed_s)):
        ax.plot(x, curve.latency_s * 1e3, drawstyle="steps-post", label=label)
        if curve.missing:
            ax.text(0.5, 0.5, f"{len(curve.missing)} of {len(uses)} tasks have no valid "
                    f"record:\nthe model's latency is undefined", transform=ax.transAxes,
                    ha="center", va="center", fontsize=9, color="gray")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    by_trial.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_trial.set_xlabel("trial (all tasks, in measurement order)")
    by_time.set_xlabel("wall time since the first measurement (s)")
    by_trial.set_ylabel("ms (sum of occurrences x best latency)")
    for i, (use, records) in enumerate(zip(uses, histories)):
        ax = fig.add_subplot(grid[1 + i // columns, 2 * (i % columns):2 * (i % columns) + 2])
        draw_task_panel(ax, by_strategy(records), f"x{use.occurrences}, {use.share:.0%} of "
                        f"FLOPs: {task_label(use.task.key)}")
    fig.suptitle(title or "model search curves")
    return fig
