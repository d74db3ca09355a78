"""Search strategies as proposers for an Optuna ask-and-tell loop (``study.run_study``).

A strategy says which Optuna sampler the study uses and, before each ``study.ask()``, may enqueue the
arch it wants scored next (``study.enqueue_trial``): the asked trial then returns exactly that arch
from ``trial.suggest_categorical``. Every strategy reads its state back from the study's trials, so a
killed search resumes where it stopped and several workers share one population.

- ``random``: a uniform arch (any cost) enqueued; over-budget ones are recorded but never scored.
- ``evolution``: SPOS/DetNAS. Generation ``g`` = the ``g``-th block of ``population`` scored trials.
  Generation 0 is uniform under the budget; later children come from the top-``parents`` scored trials
  by mutation (each choice changes with ``mutation_prob``), uniform crossover of two parents, or
  uniform sampling, in the configured shares. Over-budget and already-seen children are rejected
  before they are enqueued (DetNAS ``legal``). ``parents_from``: ``scored`` (default) draws each child's
  operator by the shares and its parents from the best scored so far, so several workers can share one study;
  ``generation`` fixes the parents at the generation's start (the best of the trials scored before it) and
  counts the shares exactly, as DetNAS / SPOS make a generation (mutations, then crossovers, then random); with
  several workers each counts the children it sees queued when it proposes (off by about one per worker).
  (With several workers, one may pop another's enqueued child; its own ask then falls back to the uniform
  sampler, whose arch may be recorded over budget.)
- ``nsga2``: Optuna's ``NSGAIISampler`` (passed explicitly; Optuna 5's multi-objective default is TPE),
  two objectives (maximise AP, minimise the cost); nothing is enqueued. A fresh one per trial, seeded from the
  trials before it that did not fail (``PerTrialSeeded``), so that a resumed search proposes what the
  uninterrupted one did.
"""
from __future__ import annotations

import hashlib
import os
import random
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError
from ..space import NoArchUnderCost, SearchSpace
from .budget import Budget
from .scoring import arch_key

STRATEGIES = ("evolution", "nsga2", "random")
OBJECTIVE = "AP"
_MAX_TRIES = 1000
_TOKENS: dict[int, str] = {}


def proposer_id() -> str:
    """This process among every process that ever proposed to a study: ``host:pid:token`` (the token tells
    a new process that got a dead one's pid from it; per pid, so a forked worker gets its own)."""
    pid = os.getpid()
    token = _TOKENS.setdefault(pid, os.urandom(4).hex())
    return f"{socket.gethostname()}:{pid}:{token}"


def trial_arch(trial: FrozenTrial, space: SearchSpace) -> dict | None:
    """The arch a trial holds (its params in space order), or None if it has not suggested all of them."""
    if not all(n in trial.params for n in space.names):
        return None
    return {n: trial.params[n] for n in space.names}


def seeded_rng(*parts: Any) -> random.Random:
    """A ``random.Random`` seeded from ``parts`` (seed, worker, study size): reproducible, distinct per call site."""
    return random.Random(int(hashlib.sha256(repr(parts).encode()).hexdigest()[:16], 16))


class Strategy:
    """Base: the study's directions and sampler, and ``propose`` (enqueue the next arch, or nothing)."""

    name = "base"
    directions: tuple[str, ...] = ("maximize",)

    def __init__(self, space: SearchSpace, cost_fn: Callable[[Mapping], Mapping[str, float]],
                 budget: Budget | None, seed: int = 0, worker: int = 0):
        self.space, self.cost_fn, self.budget, self.seed, self.worker = space, cost_fn, budget, seed, worker
        self.exhausted: str | None = None  # why no further arch can be proposed: the study stops with what it has

    def sampler(self, n_trials: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=self._sampler_seed(n_trials))

    def _sampler_seed(self, n_trials: int) -> int:
        return seeded_rng(self.seed, self.worker, n_trials).randrange(2**31)

    def under_budget(self, arch: Mapping) -> bool:
        return self.budget is None or self.budget.excess(self.cost_fn(arch)) <= 0

    def propose(self, study: optuna.Study, trials: Sequence[FrozenTrial]) -> dict | None:
        """Enqueue and return the next arch, or None to let the sampler choose."""
        return None

    def _enqueue(self, study: optuna.Study, arch: dict, **attrs) -> dict:
        study.enqueue_trial(arch, user_attrs={"strategy": self.name, "proposer": proposer_id(), **attrs},
                            skip_if_exists=False)
        return arch


def seen_keys(trials: Sequence[FrozenTrial], space: SearchSpace) -> set[str]:
    """Keys of archs already scored, being scored, or rejected as over budget (not failed ones)."""
    keys = set()
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING):
            arch = trial_arch(t, space) if t.state != TrialState.WAITING else _waiting_arch(t, space)
            if arch is not None:
                keys.add(arch_key(arch))
    return keys


