"""The paired bootstrap's cost per resample (report.md's AP intervals, the search's confidence check), on a finished
run's tuned model: the true-positive path (resamples without score ties inside an image) against the general path
(cumulative sums over every detection of the resample, what every resample took before), and that both give the
same AP and AP50 to the bit.

    python benchmarks/bootstrap_speed.py configs/demo/pipeline_shapes.yaml --work-dir runs/demo_pipeline
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from nasdet.config import load_config
from nasdet.data.dataset import to_coco_gt
from nasdet.metrics.bootstrap import ImageMatches, bootstrap_samples
from nasdet.stages.report import ReportModels
from nasdet.train.evaluate import predict
from nasdet.workdir import WorkDir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--work-dir", required=True, help="a finished pipeline's work dir (its tune/ckpt/last.pt)")
    ap.add_argument("--resamples", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [f"work_dir={args.work_dir}"])
    models = ReportModels(cfg)
    val = models.val.first(cfg.eval.max_images)
    t = time.perf_counter()
    dets = predict(models.model(WorkDir.of(cfg).tune.checkpoint, True), val, torch.device("cpu"), cfg.eval.batch_size)
    print(f"detections: {len(dets)} on {len(val)} val images ({time.perf_counter() - t:.1f} s)")
    t = time.perf_counter()
    fast = ImageMatches(to_coco_gt(val), dets)
    print(f"matches (COCOeval.evaluate once): {time.perf_counter() - t:.2f} s; categories "
          f"{len(fast._pooled)}, with ties inside an image: {sum(c.ties for c in fast._pooled)}")
    general = copy.copy(fast)
    general._pooled = [c._replace(ties=True) for c in fast._pooled]  # every resample sorted and summed in full
    samples = bootstrap_samples(len(val), args.resamples, cfg.seed)
    figures = {}
    for name, m in (("true positives", fast), ("cumulative sums", general)):
        t = time.perf_counter()
        figures[name] = [m.metrics(s) for s in samples]
        print(f"{name}: {(time.perf_counter() - t) / len(samples) * 1e3:.2f} ms per resample")
    same = figures["true positives"] == figures["cumulative sums"]
    aps = np.array([f["AP"] for f in figures["true positives"]])
    print(f"identical AP and AP50 on all {len(samples)} resamples: {same}; AP mean {aps.mean():.4f}, "
          f"90 % interval [{np.quantile(aps, 0.05):.4f}, {np.quantile(aps, 0.95):.4f}]")
    if not same:
        raise SystemExit("the two paths differ")


if __name__ == "__main__":
    main()
