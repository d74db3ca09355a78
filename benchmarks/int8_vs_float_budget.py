"""The arch found under an INT8 latency budget against the arch found under the same float budget (issue 25).

    nice -n 10 python benchmarks/int8_vs_float_budget.py /tmp/ctl_pipe --seeds 0 1 2 --budget-ms 4.5

ROOT holds one pipeline-demo work dir per seed, ``ROOT/seed<S>`` (e.g. ``benchmarks/controls_seeds.py``'s),
whose pretrain stage has finished: its ``config.yaml`` and ``supernet/ckpt/last.pt`` are read, nothing is
written there. Per seed, the supernet checkpoint is copied once into ``WORK/seed<S>/`` and searched twice
under the same budget in ms, each search in its own work dir: ``float/`` with ``cost.latency: onnxruntime``
(the float end-to-end file's latency) and ``int8/`` with ``cost.latency: onnxruntime_int8`` (the file as
``nasdet export --int8`` quantizes it). Each found arch is tuned from the supernet's weights with the run's
recipe (the same for both) and exported with ``export.int8``: both files' AP on val run by onnxruntime.
Then the seed's four files (float and INT8 of both archs) are timed in turns in one process (onnxruntime
CPU, batch 1, ``--threads``; one run of each per round, so all see the same load) on the search's random
probe image (what the budget was checked on) and on the first val image (real detections, more NMS work).
Printed per seed and as mean +- sd over the seeds: MACs, input size, float and INT8 latency, float and INT8
AP, and the differences INT8-budget arch minus float-budget arch. Rerunning continues: each stage skips
itself once done (the search continues its study), so ``--candidates`` / ``--tune-epochs`` must not change
between runs into the same ``--work-dir``.

The same budget in ms binds the two searches differently only as far as quantization changes each arch's
latency: on this CPU a trained demo model's INT8 file takes 0.93-0.99 of its float file's time end to end
(benchmarks/README.md; an earlier 2-3x came from random weights, whose float file returned 100 boxes to NMS
and the INT8 file none), and depthwise convs, odd channel counts and resolutions quantize differently; the
question is whether the INT8 search finds an arch that is more accurate after quantization at no more INT8
latency.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

import torch
from rich.console import Console

from int8_latency import side_by_side  # benchmarks/ is on sys.path when run as a script
from nasdet.config import load_config
from nasdet.errors import ConfigError
from nasdet.data.build import load_split
from nasdet.models.cost import onnx_session
from nasdet.search.latency import probe_images
from nasdet.stages.export import current_export, run_export
from nasdet.stages.search import run_search
from nasdet.stages.tune import run_tune
from nasdet.workdir import WorkDir, checkpoint_in, write_json

BACKENDS = {"float": "onnxruntime", "int8": "onnxruntime_int8"}  # search: which latency the budget is about
FILES = ("float", "int8")  # the exported files of each found arch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", type=Path, help="folder of seed<S>/ pipeline work dirs with a pretrained supernet")
    p.add_argument("--budget-ms", type=float, required=True, help="search.budget max, the same for both searches")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/nasdet-int8-vs-float"))
    p.add_argument("--candidates", type=int, default=None, help="search.num_candidates (default: the run's)")
    p.add_argument("--tune-epochs", type=int, default=None, help="the tune recipe's epochs (default: the run's)")
    p.add_argument("--tune-max-steps", type=int, default=None, help="stop each tune early (smoke runs)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads: search, export and the timing")
    p.add_argument("--runs", type=int, default=50, help="timed runs of each file, in turns")
    p.add_argument("--set", action="append", default=[], help="extra config overrides for every run")
    return p.parse_args(argv)


def supernet_snapshot(src: Path, seed_dir: Path) -> Path:
    """A copy of the finished supernet of ``src`` in ``seed_dir`` (the source is never written, and a copy
    does not change under the searches if the source run goes on)."""
    sw = WorkDir(src)
    ckpt = sw.supernet.require_checkpoint()
    if not sw.supernet.metrics.is_file():
        raise SystemExit(f"{sw.supernet.root}: pretraining has not finished (no {sw.supernet.metrics.name})")
    snap = seed_dir / "supernet_last.pt"
    if not snap.is_file():
        seed_dir.mkdir(parents=True, exist_ok=True)
        tmp = snap.with_suffix(".part")
        shutil.copyfile(ckpt, tmp)
        tmp.replace(snap)
    return snap


def run_one(args, src: Path, seed_dir: Path, kind: str, snap: Path) -> dict:
    """Search, tune and export (with INT8) one budget's arch in ``seed_dir/<kind>``; its export record."""
    wd = seed_dir / kind
    link = checkpoint_in(wd / "supernet")
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(snap.resolve())
    base = load_config(src / "config.yaml")
    recipe = "tune.train" if base.tune.train is not None else "train"  # the tune stage's recipe
    overrides = [f"work_dir={wd}", "search.budget.metric=latency", f"search.budget.max={args.budget_ms}",
                 f"cost.latency={BACKENDS[kind]}", f"cost.threads={args.threads}", "export.int8=true",
                 "tune.init=supernet", "tune.supernet_checkpoint=null",
                 "tune.arch=null", "tune.searched_arch=null"]  # the source's last stage may have left a control's arch
    if args.candidates:
        overrides.append(f"search.num_candidates={args.candidates}")
    if args.tune_epochs:
        overrides.append(f"{recipe}.epochs={args.tune_epochs}")
    if args.tune_max_steps:
        overrides.append(f"{recipe}.max_steps={args.tune_max_steps}")
    cfg = load_config(src / "config.yaml", overrides + args.set)
    w = WorkDir.of(cfg)
    with open(seed_dir / f"{kind}.log", "a") as log:
        console = Console(file=log, width=140)
        run_search(cfg, w.root, console=console)
        run_tune(cfg, w.root, console=console)
        rec = current_export(cfg, w, "tune", console) or run_export(cfg, w.root, source="tune", console=console)
    return {"cfg": cfg, "export": rec}


