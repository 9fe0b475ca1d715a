"""Plots of a tuning log (matplotlib): what the notebooks and `tune plot` draw.

    search_curves(histories, references) -> Figure   best GFLOPS so far against trials and
                                                      against wall time, one line per strategy,
                                                      every candidate a point, failures as x
    by_strategy(records) -> {strategy: records}       the histories these functions take
    task_grid(panels) -> Figure                       best GFLOPS so far against trials, a small
                                                      panel per task (`tune plot`, several tasks)
    draw_task_panel(ax, histories, title)             one such panel, into any axes
    model_quality(predicted, measured, sizes, accuracies, importance) -> Figure

Histories are lists of records (records.Record) in trial order; references are GFLOPS of
other implementations measured on the same shape (numpy, onnxruntime), drawn as lines.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # not pyplot: no global state, no window, any backend


def _curve(records) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    gflops = np.array([r.gflops for r in records])
    stamps = np.array([r.result.timestamp for r in records])
    elapsed = stamps - stamps.min() if len(stamps) else stamps
    ok = np.array([r.result.ok for r in records], dtype=bool)
    return np.arange(1, len(records) + 1), elapsed, gflops, ok


def search_curves(histories: dict[str, list], references: dict[str, float] | None = None,
                  title: str = ""):
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    by_trial, by_time = fig.subplots(1, 2, sharey=True)
    for (label, records), color in zip(histories.items(), matplotlib.colormaps["tab10"].colors):
        if not records:
            continue
        trials, elapsed, gflops, ok = _curve(records)
        best = np.maximum.accumulate(gflops)
        for ax, x in ((by_trial, trials), (by_time, elapsed)):
            ax.plot(x, best, color=color, label=f"{label} (best {best[-1]:.1f})")
            ax.scatter(x[ok], gflops[ok], color=color, s=8, alpha=0.35)
            ax.scatter(x[~ok], np.zeros((~ok).sum()), color=color, marker="x", s=18,
                       label=f"{label}: failed ({(~ok).sum()})" if (~ok).any() else None)
    for (name, value), style in zip((references or {}).items(), ("--", ":", "-.")):
        for ax in (by_trial, by_time):
            ax.axhline(value, color="black", linestyle=style, linewidth=1,
                       label=f"{name} {value:.1f}")
    by_trial.set_xlabel("trial")
    by_time.set_xlabel("wall time since the first measurement (s)")
    by_trial.set_ylabel("GFLOPS")
    by_trial.legend(fontsize=8, loc="lower right")
    by_time.legend(fontsize=8, loc="lower right")
    for ax in (by_trial, by_time):
        ax.grid(alpha=0.3)
    fig.suptitle(title or "search curves")
    return fig


def by_strategy(records) -> dict[str, list]:
    """Records split by the strategy that proposed them (order kept): the lines and colors."""
    split: dict[str, list] = {}
    for r in records:
        split.setdefault(r.strategy or "unknown", []).append(r)
    return split


def task_label(key: str) -> str:
    """A task key on two short lines ('conv2d 1x64x56x56x64x3x3' / its attributes): the full
    key does not fit over a small panel."""
    op, shape, attrs, *_ = key.split("/") + ["", ""]
    return f"{op} {shape}\n{attrs}" if attrs else f"{op} {shape}"


def draw_task_panel(ax, histories: dict[str, list], title: str) -> None:
    """Best GFLOPS so far against the task's trial numbers, over all its records whatever
    proposed them, each candidate a point colored by its strategy (failures as x): the small
    panel a grid of tasks (and a model's plot, tuner/network/plot.py) shows for each task. One
    line, not one per strategy as in `search_curves`: here the strategies are rounds of one
    search (the default schedule, then the search), not competitors."""
    from matplotlib.ticker import MaxNLocator

    colors = matplotlib.colormaps["tab10"].colors
    merged = sorted((r for records in histories.values() for r in records),
                    key=lambda r: (r.trial, r.id))
    if merged:
        trials = np.array([r.trial + 1 for r in merged])
        best = np.maximum.accumulate(np.array([r.gflops for r in merged]))
        ax.plot(trials, best, color="black", linewidth=1.2, drawstyle="steps-post",
                label=f"best {best[-1]:.1f}")
    for (label, records), color in zip(histories.items(), colors):
        if not records:
            continue
        trials = np.array([r.trial + 1 for r in records])
        gflops = np.array([r.gflops for r in records])
        ok = np.array([r.result.ok for r in records], dtype=bool)
        ax.scatter(trials[ok], gflops[ok], color=color, s=8, alpha=0.6, label=label)
        ax.scatter(trials[~ok], np.zeros((~ok).sum()), color=color, marker="x", s=12)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("trial", fontsize=8)
    ax.set_ylabel("GFLOPS", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)


def task_grid(panels: dict[str, dict[str, list]], columns: int = 3, title: str = ""):
    """A panel per task (title -> strategy -> records in trial order), `columns` to a row:
    tasks tuned side by side (a whole model, or a day's work) compared at a glance."""
    columns = max(1, min(columns, len(panels)))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(4.2 * columns, 3.2 * rows), layout="constrained")
    grid = fig.add_gridspec(rows, columns)
    for i, (name, histories) in enumerate(panels.items()):
        draw_task_panel(fig.add_subplot(grid[i // columns, i % columns]), histories, name)
    fig.suptitle(title or "search curves")
    return fig


def model_quality(predicted: np.ndarray, measured: np.ndarray, sizes=None, accuracies=None,
                  importance: dict[str, float] | None = None, top: int = 15):
    panels = 1 + (sizes is not None) + (importance is not None)
    fig = Figure(figsize=(5.5 * panels, 4.5))
    axes = fig.subplots(1, panels)
    axes = np.atleast_1d(axes)
    ax = axes[0]
    ax.scatter(measured, predicted, s=10, alpha=0.5)
    ax.set_xlabel("measured throughput (fraction of the task's best)")
    ax.set_ylabel("predicted score")
    ax.set_title("held-out records")
    ax.grid(alpha=0.3)
    i = 1
    if sizes is not None:
        axes[i].plot(sizes, accuracies, marker="o")
        axes[i].set_xlabel("training records")
        axes[i].set_ylabel("pairwise ranking accuracy (held out)")
        axes[i].axhline(0.5, color="gray", linestyle=":", label="chance")
        axes[i].legend()
        axes[i].grid(alpha=0.3)
        i += 1
    if importance is not None:
        items = sorted(importance.items(), key=lambda kv: kv[1])[-top:]
        axes[i].barh([k for k, _ in items], [v for _, v in items])
        axes[i].set_xlabel("gain")
        axes[i].set_title("most important features")
    fig.tight_layout()
    return fig


def to_png(fig, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (for IPython.display.Image, or a file)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
