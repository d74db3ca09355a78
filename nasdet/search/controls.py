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

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from ..errors import ConfigError
from ..progress import progress_bar
from ..space import SearchSpace
from .budget import Budget

BASELINE_ARCH = "baseline_arch"
_NAMES = {"macs": "MACs", "params": "params"}
# At the space's cost edge (the found arch costs within the tolerance of its cheapest or dearest arch) uniform draws
# cluster in the middle of the cost range and all but never land within the tolerance: the draws stop after this
# many and take the nearest (the first EDGE_DRAWS of the same draws as without the edge).
EDGE_DRAWS = 100


def matched_cost_metric(budget: Budget | None) -> str:
    """The cost a random control is matched on: the budget's, except latency, matched through MACs
    (timing hundreds of draws would cost more than the control itself)."""
    return budget.metric if budget is not None and budget.metric in ("macs", "params") else "macs"


def draw_limit(space: SearchSpace, cost_fn: Callable[[Mapping[str, Any]], Mapping[str, float]], target: float,
               metric: str, tolerance: float, draws: int) -> tuple[str | None, int]:
    """``(edge, draws to make)``: edge ``"lower"`` / ``"upper"`` when ``target`` is within ``tolerance`` of the
    space's cheapest / dearest arch (its smallest / largest choices; then at most ``EDGE_DRAWS``), else None."""
    if target <= cost_fn(space.smallest())[metric] * (1 + tolerance):
        return "lower", min(draws, EDGE_DRAWS)
    if target >= cost_fn(space.largest())[metric] * (1 - tolerance):
        return "upper", min(draws, EDGE_DRAWS)
    return None, draws


def random_control(space: SearchSpace, cost_fn: Callable[[Mapping[str, Any]], Mapping[str, float]],
                   target: float, metric: str, budget: Budget | None, tolerance: float, draws: int,
                   seed: int, on_draw: Callable[[int, dict | None], None] | None = None) -> dict:
    """A uniform draw of ``space`` whose ``metric`` is within ``tolerance`` (relative) of ``target`` and that
    fits ``budget``; after ``draws`` misses (``EDGE_DRAWS`` at the space's cost edge), the nearest fitting draw.
    Returns ``{arch, costs, draws, gap, tried[, edge]}`` (``draws``: the draw that gave it); ``on_draw(n, nearest)``
    after each draw."""
    edge, limit = draw_limit(space, cost_fn, target, metric, tolerance, draws)
    rng = random.Random(f"control-{seed}")
    # a latency budget is not timed per draw (see matched_cost_metric): the draw matches the found arch's MACs,
    # which fits it
    checked = budget if budget is not None and budget.metric == metric else None
    nearest = None
    for n in range(1, limit + 1):
        arch = space.sample(rng)
        costs = cost_fn(arch)
        if checked is None or costs[checked.metric] <= checked.max:
            gap = costs[metric] / target - 1
            if nearest is None or abs(gap) < abs(nearest["gap"]):
                nearest = {"arch": arch, "costs": dict(costs), "draws": n, "gap": gap}
        if on_draw is not None:
            on_draw(n, nearest)
        if nearest is not None and abs(nearest["gap"]) <= tolerance:
            break
    if nearest is None:
        drawn = f"report.controls_draws={draws}" if limit == draws else f"{limit} (at the space's {edge} cost edge)"
        raise ConfigError(f"none of {drawn} uniform draws of the space fits the budget "
                          f"{budget.metric} <= {budget.max:g}: raise report.controls_draws")
    nearest["tried"] = n  # draws costed in all (== the limit: none was within the tolerance)
    if edge is not None:
        nearest["edge"] = edge
    return nearest


def control_archs(space: SearchSpace, default_arch: Mapping[str, Any], found_costs: Mapping[str, float],
                  cost_fn: Callable[[Mapping[str, Any]], Mapping[str, float]], budget: Budget | None,
                  seeds: int, tolerance: float, draws: int, seed: int = 0, console: Console | None = None) -> list[dict]:
    """The controls' plan: ``[{name, arch, costs, ...}]``, the baseline's arch first, then ``seeds`` random archs
    at the found arch's cost (each with the draws it took and its relative cost gap). ``console``: the draws'
    progress (each costs the arch: seconds apiece on a large space) and each control's outcome."""
    metric = matched_cost_metric(budget)
    target = float(found_costs[metric])
    console = console or Console(quiet=True)
    plan = [{"name": BASELINE_ARCH, "arch": dict(default_arch), "costs": dict(cost_fn(default_arch))}]
    edge, limit = draw_limit(space, cost_fn, target, metric, tolerance, draws)
    if limit < draws:
        console.print(f"random controls: the found arch is at the space's {edge} {_NAMES[metric]} edge, where uniform "
                      f"draws all but never come within {_pct(tolerance)} of it: each control is the nearest of "
                      f"{limit} draws, not of report.controls_draws={draws}", markup=False, highlight=False)
    for i in range(seeds):
        label = f"random control {i}"
        with progress_bar(console, TextColumn(label), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[nearest]}"), TimeElapsedColumn(), label=label,
                          every=max(1, limit // 10), fields=lambda f: f["nearest"]) as progress:
            task = progress.add_task("", total=limit, nearest="none fits the budget yet")

            def on_draw(n: int, nearest: dict | None, progress=progress, task=task) -> None:
                progress.update(task, completed=n, nearest=_nearest_text(nearest, metric))

            r = random_control(space, cost_fn, target, metric, budget, tolerance, draws, seed + i, on_draw)
        within = f"within {_pct(tolerance)}" if abs(r["gap"]) <= tolerance else f"none within {_pct(tolerance)}, the nearest"
        console.print(f"{label}: draw {r['draws']} of {r['tried']} ({within}: {_pct(r['gap'], '+')} {_NAMES[metric]})",
                      markup=False, highlight=False)
        plan.append({"name": f"random_{i}", "matched_on": metric, "tolerance": tolerance, **r})
    return plan


def _nearest_text(nearest: dict | None, metric: str) -> str:
    return "none fits the budget yet" if nearest is None else f"nearest {_pct(nearest['gap'], '+')} {_NAMES[metric]}"


def _pct(x: float, sign: str = "") -> str:
    return f"{100 * x:{sign}.3g} %"
