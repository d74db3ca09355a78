"""Rank agreement between a ranker's scores and the ground truth (stand-alone AP): Kendall's tau-b,
Spearman's rho, top-k overlap, and bootstrap intervals of each.

Written here rather than taken from scipy (not a dependency of nasdet); the tests check them against
``scipy.stats.kendalltau`` / ``spearmanr`` on fixed vectors, ties included.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"rank agreement needs two vectors of one length, got shapes {a.shape} and {b.shape}")
    return a, b


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either vector corrected, as scipy's default); nan if a vector is constant."""
    a, b = _pair(x, y)
    if len(a) < 2:
        return math.nan
    iu = np.triu_indices(len(a), k=1)
    da = np.sign(a[:, None] - a[None, :])[iu]
    db = np.sign(b[:, None] - b[None, :])[iu]
    n0 = len(da)
    ties_a, ties_b = int((da == 0).sum()), int((db == 0).sum())
    denom = math.sqrt((n0 - ties_a) * (n0 - ties_b))
    return float((da * db).sum() / denom) if denom > 0 else math.nan


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    sorted_a = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks; nan if a vector is constant."""
    a, b = _pair(x, y)
    if len(a) < 2:
        return math.nan
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else math.nan


def top_k_overlap(x: Sequence[float], y: Sequence[float], k: int) -> float:
    """Share of the ``k`` best by ``y`` that are also among the ``k`` best by ``x`` (ties: earlier index); nan
    if a vector is constant (its "best k" would be the first k by position, which says nothing) or ``k`` is not
    below the length (the k best of all are all, whatever the order: 1.00 would say nothing)."""
    a, b = _pair(x, y)
    if k < 1 or k >= len(a) or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    top = lambda v: set(np.argsort(-v, kind="mergesort")[:k].tolist())  # noqa: E731
    return len(top(a) & top(b)) / k


def bootstrap_interval(x: Sequence[float], y: Sequence[float], stat: Callable[[np.ndarray, np.ndarray], float],
                       samples: int = 1000, level: float = 0.9, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(x, y)`` over pairs resampled with replacement; resamples
    where the statistic is undefined (a constant vector) are dropped."""
    a, b = _pair(x, y)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        idx = rng.integers(0, len(a), len(a))
        v = stat(a[idx], b[idx])
        if not math.isnan(v):
            values.append(v)
    if not values:
        return math.nan, math.nan
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def rank_agreement(scores: Sequence[float], truth: Sequence[float], top_k: int = 3, samples: int = 1000,
                   level: float = 0.9, seed: int = 0) -> dict[str, float]:
    """tau, rho (each with its bootstrap interval) and top-k overlap of ``scores`` against ``truth``."""
    tau_lo, tau_hi = bootstrap_interval(scores, truth, kendall_tau, samples, level, seed)
    rho_lo, rho_hi = bootstrap_interval(scores, truth, spearman_rho, samples, level, seed)
    return {"kendall_tau": kendall_tau(scores, truth), "kendall_tau_lo": tau_lo, "kendall_tau_hi": tau_hi,
            "spearman_rho": spearman_rho(scores, truth), "spearman_rho_lo": rho_lo, "spearman_rho_hi": rho_hi,
            "top_k": min(top_k, len(scores)), "top_k_overlap": top_k_overlap(scores, truth, top_k),
            "n": len(scores), "level": level}
