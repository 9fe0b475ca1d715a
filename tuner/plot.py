"""Plots of a tuning log (matplotlib): what the notebooks and `tune plot` draw.

    search_curves(histories, references) -> Figure   best GFLOPS so far against trials and
                                                      against wall time, one line per strategy,
                                                      every candidate a point, failures as x
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
    fig = Figure(figsize=(12, 4.5))
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
    fig.tight_layout()
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
