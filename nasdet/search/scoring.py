"""Scoring one candidate on the supernet: activate it, recalibrate BN, COCO metrics on the search split.

The supernet's BN statistics are restored after every score (``preserved_bn_state``), so a score
depends only on the arch, the weights and the two data sets: the same arch scores the same twice.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..data.dataset import DetectionDataset
from ..models.supernet import set_detector_arch
from ..space import SearchSpace, canonical_arch
from ..train.evaluate import evaluate_detector
from ..train.bn import preserved_bn_state, recalibrate_bn


def arch_key(arch: Mapping[str, Any]) -> str:
    """Canonical JSON of an arch (sorted names, no spaces, skipped blocks' choices dropped): archs that
    build the same network give equal keys, so it is scored and costed once."""
    return json.dumps(canonical_arch(arch), sort_keys=True, separators=(",", ":"))


def score_arch(model: nn.Module, space: SearchSpace, arch: Mapping[str, Any], search_set: DetectionDataset,
               calib_set: DetectionDataset, device: torch.device | str, recalib_batches: int = 20,
               batch_size: int = 8, num_workers: int = 0, seed: int = 0) -> dict[str, float]:
    """COCO metrics (``AP``, ``AP50``, ...) of ``arch`` on ``search_set`` after re-estimating BN statistics
    on ``recalib_batches`` batches of ``calib_set`` (a fixed, seeded subset: deterministic)."""
    arch = space.validate(arch)
    device = torch.device(device)
    with preserved_bn_state(model):
        set_detector_arch(model, arch, space)
        recalibrate_bn(model, calib_set, device, recalib_batches, batch_size, num_workers, seed=seed)
        metrics = evaluate_detector(model, search_set, device, batch_size, num_workers)
    return dict(metrics or {})


class ArchCache:
    """In-memory ``arch -> value`` memo keyed by ``arch_key`` (the study storage is the persistent record)."""

    def __init__(self):
        self._values: dict[str, Any] = {}

    def __contains__(self, arch: Mapping[str, Any]) -> bool:
        return arch_key(arch) in self._values

    def __len__(self) -> int:
        return len(self._values)

    def get(self, arch: Mapping[str, Any], default: Any = None) -> Any:
        return self._values.get(arch_key(arch), default)

    def put(self, arch: Mapping[str, Any], value: Any) -> None:
        self._values[arch_key(arch)] = value

    def get_or_compute(self, arch: Mapping[str, Any], fn: Callable[[Mapping[str, Any]], Any]) -> Any:
        key = arch_key(arch)
        if key not in self._values:
            self._values[key] = fn(arch)
        return self._values[key]


def cached_scorer(fn: Callable[[Mapping[str, Any]], dict], cache: ArchCache | None = None) -> Callable[[Mapping[str, Any]], dict]:
    """``fn`` memoised per arch."""
    cache = cache if cache is not None else ArchCache()
    return lambda arch: cache.get_or_compute(arch, fn)
