"""Ranking quality of a cost model on held-out measurements: what the search relies on."""

from __future__ import annotations

import numpy as np


def pairwise_accuracy(predicted: np.ndarray, measured: np.ndarray, groups: np.ndarray) -> float:
    """Fraction of same-task pairs with different throughput that the model orders right."""
    right = total = 0
    for g in np.unique(groups):
        p, m = predicted[groups == g], measured[groups == g]
        dp = np.sign(p[:, None] - p[None, :])
        dm = np.sign(m[:, None] - m[None, :])
        mask = np.triu(dm != 0, k=1)
        right += int(np.sum((dp == dm) & mask))
        total += int(np.sum(mask))
    return right / total if total else float("nan")


def top_k_recall(predicted: np.ndarray, measured: np.ndarray, groups: np.ndarray,
                 k: int = 10) -> float:
    """Mean over tasks of |predicted top-k ∩ measured top-k| / k."""
    scores = []
    for g in np.unique(groups):
        p, m = predicted[groups == g], measured[groups == g]
        kk = min(k, len(p))
        if kk == 0:
            continue
        top_p = set(np.argsort(-p, kind="stable")[:kk])
        top_m = set(np.argsort(-m, kind="stable")[:kk])
        scores.append(len(top_p & top_m) / kk)
    return float(np.mean(scores)) if scores else float("nan")


def kendall_tau(predicted: np.ndarray, measured: np.ndarray, groups: np.ndarray) -> float:
    from scipy.stats import kendalltau

    taus = []
    for g in np.unique(groups):
        p, m = predicted[groups == g], measured[groups == g]
        if len(p) > 2 and np.ptp(m) > 0:
            taus.append(kendalltau(p, m).statistic)
    return float(np.mean(taus)) if taus else float("nan")
