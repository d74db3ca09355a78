"""Scoring a subnet with inherited weights: BatchNorm recalibration, then COCO mAP.

Shared weights come with BN statistics accumulated over many subnets, wrong for any single one;
as SPOS/DetNAS/OFA do, the statistics are recomputed for the candidate on a few training batches
(cumulative average, no gradient, weights untouched) before it is evaluated.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..data.dataset import DetectionDataset, collate_detection
from ..data.transforms import to_model_input
from ..space.elastic import ElasticBatchNorm2d

_BN = nn.modules.batchnorm._BatchNorm


def bn_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (_BN, ElasticBatchNorm2d))]


@contextlib.contextmanager
def preserved_bn_state(model: nn.Module):
    """Restore every BN buffer and momentum afterwards: scoring leaves the supernet as it was."""
    saved = [(m, {k: v.clone() for k, v in m.named_buffers()}, getattr(m, "momentum", None))
             for m in model.modules() if isinstance(m, _BN)]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, bufs, momentum in saved:
                for k, v in bufs.items():
                    getattr(m, k).copy_(v)
                m.momentum = momentum


@torch.no_grad()
def recalibrate_bn(model: nn.Module, dataset: DetectionDataset, device: torch.device, batches: int = 10,
                   batch_size: int = 16, num_workers: int = 0, seed: int = 0) -> int:
    """Reset BN running stats and re-estimate them (cumulative average) on ``batches`` batches of
    ``dataset`` with the model in eval mode except BN. Returns the number of images used."""
    bns = bn_modules(model)
    for m in bns:
        inner = m.bn if isinstance(m, ElasticBatchNorm2d) else m
        inner.reset_running_stats()
        inner.momentum = None  # cumulative moving average over the calibration batches
    was_training = model.training
    model.eval()
    for m in bns:
        m.train()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=g)[: batches * batch_size].tolist()
    loader = torch.utils.data.DataLoader(dataset.subset(order), batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers, collate_fn=collate_detection)
    seen = 0
    try:
        for images, _ in loader:
            model(to_model_input(images, device))
            seen += len(images)
    finally:
        model.train(was_training)
    return seen


@torch.no_grad()
def recalibrate_static(model: nn.Module, dataset, device, batches: int, batch_size: int, num_workers: int,
                       seed: int) -> None:
    """BN statistics of inherited weights re-estimated for this one subnet, momentum restored afterwards."""
    momenta = [(m, getattr(m, "momentum", None)) for m in bn_modules(model)]
    recalibrate_bn(model, dataset, device, batches, batch_size, num_workers, seed=seed)
    for m, momentum in momenta:
        m.momentum = momentum
