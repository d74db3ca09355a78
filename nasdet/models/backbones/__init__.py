"""Detection backbones by name. Searchable supernets of later stages register here too."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from ...errors import CheckpointError, ConfigError, unreadable_reason
from ...files import why_not_a_file
from ...space.supernet import Supernet

from .torchvision_backbones import BACKBONES, LEVELS, ResNetBackbone, SequentialStagesBackbone
from .ofa_mobilenet import OFAMobileNetV3, build_ofa_mbv3
from .mbv2_elastic import ElasticMobileNetV2, build_mbv2_elastic
from .mbv2_width import WidthMobileNetV2, build_mbv2_width
from .mbv3_width import WidthMobileNetV3, build_mbv3_width
from .shufflenet_spos import BUILDERS as DETNAS_BUILDERS, LAYOUTS, ShuffleNetSPOS
from .pretrained import load_backbone_state as load_torchvision_or_own_state, load_pretrained_backbone
from .shufflenet_checkpoints import detnas_network_subnet
from .shufflenet_spos import arch_to_list
from .checkpoint_formats import MAPPINGS, detect_format, load_backbone_state as load_reference_state, reference_format, unwrap

_STATIC = frozenset(BACKBONES)  # torchvision's networks; the searchable supernets register below
BACKBONES["ofa_mbv3"] = build_ofa_mbv3
BACKBONES["mbv2_elastic"] = build_mbv2_elastic
BACKBONES["mbv2_width"] = build_mbv2_width
BACKBONES["mbv3_width"] = build_mbv3_width
BACKBONES.update(DETNAS_BUILDERS)  # detnas_300M, detnas_1.3G, detnas_3.8G, detnas_tiny
SUPERNET_BACKBONES = frozenset(BACKBONES) - _STATIC

__all__ = ["BACKBONES", "LEVELS", "build_backbone", "ElasticMobileNetV2", "OFAMobileNetV3", "ResNetBackbone",
           "SequentialStagesBackbone", "ShuffleNetSPOS", "WidthMobileNetV2", "WidthMobileNetV3"]


def build_backbone(cfg) -> nn.Module:
    """``cfg``: nasdet.config.BackboneConfig. Returns a module giving OrderedDict(c2..c5), with torchvision's
    ImageNet weights (``cfg.pretrained``) or a checkpoint's (``cfg.checkpoint``) if set."""
    if cfg.name not in BACKBONES:
        raise ConfigError(f"model.backbone.name {cfg.name!r} is not a known backbone; choose from {sorted(BACKBONES)}")
    layout = getattr(cfg, "layout", None)
    if layout is not None and cfg.name not in DETNAS_BUILDERS:
        raise ConfigError(f"model.backbone.layout is for the detnas_* backbones, not {cfg.name!r}")
    options = {"layout": layout} if layout is not None else {}
    if cfg.reduced_tail:
        if not cfg.name.startswith("mobilenet_v3") and cfg.name != "mbv3_width":
            raise ConfigError(f"model.backbone.reduced_tail is MobileNetV3's option, not {cfg.name!r}'s")
        options["reduced_tail"] = True
    backbone = BACKBONES[cfg.name](width_mult=cfg.width_mult, norm=cfg.norm, **options)
    if cfg.pretrained and not cfg.checkpoint:  # (both only as a stage sets them: the checkpoint gives every weight,
        # e.g. classify's backbone.pt for the supernet of a config that names ImageNet weights)
        load_pretrained_backbone(backbone, cfg.name, cfg.pretrained, cfg.width_mult, bool(cfg.reduced_tail))
    if cfg.checkpoint:
        load_backbone_checkpoint(backbone, cfg.checkpoint, cfg.name, getattr(cfg, "checkpoint_format", "auto"))
    if getattr(cfg, "frozen_stages", 0):
        if not isinstance(backbone, ResNetBackbone):
            raise ConfigError(f"model.backbone.frozen_stages is for the ResNet backbones (MMDetection's frozen_stages, "
                              f"torchvision's trainable_backbone_layers), not {cfg.name!r}")
        backbone.freeze_stages(cfg.frozen_stages)
    return backbone