def proposal_count(trials: Sequence[FrozenTrial]) -> int:
    """What a proposal's random stream is keyed by: the trials that did not fail. An interruption leaves a failed
    trial (its arch retried), which the study's whole count took in: every proposal after a resume was another
    arch than the uninterrupted search's, and the search found another one."""
    return sum(t.state != TrialState.FAIL for t in trials)


def _waiting_arch(trial: FrozenTrial, space: SearchSpace) -> dict | None:
    fixed = trial.system_attrs.get("fixed_params") or {}
    return {n: fixed[n] for n in space.names} if all(n in fixed for n in space.names) else None


class RandomSearch(Strategy):
    """Uniform archs, the baseline: not filtered by cost (over-budget ones are recorded unscored)."""

    name = "random"

    def propose(self, study, trials):
        rng = seeded_rng(self.seed, self.worker, proposal_count(trials), "random")
        seen = seen_keys(trials, self.space)
        for _ in range(_MAX_TRIES):
            arch = self.space.sample(rng)
            if arch_key(arch) not in seen:
                return self._enqueue(study, arch)
        return None


class Evolution(Strategy):
    """SPOS/DetNAS evolution as an enqueueing proposer (see the module docstring)."""

    name = "evolution"

    def __init__(self, space, cost_fn, budget, seed=0, worker=0, population: int = 50, parents: int = 10,
                 mutation_prob: float = 0.1, mutation: float = 0.4, crossover: float = 0.4,
                 parents_from: str = "scored"):
        super().__init__(space, cost_fn, budget, seed, worker)
        self.population, self.parents, self.mutation_prob = population, parents, mutation_prob
        self.mutation, self.crossover = mutation, crossover
        if parents_from not in ("scored", "generation"):
            raise ConfigError(f"search.parents_from {parents_from!r} is not 'scored' or 'generation'")
        self.parents_from = parents_from

    def generation_of(self, trials: Sequence[FrozenTrial]) -> int:
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        return done // self.population

    def top_k(self, trials: Sequence[FrozenTrial], before_generation: int | None = None) -> list[dict]:
        """The best ``parents`` scored archs (highest AP first; ties broken by trial number); with
        ``before_generation`` g, of the first g x ``population`` scored (those before generation g began)."""
        done = [t for t in trials if t.state == TrialState.COMPLETE and trial_arch(t, self.space) is not None]
        if before_generation is not None:
            done.sort(key=lambda t: (t.datetime_complete, t.number))
            done = done[: before_generation * self.population]
        done.sort(key=lambda t: (-t.values[0], t.number))
        return [trial_arch(t, self.space) for t in done[: self.parents]]

    def generation_ops(self, trials: Sequence[FrozenTrial], gen: int) -> list[str]:
        """``parents_from: generation``: the operator generation ``gen``'s next child is made by while its
        quota (share x population) is not met (mutations first, then crossovers, then random), followed by the
        later ones, tried when it finds no new arch under the budget (DetNAS: fewer children, the rest random)."""
        made = [t.user_attrs.get("op") for t in trials
                if t.user_attrs.get("generation") == gen and t.state != TrialState.FAIL]
        order = ["mutation", "crossover", "random"]
        quota = {"mutation": round(self.mutation * self.population), "crossover": round(self.crossover * self.population)}
        first = next((op for op in order[:2] if made.count(op) < quota[op]), "random")
        return order[order.index(first):]

    def propose(self, study, trials):
        gen = self.generation_of(trials)
        rng = seeded_rng(self.seed, self.worker, proposal_count(trials), "evolution")
        seen = seen_keys(trials, self.space)
        fixed = self.parents_from == "generation"
        parents = self.top_k(trials, gen if fixed else None) if gen > 0 else []
        for wanted in self.generation_ops(trials, gen) if fixed and parents else [None]:
            for _ in range(_MAX_TRIES):
                op, arch = self._child(rng, parents, wanted)
                if arch_key(arch) not in seen and self.under_budget(arch):
                    return self._enqueue(study, arch, generation=gen, op=op)
        try:  # the neighbourhood of the parents is exhausted: a fresh arch under the budget
            arch = self._sample_under(rng)
        except NoArchUnderCost as e:
            scored = parents or self.top_k(trials)  # (a first generation's: the tight budget's seed, scored)
            for _ in range(_MAX_TRIES if not parents else 0):
                op, arch = self._child(rng, scored)
                if op != "random" and arch_key(arch) not in seen and self.under_budget(arch):
                    return self._enqueue(study, arch, generation=gen, op=op)
            if not scored:  # nothing to vary: each later proposal would draw as many again (qa_detnas #11: days)
                raise NoArchUnderCost(
                    f"evolution found no arch under the budget ({self.budget.metric} <= {self.budget.max:.6g}) in "
                    f"{2 * _MAX_TRIES} uniform draws: the archs that fit are too rare in this space for its random "
                    f"first generation; raise search.budget.max ({e})") from None
            # the archs near the scored ones that fit are all scored (or none fits): the study stops with them
            self.exhausted = (f"no other arch under the budget ({self.budget.metric} <= {self.budget.max:.6g}) found "
                              f"near the {len(scored)} scored ones or in {_MAX_TRIES} uniform draws")
            return None
        return None if arch_key(arch) in seen else self._enqueue(study, arch, generation=gen, op="random")

    def _child(self, rng: random.Random, parents: list[dict], op: str | None = None) -> tuple[str, dict]:
        """A child by ``op``, or (None) by an operator drawn by the shares."""
        if op is None:
            u = rng.random()
            op = "mutation" if u < self.mutation else "crossover" if u < self.mutation + self.crossover else "random"
        if parents and op == "mutation":
            return "mutation", self.space.mutate(rng.choice(parents), rng, self.mutation_prob)
        if parents and op == "crossover":
            return "crossover", self.space.crossover(rng.choice(parents), rng.choice(parents), rng)
        return "random", self.space.sample(rng)

    def _sample_under(self, rng: random.Random) -> dict:
        if self.budget is None:
            return self.space.sample(rng)
        return self.space.sample_under(rng, lambda a: self.cost_fn(a)[self.budget.metric], self.budget.max)


