"""Budgets: an upper bound on one cost of a candidate (MACs, params, latency), checked before any work.

Costs are taken on the exported static subnet (``export_detector``), as ``nasdet cost`` does for a
standalone model: MACs and params counted, latency measured (median ms). A budget below the cheapest
candidate of the space (its smallest arch) is an error before the search starts (ENOT's rule).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..models.supernet import INPUT_SIZE, export_detector
from ..space import ArchError, SearchSpace
from ..models import cost as model_cost
from ..models.cost import detector_macs, detector_params, measure_latency
from .scoring import ArchCache

COST_METRICS = ("macs", "params", "latency")
COST_UNITS = {"macs": "MACs", "params": "params", "latency": "ms"}


@dataclass(frozen=True)
class Budget:
    """``metric`` <= ``max``; latency in ms (median of the measured runs)."""

    metric: str
    max: float

    def __post_init__(self):
        if self.metric not in COST_METRICS:
            raise ConfigError(f"budget metric {self.metric!r} is not one of {COST_METRICS}")
        if not self.max > 0:
            raise ConfigError(f"budget max must be > 0, got {self.max}")

    def excess(self, costs: Mapping[str, float]) -> float:
        """``cost - max``: <= 0 is feasible (Optuna's constraint convention)."""
        return float(costs[self.metric]) - self.max


def arch_cost(model: nn.Module, space: SearchSpace, arch: Mapping[str, Any], metric: str,
              cache: ArchCache | None = None, **latency_kw) -> float:
    """One cost of ``arch`` (MACs or params of the whole detector, latency median ms), cached per arch."""
    if metric not in COST_METRICS:
        raise ConfigError(f"cost metric {metric!r} is not one of {COST_METRICS}")
    return CostModel(model, space, measure=(metric,), cache=cache, **latency_kw)(arch)[metric]


class CostModel:
    """``arch -> {"macs", "params"[, "latency"]}`` on the exported subnet, cached per arch.

    ``measure`` names the costs computed; MACs and params are cheap (meta device), latency is timed
    with ``measure_latency(**latency_kw)`` and is only measured when listed.
    """

    def __init__(self, model: nn.Module, space: SearchSpace, measure: tuple[str, ...] = ("macs", "params"),
                 cache: ArchCache | None = None, latency_fn=None, **latency_kw):
        bad = [m for m in measure if m not in COST_METRICS]
        if bad:
            raise ConfigError(f"cost metric(s) {bad} not among {COST_METRICS}")
        self.model, self.space, self.measure = model, space, tuple(measure)
        self.cache = cache if cache is not None else ArchCache()
        self.latency_kw = latency_kw
        # (static subnet, arch) -> ms; default: torch timing (see search/latency.py for the others)
        self.latency_fn = latency_fn or (lambda static, arch: measure_latency(static, **self.latency_kw)["median_ms"])
        self._count_real = None  # the first arch as its size suggests (cost.py), the next as its MACs do
        self.on_computed: Callable[[Mapping[str, Any], dict], None] | None = None  # (arch, costs) of each new arch

    def _compute(self, arch: Mapping[str, Any]) -> dict[str, float]:
        static = export_detector(self.model, arch, self.space)
        out: dict[str, float] = {}
        if "macs" in self.measure:
            out["macs"] = float(detector_macs(static, backbone=False, real=self._count_real)["total"])
            # the archs of a search cost about the same: a real forward counts the small ones faster (cost.py)
            self._count_real = out["macs"] < model_cost.REAL_COUNT_MACS
        if "params" in self.measure:
            out["params"] = float(detector_params(static)["total"])
        if "latency" in self.measure:
            out["latency"] = float(self.latency_fn(static, arch))
        if self.on_computed is not None:
            self.on_computed(arch, out)
        return out

    def __call__(self, arch: Mapping[str, Any]) -> dict[str, float]:
        return dict(self.cache.get_or_compute(self.space.validate(arch), self._compute))


def check_budget_feasible(budget: Budget | None, cost_fn: Callable[[Mapping[str, Any]], Mapping[str, float]],
                          space: SearchSpace, predicted_by: str | None = None) -> float | None:
    """The cheapest candidate's cost; ``ValueError`` if the budget is below it. The smallest arch (each choice's
    least value) first; when the budget is below it and the cost is counted or predicted (not timed), the choices
    are lowered one at a time to their cheapest values (DetNAS: Xception is the cheapest op of its stride-2 blocks,
    so a budget 1 % under the all-3x3 arch holds archs and was refused).
    ``predicted_by``: what predicts a latency that is not measured (the lookup table), said in the error."""
    if budget is None:
        return None
    descend = budget.metric != "latency" or bool(predicted_by)  # (a measured latency times no arch choice by choice)
    smallest, arch, cheapest = _cheapest_for(budget, cost_fn, space, descend=descend)
    what, lowered = "the smallest arch", ""
    if arch != smallest:
        what = f"the cheapest arch found choice by choice ({arch_text(arch, smallest)})"
    elif budget.max < cheapest and descend:
        lowered = " (no choice lowers it)"
    if budget.max < cheapest:
        how = "costs" if budget.metric != "latency" or not predicted_by else f"is predicted by {predicted_by} to take"
        measure = ("" if budget.metric != "latency" or not predicted_by else
                   " (a prediction: measured latency, cost.latency onnxruntime / onnxruntime_int8 / torch, may fit)")
        raise ConfigError(
            f"search budget {budget.metric} <= {budget.max:.6g} {COST_UNITS[budget.metric]} is below the cheapest "
            f"candidate of the space: {what} {how} {cheapest:.6g} {COST_UNITS[budget.metric]}{lowered}; "
            f"raise search.budget.max above {cheapest:.6g}{measure}")
    return cheapest


def tight_budget_seed(budget: Budget | None, cost_fn: Callable[[Mapping[str, Any]], Mapping[str, float]],
                      space: SearchSpace, predicted: bool = False) -> dict | None:
    """Under a budget below the smallest arch (that ``check_budget_feasible`` let pass), the cheapest arch found
    choice by choice: it fits, and the search scores it first, so it has a result and a parent to vary (uniform
    draws rarely meet such a budget). None otherwise, and for a measured latency (``predicted``: the lookup table's;
    as the check, which times no arch choice by choice). Its costs are cached from the check."""
    if budget is None or (budget.metric == "latency" and not predicted):
        return None
    smallest, arch, cost = _cheapest_for(budget, cost_fn, space, descend=True)
    return arch if arch != smallest and cost <= budget.max else None


def _cheapest_for(budget: Budget, cost_fn: Callable[[Mapping[str, Any]], Mapping[str, float]], space: SearchSpace,
                  descend: bool) -> tuple[dict, dict, float]:
    """(the smallest arch, the cheapest arch known, its cost): the smallest, or, when the budget is below it and
    ``descend``, the one its choices lowered one at a time reach."""
    metric = lambda a: float(cost_fn(a)[budget.metric])  # noqa: E731
    smallest = space.smallest()
    cost = metric(smallest)
    if budget.max >= cost or not descend:
        return smallest, smallest, cost
    return (smallest, *cheapest_by_choice(space, metric, smallest, cost))


def cheapest_by_choice(space: SearchSpace, cost: Callable[[Mapping[str, Any]], float], start: Mapping[str, Any],
                       start_cost: float, passes: int = 3) -> tuple[dict, float]:
    """Coordinate descent from ``start``: each choice in turn takes its value of least cost with the others held,
    until a pass changes nothing. Exact where the cost is a sum over the choices (MACs and parameters of a
    single-path space); a pass costs one evaluation per other value of each choice."""
    arch, best = dict(start), start_cost
    for _ in range(passes):
        moved = False
        for name in space.names:
            for value in space[name]:
                if value == arch[name]:
                    continue
                trial = {**arch, name: value}
                c = cost(trial)
                if c < best:
                    arch, best, moved = trial, c, True
        if not moved:
            break
    return arch, best


def arch_text(arch: Mapping[str, Any], base: Mapping[str, Any], shown: int = 6) -> str:
    """The choices of ``arch`` that differ from ``base``, a few of them."""
    diff = [f"{k}={v}" for k, v in arch.items() if base.get(k) != v]
    return ", ".join(diff[:shown]) + (f", ... ({len(diff)} choices)" if len(diff) > shown else "")


def restrict_resolution(space: SearchSpace, train_size: int, tolerance: int | None) -> SearchSpace:
    """``space`` with ``input_size`` limited to ``|size - train_size| <= tolerance`` (ENOT's resolution tolerance)."""
    if tolerance is None or INPUT_SIZE not in space:
        return space
    allowed = [s for s in space[INPUT_SIZE] if abs(int(s) - int(train_size)) <= tolerance]
    if not allowed:
        raise ArchError(f"resolution_tolerance {tolerance} around the training size {train_size} leaves none of "
                        f"the input_size choices {list(space[INPUT_SIZE])}")
    return space.restrict({INPUT_SIZE: allowed})
