"""The report's controls: which archs to tune beside the found one so that the report can tell
architecture from training.

- ``baseline_arch``: the space's default subnet, the baseline's own network, taken from the supernet;
  against the baseline trained alone it measures what the supernet's training adds.
- ``random_<i>``: a uniform random arch of the found arch's cost (within a tolerance, under the budget);
  against the found arch it measures what the search adds over a random pick at the same cost.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError
from ..space import SearchSpace
from .budget import Budget

BASELINE_ARCH = "baseline_arch"


def matched_cost_metric(budget: Budget | None) -> str:
    """The cost a random control is matched on: the budget's, except latency, matched through MACs
    (timing hundreds of draws would cost more than the control itself)."""
    return budget.metric if budget is not None and budget.metric in ("macs", "params") else "macs"


def random_control(space: SearchSpace, cost_fn: Callable[[Mapping[str, Any]], Mapping[str, float]],
                   target: float, metric: str, budget: Budget | None, tolerance: float, draws: int,
                   seed: int) -> dict:
    """A uniform draw of ``space`` whose ``metric`` is within ``tolerance`` (relative) of ``target`` and that
    fits ``budget``; after ``draws`` misses, the nearest fitting draw. Returns ``{arch, costs, draws, gap, tried}`` (``draws``: the draw that gave it)."""
    rng = random.Random(f"control-{seed}")
    # a latency budget is not timed per draw (see matched_cost_metric): the draw matches the found arch's MACs,
    # which fits it
    checked = budget if budget is not None and budget.metric == metric else None
    nearest = None
    for n in range(1, draws + 1):
        arch = space.sample(rng)
        costs = cost_fn(arch)
        if checked is not None and costs[checked.metric] > checked.max:
            continue
        gap = costs[metric] / target - 1
        if nearest is None or abs(gap) < abs(nearest["gap"]):
            nearest = {"arch": arch, "costs": dict(costs), "draws": n, "gap": gap}
        if abs(gap) <= tolerance:
            break
    if nearest is None:
        raise ConfigError(f"none of report.controls_draws={draws} uniform draws of the space fits the budget "
                          f"{budget.metric} <= {budget.max:g}: raise report.controls_draws")
    nearest["tried"] = n  # draws costed in all (== draws: none was within the tolerance)
    return nearest


def control_archs(space: SearchSpace, default_arch: Mapping[str, Any], found_costs: Mapping[str, float],
                  cost_fn: Callable[[Mapping[str, Any]], Mapping[str, float]], budget: Budget | None,
                  seeds: int, tolerance: float, draws: int, seed: int = 0) -> list[dict]:
    """The controls' plan: ``[{name, arch, costs, ...}]``, the baseline's arch first, then ``seeds`` random archs
    at the found arch's cost (each with the draws it took and its relative cost gap)."""
    metric = matched_cost_metric(budget)
    plan = [{"name": BASELINE_ARCH, "arch": dict(default_arch), "costs": dict(cost_fn(default_arch))}]
    for i in range(seeds):
        r = random_control(space, cost_fn, float(found_costs[metric]), metric, budget, tolerance, draws, seed + i)
        plan.append({"name": f"random_{i}", "matched_on": metric, "tolerance": tolerance, **r})
    return plan