def row_of(rec: dict, ms_probe: dict, ms_val: dict, kind: str) -> dict:
    m = rec["int8"]["metrics_onnxruntime"]
    return {"macs_M": rec["measured"]["macs"] / 1e6, "input": rec["input_size"],
            "float_ms": ms_probe[(kind, "float")], "int8_ms": ms_probe[(kind, "int8")],
            "float_ms_val": ms_val[(kind, "float")], "int8_ms_val": ms_val[(kind, "int8")],
            "float_AP": m["float"]["AP"], "int8_AP": m["int8"]["AP"],
            "float_AP50": m["float"]["AP50"], "int8_AP50": m["int8"]["AP50"],
            "search_ms": (rec.get("predicted") or {}).get("latency")}


def time_seed(runs: dict, threads: int, n: int) -> tuple[dict, dict]:
    """Median ms of the seed's four files, in turns: on the search's probe (each at its arch's input size)
    and on the first val image (resized inside the graph)."""
    sessions, probes = {}, {}
    for kind, r in runs.items():
        e = r["export"]
        for f in FILES:
            sessions[(kind, f)] = onnx_session(e["onnx"] if f == "float" else e["int8"]["onnx"], threads)
            probes[(kind, f)] = {"image": probe_images(e["input_size"], 1)[0].numpy()}
    val_image = load_split(runs["float"]["cfg"], "val").load_image(0).as_subclass(torch.Tensor).numpy()
    on_probe = side_by_side(sessions, probes, 5, n)
    on_val = side_by_side(sessions, {k: {"image": val_image} for k in sessions}, 5, n)
    return on_probe, on_val


