"""ENOT's search (``search.strategy: gradient``): architecture probabilities trained under a hard cost limit.

ENOT (``mmdetection-enot``, ``ssd_mnv2_search.py``) optimises the architecture parameters of its search
space on the search split with ``EnotFixedLatencySearchOptimizer(max_latency_value)`` (SGD lr 1.0,
momentum 0.9, no weight decay, 20 epochs; its tutorials: RAdam lr 0.01), takes the most probable arch,
tunes its BN statistics and reports it; ``search_with_resolution`` repeats this per resolution step and
keeps the best resolution under the limit. ENOT's core is closed, so here is what nasdet does:

- **probabilities**: per choice of the space (``input_size`` aside: one search per resolution) a logit
  vector, softmax = the probability of each value, initialised uniform (``ArchLogits``);
- **paths**: each step samples ``samples`` archs from the probabilities and runs one path each (the
  memory of one subnet, as ProxylessNAS's binary gates), computing the detection loss on one search
  batch with the supernet's weights fixed (train mode, BN statistics restored afterwards). The loss
  reaches the logits through ProxylessNAS's REINFORCE estimator (``rl_update_step``): (loss - baseline)
  * grad log p(arch), the baseline being the other samples' mean loss on the same batch (or a moving
  average with one sample). This needs only ``set_arch``, so it works for every supernet space;
- **cost**: ``CostTable`` holds, per resolution, the cost of a reference arch (the space's default) and
  per choice value the cost change of setting that one value (``CostModel``: MACs/params counted on the
  exported subnet, or latency through ``cost.latency``, e.g. the ``lut`` lookup table). The expected
  cost under the probabilities, base + sum of p * delta, is differentiable and exact where choices add
  up (per-block widths, kernels, expansions); with depth choices it is an approximation, which is why
  the derived arch is always checked with its exact cost;
- **hard limit**: a penalty ``penalty * max(0, E[cost] / limit - 1)`` that is zero under the limit and
  switches on above it. The most probable arch can still exceed the limit when the expectation does
  not; it is then projected: the value whose change costs the least probability per unit of cost saved
  is lowered, one at a time, until the exact cost is under the limit (``project_under_limit``). A limit
  below the smallest arch is an error before anything runs;
- **result**: the most probable (projected) arch, BN recalibrated and scored on the search split like
  any candidate, recorded as a trial of the study, so ``results.csv``, ``best_arch.json``, ``pareto.png``
  are those of the other strategies. With ``search_resolution`` one arch per resolution (under the limit
  at that resolution) is scored; ``best_arch.json`` is the best of them.

Files in ``work_dir/search/``: ``gradient_state.pt`` (logits, optimiser, baseline, epoch per resolution:
a rerun resumes at the last finished epoch), ``gradient.jsonl`` (per epoch: expected cost, entropy,
probabilities, most probable arch), ``searched_arch.json`` (ENOT's index list, for spaces that have one).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from rich.console import Console
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError, TrainingDiverged
from ..files import append_jsonl, atomic_path, write_text_atomic
from ..workdir import GRADIENT_LOG, GRADIENT_STATE, SEARCHED_ARCH
from ..models.supernet import INPUT_SIZE, set_detector_arch
from ..space import SearchSpace
from ..space.space import _BLOCK_NAME
from ..threads import govern
from .budget import COST_UNITS, Budget
from .strategies import OBJECTIVE

STATE_FILE, LOG_FILE = GRADIENT_STATE, GRADIENT_LOG  # names this module used first


class LimitBelowSmallest(ConfigError):
    """The hard limit is below the cheapest arch of the space (at every searched resolution)."""


# ------------------------------------------------------------------------------------- probabilities
class ArchLogits(nn.Module):
    """One logit vector per choice name (softmax = probabilities over the values, in space order)."""

    def __init__(self, space: SearchSpace, names: Sequence[str]):
        super().__init__()
        self.space, self.names = space, tuple(names)
        self.logits = nn.ParameterList([nn.Parameter(torch.zeros(len(space[n]))) for n in self.names])

    def probs(self) -> list[Tensor]:
        return [torch.softmax(t, 0) for t in self.logits]

    def sample(self, generator: torch.Generator) -> dict[str, Any]:
        with torch.no_grad():
            picks = [int(torch.multinomial(p, 1, generator=generator)) for p in self.probs()]
        return {n: self.space[n][i] for n, i in zip(self.names, picks)}

    def log_prob(self, arch: Mapping[str, Any]) -> Tensor:
        return sum(torch.log_softmax(t, 0)[self.space[n].index(arch[n])] for n, t in zip(self.names, self.logits))

    def most_probable(self) -> dict[str, Any]:
        """Per choice the value of highest probability (ties: the first, i.e. the smaller value)."""
        return {n: self.space[n][int(torch.argmax(t))] for n, t in zip(self.names, self.logits)}

    def probabilities(self) -> dict[str, list[float]]:
        return {n: [round(float(v), 4) for v in p.detach()] for n, p in zip(self.names, self.probs())}

    def entropy(self) -> float:
        with torch.no_grad():
            return float(sum(-(p * torch.log(p.clamp_min(1e-12))).sum() for p in self.probs()))


# ----------------------------------------------------------------------------------------- the cost
class CostTable:
    """Per-choice cost table around ``reference``: ``base`` = its cost, ``deltas[name][i]`` = the cost
    change of setting ``name`` to its ``i``-th value alone. ``cost_of(arch) -> float``. The choices of one block
    (OFA's kernel and expand) also get their joint table (``pairs``: the change of both set at once, less their
    two deltas): a depthwise conv's MACs are width x kernel^2, so the deltas alone counted the savings of a
    smaller kernel and a smaller expand twice (the OFA space's smallest arch 88.8 M MACs for 118.8 M).

    Spaces with depth (``stageS.depth``, the first d blocks of a stage run; see ``canonical_arch``): a
    block's own choices count only while the block runs, so in ``expected`` and ``predict`` their deltas
    (measured at full depth) are weighted by the probability that the stage is deeper than the block.
    The reference must run every block (the default arch of the elastic spaces does)."""

    def __init__(self, cost_of: Callable[[Mapping], float], space: SearchSpace, reference: Mapping[str, Any],
                 names: Sequence[str], delta_of: Callable[[Mapping], float] | None = None):
        """``delta_of``: a cheaper function with the same differences as ``cost_of`` (e.g. the backbone's
        MACs alone, the heads being fixed); default ``cost_of``."""
        self.names, self.space = tuple(names), space
        self.base = float(cost_of(reference))
        delta_of = delta_of or cost_of
        ref = float(delta_of(reference))
        self.deltas: dict[str, Tensor] = {}
        for n in self.names:
            row = [0.0 if v == reference[n] else float(delta_of({**reference, n: v})) - ref for v in space[n]]
            self.deltas[n] = torch.tensor(row, dtype=torch.float64)
        self.gated: dict[str, tuple[str, int]] = {}  # block choice -> (its stage's depth choice, block index)
        blocks: dict[tuple[str, str], list[str]] = {}
        for n in self.names:
            m = _BLOCK_NAME.match(n)
            if m:
                blocks.setdefault(m.groups(), []).append(n)
            depth = f"{m.group(1)}.depth" if m else None
            if depth in self.names:
                if reference[depth] != max(space[depth]):
                    raise ValueError(f"the cost table's reference must run every block: {depth} is {reference[depth]}")
                self.gated[n] = (depth, int(m.group(2)))
        self.pairs: dict[tuple[str, str], Tensor] = {}  # (a, b) of one block -> joint change less both deltas
        for names_of_block in blocks.values():
            for i, a in enumerate(names_of_block):
                for b in names_of_block[i + 1:]:
                    table = torch.zeros(len(space[a]), len(space[b]), dtype=torch.float64)
                    for ia, va in enumerate(space[a]):
                        for ib, vb in enumerate(space[b]):
                            if va != reference[a] and vb != reference[b]:
                                joint = float(delta_of({**reference, a: va, b: vb})) - ref
                                table[ia, ib] = joint - self.deltas[a][ia] - self.deltas[b][ib]
                    if table.abs().max() > 0:
                        self.pairs[(a, b)] = table

    def expected(self, logits: ArchLogits) -> Tensor:
        """E[cost] under the probabilities, differentiable in the logits (choices independent)."""
        probs = {n: torch.softmax(t.double(), 0) for n, t in zip(logits.names, logits.logits)}
        total = torch.tensor(self.base, dtype=torch.float64)
        for n in self.names:
            total = total + (probs[n] * self.deltas[n]).sum() * self._runs(n, probs)
        for (a, b), table in self.pairs.items():  # (a block's choices share its gate)
            total = total + probs[a] @ table @ probs[b] * self._runs(a, probs)
        return total

    def _runs(self, name: str, probs: Mapping[str, Tensor]) -> Tensor | float:
        """The probability that the block of choice ``name`` runs (1 outside a stage with depth)."""
        if name not in self.gated:
            return 1.0
        depth, j = self.gated[name]
        runs = torch.tensor([float(d > j) for d in self.space[depth]], dtype=torch.float64)
        return (probs[depth] * runs).sum()

    def predict(self, arch: Mapping[str, Any]) -> float:
        def runs(name: str) -> bool:
            return name not in self.gated or arch[self.gated[name][0]] > self.gated[name][1]

        total = self.base
        for n in self.names:
            if runs(n):
                total += float(self.deltas[n][self.space[n].index(arch[n])])
        for (a, b), table in self.pairs.items():
            if runs(a):
                total += float(table[self.space[a].index(arch[a]), self.space[b].index(arch[b])])
        return total


def backbone_cost_function(model: nn.Module, metric: str) -> Callable[[Mapping], float] | None:
    """The backbone's own MACs (counted on its export) or params
    of a detector arch: they differ between archs exactly as the whole detector's do, since necks and
    heads never change with the arch, at a fraction of the cost. None for latency (use the cost model)."""
    from ..models.supernet import BACKBONE_PREFIX, supernet_body
    from ..space import strip_prefix
    from .cost import count_macs, count_params

    body = supernet_body(model)
    if metric == "params":
        return lambda arch: float(count_params(body.export(strip_prefix(arch, BACKBONE_PREFIX))))
    if metric != "macs":
        return None
    def macs(arch: Mapping[str, Any]) -> float:
        # the export (the supernet would also count its kernel transforms), run on real zeros: on the meta
        # device every elementwise op goes through Python decompositions, many times slower for a backbone
        static = body.export(strip_prefix(arch, BACKBONE_PREFIX)).eval()
        s = int(arch[INPUT_SIZE])
        x = torch.zeros(1, 3, s, s, device=next(static.parameters()).device)
        with torch.no_grad():
            return float(count_macs(static, x))
    return macs


def limit_penalty(expected: Tensor, limit: float, weight: float) -> Tensor:
    """``weight * max(0, expected / limit - 1)``: off under the limit, growing above it."""
    return weight * torch.relu(expected / limit - 1)


def project_under_limit(arch: Mapping[str, Any], logits: ArchLogits, table: CostTable,
                        cost_of: Callable[[Mapping], float], limit: float, smallest: Mapping[str, Any]) -> tuple[dict, int]:
    """``arch`` if its exact cost is under ``limit``; else lower one choice at a time, each time the value
    change that gives up the least log-probability per unit of (table) cost saved, until it is; the
    space's smallest arch if the moves run out. Returns (arch, number of moves)."""
    arch, moves = dict(arch), 0
    log_p = {n: torch.log_softmax(t.detach(), 0) for n, t in zip(logits.names, logits.logits)}
    budget_moves = sum(len(logits.space[n]) for n in logits.names)
    while cost_of(arch) > limit:
        best = None
        for n in logits.names:
            values = logits.space[n]
            cur = values.index(arch[n])
            for i in range(len(values)):
                saved = float(table.deltas[n][cur] - table.deltas[n][i])
                if saved <= 0:
                    continue
                price = float(log_p[n][cur] - log_p[n][i]) / saved
                if best is None or price < best[0]:
                    best = (price, n, values[i])
        if best is None or moves >= budget_moves:
            return dict(smallest), moves
        arch[best[1]] = best[2]
        moves += 1
    return arch, moves


# ------------------------------------------------------------------------------------------- a step
def reinforce_surrogate(losses: Sequence[float], log_probs: Sequence[Tensor], baseline: float | None) -> Tensor:
    """A scalar whose gradient is the REINFORCE estimate of grad E[loss]: mean of (loss - b) * grad log p.
    ``b``: with several samples the mean loss of the others (same batch); with one, ``baseline``."""
    k = len(losses)
    terms = []
    for i, (loss, lp) in enumerate(zip(losses, log_probs)):
        if k > 1:
            b = (sum(losses) - loss) / (k - 1)
        else:
            b = loss if baseline is None else baseline
        terms.append((loss - b) * lp)
    return sum(terms) / k


# ------------------------------------------------------------------------------------------ records
def record_arch(study: optuna.Study, space: SearchSpace, arch: Mapping[str, Any], metrics: Mapping[str, float],
                costs: Mapping[str, float], budget: Budget, seconds: float, worker: str, **attrs) -> int:
    """Store a scored arch as a COMPLETE trial (the form ``study_records`` reads); returns its number."""
    study.enqueue_trial(dict(arch), user_attrs={"strategy": "gradient", **attrs}, skip_if_exists=False)
    trial = study.ask()
    for n in space.names:
        trial.suggest_categorical(n, list(space[n]))
    for k, v in costs.items():
        trial.set_user_attr(k, float(v))
    trial.set_constraint(budget.metric, budget.excess(costs))
    trial.set_user_attr("worker", worker)
    trial.set_user_attr("metrics", {k: float(v) for k, v in metrics.items()})
    trial.set_user_attr("seconds", seconds)
    study.tell(trial, [float(metrics[OBJECTIVE])])
    return trial.number


def _finished(study: optuna.Study, resolution: int) -> dict | None:
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs.get("final") and t.user_attrs.get("resolution") == resolution:
            return dict(t.params)
    return None


# ------------------------------------------------------------------------------------------ the loop
def feasible_resolutions(space: SearchSpace, cost_of: Callable[[Mapping[str, Any]], float], budget: Budget,
                         resolutions: Sequence[int]) -> dict[int, float]:
    """Resolution -> cost of its smallest arch, for those whose smallest arch is under the limit;
    ``LimitBelowSmallest`` naming the cheapest if none is (checked before the study is opened)."""
    cheapest = {}
    smallest = space.smallest()
    for s in resolutions:
        cheapest[s] = cost_of({**smallest, INPUT_SIZE: s})
    ok = {s: c for s, c in cheapest.items() if c <= budget.max}
    if not ok:
        unit = COST_UNITS[budget.metric]
        s, c = min(cheapest.items(), key=lambda kv: kv[1])
        raise LimitBelowSmallest(
            f"search budget {budget.metric} <= {budget.max:.6g} {unit} is below the cheapest arch of the "
            f"space: the smallest arch costs {c:.6g} {unit} at input_size {s}; raise search.budget.max above {c:.6g}")
    return ok


class GradientSearch:
    """ENOT's search over one supernet (see the module docstring). ``loss_batches()`` yields
    ``(images, targets)`` batches of the search split for one epoch (``epoch`` argument); ``score(arch)``
    returns BN-recalibrated metrics with ``AP``; ``cost_fn(arch)`` the costs (``budget.metric`` among them)."""

    def __init__(self, model: nn.Module, space: SearchSpace, budget: Budget, cost_fn, score, loss_batches,
                 out_dir: Path, study: optuna.Study, device: torch.device, seed: int = 0,
                 console: Console | None = None, worker: str = ""):
        self.model, self.space, self.budget, self.cost_fn, self.score = model, space, budget, cost_fn, score
        self.loss_batches, self.out_dir, self.study, self.device = loss_batches, out_dir, study, device
        self.seed, self.console, self.worker = seed, console or Console(), worker
        self.names = [n for n in space.names if n != INPUT_SIZE]
        self.delta_of = backbone_cost_function(model, budget.metric)
        self.state_path = out_dir / STATE_FILE
        self.state = self._load_state()

    # -------------------------------------------------------------------------------------- state
    def _load_state(self) -> dict:
        if not self.state_path.is_file():
            return {"space_id": self.space.space_id, "resolutions": {}}
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling errors come in many types
            raise CheckpointError(f"{self.state_path} cannot be read ({e}): delete it to start the search again") from None
        if state.get("space_id") != self.space.space_id:
            raise CheckpointError(f"{self.state_path} belongs to search space {state.get('space_id')}, not {self.space.space_id}: "
                             "delete it or use another work_dir")
        return state

    def _save_state(self) -> None:
        with atomic_path(self.state_path) as tmp, open(tmp, "wb") as f:
            torch.save(self.state, f)  # a Python file: a full disk is ENOSPC naming the file (files.atomic_path)

    def _log(self, record: dict) -> None:
        append_jsonl(self.out_dir / LOG_FILE, record)

    def cost_of(self, arch: Mapping[str, Any]) -> float:
        return float(self.cost_fn(arch)[self.budget.metric])

    # ------------------------------------------------------------------------------- resolutions
    def feasible_resolutions(self, resolutions: Sequence[int]) -> dict[int, float]:
        return feasible_resolutions(self.space, self.cost_of, self.budget, resolutions)

    def run(self, resolutions: Sequence[int], gc) -> list[dict]:
        """One search per feasible resolution (``gc``: the GradientConfig); returns the final records."""
        finals = []
        feasible = self.feasible_resolutions(resolutions)
        unit = COST_UNITS[self.budget.metric]
        for s in resolutions:  # (one left out was dropped without a word, qa_latency #4)
            if s not in feasible:
                cost = self.cost_of({**self.space.smallest(), INPUT_SIZE: s})
                self.console.print(f"resolution {s}: not searched, its smallest arch costs {cost:.6g} {unit} > "
                                   f"search.budget.max {self.budget.max:.6g}", soft_wrap=True)
        for s in feasible:
            done = _finished(self.study, s)
            if done is not None:
                self.console.print(f"resolution {s}: already searched (trial in the study)")
                continue
            finals.append(self.search_at(s, gc))
        return finals

    def search_at(self, s: int, gc) -> dict:
        t0 = time.perf_counter()
        reference = {**self.space.default(), INPUT_SIZE: s}
        table = CostTable(self.cost_of, self.space, reference, self.names, self.delta_of)
        logits = ArchLogits(self.space, self.names)
        params = list(logits.parameters())
        if gc.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=gc.lr, momentum=gc.momentum, weight_decay=0.0)
        else:
            opt = torch.optim.RAdam(params, lr=gc.lr, weight_decay=0.0)
        key = str(s)
        saved = self.state["resolutions"].get(key)
        epoch, step, baseline = 0, 0, None
        if saved is not None:
            with torch.no_grad():
                for p, v in zip(params, saved["logits"]):
                    p.copy_(v)
            opt.load_state_dict(saved["optim"])
            epoch, step, baseline = saved["epoch"], saved["step"], saved["baseline"]
            self.console.print(f"resolution {s}: resuming after epoch {epoch}")
        self.console.print(f"resolution {s}: {self.budget.metric} of the smallest / default arch "
                           f"{table.predict(self.space.smallest()):.4g} / {table.base:.4g} (table), "
                           f"limit {self.budget.max:.4g}")
        gen = torch.Generator().manual_seed(self.seed * 7919 + s)
        if saved is not None:
            gen.set_state(saved["rng"])
        stop = False
        while epoch < gc.epochs and not stop:
            for images, targets in self.loss_batches(epoch):
                govern()
                archs = [{**logits.sample(gen), INPUT_SIZE: s} for _ in range(gc.samples)]
                losses = [self._loss(a, images, targets) for a in archs]
                opt.zero_grad(set_to_none=True)
                surrogate = reinforce_surrogate(losses, [logits.log_prob(a) for a in archs], baseline)
                expected = table.expected(logits)
                penalty = limit_penalty(expected, self.budget.max, gc.penalty)
                (surrogate + penalty.float()).backward()
                opt.step()
                mean = sum(losses) / len(losses)
                baseline = mean if baseline is None else gc.baseline_decay * baseline + (1 - gc.baseline_decay) * mean
                step += 1
                if gc.max_steps and step >= gc.max_steps:
                    stop = True
                    break
            epoch += 1
            best = {**logits.most_probable(), INPUT_SIZE: s}
            record = {"resolution": s, "epoch": epoch, "step": step, "loss_baseline": baseline,
                      "expected_cost": float(table.expected(logits).detach()), "most_probable_cost": table.predict(best),
                      "entropy": logits.entropy(), "most_probable": best, "probabilities": logits.probabilities()}
            self._log(record)
            self.console.print(f"resolution {s} epoch {epoch}/{gc.epochs}: E[{self.budget.metric}] "
                               f"{record['expected_cost']:.4g}, most probable {record['most_probable_cost']:.4g} "
                               f"(table), entropy {record['entropy']:.2f}, loss {baseline:.4f}")
            self.state["resolutions"][key] = {"logits": [p.detach().clone() for p in params], "optim": opt.state_dict(),
                                              "epoch": epoch, "step": step, "baseline": baseline,
                                              "rng": gen.get_state()}
            self._save_state()
            if gc.score_every_epoch and epoch < gc.epochs and not stop:
                self._derive_and_score(logits, table, s, epoch, final=False, seconds=time.perf_counter() - t0)
        return self._derive_and_score(logits, table, s, epoch, final=True, seconds=time.perf_counter() - t0)

    def _loss(self, arch: Mapping[str, Any], images, targets) -> float:
        from ..data.transforms import targets_to, to_model_input
        from .evaluate import preserved_bn_state

        set_detector_arch(self.model, arch, self.space)
        self.model.train()
        with torch.no_grad(), preserved_bn_state(self.model):
            losses = self.model(to_model_input(images, self.device), targets_to(targets, self.device))
        value = float(sum(losses.values()))
        if not math.isfinite(value):
            raise TrainingDiverged(f"search.strategy gradient: the detection loss is {value} for arch {arch}")
        return value

    def _derive_and_score(self, logits: ArchLogits, table: CostTable, s: int, epoch: int, final: bool,
                          seconds: float) -> dict:
        smallest = {**self.space.smallest(), INPUT_SIZE: s}
        best = {**logits.most_probable(), INPUT_SIZE: s}
        arch, moves = project_under_limit(best, logits, table, self.cost_of, self.budget.max, smallest)
        costs = dict(self.cost_fn(arch))
        if self.budget.excess(costs) > 0:  # the final check; unreachable unless the cost model moved
            raise RuntimeError(f"derived arch costs {costs[self.budget.metric]:.6g} > limit {self.budget.max:.6g}")
        t = time.perf_counter()
        metrics = self.score(arch)
        self.model.eval()
        number = record_arch(self.study, self.space, arch, metrics, costs, self.budget, seconds + time.perf_counter() - t,
                             self.worker, resolution=s, epoch=epoch, final=final, projected_moves=moves,
                             most_probable=best)
        self.console.print(f"resolution {s}, epoch {epoch}: most probable arch {self.budget.metric} "
                           f"{costs[self.budget.metric]:.4g} ({moves} projection moves), AP {metrics[OBJECTIVE]:.4f}")
        return {"trial": number, "arch": arch, "metrics": metrics, "costs": costs, "resolution": s, "moves": moves}


def search_resolutions(space: SearchSpace, input_size: int, search_resolution: bool) -> list[int]:
    """All the space's input sizes (ENOT search_with_resolution) or just the training one."""
    sizes = [int(v) for v in space[INPUT_SIZE]]
    if search_resolution:
        return sizes
    if input_size not in sizes:
        raise ConfigError(f"model.input_size {input_size} is not among the searched input_size choices {sizes}: "
                         "set search.gradient.search_resolution or supernet.input_sizes")
    return [input_size]


def write_searched_arch(model: nn.Module, space: SearchSpace, arch: Mapping[str, Any], out_dir: Path) -> Path | None:
    """``searched_arch.json`` (ENOT's index list and the input size) when the backbone has ENOT lists."""
    from ..models.supernet import BACKBONE_PREFIX, supernet_body
    from ..space import strip_prefix

    body = supernet_body(model)
    if not hasattr(body, "enot_from_arch"):
        return None
    path = Path(out_dir) / SEARCHED_ARCH
    write_text_atomic(path, json.dumps({"space_id": space.space_id, "input_size": int(arch[INPUT_SIZE]),
                                "searched_arch": body.enot_from_arch(strip_prefix(arch, BACKBONE_PREFIX))}) + "\n")
    return path