def load_backbone_checkpoint(backbone: nn.Module, path: str | Path, backbone_name: str | None = None,
                             checkpoint_format: str = "auto") -> str | None:
    """Load a backbone state_dict (plain, or under a 'model'/'state_dict' key) with weights_only: nasdet's
    own layout, torchvision's classification file as it is (``pretrained.py``), or a released supernet of a
    reference layout (OFA, DetNAS, SPOS, MMRazor: ``checkpoint_formats.py``)."""
    path = Path(path)
    state = _read_backbone_file(path)
    if isinstance(state, dict) and state.get("written_by") == "nasdet classify":
        refuse_another_classified_backbone(backbone, state, path, backbone_name)
    if isinstance(state, dict) and state.get("written_by") == "nasdet classify" and state.get("arch") is not None \
            and set(state["state_dict"]) != set(backbone.state_dict()):
        raise CheckpointError(f"model.backbone.checkpoint {path} is the backbone of one subnet (`nasdet classify` with "
                              "classify.arch): it starts `nasdet tune` (tune.init: scratch) of that arch, not a supernet")
    state = backbone_tensors(state, path)
    if isinstance(backbone, ShuffleNetSPOS) and (network := detnas_network_subnet(state)) is not None:
        raise CheckpointError(f"model.backbone.checkpoint {path} is a searched DetNAS network (one unit a block, "
                              f"ShuffleNet-Series DetNAS/network.py: arch {arch_to_list(network[1])}): it starts `nasdet "
                              "tune` of that arch with tune.init: scratch and tune.arch that list (DetNAS step 5), not a "
                              "supernet")
    if reference_format(backbone) is not None or checkpoint_format not in ("auto", "nasdet"):
        load_reference_state(backbone, state, f"model.backbone.checkpoint {path}", backbone_name or "the backbone",
                             checkpoint_format)
        return None
    return load_torchvision_or_own_state(backbone, state, f"model.backbone.checkpoint {path}", backbone_name)


def reference_head_state(backbone: nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """The ImageNet head of a released supernet file (OFA's feature mix and classifier; DetNAS / SPOS / MMRazor's
    last 1x1 conv, BN and FC) as ``imagenet_form`` names it, for a classifier that continues from it; {} for a file
    of another layout (nasdet's own, torchvision's: backbone weights only)."""
    path = Path(path)
    state = backbone_tensors(_read_backbone_file(path), path)
    found, prefix = detect_format(state, backbone)
    if found not in MAPPINGS:
        return {}
    mapped = MAPPINGS[found](unwrap(state, prefix, found), with_head=True)
    return {k: v for k, v in mapped.items() if not k.startswith("backbone.")}


def _read_backbone_file(path: Path):
    if why := why_not_a_file(path):
        raise CheckpointError(f"model.backbone.checkpoint {path} {why}")
    try:  # torchvision's classification references pickle their argparse.Namespace beside the model (as the
        # detection ones do: the detector import reads those)
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, EOFError, RuntimeError, ... depending on how the file is bad
        raise CheckpointError(f"model.backbone.checkpoint {path} cannot be loaded: {unreadable_reason(e, path)}") from e
    return state


def backbone_tensors(state, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict of a backbone file (plain, or under a 'model' / 'state_dict' key); ``CheckpointError`` if none."""
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"model.backbone.checkpoint {path} is not a state_dict (a dict of tensors)")
    return state


# the units a space can be marked with (SearchSpace.unit): a file of another is named by it
SPACE_UNITS = (None, *(f"model.backbone.layout {layout}" for layout in LAYOUTS if layout != "spos"),
               "model.layout mmdetection")


def refuse_another_classified_backbone(backbone: nn.Module, record: dict, path, backbone_name: str | None) -> None:
    """`nasdet classify`'s backbone.pt records its backbone and (a supernet's) space id: one of another
    backbone (DetNAS, OFA: only their own layout loads) or another space is named as such, not as keys that
    do not fit."""
    theirs, their_space = record.get("backbone"), record.get("space_id")
    space = backbone.search_space() if isinstance(backbone, Supernet) else None
    other_name = reference_format(backbone) is not None and theirs and backbone_name and theirs != backbone_name
    other_space = space is not None and their_space and their_space != space.space_id
    if not (other_name or other_space):
        return
    unit = ""
    if not other_name and space is not None:
        theirs_unit = [u for u in SPACE_UNITS if space.with_unit(u).space_id == their_space]
        if theirs_unit:
            unit = (f"; it was trained with {theirs_unit[0] or 'the default unit (no layout set)'}, this config "
                    f"builds {space.unit or 'the default unit (no layout set)'}: the same weights compute otherwise")
    raise CheckpointError(
        f"model.backbone.checkpoint {path} is `nasdet classify`'s backbone of {theirs} (space {their_space}), but the "
        f"config builds {backbone_name or type(backbone).__name__}"
        + (f" (space {space.space_id})" if space is not None else "") + unit
        + ": classify that backbone first, or set model.backbone to the file's")
