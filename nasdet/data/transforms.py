"""transforms.v2 pipelines on ``(tv_tensors.Image, target)`` pairs.

Images stay uint8 at their native size through the loader (cheap to batch and to move to a GPU);
the detector itself normalises and resizes to ``model.input_size`` (see nasdet.models.detectors), so
the same pipeline serves every candidate resolution of a search and the deployed model's graph.
"""
from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

# ImageNet mean in 0-255: what SSD fills zoomed-out borders with.
_FILL = {tv_tensors.Image: (124, 116, 104), "others": 0}


class DropCrowd(torch.nn.Module):
    """Training ignores crowd / difficult boxes (COCO, VOC); remove them before geometric transforms."""

    def forward(self, image, target):
        keep = target["iscrowd"] == 0
        out = {k: v for k, v in target.items() if k != "iscrowd"}
        if not bool(keep.all()):
            out["boxes"] = tv_tensors.wrap(target["boxes"][keep], like=target["boxes"])
            out["labels"] = target["labels"][keep]
        return image, out


class IoUCropIfBoxes(torch.nn.Module):
    """SSD's RandomIoUCrop, skipped on images without boxes (it needs boxes to measure IoU)."""

    def __init__(self):
        super().__init__()
        self.crop = v2.RandomIoUCrop()

    def forward(self, image, target):
        if target["boxes"].shape[0] == 0:
            return image, target
        return self.crop(image, target)


def build_train_transforms(augment) -> v2.Compose:
    """``augment``: nasdet.config.AugmentConfig. Output image uint8, boxes sanitized (no degenerate)."""
    steps: list = [DropCrowd()]
    if augment.photometric > 0:
        steps.append(v2.RandomPhotometricDistort(p=augment.photometric))
    if augment.zoom_out > 0:
        steps.append(v2.RandomZoomOut(fill=_FILL, side_range=(1.0, augment.zoom_out_max), p=augment.zoom_out))
    if augment.iou_crop:
        steps.append(IoUCropIfBoxes())
    if augment.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=augment.hflip))
    # Crops and flips can leave slivers; the detectors assert on degenerate boxes.
    steps.append(v2.SanitizeBoundingBoxes(min_size=1.0))
    return v2.Compose(steps)


def build_eval_transforms() -> None:
    """Evaluation feeds images as they are: the model resizes, and boxes come back in image coordinates."""
    return None


def to_model_input(images, device: torch.device) -> list[torch.Tensor]:
    """uint8 CHW images -> float [0, 1] on ``device`` (converted after the copy: 4x less to move)."""
    return [img.to(device, non_blocking=True).float().div_(255.0) for img in images]


def targets_to(targets, device: torch.device) -> list[dict]:
    return [
        {"boxes": t["boxes"].as_subclass(torch.Tensor).to(device, non_blocking=True).float(),
         "labels": t["labels"].to(device, non_blocking=True)}
        for t in targets
    ]