class PerTrialSeeded(optuna.samplers.BaseSampler):
    """An Optuna sampler made afresh for each trial by ``make(seed)``, the seed drawn from ``parts`` and the count of
    the study's trials before this one but those an interruption failed (``skipped`` ones count: a duplicate's
    stream must move on). One sampler for a whole process was seeded once, from the trial count when the study
    opened: a search resumed after an interruption (which leaves a failed trial, retried) drew another stream, and
    NSGA-II proposed other archs from there on than the uninterrupted search (it keeps its state, generations and
    parents, in the study; its random draws are all it holds)."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], *parts: Any):
        self._make, self._parts = make, parts
        self._current = make(seeded_rng(*parts, 0).randrange(2**31))

    def before_trial(self, study, trial) -> None:
        before = sum(t.state != TrialState.FAIL or "skipped" in t.user_attrs
                     for t in study.get_trials(deepcopy=False) if t.number < trial.number)
        self._current = self._make(seeded_rng(*self._parts, before).randrange(2**31))
        self._current.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._current.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._current.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._current.reseed_rng()

    @property
    def current(self) -> optuna.samplers.BaseSampler:
        return self._current


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's, with a retried trial in its generation. (Named as Optuna's: the class name keys the generation in
    the study, "NSGAIISampler:generation", which a study searched before keeps.)"""

    def before_trial(self, study, trial) -> None:
        super().before_trial(study, trial)
        # a retried trial's choices are fixed, so Optuna never asks it for a relative sample, where its generation is
        # set: without one it was in no population, and the resumed search's generations were others
        self.get_trial_generation(study, trial)


class NSGA2(Strategy):
    """Optuna's NSGA-II on (AP, cost): the Pareto front in one search; constraints via ``set_constraint``."""

    name = "nsga2"
    directions = ("maximize", "minimize")

    def __init__(self, space, cost_fn, budget, seed=0, worker=0, population: int = 50,
                 mutation_prob: float | None = None, crossover_prob: float = 0.9):
        super().__init__(space, cost_fn, budget, seed, worker)
        self.population, self.mutation_prob, self.crossover_prob = population, mutation_prob, crossover_prob

    def sampler(self, n_trials):
        def make(seed: int) -> NSGAIISampler:
            return NSGAIISampler(population_size=self.population, mutation_prob=self.mutation_prob,
                                 crossover_prob=self.crossover_prob, seed=seed)

        return PerTrialSeeded(make, self.seed, self.worker, "nsga2")


def make_strategy(name: str, space: SearchSpace, cost_fn, budget: Budget | None, seed: int = 0, worker: int = 0,
                  population: int = 50, parents: int = 10, mutation_prob: float = 0.1, mutation: float = 0.4,
                  crossover: float = 0.4, parents_from: str = "scored") -> Strategy:
    if name == "random":
        return RandomSearch(space, cost_fn, budget, seed, worker)
    if name == "evolution":
        return Evolution(space, cost_fn, budget, seed, worker, population, parents, mutation_prob, mutation, crossover,
                         parents_from)
    if name == "nsga2":
        return NSGA2(space, cost_fn, budget, seed, worker, population, mutation_prob)
    raise ConfigError(f"search strategy {name!r} is not one of {STRATEGIES}")
