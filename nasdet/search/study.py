"""The search as an Optuna ask-and-tell loop on a persistent study (stored as ``storage.py`` says): resume,
workers, records.

How a trial ends, and what Optuna is told:

- scored: ``COMPLETE`` with values ``[AP]`` (random, evolution) or ``[AP, cost]`` (nsga2); the metrics,
  costs and seconds are user attributes.
- over budget: the costs are recorded, ``trial.set_constraint(metric, cost - max)`` (> 0), and the trial
  is told ``PRUNED`` without values: never scored (cost is cheap, mAP is not). Samplers read only
  ``COMPLETE`` trials, so NSGA-II never selects it as a parent.
- skipped: ``FAIL`` with user attribute ``skipped`` = ``duplicate`` (another trial holds the same arch)
  or ``surplus`` (enough candidates are already scored or being scored by other workers).

Workers and resume. Before scoring, a trial marks itself (user attribute ``claim``) and then reads the
study: if any *other* trial with the same arch is ``COMPLETE`` or ``RUNNING`` with a claim, or if the other
complete or claimed trials hold ``num_candidates`` distinct archs, it is skipped. Params and claims reach
the storage before the read, so of two trials racing for one arch the later one always sees the earlier: an
arch is never scored twice and never more than ``num_candidates`` are scored (when both see each other, both
step back and the arch is proposed again later). A trial left ``RUNNING`` by a killed process of this host
(its pid is gone) is told ``FAIL`` by the next driver that looks (each driver looks before every trial), and
its arch is enqueued again (user attribute ``retry_of``), so another worker scores it (or skips the retry as
a duplicate when a worker's own proposal of that arch, drawn while the arch was free, is scored first: the
arch is scored once either way). A strategy's proposal names its process (user attribute ``proposer``); one
whose process is gone (a search that ended or was killed with it still queued) is skipped when asked
(``skipped`` = ``stale proposal``), not scored or costed against today's budget, and a driver proposes nothing
while seeds, retries or such leftovers wait to be asked first (each proposal would queue behind them).
On a database storage (``postgresql://...``) each running trial also records an Optuna heartbeat every
``heartbeat`` seconds; one silent for twice that (a dead process on any host) is failed and retried the
same way. A trial left by a dead process on another host of a journal file (Optuna's journal storage has
no heartbeat) blocks its arch until failed by hand: ``optuna tell --storage FILE --study-name STUDY
--trial-number N --state fail`` (README).
"""
from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial, TrialState

from ..errors import CheckpointError, ConfigError
from ..space import SearchSpace
from ..train import dist
from ..train.loop import StopAfterStep
from .budget import Budget
from .scoring import arch_key
from .storage import check_storage_url, open_storage, shown_storage  # noqa: F401  (imported from here too)
from .strategies import OBJECTIVE, STRATEGIES, Strategy, proposer_id, trial_arch

SUPERNET_ATTR = "supernet_checkpoint"  # study user attribute: the checkpoint the scores were taken on
_MAX_SKIPS = 200  # consecutive skipped (duplicate / surplus) trials before giving up: space exhausted
_MAX_OVER = 2000  # consecutive over-budget trials before giving up
_IDLE_POLL_S = 1.0  # a worker whose remaining candidates other workers score looks again after this


def open_study(storage, study_name: str, strategy: Strategy) -> optuna.Study:
    """Create or load (resume) ``study_name``; its directions must match the strategy's."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, load_if_exists=True,
                                    directions=list(strategy.directions))
    except ValueError as e:
        raise ConfigError(f"study {study_name!r} exists with other objectives than strategy {strategy.name!r} "
                         f"({list(strategy.directions)}): use another search.study_name ({e})") from None
    have = [d.name.lower() for d in study.directions]
    if have != list(strategy.directions):
        raise ConfigError(f"study {study_name!r} has directions {have}, strategy {strategy.name!r} needs "
                         f"{list(strategy.directions)}: use another search.study_name")
    study.sampler = strategy.sampler(len(study.get_trials(deepcopy=False)))
    return study


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_stale_trials(study: optuna.Study) -> int:
    """Tell ``FAIL`` for trials left ``RUNNING`` by a dead process (of this host: its pid is gone; of any
    host on a database storage: its heartbeat stopped) and enqueue their archs again; returns how many
    this call failed."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = _local_pid(t.user_attrs.get("worker", ""))
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # finished meanwhile, or failed by another worker first
            continue
        retry_trial(study, t)
        n += 1
    before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # heartbeats; calls retry_trial for each one it fails
    return n + len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) - before


