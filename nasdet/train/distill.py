"""Distillation for detection supernets: classification logits of positive anchors.

``LossesWithLogits`` runs a detector's training forward that also returns the classification logits
``[N, A, C]`` and the positive-anchor mask ``[N, A]`` (anchors, or FCOS's locations, matched to an
object), so a student can be distilled from a teacher on the same anchors (same input size). How a
family gives them is its adapter's ``losses_with_logits`` (nasdet.models.families).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..models.families import DETECTORS, family_named, family_of


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


class LossesWithLogits(nn.Module):
    """Wraps a detector: ``forward(images, targets) -> (losses, cls_logits, positives)``.

    Same losses as the detector's own training forward (same transform, matching and
    ``compute_loss``); DDP wraps this module so gradient hooks see the whole forward.
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        family = family_of(detector)
        if not family.distillable:
            able = [n for n in DETECTORS if family_named(n).distillable]
            raise ConfigError(
                f"distillation needs a detector with per-anchor logits ({', '.join(able)}), got "
                f"{type(detector).__name__}; set supernet.distill.teacher: none for this detector"
            )
        self.detector = detector

    def forward(self, images: list[torch.Tensor], targets: list[dict]):
        m = self.detector
        images_t, targets_t = m.transform(images, targets)
        return family_of(m).losses_with_logits(m, images_t, targets_t)
