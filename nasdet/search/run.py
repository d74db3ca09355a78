"""``run_search``: the ``nasdet search`` stage, from a trained supernet to ``search/`` outputs.

Reads ``work_dir/supernet/ckpt/last.pt`` (refused if written for another search space), scores
candidates on the held-out search split (BN recalibrated on the supernet's training split, no
augmentation) under ``cfg.search``, and writes ``work_dir/search/``: ``study.journal`` (the Optuna
study, the persistent record), ``results.csv``, ``best_arch.json``, ``pareto.json``, ``pareto.png``.
Rerunning continues the same study; several processes on one storage share the work.
"""
from __future__ import annotations

import csv
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..config import ExperimentConfig, save_config
from ..errors import ConfigError
from ..files import atomic_path, write_json_atomic
from ..progress import progress_bar
from ..space import SearchSpace, save_arch
from ..threads import set_torch_threads
from ..train.checkpoint import CheckpointError, file_sha256, load_checkpoint, load_model_weights, planned_steps
from .latency import latency_function
from .budget import COST_UNITS, Budget, CostModel, check_budget_feasible, restrict_resolution
from .scoring import cached_scorer, score_arch
from .strategies import OBJECTIVE, make_strategy
from .study import (STUDY_FILE, apply_budget, best_record, check_storage_url, check_supernet_fingerprint, open_storage,
                    open_study, pareto_front, run_study, shown_storage, study_records)