def proposal_of(trial: FrozenTrial) -> str:
    """Whose proposal a trial is: ``mine`` (this process enqueued it), ``live`` (another process that runs, or
    one of another host, which cannot be checked), ``stale`` (its process is gone: a search that ended with a
    proposal still queued, e.g. behind the seeds, or was killed between proposing and asking; or a journal
    written before proposals named their process), or ``""`` (not a strategy's proposal: a seed, a retry)."""
    attrs = trial.user_attrs
    if "retry_of" in attrs or attrs.get("strategy") not in STRATEGIES:
        return ""
    who = str(attrs.get("proposer", ""))
    if not who:
        return "stale"
    if who == proposer_id():
        return "mine"
    pid = _local_pid(who)
    if pid is None:
        return "live"
    return "stale" if pid == os.getpid() or not _alive(pid) else "live"


def _local_pid(who) -> int | None:
    """The pid of a process id written by this host (``worker_id``'s ``host:pid``, ``proposer_id``'s
    ``host:pid:token``), None for another host's (or none): only this host's processes can be checked."""
    host, _, rest = str(who).partition(":")
    pid = rest.partition(":")[0]
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue the arch of a failed (killed) trial, so that the next ``ask`` of any worker scores it."""
    # the whole proposed arch (an interruption while its choices were being suggested left some of them unrecorded,
    # and the retry drew those afresh: another arch than the uninterrupted search's), else the choices recorded
    frozen = trial if isinstance(trial, FrozenTrial) else study.get_trials(deepcopy=False)[trial.number]
    params = dict(frozen.system_attrs.get("fixed_params") or {}) or dict(frozen.params)
    if params:  # with how it was proposed (generation, operator), as the results list it
        kept = {k: trial.user_attrs[k] for k in ("generation", "op") if k in trial.user_attrs}
        study.enqueue_trial(params, user_attrs={"strategy": trial.user_attrs.get("strategy", "retry"),
                                                **kept, "retry_of": trial.number}, skip_if_exists=False)


def _alive(pid: int) -> bool:
    """A process of this machine runs ``pid``. A zombie (exited, not yet reaped by its parent: a worker killed
    while its launcher waited on another) is dead: its claim looked live, and its arch was never retried."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] != b"Z"  # the state after "(comm) "
    except (OSError, ValueError):  # no /proc (macOS): as kill says
        return True


def _all_claimed(trials: Sequence[FrozenTrial], space: SearchSpace, num_candidates: int) -> bool:
    """The scored trials and those other live workers claimed (being scored) hold ``num_candidates`` archs:
    nothing is left to propose."""
    keys = {arch_key(a) for t in trials
            if (t.state == TrialState.COMPLETE or (t.state == TrialState.RUNNING and t.user_attrs.get("claim")))
            and (a := trial_arch(t, space)) is not None}
    return len(keys) >= num_candidates


def _blocked(study: optuna.Study, trial: optuna.Trial, arch: Mapping, num_candidates: int) -> str | None:
    """``duplicate`` / ``surplus`` / None, read after this trial's params and claim are stored. Surplus counts
    the distinct archs of the other live trials: another worker's claim of an arch already scored is about to
    be skipped itself, and counted twice it made an arch still missing (a killed trial's retry) a surplus."""
    live = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            if t.number != trial.number and (t.state == TrialState.COMPLETE or t.user_attrs.get("claim"))]
    keys = {arch_key({n: t.params.get(n) for n in arch}) for t in live if t.params}
    if arch_key(arch) in keys:
        return "duplicate"
    if len(keys) >= num_candidates:
        return "surplus"
    return None


