"""Evolution and NSGA-II against random search, over seeds, judged by what their picks do when trained.

On a trained supernet (a work dir after `nasdet pretrain`), each strategy runs its own Optuna study of
``--candidates`` scored candidates per seed (same scorer as `nasdet search`: BN recalibrated, AP on the
search split; scores shared through one cache). Each study's pick (best AP under the budget) is then
tuned from the supernet's weights with one short shared recipe (`nasdet diagnose`'s: the config's train
section with ``--epochs``) and evaluated on val. Printed per strategy, mean and standard deviation over
seeds: the pick's supernet AP, its val AP with the inherited weights (BN recalibrated) and tuned, the hypervolume of the AP-vs-cost front (all candidates,
and under the budget; see search_strategies.py). Tuned picks are stored one file per arch in
``WORK_DIR/search_vs_random/picks/`` and the studies in ``.../studies/``: a rerun continues where it stopped.

    python benchmarks/search_vs_random.py configs/demo/pipeline_shapes.yaml --candidates 18 --seeds 3 \\
        --population 6 --parents 3 --epochs 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from search_strategies import hypervolume  # noqa: E402

from nasdet.config import load_config  # noqa: E402
from nasdet.data.build import build_datasets  # noqa: E402
from nasdet.workdir import work_dir_of  # noqa: E402
from nasdet.search.budget import Budget, CostModel, restrict_resolution  # noqa: E402
from nasdet.files import write_json_atomic  # noqa: E402
from nasdet.search.diagnose import arch_id  # noqa: E402
from nasdet.stages.diagnose import train_standalone  # noqa: E402
from nasdet.search.scorers import load_trained_supernet  # noqa: E402
from nasdet.search.strategies import OBJECTIVE, make_strategy  # noqa: E402
from nasdet.search.study import best_record, open_storage, open_study, run_study, study_records  # noqa: E402


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def inherited_val_metrics(cfg, ctx, data, arch) -> dict:
    """Val metrics of ``arch`` with the supernet's weights, BN recalibrated as ``nasdet tune`` does first."""
    from nasdet.models.supernet import export_detector
    from nasdet.train.evaluate import evaluate_detector
    from nasdet.train.bn import recalibrate_static

    model = export_detector(ctx.model, arch, ctx.space).to(ctx.device)
    recalibrate_static(model, data["train"].with_transforms(None), ctx.device, cfg.tune.recalib_batches,
                       cfg.eval.batch_size, cfg.data.num_workers, cfg.seed)
    return dict(evaluate_detector(model.eval(), data["val"], ctx.device, cfg.eval.batch_size, cfg.data.num_workers) or {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--work-dir")
    ap.add_argument("--candidates", type=int, default=18, help="scored candidates per study (equal for all)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--strategies", default="random,evolution,nsga2")
    ap.add_argument("--population", type=int, help="evolution generation / NSGA-II population (default: config)")
    ap.add_argument("--parents", type=int, help="evolution top-k parents (default: config)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of the short tuning recipe of each pick (0: no tuning)")
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    console = Console()
    overrides = list(args.set) + [f"diagnose.epochs={max(args.epochs, 1)}", "diagnose.init=[supernet]", "diagnose.target=supernet"]
    if args.max_steps:
        overrides.append(f"diagnose.max_steps={args.max_steps}")
    cfg = load_config(args.config, overrides)
    s = cfg.search
    wd = work_dir_of(cfg, args.work_dir)
    out = wd / "search_vs_random"
    t0 = time.perf_counter()
    ctx = load_trained_supernet(cfg, wd)
    space = restrict_resolution(ctx.space, cfg.model.input_size, s.resolution_tolerance)
    budget = Budget(s.budget.metric, s.budget.max) if s.budget else None
    cost_metric = budget.metric if budget else s.cost_metric
    cost_fn = CostModel(ctx.model, ctx.space, ("macs", "params"))
    ref_cost = cost_fn(space.largest())[cost_metric]
    population = args.population or s.population
    parents = min(args.parents or s.parents, population)

    runs: dict[str, list[dict]] = {}
    studies = out / "studies"  # kept: a rerun continues each study instead of scoring it again
    studies.mkdir(parents=True, exist_ok=True)
    for name in args.strategies.split(","):
        for seed in range(args.seeds):
            t = time.perf_counter()
            strategy = make_strategy(name, space, cost_fn, budget, seed=seed, population=population,
                                     parents=parents, mutation_prob=s.mutation_prob, mutation=s.mutation,
                                     crossover=s.crossover)
            tag = f"{name}-{seed}-c{args.candidates}-p{population}"
            study = open_study(open_storage(str(studies / f"{tag}.journal"), studies), tag, strategy)
            run_study(study, space, strategy, ctx.scorer, cost_fn, budget, args.candidates, cost_metric=cost_metric)
            recs = study_records(study, space)
            best = best_record(recs)
            feasible = [r for r in recs if r["feasible"]]
            pts = [(r["costs"][cost_metric], r["metrics"][OBJECTIVE]) for r in recs]
            pts_ok = [(r["costs"][cost_metric], r["metrics"][OBJECTIVE]) for r in feasible]
            runs.setdefault(name, []).append({
                "seed": seed, "scored": len(recs), "pick": best["arch"] if best else None,
                "pick_search_ap": best["metrics"][OBJECTIVE] if best else None,
                "pick_costs": best["costs"] if best else None,
                "hv_all": hypervolume(pts, ref_cost), "hv_budget": hypervolume(pts_ok, budget.max) if budget else None,
                "seconds": time.perf_counter() - t})
            console.print(f"{name} seed {seed}: pick AP {runs[name][-1]['pick_search_ap']}, {len(recs)} scored")

    data = build_datasets(cfg, need=("train", "val"))
    quiet = Console(quiet=True)
    for name, rs in runs.items():
        for r in rs:
            if r["pick"] is None:
                continue
            path = out / "picks" / f"{arch_id(r['pick'])}.json"
            rec = json.loads(path.read_text()) if path.is_file() else {"arch": r["pick"]}
            if "inherited" not in rec:  # the pick's supernet weights, BN recalibrated, on val (tune's starting point)
                rec["inherited"] = inherited_val_metrics(cfg, ctx, data, r["pick"])
                write_json_atomic(path, rec)
            if args.epochs and rec.get("epochs") != cfg.diagnose.epochs:
                t = time.perf_counter()
                rec["tuned"] = train_standalone(cfg, ctx, data, r["pick"], "supernet", out / "train" / arch_id(r["pick"]),
                                                quiet)
                rec.update(epochs=cfg.diagnose.epochs, seconds=time.perf_counter() - t)
                write_json_atomic(path, rec)
            r["inherited"], r["tuned"] = rec["inherited"], rec.get("tuned")
            console.print(f"{name} seed {r['seed']}: pick val AP inherited {r['inherited']['AP']:.4f}"
                          + (f", tuned {r['tuned']['AP']:.4f}" if r["tuned"] else ""))

    summary = {"candidates": args.candidates, "seeds": args.seeds, "population": population, "parents": parents,
               "epochs": cfg.diagnose.epochs, "budget": {"metric": budget.metric, "max": budget.max} if budget else None,
               "runs": runs, "seconds": time.perf_counter() - t0}
    write_json_atomic(out / "summary.json", summary)
    table = Table(title=f"{args.candidates} candidates per study, {args.seeds} seeds (mean ± sd); picks on val with the "
                        f"supernet's weights (BN recalibrated) and tuned {cfg.diagnose.epochs} epoch(s) from them")
    for col in ("strategy", "pick AP (search split)", "pick AP (val, inherited)", "pick tuned AP (val)", "pick tuned AP50 (val)",
                "hypervolume (all)", "hypervolume (budget)", "distinct picks", "s / study"):
        table.add_column(col, justify="right")
    for name, rs in runs.items():
        tuned = [r["tuned"] for r in rs if r.get("tuned")]
        table.add_row(name, mean_sd([r["pick_search_ap"] for r in rs if r["pick_search_ap"] is not None]),
                      mean_sd([r["inherited"]["AP"] for r in rs if r.get("inherited")]),
                      mean_sd([m["AP"] for m in tuned]), mean_sd([m["AP50"] for m in tuned]),
                      mean_sd([r["hv_all"] for r in rs]), mean_sd([r["hv_budget"] for r in rs if r["hv_budget"] is not None]),
                      str(len({arch_id(r["pick"]) for r in rs if r["pick"]})),
                      f"{statistics.mean(r['seconds'] for r in rs):.0f}")
    console.print(table)
    console.print(f"total {time.perf_counter() - t0:.0f} s; {out / 'summary.json'}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
