"""The found arch against the report's controls over several seeds (issue 26).

    nice -n 10 python benchmarks/controls_seeds.py configs/demo/pipeline_shapes.yaml --seeds 0 1 2

For each seed, ``nasdet pipeline CONFIG --set seed=S --set report.controls=true`` in ``WORK_DIR/seed<S>``
(a fresh process per seed; a rerun continues the stages that are not complete), then its ``report.json`` is
read back. Printed: every row's AP and AP50 on val per seed, and for each comparison the per-seed difference,
its mean and a 90 % t interval of the mean over the seeds:

- **architecture**: found arch - random arch(s) of the same cost, found arch - the baseline's own arch
  (all three taken from the same supernet and tuned with the same recipe);
- **training**: the baseline's arch from the supernet and tuned - the same arch trained alone (baseline).

The seed changes everything that is random in the run (baseline and supernet init, sampling, search,
tune, the random controls' draws); the data set does not change.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

# two-sided 90 % Student t quantiles by degrees of freedom (n - 1)
T90 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--work-dir", type=Path, default=None, help="default: /tmp/nasdet-controls-<config stem>")
    p.add_argument("--controls-seeds", type=int, default=1, help="report.controls_seeds: random archs per run")
    p.add_argument("--set", action="append", default=[], help="extra config overrides for every seed")
    return p.parse_args(argv)


def run_seed(args, seed: int, work: Path) -> dict:
    report = work / "report.json"
    if not report.is_file():
        cmd = [sys.executable, "-m", "nasdet", "pipeline", str(args.config), "--work-dir", str(work),
               "--set", f"seed={seed}", "--set", "report.controls=true",
               "--set", f"report.controls_seeds={args.controls_seeds}"]
        for s in args.set:
            cmd += ["--set", s]
        t = time.time()
        log = work.parent / f"seed{seed}.log"
        work.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
        if r.returncode:
            raise SystemExit(f"seed {seed} failed (rc {r.returncode}); see {log}")
        print(f"seed {seed}: pipeline {time.time() - t:.0f} s, log {log}", flush=True)
    return json.loads(report.read_text())


def kind(model: str) -> str:
    if model.startswith("baseline ("):
        return "baseline"
    if model.startswith("found arch"):
        return "found"
    if model.startswith("baseline arch"):
        return "baseline_arch"
    if model.startswith("random arch"):
        return "random"
    return model


def interval(diffs: list[float]) -> str:
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return f"{mean:+.4f}"
    half = T90[len(diffs) - 1] * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}]"


def main(argv=None) -> None:
    args = parse_args(argv)
    root = args.work_dir or Path(f"/tmp/nasdet-controls-{args.config.stem}")
    per_seed = {}
    for seed in args.seeds:
        rows = run_seed(args, seed, root / f"seed{seed}")["rows"]
        by_kind: dict[str, list[dict]] = {}
        for r in rows:
            by_kind.setdefault(kind(r["model"]), []).append(r)
        per_seed[seed] = by_kind
    split = next(iter(per_seed.values()))["found"][0]["split"]
    print(f"\n{args.config} ({len(args.seeds)} seeds; all on {split}; controls_seeds {args.controls_seeds})\n")
    print("| seed | " + " | ".join(f"{k} AP / AP50" for k in ("baseline", "baseline_arch", "random", "found")) + " |")
    print("|---|---|---|---|---|")
    for seed, k in per_seed.items():
        cells = []
        for name in ("baseline", "baseline_arch", "random", "found"):
            rs = k.get(name, [])
            cells.append(" ; ".join(f"{r['AP']:.4f} / {r['AP50']:.4f}" for r in rs) or "-")
        print(f"| {seed} | " + " | ".join(cells) + " |")

    def mean_of(k, name, metric):
        rs = k.get(name, [])
        return statistics.fmean(r[metric] for r in rs) if rs else None

    comparisons = [("architecture: found - random arch (same cost)", "found", "random"),
                   ("architecture: found - baseline's own arch", "found", "baseline_arch"),
                   ("training: baseline arch (supernet + tune) - baseline (alone)", "baseline_arch", "baseline")]
    print("\n| comparison | AP: per seed | AP: mean [90 % t interval] | AP50: per seed | AP50: mean [90 % t interval] |")
    print("|---|---|---|---|---|")
    for label, a, b in comparisons:
        out = [label]
        for metric in ("AP", "AP50"):
            diffs = [mean_of(k, a, metric) - mean_of(k, b, metric) for k in per_seed.values()
                     if mean_of(k, a, metric) is not None and mean_of(k, b, metric) is not None]
            out += [", ".join(f"{d:+.4f}" for d in diffs), interval(diffs) if diffs else "-"]
        print("| " + " | ".join(out) + " |")


if __name__ == "__main__":
    main()
