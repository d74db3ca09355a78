"""The search stage (``nasdet search``): from a trained supernet to ``search/`` outputs.

Reads ``work_dir/supernet/ckpt/last.pt`` (refused if written for another search space), scores
candidates on the held-out search split (BN recalibrated on the supernet's training split, no
augmentation) under ``cfg.search``, and writes ``work_dir/search/``: ``study.journal`` (the Optuna
study, the persistent record), ``results.csv``, ``best_arch.json``, ``pareto.json``, ``pareto.png``.
Rerunning continues the same study; several processes on one storage share the work.
"""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import torch
from optuna.trial import TrialState
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from ..config import ExperimentConfig, config_to_dict, save_run_record
from ..errors import ConfigError
from ..export import configured_postprocessing
from ..models.families import family_of
from ..progress import progress_bar
from ..search.budget import (Budget, CostModel, arch_text, check_budget_feasible, restrict_resolution,
                             tight_budget_seed)
from ..search.confidence import confidence_of_search, split_size_warning
from ..search.latency import latency_function, latency_images
from ..search.outputs import (kept_outputs, output_files, outputs_key, refuse_other_search, top_table,
                              write_search_outputs)
from ..search.scorers import load_trained_supernet, proxy_scorer_context
from ..search.scoring import cached_scorer, score_arch
from ..search.strategies import OBJECTIVE, make_strategy
from ..search.storage import check_storage_url, open_storage, refuse_foreign_storage, shown_storage, sqlite_file
from ..search.study import (SCORING_ATTR, apply_budget, best_record, check_scoring_settings,
                            check_supernet_fingerprint, open_study, run_study, study_records)
from ..space import SearchSpace
from ..threads import configured_threads, in_turns, loader_workers
from ..train import dist
from ..train.checkpoint import file_sha256
from ..train.trained import load_trained_model
from ..user_data import refuse_output_in_data
from ..workdir import BEST_ARCH, CONFIDENCE_JSON, LATENCY_LUT, PARETO_JSON, STUDY_FILE, WorkDir
from .common import stage_api


@stage_api
def run_darts(cfg: ExperimentConfig, work_dir: str | Path | None = None, console: Console | None = None) -> dict:
    """``nasdet search`` with ``search.strategy: darts`` (FAD): the bi-level search of the head's towers into
    ``search/`` (genotype.log / genotype.json, the arch the tune stage trains); returns the genotypes, step
    and output paths."""
    from ..search.darts import DartsSearch

    search = DartsSearch.from_config(cfg, work_dir, console)
    search.prepare()  # a checkpoint that does not fit fails here, before the config is written
    save_run_record(cfg, WorkDir.of(cfg, work_dir).config)
    return search.run()


ONE_PROCESS = {"gradient": "one set of architecture probabilities", "darts": "one set of architecture weights"}


def check_one_process(cfg: ExperimentConfig, worker: int = 0, workers: int = 1) -> None:
    """Gradient and darts searches train one set of architecture parameters: one process, no workers
    (the CLI calls this before it starts any)."""
    why = ONE_PROCESS.get(cfg.search.strategy)
    if why and (worker > 0 or workers > 1):
        from ..errors import ConfigError

        given = f"--workers {workers}" if workers > 1 else f"--worker {worker}"
        raise ConfigError(f"{given}: search.strategy {cfg.search.strategy} runs in one process ({why}); drop "
                          "--worker / --workers")


def check_search_inputs(cfg: ExperimentConfig, work_dir: str | Path | None = None,
                        storage: str | None = None) -> WorkDir:
    """What a search can refuse before anything is loaded or written (another study in search/, the storage,
    the lookup table, a missing supernet): run by each worker, and by ``--workers``' launcher before it starts
    any (each worker found it only after loading its data). Returns the work dir."""
    s = cfg.search
    w = WorkDir.of(cfg, work_dir)
    refuse_other_search(w.search.root, study_name_of(cfg), s.strategy)
    if "://" in str(storage or s.storage or ""):
        url = str(storage or s.storage)
        if (database := sqlite_file(url)) is not None:
            refuse_output_in_data(database, cfg.data_folders(), "search storage")
        check_storage_url(url)  # a bad URL fails now, not after the supernet is loaded
    elif storage or s.storage:
        path = Path(storage or s.storage)
        refuse_output_in_data(path, cfg.data_folders(), "search storage")
        refuse_foreign_storage(path)  # (the journal's own check comes when the study opens it)
    if cfg.cost.lut:
        refuse_output_in_data(cfg.cost.lut, cfg.data_folders(), "cost.lut")
    if s.scorer == "supernet":
        w.supernet.require_checkpoint()
    return w