def run_study(study: optuna.Study, space: SearchSpace, strategy: Strategy,
              scorer: Callable[[dict], Mapping[str, float]],
              cost_fn: Callable[[Mapping], Mapping[str, float]], budget: Budget | None, num_candidates: int,
              cost_metric: str = "macs", seeds: Sequence[Mapping] = (),
              on_trial: Callable[[dict], None] | None = None, objective: str = OBJECTIVE) -> dict[str, int]:
    """Ask, suggest every choice, cost, claim, score, tell, until the study holds ``num_candidates`` scored
    trials (all workers together). ``scorer(arch)`` returns metrics with ``objective`` (``AP``, or a zero-cost
    proxy's name); ``cost_fn(arch)`` costs with ``budget.metric`` and ``cost_metric``. ``seeds`` (e.g. smallest / largest arch) are enqueued once.
    Returns this call's counts: scored, over_budget, skipped, stale."""
    counts = {"scored": 0, "over_budget": 0, "skipped": 0, "stale": fail_stale_trials(study)}
    me = worker_id()
    metric = budget.metric if budget is not None else cost_metric
    seen = {arch_key(a) for t in study.get_trials(deepcopy=False)
            if (a := trial_arch(t, space) or (t.system_attrs.get("fixed_params") if t.state == TrialState.WAITING else None))}
    for arch in seeds:
        arch = space.validate(arch)
        if arch_key(arch) not in seen and (budget is None or budget.excess(cost_fn(arch)) <= 0):
            study.enqueue_trial(arch, user_attrs={"strategy": "seed"})
    skips = over = 0
    idle = False
    # Ctrl-C / a scheduler's SIGTERM: the candidate under way is scored and recorded, then the search stops, as a
    # training stops after its step (it exited 130 without a word; a second signal stops at once)
    with StopAfterStep(enabled=dist.world_size() == 1) as stop:
        stop.immediate, under_way = True, None  # a signal waits only for a candidate being scored
        try:
            while True:
                if stop.asked:
                    raise KeyboardInterrupt
                if strategy.exhausted:
                    warnings.warn(f"search stopped: {strategy.exhausted}; the scored candidates are the search's (raise "
                                  "search.budget.max for more choice)", stacklevel=2)
                    break
                if counts["scored"] or skips or over or idle:  # the first look was above, before the seeds
                    counts["stale"] += fail_stale_trials(study)
                trials = study.get_trials(deepcopy=False)
                if sum(t.state == TrialState.COMPLETE for t in trials) >= num_candidates:
                    break
                was_idle, idle = idle, _all_claimed(trials, space, num_candidates)
                if idle and not was_idle:
                    running = [t.number for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("claim")]
                    warnings.warn(f"search: the last candidates are being scored by other workers (trial(s) "
                                  f"{', '.join(map(str, running))}): waiting for them (a worker that dies on this machine, or "
                                  "on another with a database storage's heartbeat, has its candidate retried here; Ctrl-C "
                                  "stops this worker)", stacklevel=2)
                if idle:
                    # the study's last candidates are being scored by other workers: wait for them (a dead one's trial is
                    # failed and retried above, and taken here). Proposing went on at 10-25 trials a second, each failed as
                    # "surplus", until the 200th stopped this worker with "the space looks exhausted" (and, a terminal of
                    # its own, results of a study still short of its candidates)
                    time.sleep(_IDLE_POLL_S)
                    continue
                if skips >= _MAX_SKIPS or over >= _MAX_OVER:
                    warnings.warn(f"search stopped after {skips} skipped / {over} over-budget trials in a row: "
                                  "the space (under the budget) looks exhausted", stacklevel=2)
                    break
                # ask() pops the oldest waiting trial: propose only when none would be popped before the proposal but
                # other live workers' proposals (seeds, retries, stale proposals and our own go first, without one more)
                if all(proposal_of(t) == "live" for t in trials if t.state == TrialState.WAITING):
                    strategy.propose(study, trials)
                with warnings.catch_warnings():  # "heartbeat is supposed to be used with Study.optimize": we run it below
                    warnings.filterwarnings("ignore", message="Heartbeat of storage")
                    trial = study.ask()
                trial.set_user_attr("worker", me)
                if proposal_of(trial) == "stale":
                    # drawn from a population or under a budget that may be gone: the strategy proposes afresh
                    trial.set_user_attr("skipped", "stale proposal")
                    study.tell(trial, state=TrialState.FAIL)
                    counts["skipped"] += 1
                    skips += 1
                    continue
                # Optuna's own heartbeat thread (what study.optimize runs); a no-op on a journal file
                with get_heartbeat_thread(trial._trial_id, study._storage):
                    stop.immediate, under_way = False, "cut"
                    outcome = _run_trial(study, trial, space, strategy, scorer, cost_fn, budget, num_candidates, metric,
                                         objective)
                    stop.immediate, under_way = True, "finished" if stop.asked else None
                if outcome == "over_budget":
                    counts["over_budget"] += 1
                    over += 1
                    continue
                over = 0
                if outcome == "skipped":
                    counts["skipped"] += 1
                    skips += 1
                    continue
                skips = 0
                counts["scored"] += 1
                if on_trial is not None:
                    on_trial(outcome)
        except KeyboardInterrupt:
            if stop.asked:  # (a KeyboardInterrupt of the scorer's own, with no signal here, says nothing)
                done = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
                how = {None: "no candidate was under way", "finished": "the one under way finished and recorded",
                       "cut": "stopped at once: the candidate under way is scored again"}[under_way]
                warnings.warn(f"search: {stop.asked}: stopped with {done} of {num_candidates} candidates scored "
                              f"({how}); the same command continues from there", stacklevel=2)
            raise
    return counts


