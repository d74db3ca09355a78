"""The demo's control: a random architecture with the found one's MACs, tuned with the same recipe.

After ``nasdet pipeline CONFIG``, samples archs of the space until one has MACs within ``--tolerance``
of the found arch's (and under the budget), tunes it exactly as the found arch was tuned (same
``tune.init``, recipe and seed) into ``WORK_DIR/random_tune/``, and prints the three rows: baseline,
found, random.

    python benchmarks/random_arch_same_macs.py configs/demo/pipeline_shapes.yaml
"""
from __future__ import annotations

import argparse
import json
import random

from rich.console import Console
from rich.table import Table

from nasdet.config import load_config
from nasdet.models.supernet import build_supernet
from nasdet.workdir import work_dir_of
from nasdet.search.budget import CostModel
from nasdet.space import load_arch
from nasdet.stages.tune import run_tune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--work-dir")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    console = Console()
    cfg = load_config(args.config, args.set)
    wd = work_dir_of(cfg, args.work_dir)
    model, space = build_supernet(cfg, 8)
    found = load_arch(wd / "tune" / "arch.json", space)
    cost = CostModel(model, space, ("macs",))
    target = cost(found)["macs"]
    limit = cfg.search.budget.max if cfg.search.budget and cfg.search.budget.metric == "macs" else float("inf")
    rng = random.Random(args.seed)
    for tries in range(1, 100001):
        arch = space.sample(rng)
        m = cost(arch)["macs"]
        if abs(m - target) <= args.tolerance * target and m <= limit and arch != found:
            break
    else:
        raise SystemExit("no random arch with those MACs found")
    console.print(f"random arch after {tries} draws: {m / 1e6:.1f} M MACs (found: {target / 1e6:.1f} M)")
    rcfg = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"arch": arch})})
    random_result = run_tune(rcfg, wd, console=console, stage="random_tune")
    base = json.loads((wd / "baseline" / "metrics.json").read_text())["metrics"]
    tuned = json.loads((wd / "tune" / "metrics.json").read_text())["metrics"]
    base_macs = json.loads((wd / "export" / "baseline.json").read_text())["measured"]["macs"]
    table = Table(title="same recipe, val set")
    for col in ("model", "MACs", "AP", "AP50"):
        table.add_column(col, justify="right")
    for name, macs, met in (("baseline", base_macs, base), ("found", target, tuned),
                            ("random, same MACs", m, random_result["metrics"])):
        table.add_row(name, f"{macs / 1e6:.1f} M", f"{met['AP']:.4f}", f"{met['AP50']:.4f}")
    console.print(table)


if __name__ == "__main__":
    main()
