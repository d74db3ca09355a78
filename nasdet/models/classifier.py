"""A backbone as an image classifier (``nasdet classify``: DetNAS steps 1 and 4), and the backbone file it leaves.

``Classifier`` = the backbone (a supernet, a static subnet or a plain backbone; c2..c5 as in a detector)
+ the classification head of its reference network, taking c5:

- ``detnas_*`` (SPOS, Megvii's SinglePathOneShot ``network.py``): 1x1 conv to the size's last width
  (1024; 1728 for 3.8G as DetNAS's code; 512 for tiny) + BN + ReLU, global average pool, dropout
  (SPOS 0.1), linear without bias;
- ``ofa_mbv3`` (OFA's ``ofa_mbv3.py``; its final_expand 1x1 to 960 + BN + h-swish is the backbone's c5):
  global average pool, feature_mix 1x1 conv to 1280 x width_mult (no BN, no bias), h-swish, dropout
  (OFA 0.1), linear with bias;
- any other backbone (mbv2_*, torchvision's): global average pool, dropout, linear (torchvision's
  MobileNetV2 / ResNet head on the c5 they end with).

The head is only for classification: ``backbone.pt`` (``save_backbone_file``) holds the backbone's
state_dict alone, which ``model.backbone.checkpoint`` loads into a detector's backbone as it is.

Input: float images in [0, 1], a list or a batch, resized to ``input_size`` when they differ and
normalised with ImageNet's mean and std, as nasdet's detectors normalise (SPOS feeds BGR 0-255
unnormalised; the same backbone weights then serve detection without a shift of input statistics).
Training forward with labels: ``{"loss": cross-entropy with label smoothing}``; otherwise logits [N, K].

A classifier whose backbone is a supernet is itself one: choices ``backbone.*`` (the backbone's) and
``input_size``, named as a detector's, so a search's arch file names a classifier's subnet too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError, unreadable_reason
from ..space import SearchSpace, prefix_arch, strip_prefix
from ..space.elastic import he_fout_init, make_divisible
from ..space.supernet import Supernet
from .backbones.ofa_mobilenet import BASE_WIDTHS as OFA_WIDTHS
from .backbones.shufflenet_spos import BACKBONE_NAMES as DETNAS_SIZES, SIZES as DETNAS_LAYOUTS
from .families.base import IMAGE_MEAN, IMAGE_STD

BACKBONE_PREFIX = "backbone"
INPUT_SIZE = "input_size"


# ---------------------------------------------------------------------------------------------- heads
class SPOSHead(nn.Module):
    """SPOS's ImageNet tail: c5 -> 1x1 conv + BN + ReLU -> pool -> dropout -> linear (no bias)."""

    def __init__(self, in_channels: int, last: int, num_classes: int, dropout: float):
        super().__init__()
        self.conv_last = nn.Sequential(nn.Conv2d(in_channels, last, 1, bias=False), nn.BatchNorm2d(last),
                                       nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last, num_classes, bias=False)

    def forward(self, c5: torch.Tensor) -> torch.Tensor:
        y = F.adaptive_avg_pool2d(self.conv_last(c5), 1).flatten(1)
        return self.classifier(self.dropout(y))


