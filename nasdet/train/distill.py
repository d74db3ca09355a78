"""Distillation for detection supernets: classification logits of positive anchors.

``LossesWithLogits`` runs a torchvision SSD / RetinaNet / FCOS training forward that also returns the
classification logits ``[N, A, C]`` and the positive-anchor mask ``[N, A]`` (anchors, or FCOS's
locations, matched to an object), so a student can be distilled from a teacher on the same anchors
(same input size).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.ops import boxes as box_ops

from ..errors import ConfigError

DISTILLABLE = (SSD, RetinaNet, FCOS)


def _sigmoid_ce(q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of soft targets ``q`` against logits ``z`` (stable form)."""
    return z.clamp(min=0) - z * q + torch.log1p(torch.exp(-z.abs()))


def adaptive_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, positives: torch.Tensor,
                               temperature: float = 2.0, beta: float = 1.5, gamma: float = 1.0,
                               adaptive: bool = True) -> torch.Tensor:
    """Tang et al. 2019 (arXiv:1901.00366) as aw_nas's AdaptiveDistillationLoss.

    Per positive anchor and class column (background column included), on temperature-scaled
    sigmoid logits: ``KL = CE(q, z_s) - H(q)``, weight ``(1 - exp(-(KL + beta * H(q))))^gamma``; summed
    over classes, divided by the image's positive count, summed over images (not averaged over the
    batch, as aw_nas). ``adaptive=False`` gives the plain binary KL with the same normalisation.
    """
    zs = student.float() / temperature
    zt = teacher.detach().float() / temperature
    q = torch.sigmoid(zt)
    entropy = _sigmoid_ce(q, zt)
    kl = _sigmoid_ce(q, zs) - entropy
    if adaptive:
        weight = 1.0 - torch.exp(-(kl + beta * entropy))
        if gamma != 1.0:
            weight = weight.pow(gamma)
        kl = weight * kl
    per_anchor = kl.sum(-1)  # [N, A]
    pos = positives.to(per_anchor.dtype)
    n_pos = pos.sum(1).clamp(min=1.0)
    return ((per_anchor * pos).sum(1) / n_pos).sum()


def _match(model: nn.Module, targets: list[dict], anchors: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for anchors_i, t in zip(anchors, targets):
        if t["boxes"].numel() == 0:
            out.append(torch.full((anchors_i.shape[0],), -1, dtype=torch.int64, device=anchors_i.device))
        else:
            out.append(model.proposal_matcher(box_ops.box_iou(t["boxes"], anchors_i)))
    return out


def _fcos_losses(m: FCOS, targets, head_outputs, anchors, features) -> tuple[dict, list[torch.Tensor]]:
    """FCOS's own losses, and the locations its center-sampling assignment matched (FCOS computes them
    inside ``compute_loss`` and passes them to ``head.compute_loss``, where they are read)."""
    head = m.head
    seen: list = []

    def compute_loss(targets, head_outputs, anchors, matched_idxs):
        seen.append(matched_idxs)
        return type(head).compute_loss(head, targets, head_outputs, anchors, matched_idxs)

    head.compute_loss = compute_loss  # an instance attribute for this call only
    try:
        losses = m.compute_loss(targets, head_outputs, anchors, [f.size(2) * f.size(3) for f in features])
    finally:
        del head.compute_loss
    return losses, seen[0]


class LossesWithLogits(nn.Module):
    """Wraps an SSD or RetinaNet: ``forward(images, targets) -> (losses, cls_logits, positives)``.

    Same losses as the detector's own training forward (same transform, matching and
    ``compute_loss``); DDP wraps this module so gradient hooks see the whole forward.
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        if not isinstance(detector, DISTILLABLE):
            raise ConfigError(
                f"distillation needs an SSD/SSDLite, RetinaNet or FCOS detector, got {type(detector).__name__}; "
                "set supernet.distill.teacher: none for this detector"
            )
        self.detector = detector

    def forward(self, images: list[torch.Tensor], targets: list[dict]):
        m = self.detector
        images_t, targets_t = m.transform(images, targets)
        features = list(m.backbone(images_t.tensors).values())
        head_outputs = m.head(features)
        anchors = m.anchor_generator(images_t, features)
        if isinstance(m, FCOS):
            losses, matched = _fcos_losses(m, targets_t, head_outputs, anchors, features)
            return losses, head_outputs["cls_logits"], torch.stack([mi >= 0 for mi in matched])
        matched = _match(m, targets_t, anchors)
        if isinstance(m, SSD):
            losses = m.compute_loss(targets_t, head_outputs, anchors, matched)
        else:
            losses = m.compute_loss(targets_t, head_outputs, anchors)
        positives = torch.stack([mi >= 0 for mi in matched])
        return losses, head_outputs["cls_logits"], positives

