"""Detection backbones by name. Searchable supernets of later stages register here too."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ...errors import CheckpointError, ConfigError, unreadable_reason

from .torchvision_backbones import BACKBONES, LEVELS, ResNetBackbone, SequentialStagesBackbone
from .ofa_mobilenet import OFAMobileNetV3, build_ofa_mbv3
from .mbv2_elastic import ElasticMobileNetV2, build_mbv2_elastic
from .mbv2_width import WidthMobileNetV2, build_mbv2_width
from .shufflenet_spos import BUILDERS as DETNAS_BUILDERS, ShuffleNetSPOS

BACKBONES["ofa_mbv3"] = build_ofa_mbv3
BACKBONES["mbv2_elastic"] = build_mbv2_elastic
BACKBONES["mbv2_width"] = build_mbv2_width
BACKBONES.update(DETNAS_BUILDERS)  # detnas_300M, detnas_1.3G, detnas_3.8G, detnas_tiny

__all__ = ["BACKBONES", "LEVELS", "build_backbone", "ElasticMobileNetV2", "OFAMobileNetV3", "ResNetBackbone",
           "SequentialStagesBackbone", "ShuffleNetSPOS", "WidthMobileNetV2"]


def build_backbone(cfg) -> nn.Module:
    """``cfg``: nasdet.config.BackboneConfig. Returns a module giving OrderedDict(c2..c5)."""
    if cfg.name not in BACKBONES:
        raise ConfigError(f"model.backbone.name {cfg.name!r} is not a known backbone; choose from {sorted(BACKBONES)}")
    options = {}
    if cfg.reduced_tail:
        if not cfg.name.startswith("mobilenet_v3"):
            raise ConfigError(f"model.backbone.reduced_tail is MobileNetV3's option, not {cfg.name!r}'s")
        options["reduced_tail"] = True
    backbone = BACKBONES[cfg.name](width_mult=cfg.width_mult, norm=cfg.norm, **options)
    if cfg.checkpoint:
        load_backbone_checkpoint(backbone, cfg.checkpoint)
    return backbone


def load_backbone_checkpoint(backbone: nn.Module, path: str | Path) -> None:
    """Load a backbone state_dict (plain, or under a 'model'/'state_dict' key) with weights_only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model.backbone.checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, EOFError, RuntimeError, ... depending on how the file is bad
        raise CheckpointError(f"model.backbone.checkpoint {path} cannot be loaded: {unreadable_reason(e, path)}") from e
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"model.backbone.checkpoint {path} does not match the backbone: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
