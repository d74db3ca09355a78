"""Training a backbone as an image classifier (``nasdet classify``): the stage loop and the supernet trainer
of detection, with classification batches, top-1/top-5 and OFA's distillation loss.

``ClassifierTrainer`` trains one network (a subnet alone, DetNAS step 4); ``ClassifierSupernetTrainer``
is ``SupernetTrainer`` (same path sampling, FLOPs bins, progressive shrinking, in-place or checkpoint
teacher, per-subnet BN recalibration and evaluation) on a ``Classifier`` whose backbone is a supernet.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..data.imagefolder import ImageFolderSet, collate_classification
from ..models.classifier import (BACKBONE_PREFIX, Classifier, ClassifierWithLogits, build_classifier,
                                 is_supernet_classifier, set_classifier_arch)
from ..space import strip_prefix
from ..threads import loader_workers
from . import dist
from .checkpoint import CheckpointError, load_checkpoint, load_model_weights
from .loop import Trainer
from .resume import NOT_TRAINING
from .supernet import SupernetTrainer


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset: ImageFolderSet, device: torch.device, batch_size: int = 64,
                        num_workers: int = 0) -> dict[str, float]:
    """Top-1 / top-5 accuracy (top-k over min(5, classes)) and mean cross-entropy on ``dataset``; under DDP
    each rank takes every k-th image and the counts are summed."""
    rank, world = (torch.distributed.get_rank(), dist.world_size()) if dist.world_size() > 1 else (0, 1)
    shard = dataset.subset(range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(shard, batch_size=batch_size, shuffle=False,
                                         num_workers=loader_workers(num_workers, device),
                                         collate_fn=collate_classification)
    k = min(5, dataset.num_classes)
    counts = torch.zeros(4, dtype=torch.float64, device=device)  # top-1, top-k, loss sum, images
    was_training = model.training
    model.eval()
    try:
        for images, labels in loader:
            labels = labels.to(device)
            logits = model(images.to(device).float().div_(255.0)).float()
            top = logits.topk(k, dim=1).indices
            counts[0] += (top[:, 0] == labels).sum()
            counts[1] += (top == labels[:, None]).any(dim=1).sum()
            counts[2] += F.cross_entropy(logits, labels, reduction="sum")
            counts[3] += len(labels)
    finally:
        model.train(was_training)
    if world > 1:
        torch.distributed.all_reduce(counts)
    n = max(float(counts[3]), 1.0)
    return {"top1": float(counts[0]) / n, "top5": float(counts[1]) / n, "loss": float(counts[2]) / n,
            "images": int(counts[3])}


def describe_accuracy(metrics: Mapping) -> str:
    return f"top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}"


def soft_target_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """OFA's ``cross_entropy_loss_with_soft_target(output, softmax(teacher))`` (its kd_type "ce"), at
    ``temperature`` on both (OFA: 1): the KL to the teacher's distribution up to a constant."""
    soft = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
    return torch.sum(-soft * F.log_softmax(logits.float() / temperature, dim=1), dim=1).mean()


class ClassificationBatches:
    """What a trainer of a classifier changes in the stage loop: stacked batches, labels as targets, and what a
    resume compares: the seed, the backbone, the recipe (``train``: classify.train or the top-level one) and the
    classify section; not the detection sections (data, the detector's model keys, supernet), whose change
    refused a classify rerun while a changed classify.train resumed without a word."""

    collate = staticmethod(collate_classification)
    resume_sections = ("seed", "model.backbone", "train", "classify")
    resume_ignores = NOT_TRAINING | {"classify.train", "classify.num_workers", "classify.val_split",
                                     "classify.supernet.report_archs", "classify.supernet.recalib_batches"}

    def to_device(self, images: torch.Tensor, labels: torch.Tensor):
        return images.to(self.device, non_blocking=True).float().div_(255.0), labels.to(self.device, non_blocking=True)

    def check_train_set(self) -> None:  # ImageFolderSet.open refuses an empty class already
        pass

    def check_val_set(self) -> None:  # accuracy needs labels, not boxes; every image has one
        pass

    def scored_val(self):
        """``eval.max_images`` images spread evenly over the val set: its images come class by class (an
        image folder), so the first ones would be of the first classes only."""
        n, total = self.val_images, len(self.val_set)
        return self.val_set.subset([i * total // n for i in range(n)] if n < total else range(total))

    def describe_metrics(self, metrics: Mapping) -> str:
        return describe_accuracy(metrics)


class ClassifierTrainer(ClassificationBatches, Trainer):
    """One classifier (a subnet alone, or a plain backbone); its arch travels in every checkpoint."""

    def __init__(self, *args, arch: Mapping[str, Any] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.arch = dict(arch) if arch is not None else None

    def extra_state(self) -> dict:
        return {"arch": self.arch}

    def evaluate(self) -> dict | None:
        if self.val_set is None:
            return None
        e = self.settings.eval
        return evaluate_classifier(self.model, self.scored_val(), self.device, e.batch_size, self.settings.num_workers)


class ClassifierSupernetTrainer(ClassificationBatches, SupernetTrainer):
    """``SupernetTrainer`` on a classifier supernet: subnets activated with ``set_classifier_arch``, distilled
    with OFA's soft-target cross-entropy, scored by top-1 / top-5 on val."""

    supernet_key = "classify.supernet"  # where its supernet section is, in what it says

    def body(self) -> nn.Module:
        return self.model.backbone

    def activate(self, model: nn.Module, arch: dict) -> None:
        set_classifier_arch(model, arch)

    def resize_teacher(self, size: int) -> None:
        self.teacher.input_size = int(size)

    def with_logits(self, model: nn.Module) -> nn.Module:
        return ClassifierWithLogits(model)

    def distill_loss(self, logits, teacher_logits, positives) -> torch.Tensor:
        return soft_target_loss(logits, teacher_logits, self.scfg.distill.temperature)

    def score(self, val) -> dict:
        return evaluate_classifier(self.model, val, self.device, self.settings.eval.batch_size,
                                   self.settings.num_workers)


def load_classifier(path: str | Path, num_classes: int) -> tuple[Classifier, dict | None]:
    """A classifier from a ``nasdet classify`` checkpoint (its own config and arch say how to build it) and
    its backbone arch (None: a supernet, with its largest subnet active, or a plain backbone)."""
    from ..config import validate_config

    state = load_checkpoint(path)
    if "config" not in state or not (state.get("config") or {}).get("classify"):
        raise CheckpointError(f"{path} was not written by `nasdet classify` (no classify section in its config)")
    cfg = validate_config(state["config"], f"{path} (config)")
    arch = (state.get("extra") or {}).get("arch")
    c = cfg.classify
    backbone = cfg.model.backbone.model_copy(update={"checkpoint": None})
    model = build_classifier(backbone, num_classes, c.input_size, c.dropout, c.label_smoothing,
                             arch=strip_prefix(arch, BACKBONE_PREFIX) if arch is not None else None)
    load_model_weights(model, state, source=str(path))
    if arch is None and is_supernet_classifier(model):
        model.backbone.set_arch(model.backbone.search_space().largest())
    return model, arch


def load_classifier_teacher(path: str | Path, num_classes: int) -> Classifier:
    """OFA's teacher: a frozen classifier from a ``nasdet classify`` checkpoint (e.g. the largest subnet
    trained alone first), or a classifier supernet's largest subnet."""
    teacher, _ = load_classifier(path, num_classes)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
