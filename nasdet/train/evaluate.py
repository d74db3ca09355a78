"""Run a detector over a data set and score it with COCO metrics (DDP-aware: ranks split the images)."""
from __future__ import annotations

import torch
from torch import nn

from ..data.dataset import DetectionDataset, collate_detection, to_coco_gt
from ..data.transforms import to_model_input
from ..metrics import coco_evaluate
from ..threads import govern, loader_workers
from . import dist


@torch.no_grad()
def predict(model: nn.Module, dataset: DetectionDataset, device: torch.device, batch_size: int = 8,
            num_workers: int = 0, progress=None) -> list[dict]:
    """COCO-format detections of ``model`` on this rank's share of ``dataset`` (every k-th image)."""
    rank, world = (torch.distributed.get_rank(), dist.world_size()) if dist.world_size() > 1 else (0, 1)
    shard = dataset.subset(range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(shard, batch_size=batch_size, shuffle=False,
                                         num_workers=loader_workers(num_workers, device),
                                         collate_fn=collate_detection)
    was_training = model.training
    model.eval()
    results: list[dict] = []
    # looked up once: the loop below runs for every detection (100-300 an image)
    num_classes, category_ids = dataset.num_classes, [int(c) for c in dataset.category_ids]
    try:
        for images, targets in loader:
            govern()
            outputs = model(to_model_input(images, device))
            for out, tgt in zip(outputs, targets):
                boxes = out["boxes"].float().cpu()
                boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
                image_id = int(tgt["image_id"])
                for box, score, label in zip(boxes.tolist(), out["scores"].cpu().tolist(), out["labels"].cpu().tolist()):
                    if label < 1 or label > num_classes:
                        continue  # background / padding class of sigmoid heads
                    # unrounded: rounded scores tie across images and change COCOeval's ranking (and the AP)
                    results.append({"image_id": image_id, "category_id": category_ids[label - 1], "bbox": box,
                                    "score": float(score)})
            if progress is not None:
                progress(len(images))
    finally:
        model.train(was_training)
    return results


def evaluate_detector(model: nn.Module, dataset: DetectionDataset, device: torch.device, batch_size: int = 8,
                      num_workers: int = 0, progress=None, backend: str = "faster",
                      per_class: bool = False) -> dict | None:
    """COCO metrics on ``dataset``; under DDP every rank predicts a shard and rank 0 scores (others get None).
    ``per_class``: with ``"per_class"`` AP (``coco_evaluate``), for the records a user reads; the search's
    scoring of candidates asks for the summary alone."""
    dets = predict(model, dataset, device, batch_size, num_workers, progress)
    gathered = dist.all_gather_objects(dets)
    if not dist.is_main():
        return None
    return coco_evaluate(to_coco_gt(dataset), [d for part in gathered for d in part], backend=backend,
                         per_class=per_class)