def _run_trial(study: optuna.Study, trial: optuna.Trial, space: SearchSpace, strategy: Strategy,
               scorer: Callable[[dict], Mapping[str, float]], cost_fn: Callable[[Mapping], Mapping[str, float]],
               budget: Budget | None, num_candidates: int, metric: str, objective: str = OBJECTIVE) -> str | dict:
    """One asked trial to its end: ``over_budget``, ``skipped`` or the scored record."""
    arch = {n: trial.suggest_categorical(n, list(space[n])) for n in space.names}
    costs = {k: float(v) for k, v in cost_fn(arch).items()}
    for k, v in costs.items():
        trial.set_user_attr(k, v)
    if budget is not None:
        excess = budget.excess(costs)
        trial.set_constraint(budget.metric, excess)
        if excess > 0:
            trial.set_user_attr("over_budget", True)
            study.tell(trial, state=TrialState.PRUNED)
            return "over_budget"
    trial.set_user_attr("claim", True)
    reason = _blocked(study, trial, arch, num_candidates)
    if reason is not None:
        trial.set_user_attr("skipped", reason)
        study.tell(trial, state=TrialState.FAIL)
        return "skipped"
    t0 = time.perf_counter()
    try:
        metrics = {k: float(v) for k, v in scorer(arch).items()}
    except BaseException as e:
        study.tell(trial, state=TrialState.FAIL)
        if not isinstance(e, Exception):  # Ctrl-C, SIGTERM: the rerun scores it (a scorer's error stays failed)
            retry_trial(study, trial)
        raise
    seconds = time.perf_counter() - t0
    trial.set_user_attr("metrics", metrics)
    trial.set_user_attr("seconds", seconds)
    values = [metrics[objective]] + ([costs[metric]] if len(strategy.directions) == 2 else [])
    study.tell(trial, values)
    return {"trial": trial.number, "arch": arch, "metrics": metrics, "costs": costs, "seconds": seconds}