class OFAHead(nn.Module):
    """OFA MobileNetV3's tail after final_expand: pool -> feature_mix (1x1, no BN, no bias) + h-swish ->
    dropout -> linear."""

    def __init__(self, in_channels: int, feature_mix: int, num_classes: int, dropout: float):
        super().__init__()
        self.feature_mix = nn.Sequential(nn.Conv2d(in_channels, feature_mix, 1, bias=False), nn.Hardswish(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(feature_mix, num_classes)

    def forward(self, c5: torch.Tensor) -> torch.Tensor:
        y = self.feature_mix(F.adaptive_avg_pool2d(c5, 1)).flatten(1)
        return self.classifier(self.dropout(y))


class LinearHead(nn.Module):
    """pool -> dropout -> linear (torchvision's MobileNetV2 / ResNet classifiers)."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, c5: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(F.adaptive_avg_pool2d(c5, 1).flatten(1)))


def reference_head(backbone_name: str, width_mult: float, in_channels: int, num_classes: int,
                   dropout: float) -> nn.Module:
    """The classification head of the backbone's reference network (see the module docstring)."""
    if backbone_name in DETNAS_SIZES:
        return SPOSHead(in_channels, DETNAS_LAYOUTS[DETNAS_SIZES[backbone_name]].last, num_classes, dropout)
    if backbone_name == "ofa_mbv3":
        return OFAHead(in_channels, make_divisible(OFA_WIDTHS[-1] * width_mult, 8), num_classes, dropout)
    return LinearHead(in_channels, num_classes, dropout)


# ---------------------------------------------------------------------------------------- classifier
class Classifier(nn.Module):
    """``backbone`` (c2..c5) + ``head`` (c5 -> logits); see the module docstring for the input contract."""

    def __init__(self, backbone: nn.Module, head: nn.Module, input_size: int, label_smoothing: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.input_size = int(input_size)
        self.label_smoothing = label_smoothing
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def batch(self, images) -> torch.Tensor:
        """Float images in [0, 1] (a list or an N x 3 x H x W batch) -> the normalised batch at input_size."""
        s = (self.input_size, self.input_size)
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            x = images if tuple(images.shape[-2:]) == s else F.interpolate(images, s, mode="bilinear",
                                                                            align_corners=False, antialias=True)
        else:
            x = torch.stack([img if tuple(img.shape[-2:]) == s else
                             F.interpolate(img[None], s, mode="bilinear", align_corners=False, antialias=True)[0]
                             for img in images])
        return (x - self.mean) / self.std

    def losses_and_logits(self, images, labels: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, None]:
        logits = self.head(self.backbone(self.batch(images))["c5"])
        return {"loss": F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)}, logits, None

    def forward(self, images, labels: torch.Tensor | None = None):
        if self.training and labels is not None:
            return self.losses_and_logits(images, labels)[0]
        return self.head(self.backbone(self.batch(images))["c5"])


class ClassifierWithLogits(nn.Module):
    """Wraps a classifier: ``forward(images, labels) -> (losses, logits, None)`` (what distillation reads)."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images, labels):
        return self.classifier.losses_and_logits(images, labels)


def build_classifier(backbone_cfg, num_classes: int, input_size: int, dropout: float = 0.1,
                     label_smoothing: float = 0.0, arch: Mapping[str, Any] | None = None) -> Classifier:
    """A classifier on ``backbone_cfg`` (nasdet.config.BackboneConfig; its ``checkpoint`` loads first).
    With ``arch`` (the backbone's choices), the backbone is that subnet alone (``export(arch)``), freshly
    initialised (DetNAS step 4 retrains the found subnet from scratch) unless the backbone came from a
    checkpoint, whose weights the subnet then keeps."""
    from .backbones import build_backbone, reference_head_state

    body = whole = build_backbone(backbone_cfg)
    if arch is not None:
        if not isinstance(body, Supernet):
            raise ConfigError(f"classify.arch names a subnet, but model.backbone.name {backbone_cfg.name!r} is not a "
                              "searchable backbone (detnas_*, ofa_mbv3, mbv2_elastic, mbv2_width)")
        body = body.export(arch)
        if not backbone_cfg.checkpoint:
            he_fout_init(body)
    head = reference_head(backbone_cfg.name, backbone_cfg.width_mult, body.out_channels["c5"], num_classes, dropout)
    he_fout_init(head)
    model = Classifier(body, head, input_size, label_smoothing)
    model.head_start = ""
    if backbone_cfg.checkpoint:
        model.head_start = load_released_head(head, reference_head_state(whole, backbone_cfg.checkpoint), num_classes)
    return model


# the names of a released supernet's ImageNet head (``imagenet_form``'s) in the classifier's head
_HEAD_NAMES = (("last_conv.", "conv_last."),)


def load_released_head(head: nn.Module, released: Mapping[str, torch.Tensor], num_classes: int) -> str:
    """Load the layers of a released supernet's ImageNet head (``released``, as ``reference_head_state`` gives it)
    that fit ``head``: OFA's feature mix, DetNAS / SPOS's last 1x1 conv and BN, the FC when the classes are as
    many; they started afresh while the file held them. Returns what was taken and what starts afresh, for the
    log ('' when the file holds no head)."""
    if not released:
        return ""
    own = head.state_dict()
    renamed = {}
    for key, value in released.items():
        for old, new in _HEAD_NAMES:
            key = new + key[len(old):] if key.startswith(old) else key
        renamed[key] = value
    fits = {k: v for k, v in renamed.items() if k in own and own[k].shape == v.shape}
    head.load_state_dict(fits, strict=False)
    layers = sorted({k.rsplit(".", 1)[0] for k in fits})
    fresh = sorted({k.rsplit(".", 1)[0] for k in own if k not in fits and not k.endswith("num_batches_tracked")})
    said = f"head layers {', '.join(layers)} from the file" if layers else "no head layer from the file"
    if fresh:
        fc = renamed.get("classifier.weight")
        why = f" ({num_classes} classes, the file's {fc.shape[0]})" if fc is not None and fc.shape[0] != num_classes else ""
        said += f"; {', '.join(fresh)} afresh{why}"
    bias = renamed.get("classifier.bias")
    if bias is not None and bool(bias.any()) and "classifier.bias" not in own and "classifier.weight" in fits:
        said += " (the file's classifier bias left out: this head's classifier has none, as SPOS's)"
    return said


# ------------------------------------------------------------------------------------- as a supernet
def is_supernet_classifier(model: nn.Module) -> bool:
    return isinstance(model.backbone, Supernet)


def classifier_space(model: Classifier, input_sizes: list[int] | None = None) -> SearchSpace:
    """``backbone.*`` choices + ``input_size`` (default: the model's)."""
    inner = model.backbone.search_space()
    sizes = tuple(sorted({int(s) for s in (input_sizes or [model.input_size])}))
    default = prefix_arch(inner.default(), BACKBONE_PREFIX)
    default[INPUT_SIZE] = model.input_size if model.input_size in sizes else sizes[-1]
    merged = SearchSpace.merge(inner.prefixed(BACKBONE_PREFIX), SearchSpace({INPUT_SIZE: sizes}))
    return SearchSpace(merged.choices, default=default, unit=merged.unit)


def set_classifier_arch(model: Classifier, arch: Mapping[str, Any]) -> None:
    """Activate ``arch`` (``backbone.*`` choices and ``input_size``) in place."""
    model.backbone.set_arch(strip_prefix(arch, BACKBONE_PREFIX))
    model.input_size = int(arch[INPUT_SIZE])


# ----------------------------------------------------------------------------------- the backbone file
def save_backbone_file(path: str | Path, model: Classifier, backbone_name: str, arch: Mapping[str, Any] | None,
                       space_id: str | None, classes: list[str]) -> None:
    """``backbone.pt``: the backbone's state_dict under ``state_dict`` (what ``model.backbone.checkpoint``
    loads), with what it is: the backbone name, the subnet's arch (None: the whole supernet or a plain
    backbone), the supernet's space id and the classes it learned."""
    from ..files import atomic_path

    state = {"state_dict": {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()},
             "backbone": backbone_name, "arch": dict(arch) if arch is not None else None, "space_id": space_id,
             "classes": list(classes), "written_by": "nasdet classify"}
    with atomic_path(path, fsync=True) as tmp:
        torch.save(state, tmp)


def read_subnet_file(path: str | Path) -> tuple[dict, dict, str] | None:
    """(state_dict, backbone arch, what) of a ``backbone.pt`` that ``nasdet classify`` wrote for one subnet (what:
    ``classify``), or of a searched DetNAS network (ShuffleNet-Series ``DetNAS/network.py``; ``detnas_network``),
    else None (a supernet's or any other backbone checkpoint)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(f"model.backbone.checkpoint {path} cannot be loaded: {unreadable_reason(e, path)}") from None
    if isinstance(state, dict) and state.get("written_by") == "nasdet classify" and state.get("arch") is not None:
        return state["state_dict"], dict(state["arch"]), "classify"
    from .backbones import backbone_tensors
    from .backbones.shufflenet_checkpoints import detnas_network_subnet

    try:
        tensors = backbone_tensors(state, path)
    except CheckpointError:  # not a state_dict: not a subnet's (the backbone's own loading names what it is)
        return None
    try:
        found = detnas_network_subnet(tensors)
    except CheckpointError as e:
        raise CheckpointError(f"model.backbone.checkpoint {path}: {e}") from None
    return None if found is None else (*found, "detnas_network")