SEARCH = "search"
METRIC_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def run_search(cfg: ExperimentConfig, work_dir: str | Path | None = None, storage: str | None = None,
               console: Console | None = None, worker: int = 0) -> dict:
    """Search the supernet of ``work_dir/supernet`` per ``cfg.search``; returns a summary (best record,
    counts, output paths). ``storage`` (URL or journal path) overrides ``cfg.search.storage``; ``worker``
    (0, 1, ...) decorrelates the proposals of processes sharing one study."""
    if cfg.search.strategy == "gradient" and worker > 0:
        from ..errors import ConfigError

        raise ConfigError("search.strategy gradient runs in one process (one set of architecture probabilities): "
                          "drop --worker / --workers")
    if cfg.search.strategy == "darts":  # FAD: differentiable search of the head, no supernet stage
        from .darts import run_darts_search

        return run_darts_search(cfg, work_dir=work_dir, console=console)
    import torch

    from ..experiment import build_datasets, build_supernet, work_dir_of
    from ..train.loop import resolve_device

    console = console or Console()
    s = cfg.search
    wd = work_dir_of(cfg, work_dir)
    out_dir = wd / SEARCH
    ckpt = wd / "supernet" / "ckpt" / "last.pt"
    if "://" in str(storage or s.storage or ""):
        check_storage_url(str(storage or s.storage))  # a bad URL fails now, not after the supernet is loaded
    if not ckpt.is_file():
        raise CheckpointError(f"no supernet checkpoint at {ckpt}: run `nasdet pretrain` first")
    torch.manual_seed(cfg.seed)
    set_torch_threads(cfg.train.threads)
    data = build_datasets(cfg, need=("search",))
    search_set = data["search"]
    if len(search_set) == 0:
        raise ConfigError("the search split is empty: set data.search_fraction > 0 (and pretrain with it)")
    if s.max_images:
        search_set = search_set.subset(range(min(s.max_images, len(search_set))))
    calib_set = data["supernet_train"].with_transforms(None)
    model, space = build_supernet(cfg, search_set.num_classes)
    state = load_checkpoint(ckpt, space_id=space.space_id)
    load_model_weights(model, state, source=str(ckpt))
    planned = planned_steps(state)
    if planned is not None and state.get("step", 0) < planned:
        console.print(Text(f"warning: the supernet {ckpt} stopped at step {state.get('step')} of {planned}: its "
                           "pretraining did not finish, so its scores rank archs less reliably; rerun `nasdet "
                           "pretrain` to finish it", style="yellow"), soft_wrap=True)
    device = resolve_device(cfg.train.device)
    model.to(device).eval()

    search_space = restrict_resolution(space, cfg.model.input_size, s.resolution_tolerance)
    budget = Budget(s.budget.metric, s.budget.max) if s.budget else None
    cost_metric = budget.metric if budget else s.cost_metric
    measure = ("macs", "params") + (("latency",) if cost_metric == "latency" else ())
    c = cfg.cost
    latency_fn = latency_function(c.latency, model, space, device=c.device, warmup=c.warmup, runs=c.runs,
                                  threads=c.threads, lut_path=c.lut or out_dir / "latency_lut.json")
    cost_fn = CostModel(model, space, measure, latency_fn=latency_fn)
    check_budget_feasible(budget, cost_fn, search_space)  # before any candidate is scored
    if s.strategy == "gradient":
        return _run_gradient(cfg, wd, model, space, search_space, search_set, calib_set, device, budget, cost_fn,
                             measure, storage, console, ckpt, state)

    scorer = cached_scorer(functools.partial(
        score_arch, model, space, search_set=search_set, calib_set=calib_set, device=device,
        recalib_batches=s.recalib_batches, batch_size=s.batch_size, num_workers=cfg.data.num_workers, seed=cfg.seed))
    strategy = make_strategy(s.strategy, search_space, cost_fn, budget, seed=s.seed, worker=worker,
                             population=s.population, parents=s.parents, mutation_prob=s.mutation_prob,
                             mutation=s.mutation, crossover=s.crossover)
    study_name = s.study_name or f"{cfg.name}-{s.strategy}"
    study = open_checked_study(storage or s.storage, out_dir, study_name, strategy, ckpt, state, s.heartbeat_seconds)
    save_config(cfg, wd / "config.yaml")
    extremes = {"smallest": search_space.smallest(), "largest": search_space.largest()}

    scored = study_records(study, search_space)
    already = len(scored)
    best = [max((r["metrics"][OBJECTIVE] for r in scored), default=float("nan"))]
    with progress_bar(console, TextColumn("search {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), label="search candidates", every=max(1, s.num_candidates // 100)) as progress:
        task = progress.add_task(f"best AP {best[0]:.4f}", total=s.num_candidates, completed=min(already, s.num_candidates))

        def on_trial(rec):
            best[0] = max(best[0], rec["metrics"][OBJECTIVE]) if best[0] == best[0] else rec["metrics"][OBJECTIVE]
            progress.update(task, advance=1, description=f"best AP {best[0]:.4f}")

        counts = run_study(study, search_space, strategy, scorer, cost_fn, budget, s.num_candidates,
                           cost_metric=cost_metric, seeds=list(extremes.values()) if s.include_extremes else (),
                           on_trial=on_trial)
    records = apply_budget(study_records(study, search_space), budget, cost_fn)
    extreme_costs = {n: {"arch": a, "costs": cost_fn(a)} for n, a in extremes.items()}
    baseline = score_baseline(cfg, wd, search_set, device, measure)
    summary = write_search_outputs(records, space, out_dir, cost_metric, budget, extreme_costs, baseline)
    summary.update(counts=counts, study_name=study_name, strategy=s.strategy)
    console.print(top_table(records, cost_metric, s.top_k, f"search ({s.strategy}): top {s.top_k} of {len(records)} "
                            f"candidates on {len(search_set)} search images"))
    if summary["best"] is None:
        console.print("[yellow]no scored candidate is under the budget: best_arch.json not written[/]")
    else:
        console.print(f"best under budget: trial {summary['best']['trial']}, AP {summary['best']['metrics']['AP']:.4f} "
                      f"-> {out_dir / 'best_arch.json'}")
    return summary


def _run_gradient(cfg: ExperimentConfig, wd: Path, model, space: SearchSpace, search_space: SearchSpace, search_set,
                  calib_set, device, budget: Budget, cost_fn, measure: tuple[str, ...], storage: str | None,
                  console: Console, ckpt: Path, state: dict) -> dict:
    """``search.strategy: gradient`` (ENOT's search, ``search/gradient.py``), then the common outputs."""
    import torch

    from ..data.dataset import collate_detection
    from ..errors import ConfigError
    from ..train.loop import EpochSampler
    from .gradient import GradientSearch, search_resolutions, write_searched_arch
    from .strategies import Strategy
    from .study import worker_id

    s, gc = cfg.search, cfg.search.gradient
    out_dir = wd / SEARCH
    sampler = EpochSampler(len(search_set), s.seed)

    if gc.batch_size > len(search_set):
        raise ConfigError(f"search.gradient.batch_size {gc.batch_size} is larger than the search split "
                         f"({len(search_set)} images)")

    def loss_batches(epoch: int):  # full batches only: BN in train mode needs more than one value per channel
        sampler.set_epoch(epoch)
        return torch.utils.data.DataLoader(search_set, batch_size=gc.batch_size, sampler=sampler, drop_last=True,
                                           num_workers=cfg.data.num_workers, collate_fn=collate_detection)

    scorer = cached_scorer(functools.partial(
        score_arch, model, space, search_set=search_set, calib_set=calib_set, device=device,
        recalib_batches=s.recalib_batches, batch_size=s.batch_size, num_workers=cfg.data.num_workers, seed=cfg.seed))
    study_name = s.study_name or f"{cfg.name}-gradient"
    study = open_checked_study(storage or s.storage, out_dir, study_name, Strategy(search_space, cost_fn, budget), ckpt,
                               state)
    save_config(cfg, wd / "config.yaml")
    search = GradientSearch(model, search_space, budget, cost_fn, scorer, loss_batches, out_dir, study, device,
                            seed=s.seed, console=console, worker=worker_id())
    search.run(search_resolutions(search_space, cfg.model.input_size, gc.search_resolution), gc)
    records = apply_budget(study_records(study, search_space), budget, cost_fn)
    extremes = {"smallest": search_space.smallest(), "largest": search_space.largest()}
    extreme_costs = {n: {"arch": a, "costs": cost_fn(a)} for n, a in extremes.items()}
    baseline = score_baseline(cfg, wd, search_set, device, measure)
    summary = write_search_outputs(records, space, out_dir, budget.metric, budget, extreme_costs, baseline)
    summary.update(study_name=study_name, strategy="gradient")
    if summary["best"] is not None:
        write_searched_arch(model, space, summary["best"]["arch"], out_dir)
    console.print(top_table(records, budget.metric, s.top_k, f"search (gradient): {len(records)} derived arch(s) on "
                                                             f"{len(search_set)} search images"))
    return summary


def open_checked_study(storage: str | None, out_dir: Path, study_name: str, strategy, ckpt: Path, state: dict,
                       heartbeat: int = 60):
    """Open (or continue) the study, refusing one whose scores were taken on another supernet checkpoint."""
    study = open_study(open_storage(storage, out_dir, heartbeat=heartbeat), study_name, strategy)
    where = shown_storage(storage) if storage else out_dir / STUDY_FILE
    check_supernet_fingerprint(study, {"path": str(ckpt), "sha256": file_sha256(ckpt), "step": state.get("step")},
                               f"search study {study_name!r} ({where})")
    return study


def score_baseline(cfg: ExperimentConfig, wd: Path, search_set, device, measure: tuple[str, ...]) -> dict | None:
    """The trained baseline (``baseline/ckpt/last.pt``, if any) on the search split, with its costs, for
    the Pareto plot. It was trained on all of train, search split included, so its AP there is optimistic."""
    from ..experiment import load_trained_model
    from ..train.evaluate import evaluate_detector
    from .cost import detector_macs, detector_params, measure_latency
    from .latency import measure_latency_onnx_e2e

    ckpt = wd / "baseline" / "ckpt" / "last.pt"
    if not ckpt.is_file():
        return None
    model = load_trained_model(cfg, ckpt, search_set.num_classes).to(device).eval()
    costs = {"macs": detector_macs(model)["total"], "params": detector_params(model)["total"]}
    if "latency" in measure:
        c = cfg.cost
        if c.latency == "onnxruntime":
            costs["latency"] = measure_latency_onnx_e2e(model, c.warmup, c.runs, c.threads)["median_ms"]
        else:  # the baseline is not a subnet of the space: the table cannot predict it, so it is timed
            costs["latency"] = measure_latency(model, device=c.device, warmup=c.warmup, runs=c.runs,
                                               threads=c.threads)["median_ms"]
    metrics = evaluate_detector(model, search_set, device, cfg.search.batch_size, cfg.data.num_workers)
    return {"checkpoint": str(ckpt), "costs": costs, "metrics": dict(metrics or {})}


# -------------------------------------------------------------------------------------------- outputs
def write_search_outputs(records: Sequence[dict], space: SearchSpace, out_dir: str | Path, cost_metric: str,
                         budget: Budget | None = None, extremes: Mapping[str, dict] | None = None,
                         baseline: dict | None = None) -> dict:
    """``results.csv``, ``best_arch.json`` (best AP under the budget, via ``save_arch``), ``pareto.json``,
    ``pareto.png``; ``extremes`` (name -> {arch, costs}) and the ``baseline`` ({costs, metrics}) are
    marked on the plot."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results_csv(records, out_dir / "results.csv")
    best = best_record(records)
    if best is not None:
        save_arch(out_dir / "best_arch.json", best["arch"], space)
    front = pareto_front([r for r in records if r["feasible"]], cost_metric)
    scored = {json.dumps(r["arch"], sort_keys=True): r for r in records}
    marks = {}
    for name, e in (extremes or {}).items():
        r = scored.get(json.dumps(dict(e["arch"]), sort_keys=True))
        marks[name] = {"arch": dict(e["arch"]), "costs": dict(e["costs"]),
                       "metrics": r["metrics"] if r else None, "trial": r["trial"] if r else None}
    pareto = {"space_id": space.space_id, "cost_metric": cost_metric,
              "budget": {"metric": budget.metric, "max": budget.max} if budget else None,
              "front": [_plain(r) for r in front], "extremes": marks, "baseline": baseline, "scored": len(records)}
    if baseline is not None:
        marks = {**marks, "baseline": baseline}
    write_json_atomic(out_dir / "pareto.json", pareto)
    plot_pareto(records, front, cost_metric, out_dir / "pareto.png", budget, marks)
    return {"best": best, "front": front, "records": len(records),
            "files": {n: str(out_dir / n) for n in ("results.csv", "best_arch.json", "pareto.json", "pareto.png")}}


def _plain(r: dict) -> dict:
    return {k: r[k] for k in ("trial", "arch", "metrics", "costs", "seconds", "feasible")}


def write_results_csv(records: Sequence[dict], path: Path) -> None:
    cols = ["trial", "arch", *METRIC_COLUMNS, "macs", "params", "latency_ms", "seconds", "feasible", "worker"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in records:
            m, c = r["metrics"], r["costs"]
            w.writerow([r["trial"], json.dumps(r["arch"], sort_keys=True), *[m.get(k, "") for k in METRIC_COLUMNS],
                        c.get("macs", ""), c.get("params", ""), c.get("latency", ""),
                        "" if r["seconds"] is None else round(r["seconds"], 3), r["feasible"], r["worker"] or ""])


def plot_pareto(records: Sequence[dict], front: Sequence[dict], cost: str, path: Path, budget: Budget | None = None,
                marks: Mapping[str, dict] | None = None) -> None:
    """AP vs cost: every scored candidate, the Pareto front as a line, the budget, smallest/largest subnets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale, unit = (1e6, f"M {COST_UNITS[cost]}") if cost in ("macs", "params") else (1.0, COST_UNITS[cost])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    pts = [r for r in records if cost in r["costs"]]
    ax.scatter([r["costs"][cost] / scale for r in pts], [r["metrics"][OBJECTIVE] for r in pts], s=14, c="tab:gray",
               alpha=0.6, label=f"candidates ({len(pts)})")
    if front:
        ax.plot([r["costs"][cost] / scale for r in front], [r["metrics"][OBJECTIVE] for r in front], "-o",
                c="tab:red", ms=5, label="Pareto front")
    if budget is not None:
        ax.axvline(budget.max / scale, c="tab:blue", ls="--", lw=1, label=f"budget {budget.max / scale:.4g} {unit}")
    styles = {"smallest": ("v", "tab:green"), "largest": ("^", "tab:purple"), "baseline": ("*", "tab:orange")}
    for name, m in (marks or {}).items():
        style = styles.get(name, ("D", "tab:brown"))
        label = "baseline (trained on all of train)" if name == "baseline" else f"{name} subnet"
        x = m["costs"].get(cost)
        if x is None:
            continue
        if m["metrics"]:
            ax.scatter([x / scale], [m["metrics"][OBJECTIVE]], marker=style[0], s=110 if name == "baseline" else 80,
                       c=style[1], zorder=3, label=label)
        else:
            ax.axvline(x / scale, c=style[1], ls=":", lw=1, label=f"{label} (cost)")
    ax.set_xlabel(f"{cost} ({unit})")
    ax.set_ylabel("AP (search split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def top_table(records: Sequence[dict], cost: str, k: int, title: str) -> Table:
    table = Table(title=title)
    for col in ("trial", "AP", "AP50", "MACs", "params", "latency", "input", "feasible"):
        table.add_column(col, justify="right")
    top = sorted(records, key=lambda r: (-r["metrics"][OBJECTIVE], r["trial"]))[:k]
    for r in top:
        c, m = r["costs"], r["metrics"]
        table.add_row(str(r["trial"]), f"{m[OBJECTIVE]:.4f}", f"{m.get('AP50', float('nan')):.4f}",
                      f"{c['macs'] / 1e6:.1f} M" if "macs" in c else "-",
                      f"{c['params'] / 1e6:.3f} M" if "params" in c else "-",
                      f"{c['latency']:.2f} ms" if "latency" in c else "-",
                      str(r["arch"].get("input_size", "")), "yes" if r["feasible"] else "no")
    return table