# ------------------------------------------------------------------------------------------- records
def study_records(study: optuna.Study, space: SearchSpace, objective: str = OBJECTIVE) -> list[dict[str, Any]]:
    """One record per scored trial, in trial order: trial, arch, metrics, costs, seconds, worker."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        arch = trial_arch(t, space)
        if arch is None:
            continue
        u = t.user_attrs
        out.append({"trial": t.number, "arch": arch, "metrics": dict(u.get("metrics", {objective: t.values[0]})),
                    "costs": {k: u[k] for k in ("macs", "params", "latency") if k in u},
                    "seconds": u.get("seconds"), "worker": u.get("worker"),
                    "feasible": all(v <= 0 for v in t.constraints.values())})
    return out


def apply_budget(records: Sequence[dict], budget: Budget | None,
                 cost_fn: Callable[[Mapping], Mapping[str, float]] | None = None) -> list[dict]:
    """The records with ``feasible`` judged under the *current* budget from their stored costs: a rerun
    with a tighter (or looser) budget must not keep the verdicts of the run that scored them. A cost a
    record lacks (the budget's metric changed) is computed with ``cost_fn``."""
    out = []
    for r in records:
        r = {**r, "costs": dict(r["costs"])}
        if budget is not None and budget.metric not in r["costs"] and cost_fn is not None:
            r["costs"][budget.metric] = float(cost_fn(r["arch"])[budget.metric])
        r["feasible"] = budget is None or budget.excess(r["costs"]) <= 0
        out.append(r)
    return out


def check_supernet_fingerprint(study: optuna.Study, fingerprint: Mapping[str, Any], study_label: str) -> None:
    """Keep one study on one supernet: scores taken on other weights do not rank with these. The first
    run records ``fingerprint`` (checkpoint sha256 and step) in the study; a later run on another
    checkpoint is refused with what to do."""
    have = study.user_attrs.get(SUPERNET_ATTR)
    if have is None:
        study.set_user_attr(SUPERNET_ATTR, dict(fingerprint))
        return
    if have.get("sha256") != fingerprint["sha256"]:
        raise CheckpointError(
            f"{study_label} holds scores of another supernet checkpoint (step {have.get('step')}, sha256 "
            f"{str(have.get('sha256'))[:12]}) than {fingerprint['path']} now (step {fingerprint['step']}, sha256 "
            f"{fingerprint['sha256'][:12]}): its scores would not rank with new ones. Delete the study (the search "
            "folder's study.journal) or set search.study_name to start a new one")


SCORING_ATTR = "scoring"  # study user attribute: the settings its candidates were scored and costed with


def check_scoring_settings(study: optuna.Study, settings: Mapping[str, Any], study_label: str,
                           scores: bool = True) -> list[str]:
    """Keep one study on one scoring protocol: a rerun that scores on other images, recalibrates otherwise or
    costs latency otherwise would rank new scores with old ones (a search rerun with ``search.max_images`` 8 ->
    16 ranked both in one table, and its confidence check named another winner than best_arch.json). The first
    run records ``settings`` (config key -> value); a later run that changes any is refused naming the keys when
    it ``scores`` new candidates; otherwise (the study is complete) the changes are returned, for a warning.
    A study written before this was recorded takes today's."""
    have = study.user_attrs.get(SCORING_ATTR)
    if have is None:
        study.set_user_attr(SCORING_ATTR, dict(settings))
        return []
    changed = [f"{k}: {have[k]} -> {v}" for k, v in settings.items() if k in have and have[k] != v]
    if changed and scores:
        space = all(c.startswith("search space ") for c in changed)
        raise ConfigError(
            f"{study_label} holds candidates scored with other settings ({'; '.join(changed)}): "
            + ("its trials were drawn from other choices, which a study keeps (search.resolution_tolerance, the "
               "supernet's sizes or space)" if space else "their scores would not rank with new ones")
            + ". Rerun with the settings it was scored with, or delete the study (the search folder's study.journal) "
            "or set search.study_name to start a new one")
    return changed


def pareto_front(records: Sequence[dict], cost: str, objective: str = OBJECTIVE) -> list[dict]:
    """Records not dominated in (higher ``objective``, lower ``cost``), sorted by cost."""
    pts = sorted((r for r in records if cost in r["costs"]), key=lambda r: (r["costs"][cost], -r["metrics"][objective]))
    front, best = [], -math.inf
    for r in pts:
        ap = r["metrics"][objective]
        if ap > best:
            front.append(r)
            best = ap
    return front


def best_record(records: Sequence[dict], objective: str = OBJECTIVE) -> dict | None:
    """Highest ``objective`` (AP) among feasible records (ties: the earlier trial)."""
    ok = [r for r in records if r["feasible"]]
    return max(ok, key=lambda r: (r["metrics"][objective], -r["trial"])) if ok else None
