"""ENOT's gradient search against evolution on one trained supernet, at the same MACs limit, several seeds.

After the pipeline demo's supernet stage (``WORK_DIR/supernet/ckpt/last.pt``), for each seed: an
evolution search as the config sets it (``search.seed`` = seed) and a gradient search
(``search.strategy gradient`` with ``--gradient`` overrides, ``search.seed`` = seed), each in its own
``WORK_DIR/bench_gradient/<strategy>_s<seed>/`` with the supernet linked in; searches run interleaved
(gradient, evolution, gradient, ...) so that a change of machine load hits both. Then every found arch
is tuned with the same recipe (``--tune-epochs`` epochs of the config's ``train`` section, from the
supernet's weights, same seed) and evaluated on val. Results (wall time, load average, MACs, search AP,
tuned AP50) go to ``WORK_DIR/bench_gradient/results.json``; a rerun skips what is recorded.

    python benchmarks/gradient_vs_evolution.py configs/demo/pipeline_shapes.yaml --seeds 0 1 2 --tune-epochs 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nasdet.config import load_config
from nasdet.models.supernet import build_supernet
from nasdet.workdir import work_dir_of
from nasdet.search.budget import CostModel
from nasdet.stages.search import run_search
from nasdet.space import load_arch
from nasdet.stages.tune import run_tune

GRADIENT = ["search.strategy=gradient", "search.gradient.epochs=10", "search.gradient.batch_size=16",
            "search.gradient.search_resolution=true"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--work-dir")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tune-epochs", type=int, default=2)
    ap.add_argument("--gradient", nargs="*", default=GRADIENT, help="overrides of the gradient runs")
    ap.add_argument("--skip-tune", action="store_true")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    console = Console()
    base_cfg = load_config(args.config, args.set)
    wd = work_dir_of(base_cfg, args.work_dir).resolve()
    supernet = wd / "supernet" / "ckpt" / "last.pt"
    if not supernet.is_file():
        raise SystemExit(f"no supernet at {supernet}: run the pipeline (or `nasdet pretrain`) first")
    bench = wd / "bench_gradient"
    bench.mkdir(exist_ok=True)
    results_path = bench / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}

    def save():
        results_path.write_text(json.dumps(results, indent=2))

    def config(strategy: str, seed: int):
        extra = args.gradient if strategy == "gradient" else []
        cfg = load_config(args.config, [*args.set, *extra, f"search.seed={seed}", f"train.epochs={args.tune_epochs}",
                                        "tune.eval_initial=false"])
        run_dir = bench / f"{strategy}_s{seed}"
        link = run_dir / "supernet" / "ckpt" / "last.pt"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(supernet)
        return cfg, run_dir

    model, space = build_supernet(base_cfg, 8)
    cost = CostModel(model, space, ("macs",))
    for seed in args.seeds:
        for strategy in ("gradient", "evolution"):
            key = f"{strategy}_s{seed}"
            if key in results:
                continue
            cfg, run_dir = config(strategy, seed)
            load0, t0 = os.getloadavg()[0], time.perf_counter()
            summary = run_search(cfg, run_dir, console=console)
            seconds = time.perf_counter() - t0
            arch = load_arch(run_dir / "search" / "best_arch.json", space)
            results[key] = {"strategy": strategy, "seed": seed, "search_seconds": round(seconds, 1),
                            "load_before": load0, "load_after": os.getloadavg()[0], "arch": arch,
                            "macs": cost(arch)["macs"], "search_AP": summary["best"]["metrics"]["AP"],
                            "limit": cfg.search.budget.max}
            save()
    if not args.skip_tune:
        for key, r in results.items():
            if "tuned" in r:
                continue
            cfg, run_dir = config(r["strategy"], r["seed"])
            t0 = time.perf_counter()
            out = run_tune(cfg, run_dir, console=console)
            r["tuned"] = {k: out["metrics"][k] for k in ("AP", "AP50")}
            r["tune_seconds"] = round(time.perf_counter() - t0, 1)
            r["tune_epochs"] = args.tune_epochs
            save()

    table = Table(title=f"gradient vs evolution, {base_cfg.search.budget.metric} <= {base_cfg.search.budget.max:.4g}")
    for col in ("strategy", "seeds", "search s (mean)", "MACs M (mean)", "search AP", "tuned AP50 mean ± sd"):
        table.add_column(col, justify="right")
    for strategy in ("gradient", "evolution"):
        rs = [r for r in results.values() if r["strategy"] == strategy]
        if not rs:
            continue
        ap50 = [r["tuned"]["AP50"] for r in rs if "tuned" in r]
        spread = f"{statistics.mean(ap50):.4f} ± {statistics.stdev(ap50):.4f}" if len(ap50) > 1 else \
            (f"{ap50[0]:.4f}" if ap50 else "-")
        table.add_row(strategy, str(len(rs)), f"{statistics.mean(r['search_seconds'] for r in rs):.0f}",
                      f"{statistics.mean(r['macs'] for r in rs) / 1e6:.1f}",
                      f"{statistics.mean(r['search_AP'] for r in rs):.4f}", spread)
    console.print(table)


if __name__ == "__main__":
    main()
