"""Two per-item costs behind issue 27's figures: the training transforms per image, and a MACs count.

    python benchmarks/augment_and_macs.py --images 600

1. The pipeline demo's train transforms (``data.augment`` of configs/demo/pipeline_shapes.yaml) on its
   decoded training images, in one process on 2 torch threads: ms per image at the native size
   (``data.augment.at_train_size: false``) and resized in the loader to 128 and 160 px (the default). Then
   a whole item as the loader takes it from the data set (decoded image from the cache, target, transforms)
   at 128 and 160 px: every step run per item, and with the fixed part (drop crowd, resize, sanitize) kept
   in the decode cache, as ``DetectionDataset`` does in every epoch after the first.
2. ``detector_macs`` of the smallest and the largest static subnet of three spaces, on a meta-device copy
   (``real=False``) and with a real forward (``real=True``): seconds, whether the counts agree, and which
   way the default (``real=None``: ``counts_faster_for_real``, from the model's size) takes.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACES = ("configs/demo/pipeline_shapes.yaml", "configs/enot/ssd_mnv2_pretrain_voc.yaml",
          "configs/detnas/retinanet_300M_coco.yaml")


def transforms_ms(n: int) -> None:
    from nasdet.config import load_config
    from nasdet.data.build import build_datasets
    from nasdet.data.transforms import TrainTransforms

    cfg = load_config(os.path.join(ROOT, "configs/demo/pipeline_shapes.yaml"), [])
    raw = build_datasets(cfg, need=("train",))["train"].with_transforms(None)
    items = [raw[i] for i in range(min(200, len(raw)))]
    for size in (None, 128, 160):
        tf = TrainTransforms(cfg.data.augment, size)
        t = time.perf_counter()
        for i in range(n):
            tf(*items[i % len(items)])
        ms = (time.perf_counter() - t) / n * 1e3
        print(f"train transforms at {'native size' if size is None else f'{size} px'}: {ms:.2f} ms per image")
    train = build_datasets(cfg, need=("train",))["train"]
    m = min(n, len(train))
    for size in (128, 160):
        tf = train.transforms.at_size(size)
        cached = train.with_transforms(tf)
        every_step = train.with_transforms(lambda image, target: tf(image, target))  # one Compose, nothing kept
        for i in range(m):  # the decoded images, and the fixed parts, in the cache (an epoch after the first)
            every_step[i], cached[i]
        for name, ds in (("every step per item", every_step), ("fixed part kept", cached)):
            t = time.perf_counter()
            for i in range(m):
                ds[i]
            print(f"data set item at {size} px, {name}: {(time.perf_counter() - t) / m * 1e3:.2f} ms per image")


def macs_seconds() -> None:
    from nasdet.config import load_config
    from nasdet.models.cost import counts_faster_for_real, detector_macs, get_input_size
    from nasdet.models.supernet import build_supernet, export_detector

    for path in SPACES:
        cfg = load_config(os.path.join(ROOT, path), [])
        model, space = build_supernet(cfg, 20)
        for name, arch in (("smallest", space.smallest()), ("largest", space.largest())):
            static = export_detector(model, arch, space)
            t = time.perf_counter()
            meta = detector_macs(static, backbone=False, real=False)["total"]
            t_meta = time.perf_counter() - t
            t = time.perf_counter()
            real = detector_macs(static, backbone=False, real=True)["total"]
            t_real = time.perf_counter() - t
            default = "real forward" if counts_faster_for_real(static, get_input_size(static)) else "meta"
            print(f"{os.path.basename(path)} {name}: {meta / 1e6:.1f} M MACs, meta {t_meta:.3f} s, real forward "
                  f"{t_real:.3f} s, counts {'equal' if meta == real else 'DIFFER'}, default: {default}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--no-macs", action="store_true", help="the transforms only")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.2f}")
    transforms_ms(args.images)
    if not args.no_macs:
        macs_seconds()


if __name__ == "__main__":
    main()