@stage_api
def run_search(cfg: ExperimentConfig, work_dir: str | Path | None = None, storage: str | None = None,
               console: Console | None = None, worker: int = 0, outputs: bool = True) -> dict:
    """Search the supernet of ``work_dir/supernet`` per ``cfg.search``; returns a summary (best record,
    counts, output paths). ``storage`` (URL or journal path) overrides ``cfg.search.storage``; ``worker``
    (0, 1, ...) decorrelates the proposals of processes sharing one study. With ``search.scorer`` a zero-cost
    proxy, candidates are ranked by it at their scratch init and no supernet checkpoint is needed.
    ``outputs=False``: only score candidates (a worker of ``--workers``, whose launcher then writes the
    outputs once); returns the counts."""
    check_one_process(cfg, worker)
    if cfg.search.strategy == "darts":  # FAD: differentiable search of the head, no supernet stage
        if storage:  # (it was ignored without a word)
            raise ConfigError(f"--storage {storage}: search.strategy darts (FAD) keeps no Optuna study (its alphas "
                              "are in search/ckpt/last.pt); drop --storage")
        return run_darts(cfg, work_dir, console)
    console = console or Console()
    s = cfg.search
    if timed_in_torch(cfg.cost) and "latency" in ((s.budget.metric,) if s.budget else (s.cost_metric,)):
        dist.check_device_available(cfg.cost.device, "cost.device")  # before the supernet loads (a traceback)
    w = check_search_inputs(cfg, work_dir, storage)
    wd, out_dir = w.root, w.search.root
    ctx = load_trained_supernet(cfg, w, console) if s.scorer == "supernet" else proxy_scorer_context(cfg)
    model, space, search_set, device = ctx.model, ctx.space, ctx.search_set, ctx.device
    objective = OBJECTIVE if s.scorer == "supernet" else s.scorer

    search_space = restrict_resolution(space, cfg.model.input_size, s.resolution_tolerance)
    budget = Budget(s.budget.metric, s.budget.max) if s.budget else None
    cost_metric = budget.metric if budget else s.cost_metric
    measure = ("macs", "params") + (("latency",) if cost_metric == "latency" else ())
    c = cfg.cost
    # INT8 candidates calibrate on a few search images (their ranges, as an export's would be)
    calibration = [search_set.load_image(i).as_subclass(torch.Tensor)
                   for i in range(min(c.int8_calibration_images, len(search_set)))] if c.int8 else None
    # a candidate whose work follows the image (Faster R-CNN) is traced and timed on one of these, as its export is
    real_images = latency_images(cfg, search_set) if "latency" in measure else None
    latency_fn = latency_function(c.latency, model, space, device=c.device, warmup=c.warmup, runs=c.runs,
                                  threads=timing_threads(c), lut_path=c.lut or out_dir / LATENCY_LUT,
                                  lut_precision=c.lut_precision, calibration=calibration, real_images=real_images)
    # CPU timings take turns with the other search processes' scoring on this host (each worker timed while another
    # computed: latencies came out twice, and a budget its smallest arch met was refused)
    timed_on_cpu = "latency" in measure and (c.latency.startswith("onnxruntime") or c.device == "cpu")
    if timed_on_cpu:
        latency_fn = in_turns(latency_fn, exclusive=True)
    cost_fn = CostModel(model, space, measure, latency_fn=latency_fn)
    lut = cfg.cost.latency == "lut"
    check_budget_feasible(budget, cost_fn, search_space,  # before any candidate is scored
                          f"the {cfg.cost.lut_precision} latency lookup table (cost.latency lut)" if lut else None)
    small = split_size_warning(search_set, "the validation set" if s.score_on == "val" else "the search split") \
        if objective == OBJECTIVE else None
    if small and outputs:  # a worker of --workers leaves it to its launcher (it was printed twice)
        console.print(Text("warning: " + small, style="yellow"), soft_wrap=True)
    if s.strategy == "gradient":
        return _run_gradient(cfg, wd, model, space, search_space, search_set, ctx.calib_set, device, budget, cost_fn,
                             measure, storage, console, ctx.checkpoint, ctx.state)

    scorer = in_turns(ctx.scorer, exclusive=False) if timed_on_cpu else ctx.scorer
    strategy = make_strategy(s.strategy, search_space, cost_fn, budget, seed=s.seed, worker=worker,
                             population=s.population, parents=s.parents, mutation_prob=s.mutation_prob,
                             mutation=s.mutation, crossover=s.crossover, parents_from=s.parents_from)
    study_name = study_name_of(cfg)
    study, rescored_otherwise = open_checked_study(storage or s.storage, out_dir, study_name, strategy, ctx.checkpoint,
                                                   ctx.state, s.heartbeat_seconds, scoring_settings(cfg, search_space),
                                                   s.num_candidates, console)
    save_run_record(cfg, w.config)
    extremes = {"smallest": search_space.smallest(), "largest": search_space.largest()}

    notice = CostingNotice(console, budget, costing_work(cfg, cost_metric))
    cost_fn.on_computed = notice
    scored = study_records(study, search_space, objective)
    already = len(scored)
    best = [max((r["metrics"][objective] for r in scored), default=float("nan"))]
    with progress_bar(console, TextColumn("search {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), label="search candidates", every=max(1, s.num_candidates // 100)) as progress:
        task = progress.add_task(f"best {objective} {best[0]:.4f}", total=s.num_candidates, completed=min(already, s.num_candidates))

        def on_trial(rec):
            notice.reset()
            # the study's count and best, not this process's: under --workers the launcher shows worker 0's bar,
            # which counted only its own candidates (5/12 when all 12 were scored) and their best AP
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            best[0] = max((t.values[0] for t in complete), default=rec["metrics"][objective])
            progress.update(task, completed=min(len(complete), s.num_candidates),
                            description=f"best {objective} {best[0]:.4f}")

        seeds = list(extremes.values()) if s.include_extremes else []
        tight = tight_budget_seed(budget, cost_fn, search_space, predicted=lut)
        if tight is not None:  # under the smallest arch: uniform draws rarely meet the budget
            console.print(Text(f"the budget is under the smallest arch: few archs meet it; the search scores first the "
                               f"cheapest found choice by choice ({arch_text(tight, search_space.smallest())})",
                               style="yellow"), soft_wrap=True)
            seeds.insert(0, tight)
        counts = run_study(study, search_space, strategy, scorer, cost_fn, budget, s.num_candidates,
                           cost_metric=cost_metric, seeds=seeds, on_trial=on_trial, objective=objective)
    if not outputs:
        return {"counts": counts, "study_name": study_name, "strategy": s.strategy}
    records = apply_budget(study_records(study, search_space, objective), budget, cost_fn)
    # a complete study kept with other scoring settings than this run's: its outputs are those of its own settings
    as_scored = with_settings(config_to_dict(cfg), study.user_attrs.get(SCORING_ATTR) or {}) if rescored_otherwise \
        else config_to_dict(cfg)
    key = outputs_key(as_scored, records, [w.baseline.checkpoint, getattr(ctx, "checkpoint", None)])
    kept = kept_outputs(out_dir, key)
    if kept is not None:  # nothing new since they were written: the same outputs
        console.print(f"search: {len(records)} candidates, none new since {escape(str(out_dir / PARETO_JSON))} was "
                      "written: its outputs are kept")
        confidence = json.loads((out_dir / CONFIDENCE_JSON).read_text()) if (out_dir / CONFIDENCE_JSON).is_file() else None
        summary = {"best": best_record(records, objective), "front": kept["front"], "records": len(records),
                   "files": output_files(out_dir)}
    else:
        extreme_costs = {n: {"arch": a, "costs": cost_fn(a)} for n, a in extremes.items()}
        # a kept study scored with other post-processing only (a pipeline rerun with another model.score_thresh for
        # its export): the baseline point and the confidence are taken with the study's (they were dropped, and a
        # rerun with the study's own values kept the outputs without them); scored on other images, they are not
        differs = scored_otherwise(study, scoring_settings(cfg, search_space)) if rescored_otherwise else {}
        scored_cfg = with_postprocessing(cfg, differs) if differs and all(k.startswith("model.") for k in differs) \
            else None if rescored_otherwise else cfg
        # a proxy's score and the baseline's AP share no scale: the baseline is marked only on AP plots
        baseline = confidence = None
        if objective == OBJECTIVE and scored_cfg is not None:
            baseline = score_baseline(scored_cfg, wd, search_set, device, measure, calibration)
            family_of(model).set_postprocessing(model, scored_cfg.model)
            try:  # (scoring the top candidates again with other settings than theirs would name another winner)
                confidence = confidence_of_search(scored_cfg, model, space, records, search_set, ctx.calib_set, device)
            finally:
                family_of(model).set_postprocessing(model, cfg.model)
        summary = write_search_outputs(records, space, out_dir, cost_metric, budget, extreme_costs, baseline,
                                       objective, confidence, {"study_name": study_name, "strategy": s.strategy,
                                                               # where the kept study's candidates were scored
                                                               "score_on": as_scored["search"]["score_on"],
                                                               "images": len(search_set),
                                                               "scored_with": differs or None}, key)
    summary.update(counts=counts, study_name=study_name, strategy=s.strategy)
    scored_on = "candidates scored with the study's own settings (above)" if rescored_otherwise else \
        f"candidates on {len(search_set)} search images"
    console.print(top_table(records, cost_metric, s.top_k, f"search ({s.strategy}): top {s.top_k} of {len(records)} "
                            + (scored_on if objective == OBJECTIVE else f"candidates by the zero-cost proxy {objective}"),
                            objective))
    if confidence is not None:
        console.print(Text(confidence["verdict"]), soft_wrap=True)
    if summary["best"] is None:
        console.print("[yellow]no scored candidate is under the budget: best_arch.json not written[/]")
    else:
        console.print(f"best under budget: trial {summary['best']['trial']}, {objective} "
                      f"{summary['best']['metrics'][objective]:.4f} -> {escape(str(out_dir / BEST_ARCH))}")
    return summary


def costing_work(cfg: ExperimentConfig, cost_metric: str) -> str:
    """What costing one arch takes, in words."""
    if cost_metric != "latency" or cfg.cost.latency == "lut":
        return "each one exported and counted"
    return "each one exported, " + ("quantized to INT8, " if cfg.cost.int8 else "") + f"timed ({cfg.cost.latency})"


class CostingNotice:
    """``CostModel.on_computed``: says, at most every ``every_s`` seconds, how many archs were costed since the
    last candidate was scored. A strategy rejects children over the budget before it proposes one (DetNAS's
    ``legal``), and under a measured latency budget each rejection is an export and a timing (with INT8 a
    quantization too): minutes passed without a line while hundreds of children were tried."""

    def __init__(self, console: Console, budget: Budget | None, work: str, every_s: float = 30.0):
        self.console, self.budget, self.work, self.every_s = console, budget, work, every_s
        self.reset()

    def reset(self) -> None:
        self.start = self.last = time.monotonic()
        self.costed = self.over = 0

    def __call__(self, arch, costs: dict) -> None:
        self.costed += 1
        self.over += int(self.budget is not None and self.budget.excess(costs) > 0)
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            over = f", {self.over} over the budget ({self.budget.metric} <= {self.budget.max:g})" if self.budget else ""
            self.console.print(f"search: {self.costed} archs costed in {now - self.start:.0f} s since the last "
                               f"candidate was scored{over}; {self.work}")


def study_name_of(cfg: ExperimentConfig) -> str:
    """The Optuna study of a search: ``search.study_name``, else the run's name, strategy and (a proxy) scorer."""
    s = cfg.search
    return s.study_name or f"{cfg.name}-{s.strategy}" + ("" if s.scorer == "supernet" else f"-{s.scorer}")


def _run_gradient(cfg: ExperimentConfig, wd: Path, model, space: SearchSpace, search_space: SearchSpace, search_set,
                  calib_set, device, budget: Budget, cost_fn, measure: tuple[str, ...], storage: str | None,
                  console: Console, ckpt: Path, state: dict) -> dict:
    """``search.strategy: gradient`` (ENOT's search, ``search/gradient.py``), then the common outputs."""
    import torch

    from ..data.dataset import collate_detection
    from ..train.loop import EpochSampler
    from ..search.gradient import GradientSearch, feasible_resolutions, search_resolutions, write_searched_arch
    from ..search.strategies import Strategy
    from ..search.study import worker_id

    s, gc = cfg.search, cfg.search.gradient
    out_dir = WorkDir(wd).search.root
    sampler = EpochSampler(len(search_set), s.seed)

    if gc.batch_size > len(search_set):
        raise ConfigError(f"search.gradient.batch_size {gc.batch_size} is larger than the search split "
                         f"({len(search_set)} images)")

    def loss_batches(epoch: int):  # full batches only: BN in train mode needs more than one value per channel
        sampler.set_epoch(epoch)
        return torch.utils.data.DataLoader(search_set, batch_size=gc.batch_size, sampler=sampler, drop_last=True,
                                           num_workers=loader_workers(cfg.data.num_workers, device),
                                           collate_fn=collate_detection)

    scorer = cached_scorer(functools.partial(
        score_arch, model, space, search_set=search_set, calib_set=calib_set, device=device,
        recalib_batches=s.recalib_batches, batch_size=s.batch_size, num_workers=cfg.data.num_workers, seed=cfg.seed))
    resolutions = search_resolutions(search_space, cfg.model.input_size, gc.search_resolution)
    feasible_resolutions(search_space, lambda a: float(cost_fn(a)[budget.metric]), budget, resolutions)  # before the study
    study_name = study_name_of(cfg)
    study, _ = open_checked_study(storage or s.storage, out_dir, study_name, Strategy(search_space, cost_fn, budget),
                                  ckpt, state, settings=scoring_settings(cfg, search_space))
    save_run_record(cfg, WorkDir(wd).config)
    search = GradientSearch(model, search_space, budget, cost_fn, scorer, loss_batches, out_dir, study, device,
                            seed=s.seed, console=console, worker=worker_id())
    search.run(resolutions, gc)
    records = apply_budget(study_records(study, search_space), budget, cost_fn)
    extremes = {"smallest": search_space.smallest(), "largest": search_space.largest()}
    extreme_costs = {n: {"arch": a, "costs": cost_fn(a)} for n, a in extremes.items()}
    baseline = score_baseline(cfg, wd, search_set, device, measure)
    confidence = confidence_of_search(cfg, model, space, records, search_set, calib_set, device)
    summary = write_search_outputs(records, space, out_dir, budget.metric, budget, extreme_costs, baseline,
                                   confidence=confidence, study={"study_name": study_name, "strategy": "gradient"})
    summary.update(study_name=study_name, strategy="gradient")
    if summary["best"] is not None:
        write_searched_arch(model, space, summary["best"]["arch"], out_dir)
    console.print(top_table(records, budget.metric, s.top_k, f"search (gradient): {len(records)} derived arch(s) on "
                                                             f"{len(search_set)} search images"))
    if confidence is not None:
        console.print(Text(confidence["verdict"]), soft_wrap=True)
    return summary


def scored_otherwise(study, settings: dict) -> dict:
    """The study's recorded scoring settings that differ from ``settings`` (this run's): key -> the study's value."""
    have = study.user_attrs.get(SCORING_ATTR) or {}
    return {k: v for k, v in have.items() if k in settings and settings[k] != v}


def with_postprocessing(cfg: ExperimentConfig, settings: dict) -> ExperimentConfig:
    """``cfg`` with the ``model.*`` post-processing ``settings`` (a study's) in its model section."""
    return cfg.model_copy(update={"model": cfg.model.model_copy(
        update={k.removeprefix("model."): v for k, v in settings.items() if k.startswith("model.")})})


def with_settings(config: dict, settings: dict) -> dict:
    """``config`` (``config_to_dict``) with the dotted ``settings`` (``scoring_settings``' keys) put in."""
    out = json.loads(json.dumps(config))
    for key, value in settings.items():
        if key.startswith("search space "):  # the space's choices, not a config key
            continue
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def scoring_settings(cfg: ExperimentConfig, space: SearchSpace | None = None) -> dict:
    """The config keys a candidate's score and costs depend on (beside the supernet's weights): which images
    (split, its seed, how many), BN recalibration, the scorer, the post-processing the AP is taken after, and,
    when latency is measured, how it is measured; and the choices of ``space`` (the searched one, after
    search.resolution_tolerance), one entry per choice name: another space made Optuna fail mid-trial
    ("CategoricalDistribution does not support dynamic value space"), or a complete study's found arch fell
    outside the space the config allows, without a word."""
    s, m, d, c = cfg.search, cfg.model, cfg.data, cfg.cost
    out = {"search.scorer": s.scorer, "search.score_on": s.score_on, "search.max_images": s.max_images,
           "search.recalib_batches": s.recalib_batches, "search.batch_size": s.batch_size, "seed": cfg.seed,
           "data.search_fraction": d.search_fraction, "data.split_seed": d.split_seed,
           **{f"model.{k}": v for k, v in configured_postprocessing(m).items()}}
    if (s.budget and s.budget.metric == "latency") or s.cost_metric == "latency":
        out.update({"cost.latency": c.latency, "cost.device": c.device, "cost.threads": c.threads,
                    "cost.lut_precision": c.lut_precision})
    if space is not None:
        out.update({f"search space {n}": list(space[n]) for n in space.names})
    return out


def open_checked_study(storage: str | None, out_dir: Path, study_name: str, strategy, ckpt: Path | None,
                       state: dict | None, heartbeat: int = 60, settings: dict | None = None,
                       num_candidates: int | None = None, console: Console | None = None):
    """Open (or continue) the study, refusing one whose scores were taken on another supernet checkpoint
    (``ckpt`` None: candidates scored by a zero-cost proxy at scratch init, no supernet weights involved) or,
    when this run would score more (fewer than ``num_candidates`` scored), with other ``settings``
    (``scoring_settings``); a complete study scored otherwise is kept, with a warning (e.g. a pipeline rerun
    with another model.score_thresh for its export). Returns the study and whether that was so."""
    study = open_study(open_storage(storage, out_dir, heartbeat=heartbeat), study_name, strategy)
    where = shown_storage(storage) if storage else out_dir / STUDY_FILE
    label = f"search study {study_name!r} ({where})"
    if ckpt is not None:
        check_supernet_fingerprint(study, {"path": str(ckpt), "sha256": file_sha256(ckpt), "step": state.get("step")},
                                   label)
    if settings is not None:
        scored = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        changed = check_scoring_settings(study, settings, label, num_candidates is None or scored < num_candidates)
        if changed:
            (console or Console()).print(Text(
                f"warning: {label} was scored with other settings ({'; '.join(changed)}); it is complete, so its "
                "candidates are kept as scored then, and nothing is scored with these", style="yellow"),
                soft_wrap=True)
        return study, bool(changed)
    return study, False


def timed_in_torch(c) -> bool:
    """Whether ``cost.latency`` times candidates in torch (itself, or the float lookup table's blocks)."""
    return c.latency == "torch" or (c.latency == "lut" and c.lut_precision == "float")


def timing_threads(c) -> int | None:
    """The threads a candidate is timed on in torch (``timed_in_torch``): ``cost.threads``, else the count this
    process was given, held for the whole search (``configured_threads``). onnxruntime's own default (``None``)
    is left to it, as ``nasdet export`` times with it."""
    return c.threads or (configured_threads() if timed_in_torch(c) else None)


def score_baseline(cfg: ExperimentConfig, wd: Path, search_set, device, measure: tuple[str, ...],
                   calibration: list[torch.Tensor] | None = None) -> dict | None:
    """The trained baseline (``baseline/ckpt/last.pt``, if any) on the search split, with its costs, for
    the Pareto plot. It was trained on all of train, search split included, so its AP there is optimistic.
    Its latency is timed as the candidates' was (INT8: quantized, calibrated on ``calibration``)."""
    from ..models.cost import detector_macs, detector_params
    from ..search.latency import measure_latency_onnx_e2e, measure_latency_onnx_int8, measure_latency_torch
    from ..train.evaluate import evaluate_detector

    ckpt = WorkDir(wd).baseline.checkpoint
    if not ckpt.is_file():
        return None
    model = load_trained_model(cfg, ckpt, search_set.num_classes, classes=search_set.classes).to(device).eval()
    costs = {"macs": detector_macs(model, backbone=False)["total"], "params": detector_params(model)["total"]}
    if "latency" in measure:
        c, real = cfg.cost, latency_images(cfg, search_set)
        if c.latency == "onnxruntime":
            costs["latency"] = measure_latency_onnx_e2e(model, c.warmup, c.runs, c.threads, real)["median_ms"]
        elif c.int8:  # measured INT8 latency; the INT8 table cannot predict the baseline either
            costs["latency"] = measure_latency_onnx_int8(model, calibration, c.warmup, c.runs, c.threads,
                                                         real)["median_ms"]
        else:  # the baseline is not a subnet of the space: the table cannot predict it, so it is timed
            costs["latency"] = measure_latency_torch(model, c.device, c.warmup, c.runs, timing_threads(c),
                                                     real)["median_ms"]
    metrics = evaluate_detector(model, search_set, device, cfg.search.batch_size, cfg.data.num_workers)
    record = {"checkpoint": str(ckpt), "costs": costs, "metrics": dict(metrics or {})}
    if cfg.search.score_on == "search":  # the plot's candidates are scored on images none of them trained on
        record["scored_note"] = "scored on images it trained on: optimistic"
    if "latency" in measure and cfg.cost.latency == "lut":  # the plot's axis mixes two measures: say so on it
        record["latency_note"] = (("timed in onnxruntime INT8" if cfg.cost.int8 else f"timed in torch on {cfg.cost.device}")
                                  + "; the candidates' latency is the lookup table's prediction")
    return record
