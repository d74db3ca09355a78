"""Scoring a subnet with inherited weights: BatchNorm recalibration, then COCO mAP.

Shared weights come with BN statistics accumulated over many subnets, wrong for any single one;
as SPOS/DetNAS/OFA do, the statistics are recomputed for the candidate on a few training batches
(cumulative average, no gradient, weights untouched) before it is evaluated.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from ..data.dataset import DetectionDataset, collate_detection
from ..data.transforms import to_model_input
from ..errors import ConfigError, DataError
from ..space.elastic import ElasticBatchNorm2d
from ..threads import govern, loader_workers

_BN = nn.modules.batchnorm._BatchNorm
ONE_VALUE_PER_CHANNEL = "Expected more than 1 value per channel"  # torch's BatchNorm / GroupNorm refusal


@contextlib.contextmanager
def one_value_per_channel_as(error: Callable[[str], Exception]):
    """torch's BatchNorm refuses to train on one value per channel (a batch of one image reaching a 1x1
    feature map); raise ``error(shape)`` instead, a one-line error naming the setting that gave that batch.
    ``shape`` is the normalised tensor's, e.g. ``[1, 16, 1, 1]``."""
    try:
        yield
    except ValueError as e:
        if ONE_VALUE_PER_CHANNEL not in str(e):
            raise
        shape = str(e).rpartition("input size ")[2].removeprefix("torch.Size(").removesuffix(")")
        raise error(shape) from e


def bn_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (_BN, ElasticBatchNorm2d))]


def freeze_batchnorm_affine(model: nn.Module) -> int:
    """Stop every affine BatchNorm's gamma / beta from training (their running statistics still move); returns
    how many layers. (An ElasticBatchNorm2d's inner BatchNorm2d is one of them.)"""
    layers = [m for m in model.modules() if isinstance(m, _BN) and m.affine]
    for m in layers:
        m.weight.requires_grad_(False)
        m.bias.requires_grad_(False)
    return len(layers)


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


def calibration_forward(model: nn.Module) -> Callable[[list[torch.Tensor]], object]:
    """What recalibration runs on a batch: the detector family's ``calibration_forward`` (only the network where
    it holds every BatchNorm), the whole forward for anything else."""
    from ..models.families import family_of

    try:
        family = family_of(model)
    except TypeError:  # not a detector
        return model
    return lambda images: family.calibration_forward(model, images)


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
    if len(order) % batch_size == 1 and len(order) > 1:
        order = order[:-1]  # a last batch of one image: BatchNorm cannot take statistics of one value (1x1 maps)
    loader = torch.utils.data.DataLoader(dataset.subset(order), batch_size=batch_size, shuffle=False,
                                         num_workers=loader_workers(num_workers, device), collate_fn=collate_detection)
    seen = 0

    def one_image(shape: str) -> Exception:
        if len(order) == 1:
            return DataError(f"BatchNorm recalibration on {dataset.source}: it has one image, and BatchNorm needs more "
                             f"than one value per channel, which one image on a 1x1 feature map does not give ({shape})")
        return ConfigError(
            f"BatchNorm recalibration in batches of 1 image: BatchNorm needs more than one value per channel, which one "
            f"image on a 1x1 feature map does not give ({shape}); set the batch size (search.batch_size when scoring "
            "candidates, eval.batch_size for tune and the supernet's evaluation) to 2 or more")

    forward = calibration_forward(model)
    try:
        with one_value_per_channel_as(one_image):
            for images, _ in loader:
                govern()
                forward(to_model_input(images, device))
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
