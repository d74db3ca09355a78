"""What the export's parity check costs, and torchvision's NMS at threshold 1 with and without the check's shortcut.

1. ``check_parity`` on an untrained detector of a config (random weights, ``--images`` val-sized random images):
   seconds of the whole check against one torch forward per image, so the check's extra torch runs (the candidates
   with NMS off and cuts lowered, the same with cuts raised, the model's own forward) are a ratio.
2. ``torchvision.ops.batched_nms`` at IoU threshold 1 (what the candidate runs ask) on N random boxes of 3 labels:
   torchvision's pairwise loop against ``nasdet.export._NMSKeepingAll`` (every box by score), and that both return
   the same boxes in the same score order.

    python benchmarks/parity_check_cost.py configs/demo/pipeline_shapes.yaml --images 8 --boxes 20000
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torchvision.ops import batched_nms

from nasdet.config import load_config, without_start_weights
from nasdet.export import EndToEndDetector, _NMSKeepingAll, check_parity, export_onnx
from nasdet.models import build_detector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--boxes", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--input-size", type=int, default=None, help="model.input_size (default: the config's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config(args.config, [f"model.input_size={args.input_size}"] if args.input_size else None)
    torch.manual_seed(0)  # random weights: no ImageNet file read or downloaded
    model = build_detector(without_start_weights(cfg.model), num_classes=4).eval()
    s = cfg.model.input_size
    g = torch.Generator().manual_seed(0)
    images = [(torch.rand(3, s + 40, s + 20, generator=g) * 255).to(torch.uint8) for _ in range(args.images)]
    e = cfg.export
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "m.onnx")
        module = EndToEndDetector(model)
        with torch.no_grad():
            t = time.perf_counter()
            for img in images:
                module(img)
            forward = time.perf_counter() - t
        t = time.perf_counter()
        report = check_parity(model, path, images, False, e.box_atol, e.score_atol, e.raw_atol, e.raw_rtol, e.box_rtol)
        check = time.perf_counter() - t
    print(f"check_parity on {args.images} images: {check:.2f} s; torch's end-to-end forward alone {forward:.2f} s "
          f"(x{check / forward:.1f}); {report['matched']}/{report['detections_torch']} matched")

    xy = torch.rand(args.boxes, 2, generator=g) * 300
    boxes = torch.cat([xy, xy + 20 + torch.rand(args.boxes, 2, generator=g) * 50], 1)
    scores, labels = torch.rand(args.boxes, generator=g), torch.randint(0, 3, (args.boxes,), generator=g)
    t = time.perf_counter()
    looped = batched_nms(boxes, scores, labels, 1.0)
    loop_s = time.perf_counter() - t
    with _NMSKeepingAll():
        t = time.perf_counter()
        kept = batched_nms(boxes, scores, labels, 1.0)
        short_s = time.perf_counter() - t
    same = set(looped.tolist()) == set(kept.tolist()) and torch.equal(scores[looped], scores[kept])
    print(f"batched_nms at IoU 1 on {args.boxes} boxes: torchvision {loop_s:.3f} s, the check's shortcut {short_s:.4f} s "
          f"(same boxes, same score order: {same})")


if __name__ == "__main__":
    main()