COLUMNS = [("macs_M", "MACs (M)", ".1f"), ("input", "input", "d"), ("float_ms", "float ms", ".2f"),
           ("int8_ms", "INT8 ms", ".2f"), ("float_ms_val", "float ms (val img)", ".2f"),
           ("int8_ms_val", "INT8 ms (val img)", ".2f"), ("float_AP", "float AP", ".4f"), ("int8_AP", "INT8 AP", ".4f"),
           ("float_AP50", "float AP50", ".4f"), ("int8_AP50", "INT8 AP50", ".4f")]


def mean_sd(values: list[float], fmt: str) -> str:
    fmt = ".2f" if fmt == "d" else fmt
    mean = statistics.fmean(values)
    return f"{mean:{fmt}}" + (f" ± {statistics.stdev(values):{fmt}}" if len(values) > 1 else "")


def print_tables(per_seed: dict, budget_ms: float) -> None:
    head = "| seed | searched under | " + " | ".join(c[1] for c in COLUMNS) + " |"
    rule = "|---" * (len(COLUMNS) + 2) + "|"
    print(f"\nsame budget: {budget_ms} ms end to end (float search: float latency; INT8 search: INT8 latency); "
          "latencies: medians timed in turns in one process, on the search's probe image unless marked val img\n")
    print(head + "\n" + rule)
    for seed, rows in per_seed.items():
        for kind in ("float", "int8", "diff"):
            label = {"float": "float budget", "int8": "INT8 budget", "diff": "INT8 - float"}[kind]
            cells = [f"{rows[kind][k]:+{f}}" if kind == "diff" else f"{rows[kind][k]:{f}}" for k, _, f in COLUMNS]
            print(f"| {seed} | {label} | " + " | ".join(cells) + " |")
    same = [s for s, rows in per_seed.items() if rows["float"]["arch"] == rows["int8"]["arch"]]
    if same:  # then the INT8 AP difference is run-to-run noise of tuning and quantizing one arch
        print(f"\nseed(s) {', '.join(map(str, same))}: both budgets found the same arch")
    print("\n" + head.replace("| seed |", "| seeds |") + "\n" + rule)
    n = len(per_seed)
    for kind in ("float", "int8", "diff"):
        label = {"float": "float budget", "int8": "INT8 budget", "diff": "INT8 - float"}[kind]
        cells = [mean_sd([r[kind][k] for r in per_seed.values()], f) for k, _, f in COLUMNS]
        print(f"| {n} (mean ± sd) | {label} | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    args = parse_args(argv)
    per_seed = {}
    for seed in args.seeds:
        src, seed_dir = args.root / f"seed{seed}", args.work_dir / f"seed{seed}"
        snap = supernet_snapshot(src, seed_dir)
        runs = {}
        try:
            for kind in BACKENDS:
                runs[kind] = run_one(args, src, seed_dir, kind, snap)
                e = runs[kind]["export"]
                print(f"seed {seed}, {kind} budget: {e['measured']['macs'] / 1e6:.1f} M MACs at {e['input_size']} px, "
                      f"budget check {(e.get('budget') or {}).get('within')}; log {seed_dir / (kind + '.log')}",
                      flush=True)
        except ConfigError as e:  # e.g. this seed's smallest subnet is over the budget: the other seeds still count
            print(f"seed {seed} skipped: {e}", flush=True)
            continue
        on_probe, on_val = time_seed(runs, args.threads, args.runs)
        rows = {kind: row_of(runs[kind]["export"], on_probe, on_val, kind) for kind in BACKENDS}
        rows["diff"] = {k: rows["int8"][k] - rows["float"][k] for k, _, _ in COLUMNS}
        for kind in BACKENDS:
            rows[kind]["arch"] = runs[kind]["export"]["arch"]
        per_seed[seed] = rows
    if not per_seed:
        raise SystemExit("no seed finished: nothing to compare")
    write_json(args.work_dir / "summary.json", {"budget_ms": args.budget_ms, "threads": args.threads,
                                                "runs": args.runs, "argv": sys.argv, "seeds": per_seed})
    print_tables(per_seed, args.budget_ms)
    print(f"\nper seed records: {args.work_dir / 'summary.json'}")


if __name__ == "__main__":
    main()
