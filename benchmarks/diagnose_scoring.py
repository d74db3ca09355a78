"""How the supernet's ranking depends on how candidates are scored: BN recalibration batches, the images
scored on, the metric. Run after `nasdet diagnose` (it reuses the archs and their stand-alone APs).

For each variant, every diagnosed arch is rescored with the supernet (`score_arch`, as the search does)
and Kendall's tau against the stand-alone metric is printed with its bootstrap 90 % interval, beside
MACs' tau on the same archs. Variants: ``recalib:N`` (N calibration batches of search.batch_size images),
``images:search`` (the search split, the default), ``images:val`` (the 300 val images: a larger split;
they are also what the stand-alone AP is measured on, so this is an upper bound, not a usable setting).

    python benchmarks/diagnose_scoring.py configs/demo/pipeline_shapes.yaml \\
        --variants recalib:1,recalib:4,recalib:16,images:val
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from rich.console import Console
from rich.table import Table

from nasdet.config import load_config
from nasdet.data.build import build_datasets
from nasdet.workdir import work_dir_of
from nasdet.workdir import WorkDir
from nasdet.search.rank import rank_agreement
from nasdet.search.scorers import load_trained_supernet
from nasdet.search.scoring import score_arch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--work-dir")
    ap.add_argument("--variants", default="recalib:1,recalib:4,recalib:16,images:val")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    console = Console()
    cfg = load_config(args.config, args.set)
    d, s = cfg.diagnose, cfg.search
    wd = work_dir_of(cfg, args.work_dir)
    diag = WorkDir(wd).diagnose
    records = [json.loads(p.read_text()) for p in sorted(diag.records.glob("*.json"))]
    if not records:
        raise SystemExit(f"no diagnosed archs in {diag.records}: run `nasdet diagnose` first")
    records.sort(key=lambda r: r["costs"]["macs"])
    ctx = load_trained_supernet(cfg, wd)
    val = build_datasets(cfg, need=("val",))["val"]
    out = {}
    table = Table(title=f"supernet score variants vs stand-alone {d.metric} ({d.target}), {len(records)} archs")
    for col in ("variant", "tau vs stand-alone", "90 % interval", "rho", "top-k overlap", "s / arch"):
        table.add_column(col, justify="right")
    for target in sorted({i for r in records for i in r["standalone"]}):
        truth = [r["standalone"][target][d.metric] for r in records]
        macs = rank_agreement([r["costs"]["macs"] for r in records], truth, d.top_k, d.bootstrap, 0.9, d.seed)
        table.add_row(f"MACs alone (vs {target})", f"{macs['kendall_tau']:.3f}",
                      f"[{macs['kendall_tau_lo']:.2f}, {macs['kendall_tau_hi']:.2f}]", f"{macs['spearman_rho']:.3f}",
                      f"{macs['top_k_overlap']:.2f}", "-")
        out[f"macs_vs_{target}"] = macs
    for variant in args.variants.split(","):
        kind, _, value = variant.partition(":")
        recalib, images = s.recalib_batches, ctx.search_set
        if kind == "recalib":
            recalib = int(value)
        elif kind == "images" and value == "val":
            images = val
        elif not (kind == "images" and value == "search"):
            raise SystemExit(f"unknown variant {variant!r}: recalib:N, images:search or images:val")
        t = time.perf_counter()
        scores = [score_arch(ctx.model, ctx.space, r["arch"], images, ctx.calib_set, ctx.device, recalib, s.batch_size,
                             cfg.data.num_workers, cfg.seed)[d.metric] for r in records]
        per_arch = (time.perf_counter() - t) / len(records)
        for target in sorted({i for r in records for i in r["standalone"]}):
            truth = [r["standalone"][target][d.metric] for r in records]
            a = rank_agreement(scores, truth, d.top_k, d.bootstrap, 0.9, d.seed)
            out[f"{variant}_vs_{target}"] = {**a, "scores": scores, "seconds_per_arch": per_arch}
            table.add_row(f"{variant} (vs {target})", f"{a['kendall_tau']:.3f}",
                          f"[{a['kendall_tau_lo']:.2f}, {a['kendall_tau_hi']:.2f}]", f"{a['spearman_rho']:.3f}",
                          f"{a['top_k_overlap']:.2f}", f"{per_arch:.1f}")
        console.print(f"{variant}: done ({per_arch:.1f} s / arch)")
    console.print(table)
    path = diag / "scoring_variants.json"
    path.write_text(json.dumps(out, indent=2))
    console.print(f"-> {path}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
