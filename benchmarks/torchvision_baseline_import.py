"""ENOT's start from a detector trained by the reference's own code: torchvision's ssdlite320, imported.

    python benchmarks/torchvision_baseline_import.py [--out /tmp/i23bench-runs/tv_import] [--epochs 8] ...

1. ``nasdet data make-synthetic`` writes the shapes set (``--train-images``, ``--val-images``, 256 px).
2. torchvision's ``ssdlite320_mobilenet_v3_large(num_classes=K + 1, weights=None, weights_backbone=None)``
   (nothing downloaded) is trained by a plain torch loop below, not by nasdet: torchvision's own model,
   transform and loss, at ``--size`` px (its transform's fixed size), AdamW with warmup and cosine decay.
   Its COCO AP is measured here with pycocotools on the val set's own annotation file, and its weights are
   saved as torchvision's detection references save them (``{"model": state_dict, "args": Namespace}``).
3. ``nasdet train`` with ``pipeline.baseline_checkpoint`` imports that file (``layout: torchvision``) and
   evaluates it on the same val images; its detections are also compared box for box with torchvision's.
4. ``nasdet pipeline`` (``--pipeline``): the imported baseline initialises the supernet
   (``pipeline.init_supernet_from_baseline``), then pretrain -> search -> tune -> export -> report.

Every step is skipped when its output exists (rerun to continue). Figures: benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision
import yaml
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ torchvision's side
class ShapesCoco(torch.utils.data.Dataset):
    """A COCO file read plainly: float [0, 1] images, xyxy pixel boxes, labels 1..K (categories by id)."""

    def __init__(self, split_dir: Path, hflip: float = 0.0):
        ann = json.loads((split_dir / "annotations.json").read_text())
        self.images_dir = split_dir / "images"
        self.category_ids = sorted(c["id"] for c in ann["categories"])
        label_of = {c: k + 1 for k, c in enumerate(self.category_ids)}
        self.images = sorted(ann["images"], key=lambda im: im["id"])
        boxes: dict[int, list] = {im["id"]: [] for im in self.images}
        for a in ann["annotations"]:
            x, y, w, h = a["bbox"]
            if w > 0 and h > 0 and not a.get("iscrowd", 0):
                boxes[a["image_id"]].append((x, y, x + w, y + h, label_of[a["category_id"]]))
        self.boxes = boxes
        self.hflip = hflip

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        im = self.images[i]
        image = pil_to_tensor(Image.open(self.images_dir / im["file_name"]).convert("RGB")).float().div_(255)
        rows = torch.tensor(self.boxes[im["id"]], dtype=torch.float32).reshape(-1, 5)
        boxes, labels = rows[:, :4], rows[:, 4].long()
        if self.hflip and torch.rand(()) < self.hflip:
            image = image.flip(-1)
            boxes = torch.stack([image.shape[-1] - boxes[:, 2], boxes[:, 1], image.shape[-1] - boxes[:, 0],
                                 boxes[:, 3]], 1)
        return image, {"boxes": boxes, "labels": labels, "image_id": im["id"]}


def collate(batch):
    return tuple(zip(*batch))


def torchvision_ssdlite(num_classes: int, size: int) -> torch.nn.Module:
    """torchvision's ssdlite320_mobilenet_v3_large, its transform resizing to ``size`` instead of 320."""
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                       num_classes=num_classes)
    model.transform.min_size, model.transform.max_size, model.transform.fixed_size = (size,), size, (size, size)
    return model


