"""Training throughput (images/s) and eval latency of a config's detector on this machine.

    python benchmarks/train_throughput.py configs/demo/baseline_ssdlite_shapes.yaml --steps 20

Prints images/s of training steps (forward + backward + optimizer, data loading excluded: batches
are prepared once) and the ratio to data-loader throughput, so a slow loader shows up as < 1.
"""
from __future__ import annotations

import argparse
import time

import torch

from nasdet.config import load_config
from nasdet.data.dataset import collate_detection
from nasdet.data.transforms import targets_to, to_model_input
from nasdet.data.build import build_datasets
from nasdet.models import build_detector
from nasdet.train.optim import build_optimizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = build_datasets(cfg)
    ds = data["train"]
    bs = cfg.train.batch_size
    model = build_detector(cfg.model, num_classes=ds.num_classes).train()
    opt = build_optimizer(model, cfg.train.optimizer)

    t = time.perf_counter()
    batches = [collate_detection([ds[(i * bs + j) % len(ds)] for j in range(bs)]) for i in range(args.warmup + args.steps)]
    load_ips = len(batches) * bs / (time.perf_counter() - t)

    times = []
    for i, (images, targets) in enumerate(batches):
        t = time.perf_counter()
        loss = sum(model(to_model_input(images, "cpu"), targets_to(targets, "cpu")).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    train_ips = bs * len(times) / sum(times)
    print(f"config            {args.config}")
    print(f"detector          {cfg.model.detector} / {cfg.model.backbone.name} x{cfg.model.backbone.width_mult} @ {cfg.model.input_size}")
    print(f"threads           {torch.get_num_threads()}")
    print(f"train images/s    {train_ips:.1f}  (batch {bs}, {args.steps} steps)")
    print(f"loader images/s   {load_ips:.1f}  (1 process, decode + augment)")
    print(f"loader/train      {load_ips / train_ips:.2f}")


if __name__ == "__main__":
    main()
