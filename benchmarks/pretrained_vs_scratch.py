"""DetNAS's step 1 on the embedded data: does a classification-pretrained supernet detect better, same steps?

For each seed, two runs of the same reduced DetNAS pipeline (``configs/demo/classify_detnas_shapes.yaml``
scaled down by the arguments: classify -> pretrain -> search -> tune, no export, no controls):

- **classified**: ``pipeline.classify: true``: the supernet is first trained as an 8-way classifier of
  single shapes (``--classify-epochs`` on the imagefolder set), then pretrained for detection from its
  backbone (``--pretrain-epochs``);
- **scratch**: no classify stage; the detection pretraining gets the classify steps instead (its
  epochs raised until its steps are at least the classified run's classify + pretrain steps: equal
  with the defaults, 72 + 72 against 144).

Search and tune are the same in both (same seed, same recipe). Printed per arm, mean and standard
deviation over seeds, all on the detection val split: the supernet's largest and smallest subnets after
pretraining (BN recalibrated), the found arch with the supernet's weights before tuning, and after
tuning; with ``--baseline`` also the baseline (trained from scratch, identical in both arms: once per
seed). The step counts actually run are read back from the stages' records and printed.

Classification steps are cheaper than detection steps (48 px single images against a Faster R-CNN at
``--input-size``), so "same steps" gives the scratch arm more compute, not less.

    nice -n 10 python benchmarks/pretrained_vs_scratch.py --seeds 0 1 2 --work-dir /tmp/pvs

Data (generated once under ``WORK_DIR/data``, seed 0; the seeds vary training only) and every run's
work dir live under ``--work-dir``; a rerun continues the stages that are not complete.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from rich.console import Console

from nasdet.config import apply_overrides, load_yaml, validate_config
from nasdet.data.split import split_train_search
from nasdet.data.synthetic import existing_matches, make_synthetic
from nasdet.data.synthetic_classes import make_synthetic_imagefolder
from nasdet.pipeline import run_pipeline
from nasdet.workdir import INITIAL_METRICS, WorkDir

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo" / "classify_detnas_shapes.yaml"
ARMS = ("classified", "scratch")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=CONFIG, help="a DetNAS config with a classify section")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/nasdet-pretrained-vs-scratch"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--det-train", type=int, default=320, help="detection training images (search split included)")
    p.add_argument("--det-val", type=int, default=150, help="detection val images (every AP printed)")
    p.add_argument("--det-size", type=int, default=192, help="detection image width in pixels")
    p.add_argument("--input-size", type=int, default=160, help="model.input_size of the detector")
    p.add_argument("--batch", type=int, default=8, help="detection batch (pretrain and tune)")
    p.add_argument("--cls-train", type=int, default=1152,
                   help="classification training images (1152 / 64 x 4 epochs = 72 steps = 2 detection epochs)")
    p.add_argument("--cls-val", type=int, default=400)
    p.add_argument("--cls-batch", type=int, default=64)
    p.add_argument("--classify-epochs", type=int, default=4)
    p.add_argument("--pretrain-epochs", type=int, default=2, help="detection pretraining of the classified arm")
    p.add_argument("--tune-epochs", type=int, default=2)
    p.add_argument("--candidates", type=int, default=12, help="search candidates (evolution, population 6)")
    p.add_argument("--baseline", action="store_true", help="also train the baseline (once per seed)")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def steps_per_epoch(images: int, batch: int) -> int:
    return images // batch  # the trainers drop the last incomplete batch


def make_data(a: argparse.Namespace, console: Console) -> tuple[Path, Path]:
    det, cls = a.work_dir / "data" / "shapes", a.work_dir / "data" / "shapes_classes"
    if not existing_matches(det, a.det_train, a.det_val, a.det_size, 0):
        make_synthetic(det, a.det_train, a.det_val, a.det_size, 0)
    marker = cls / "arguments.json"
    wanted = {"train": a.cls_train, "val": a.cls_val, "size": 64, "seed": 0}
    if not marker.is_file() or json.loads(marker.read_text()) != wanted:
        make_synthetic_imagefolder(cls, a.cls_train, a.cls_val, 64, 0)
        marker.write_text(json.dumps(wanted))
    console.print(f"data: {det} ({a.det_train} train / {a.det_val} val), {cls} ({a.cls_train} / {a.cls_val})")
    return det, cls


def arm_config(a: argparse.Namespace, arm: str, seed: int, det: Path, cls: Path, pretrain_epochs: int):
    raw = load_yaml(a.config.read_text(), str(a.config))
    train = {"threads": a.threads, "ckpt_every_steps": 10_000, "log_every_steps": 10, "batch_size": a.batch}
    overrides = {
        "name": f"pvs_{arm}_seed{seed}", "seed": seed, "work_dir": str(a.work_dir / f"seed{seed}" / arm),
        "data.train": {"annotations": str(det / "train" / "annotations.json"), "images": str(det / "train" / "images")},
        "data.val": {"annotations": str(det / "val" / "annotations.json"), "images": str(det / "val" / "images")},
        "model.input_size": a.input_size,
        "train": {**raw["train"], **train, "epochs": pretrain_epochs},
        "tune.train": {**raw["tune"]["train"], **train, "epochs": a.tune_epochs},
        "search.num_candidates": a.candidates, "search.population": min(6, a.candidates),
        "search.parents": min(3, a.candidates),
        "classify.root": str(cls),
        "classify.train": {**raw["classify"]["train"], "threads": a.threads, "ckpt_every_steps": 10_000,
                           "epochs": a.classify_epochs, "batch_size": a.cls_batch},
        "pipeline": {**raw.get("pipeline", {}), "classify": arm == "classified", "baseline": False,
                     "export": False},
        "report.controls": False,
    }
    raw = apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    return validate_config(raw, f"{a.config} ({arm}, seed {seed})")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def results_of(work_dir: Path) -> dict:
    w = WorkDir(work_dir)
    pre, tune, cls = read_json(w.supernet.metrics), read_json(w.tune.metrics), read_json(w.classify.metrics)
    init = read_json(w.tune / INITIAL_METRICS).get("metrics") or {}
    subnets = pre.get("subnets", {})
    out = {"classify_steps": cls.get("step", 0), "pretrain_steps": pre.get("step"), "tune_steps": tune.get("step"),
           "val_images": tune.get("val_images"), "found_init_AP50": init.get("AP50"),
           "found_AP": tune["metrics"]["AP"], "found_AP50": tune["metrics"]["AP50"]}
    for name in ("largest", "smallest"):
        m = (subnets.get(name) or {}).get("metrics") or subnets.get(name) or {}
        out[f"{name}_AP50"] = m.get("AP50")
    if cls:
        out["classify_top1_largest"] = ((cls.get("subnets") or {}).get("largest") or {}).get("metrics", {}).get("top1")
    return out


def mean_sd(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main(argv=None) -> int:
    a = parse_args(argv)
    console = Console()
    det, cls = make_data(a, console)
    base = validate_config(load_yaml(a.config.read_text(), str(a.config)), str(a.config))
    n_train = len(split_train_search(a.det_train, base.data.search_fraction, base.data.split_seed)[0])
    det_steps = steps_per_epoch(n_train, a.batch)
    cls_steps = a.classify_epochs * steps_per_epoch(a.cls_train, a.cls_batch)
    scratch_epochs = a.pretrain_epochs + math.ceil(cls_steps / det_steps)
    console.print(f"classified: {cls_steps} classify + {a.pretrain_epochs * det_steps} pretrain steps; scratch: "
                  f"{scratch_epochs * det_steps} pretrain steps ({scratch_epochs} epochs of {det_steps})")
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    baselines = []
    for seed in a.seeds:
        for arm in ARMS:
            cfg = arm_config(a, arm, seed, det, cls, a.pretrain_epochs if arm == "classified" else scratch_epochs)
            if a.baseline and arm == "scratch":
                cfg = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"baseline": True})})
            run_pipeline(cfg, console=console)
            r = results_of(Path(cfg.work_dir))
            results[arm].append(r)
            if a.baseline and arm == "scratch":
                baselines.append(read_json(WorkDir(cfg.work_dir).baseline.metrics).get("metrics", {}))
            console.print(f"seed {seed} {arm}: {r}")
            sys.stdout.flush()

    rows = [("classify steps", "classify_steps"), ("detection pretrain steps", "pretrain_steps"),
            ("tune steps", "tune_steps"), ("classify top-1 (largest, of 8)", "classify_top1_largest"),
            ("supernet largest AP50", "largest_AP50"), ("supernet smallest AP50", "smallest_AP50"),
            ("found arch AP50, supernet weights", "found_init_AP50"), ("found arch AP50, tuned", "found_AP50"),
            ("found arch AP, tuned", "found_AP")]
    val_images = results[ARMS[0]][0].get("val_images")
    print(f"\nseeds {a.seeds}; every AP on the detection val split ({val_images} images); mean ± sd over seeds\n")
    print("| figure | " + " | ".join(ARMS) + " |")
    print("|---|" + "---|" * len(ARMS))
    for title, key in rows:
        print(f"| {title} | " + " | ".join(mean_sd([r.get(key) for r in results[arm]]) for arm in ARMS) + " |")
    if baselines:
        print(f"| baseline AP50 (from scratch, both arms) | {mean_sd([b.get('AP50') for b in baselines])} | |")
    diffs = [c["found_AP50"] - s["found_AP50"] for c, s in zip(results["classified"], results["scratch"])]
    print(f"\nfound AP50, classified - scratch, per seed: {', '.join(f'{d:+.4f}' for d in diffs)}; "
          f"mean {mean_sd(diffs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