def train_torchvision(model, data: ShapesCoco, args, log) -> dict:
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, collate_fn=collate,
                                         num_workers=0, generator=torch.Generator().manual_seed(args.seed))
    total = args.epochs * len(loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    warmup = min(args.warmup_steps, total // 4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / warmup if s < warmup else
                                                 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    model.train()
    step, cpu0, t0 = 0, time.process_time(), time.time()
    for epoch in range(args.epochs):
        for images, targets in loader:
            losses = model(list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            schedule.step()
            step += 1
            if step % 20 == 0 or step == total:
                log(f"epoch {epoch + 1}/{args.epochs} step {step}/{total} "
                    + " ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
                    + f" cpu {time.process_time() - cpu0:.0f}s wall {time.time() - t0:.0f}s")
    return {"steps": step, "cpu_s": round(time.process_time() - cpu0, 1), "wall_s": round(time.time() - t0, 1)}


@torch.no_grad()
def torchvision_detections(model, data: ShapesCoco, batch_size: int = 16) -> list[dict]:
    """COCO results of torchvision's model (eval mode) on ``data``, unrounded."""
    model.eval()
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate)
    results = []
    for images, targets in loader:
        for out, t in zip(model(list(images)), targets):
            boxes = out["boxes"].clone()
            boxes[:, 2:] -= boxes[:, :2]
            for b, s, lab in zip(boxes.tolist(), out["scores"].tolist(), out["labels"].tolist()):
                results.append({"image_id": t["image_id"], "category_id": data.category_ids[lab - 1], "bbox": b,
                                "score": s})
    return results


def pycocotools_metrics(ann_file: Path, results: list[dict]) -> dict[str, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(names, (float(v) for v in ev.stats)))


# ---------------------------------------------------------------------------------- nasdet's side
def nasdet_config(args, data: Path, checkpoint: Path, pipeline: bool) -> dict:
    """The run's config: ssdlite320's layout at ``--size`` with torchvision's thresholds; with ``pipeline``
    the supernet of that layout (``mbv3_width``) starts from the imported baseline."""
    model = {"detector": "ssdlite", "layout": "torchvision",
             "backbone": {"name": "mbv3_width" if pipeline else "mobilenet_v3_large", "reduced_tail": True},
             "input_size": args.size, "score_thresh": 0.001, "nms_thresh": 0.55, "detections_per_img": 300,
             "topk_candidates": 300}
    recipe = {"epochs": args.tune_epochs, "batch_size": args.batch_size,
              "optimizer": {"name": "adamw", "lr": args.lr / 3, "weight_decay": args.weight_decay},
              "scheduler": {"name": "cosine", "warmup_steps": 20}, "grad_clip": args.grad_clip,
              "ckpt_every_steps": 100, "log_every_steps": 10, "threads": args.threads}
    cfg = {"name": "torchvision_ssdlite320_import", "work_dir": str(args.out / ("pipeline" if pipeline else "import")),
           "seed": args.seed,
           "data": {"format": "coco",
                    "train": {"annotations": str(data / "train/annotations.json"), "images": str(data / "train/images")},
                    "val": {"annotations": str(data / "val/annotations.json"), "images": str(data / "val/images")},
                    "search_fraction": 0.1, "num_workers": 0, "augment": {"hflip": 0.5}},
           "model": model, "train": recipe, "eval": {"batch_size": 16},
           "cost": {"device": "cpu", "warmup": 3, "runs": 10, "threads": 1},
           "pipeline": {"baseline_checkpoint": str(checkpoint)}}
    if pipeline:
        cfg["pipeline"].update({"baseline_backbone": "mobilenet_v3_large", "init_supernet_from_baseline": True})
        cfg["supernet"] = {"sampling": "uniform", "input_sizes": [args.size - 32, args.size], "multi_resolution": True,
                           "recalib_batches": 5, "report_archs": ["largest", "smallest"],
                           "train": {**recipe, "epochs": args.pretrain_epochs}}
        cfg["search"] = {"strategy": "evolution", "budget": {"metric": "macs", "max": None},
                         "num_candidates": args.candidates, "population": 8, "parents": 3, "recalib_batches": 4,
                         "batch_size": 16}
        cfg["tune"] = {"init": "supernet", "recalib_batches": 10}
        # the baseline is imported, not trained with the tune recipe: its own arch and a random one of the
        # found arch's cost, tuned as the found one was, tell architecture from training
        cfg["report"] = {"controls": True, "controls_seeds": 1}
    return cfg


def nasdet(*argv: str, log) -> None:
    cmd = [sys.executable, "-m", "nasdet", *argv]
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=ROOT)


@torch.no_grad()
def compare_detections(tv_model, nasdet_checkpoint: Path, cfg_file: Path, data: ShapesCoco, images: int) -> dict:
    """Largest differences between torchvision's detections and the imported nasdet detector's on the
    first ``images`` val images (same boxes, scores and labels expected)."""
    from nasdet.config import load_config
    from nasdet.train.trained import load_checkpoint_model

    ours, _ = load_checkpoint_model(load_config(cfg_file), nasdet_checkpoint, len(data.category_ids))
    ours.eval()
    tv_model.eval()
    worst = {"boxes": 0.0, "scores": 0.0, "count_mismatch": 0, "label_mismatch": 0}
    for i in range(min(images, len(data))):
        image = data[i][0]
        want, got = tv_model([image])[0], ours([image])[0]
        if len(want["boxes"]) != len(got["boxes"]):
            worst["count_mismatch"] += 1
            continue
        worst["label_mismatch"] += int(not torch.equal(want["labels"], got["labels"]))
        worst["boxes"] = max(worst["boxes"], (want["boxes"] - got["boxes"]).abs().max().item())
        worst["scores"] = max(worst["scores"], (want["scores"] - got["scores"]).abs().max().item())
    return worst


@torch.no_grad()
def supernet_default_metrics(cfg_file: Path, baseline_checkpoint: Path) -> dict:
    """Val metrics of the supernet's default subnet as pretraining starts: initialised from the imported
    baseline (``pipeline.init_supernet_from_baseline``), nothing trained or recalibrated."""
    from nasdet.config import load_config
    from nasdet.data.build import build_datasets
    from nasdet.models.supernet import build_supernet, set_detector_arch
    from nasdet.train.evaluate import evaluate_detector
    from nasdet.train.supernet import init_from_checkpoint

    cfg = load_config(cfg_file)
    val = build_datasets(cfg, need=("val",))["val"]
    model, space = build_supernet(cfg, val.num_classes)
    init_from_checkpoint(model, str(baseline_checkpoint))
    set_detector_arch(model, space.default(), space)
    return evaluate_detector(model, val, torch.device("cpu"), 16)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/i23bench-runs/tv_import"))
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--val-images", type=int, default=200)
    p.add_argument("--size", type=int, default=192, help="input size of torchvision's transform and of nasdet's run")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--grad-clip", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compare-images", type=int, default=50)
    p.add_argument("--pipeline", action="store_true", help="then pretrain -> search -> tune -> export (mbv3_width)")
    p.add_argument("--pretrain-epochs", type=int, default=2)
    p.add_argument("--tune-epochs", type=int, default=2)
    p.add_argument("--candidates", type=int, default=16)
    p.add_argument("--budget", type=float, default=0.7, help="search budget: this fraction of the baseline's MACs")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    log_file = args.out / "log.txt"

    def log(line: str) -> None:
        print(line, flush=True)
        with log_file.open("a") as f:
            f.write(line + "\n")

    data = args.out / "shapes"
    nasdet("data", "make-synthetic", str(data), "--train", str(args.train_images), "--val", str(args.val_images),
           "--size", "256", "--seed", str(args.seed), "--skip-existing", log=log)
    train, val = ShapesCoco(data / "train", hflip=0.5), ShapesCoco(data / "val")
    num_classes = len(train.category_ids) + 1  # torchvision counts the background

    checkpoint = args.out / "torchvision_ssdlite320_shapes.pth"
    tv_record = args.out / "torchvision_metrics.json"
    torch.manual_seed(args.seed)
    tv_model = torchvision_ssdlite(num_classes, args.size)
    if checkpoint.is_file():
        with torch.serialization.safe_globals([argparse.Namespace]):
            tv_model.load_state_dict(torch.load(checkpoint, weights_only=True, map_location="cpu")["model"])
        log(f"{checkpoint} exists: not trained again")
    else:
        log(f"training torchvision's ssdlite320_mobilenet_v3_large at {args.size} px on {len(train)} images, "
            f"{args.epochs} epochs, batch {args.batch_size}, seed {args.seed}")
        run = train_torchvision(tv_model, train, args, log)
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"model": tv_model.state_dict(), "args": argparse.Namespace(**{k: str(v) for k, v in vars(args).items()}),
                    "epoch": args.epochs - 1}, tmp)
        tmp.replace(checkpoint)
        tv_record.write_text(json.dumps({"train": run}, indent=2))
    record = json.loads(tv_record.read_text()) if tv_record.is_file() else {}
    if "metrics" not in record:
        record["metrics"] = pycocotools_metrics(data / "val/annotations.json", torchvision_detections(tv_model, val))
        tv_record.write_text(json.dumps(record, indent=2))
    log(f"torchvision (pycocotools, {len(val)} val images): " + json.dumps(record["metrics"]))

    cfg = nasdet_config(args, data, checkpoint, pipeline=False)
    cfg_file = args.out / "import.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    nasdet("train", str(cfg_file), log=log)
    imported = json.loads((Path(cfg["work_dir"]) / "baseline/metrics.json").read_text())["metrics"]
    log(f"nasdet import (its eval, {len(val)} val images): " + json.dumps(imported))
    diff = {k: float(f"{imported[k] - record['metrics'][k]:.1e}") for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    log("AP difference nasdet - torchvision: " + json.dumps(diff))
    worst = compare_detections(tv_model, Path(cfg["work_dir"]) / "baseline/ckpt/last.pt", cfg_file, val,
                               args.compare_images)
    log(f"detections on {args.compare_images} val images, largest difference: " + json.dumps(worst))

    if args.pipeline:
        cfg = nasdet_config(args, data, checkpoint, pipeline=True)
        from nasdet.config import load_config
        from nasdet.models import build_detector
        from nasdet.models.cost import detector_macs

        baseline_macs = detector_macs(build_detector(load_config(cfg_file).model, num_classes=num_classes - 1))["total"]
        budget = args.budget * baseline_macs
        cfg["search"]["budget"]["max"] = float(round(budget, -5))
        pipe_file = args.out / "pipeline.yaml"
        pipe_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
        log(f"search budget: {cfg['search']['budget']['max'] / 1e6:.1f} M MACs ({args.budget:.0%} of the baseline's "
            f"{baseline_macs / 1e6:.1f} M)")
        nasdet("pipeline", str(pipe_file), log=log)
        start = supernet_default_metrics(pipe_file, Path(cfg["work_dir"]) / "baseline/ckpt/last.pt")
        log("the supernet's default subnet as pretraining starts (initialised from the imported baseline): "
            + json.dumps(start))
        report = json.loads((Path(cfg["work_dir"]) / "report.json").read_text())
        log("report: " + json.dumps(report, default=str)[:4000])


if __name__ == "__main__":
    main()
