"""Evolution and NSGA-II against random search at an equal number of scored candidates.

On a trained supernet (the work dir of a pretrain, e.g. the demo pipeline's), each strategy runs its own
Optuna study (in a temporary journal) with ``--candidates`` scored candidates, for ``--seeds`` seeds.
Real scores (BN recalibration + COCO mAP on the search split) are shared between strategies through one
cache, so an arch two strategies both propose is scored once. Printed per strategy (mean over seeds):
the best AP under the budget, and the hypervolume of the AP-vs-cost front (reference point: AP 0 at the
largest subnet's cost, cost normalised by it), for all candidates and for those under the budget.

    python benchmarks/search_strategies.py configs/demo/pipeline_shapes.yaml --candidates 30 --seeds 2
"""
from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from nasdet.config import load_config
from nasdet.data.build import build_datasets
from nasdet.models.supernet import build_supernet
from nasdet.workdir import work_dir_of
from nasdet.search.budget import Budget, CostModel, restrict_resolution
from nasdet.search.scoring import ArchCache, cached_scorer, score_arch
from nasdet.search.strategies import OBJECTIVE, make_strategy
from nasdet.search.study import open_storage, open_study, run_study, study_records
from nasdet.train.checkpoint import load_checkpoint, load_model_weights


def hypervolume(points: list[tuple[float, float]], ref_cost: float) -> float:
    """Area dominated by (cost, AP) points (minimise cost, maximise AP) above AP 0 and left of ``ref_cost``,
    cost normalised by ``ref_cost``."""
    pts = sorted((c / ref_cost, a) for c, a in points if c <= ref_cost and a > 0)
    area, best_ap = 0.0, 0.0
    # sweep from the cheapest: each point adds the AP gain it brings over all cheaper points
    front = []
    for c, a in pts:
        if a > best_ap:
            front.append((c, a))
            best_ap = a
    for i, (c, a) in enumerate(front):
        next_c = front[i + 1][0] if i + 1 < len(front) else 1.0
        area += (next_c - c) * a
    return area


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--work-dir")
    ap.add_argument("--candidates", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--strategies", default="random,evolution,nsga2")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    console = Console()
    cfg = load_config(args.config, args.set)
    s = cfg.search
    wd = work_dir_of(cfg, args.work_dir)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = build_datasets(cfg, need=("search",))
    search_set = data["search"]
    if s.max_images:
        search_set = search_set.subset(range(min(s.max_images, len(search_set))))
    calib = data["supernet_train"].with_transforms(None)
    model, space = build_supernet(cfg, search_set.num_classes)
    ckpt = wd / "supernet" / "ckpt" / "last.pt"
    load_model_weights(model, load_checkpoint(ckpt, space_id=space.space_id), source=str(ckpt))
    model.eval()
    search_space = restrict_resolution(space, cfg.model.input_size, s.resolution_tolerance)
    budget = Budget(s.budget.metric, s.budget.max) if s.budget else None
    cost_metric = budget.metric if budget else s.cost_metric
    cost_fn = CostModel(model, space, ("macs", "params"))
    ref_cost = cost_fn(search_space.largest())[cost_metric]
    score_cache = ArchCache()
    scorer = cached_scorer(functools.partial(
        score_arch, model, space, search_set=search_set, calib_set=calib, device="cpu",
        recalib_batches=s.recalib_batches, batch_size=s.batch_size, num_workers=cfg.data.num_workers, seed=cfg.seed),
        score_cache)

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.strategies.split(","):
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                strategy = make_strategy(name, search_space, cost_fn, budget, seed=seed, population=s.population,
                                         parents=s.parents, mutation_prob=s.mutation_prob, mutation=s.mutation,
                                         crossover=s.crossover)
                study = open_study(open_storage(str(Path(tmp) / f"{name}-{seed}.journal"), Path(tmp)), f"{name}-{seed}",
                                   strategy)
                run_study(study, search_space, strategy, scorer, cost_fn, budget, args.candidates, cost_metric=cost_metric)
                recs = study_records(study, search_space)
                feasible = [r for r in recs if r["feasible"]]
                best = max((r["metrics"][OBJECTIVE] for r in feasible), default=0.0)
                pts = [(r["costs"][cost_metric], r["metrics"][OBJECTIVE]) for r in recs]
                pts_ok = [(r["costs"][cost_metric], r["metrics"][OBJECTIVE]) for r in feasible]
                hv_budget = hypervolume(pts_ok, budget.max) if budget else float("nan")
                rows.setdefault(name, []).append((best, hypervolume(pts, ref_cost), hv_budget, len(recs),
                                                  time.perf_counter() - t0))
                console.print(f"{name} seed {seed}: best AP under budget {best:.4f}, {len(recs)} scored, "
                              f"{len(score_cache)} distinct archs scored so far")
    table = Table(title=f"{args.candidates} candidates per study, mean over {args.seeds} seeds "
                        f"(budget {cost_metric} <= {budget.max:.4g})" if budget else "")
    for col in ("strategy", "best AP under budget", "hypervolume (all)", "hypervolume (under budget)", "scored", "s/study"):
        table.add_column(col, justify="right")
    for name, rs in rows.items():
        mean = [statistics.mean(x) for x in zip(*rs)]
        table.add_row(name, f"{mean[0]:.4f}", f"{mean[1]:.4f}", f"{mean[2]:.4f}", f"{mean[3]:.0f}", f"{mean[4]:.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
