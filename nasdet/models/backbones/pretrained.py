"""Backbones from torchvision's ImageNet weights, and backbone state_dicts in either layout.

- ``torchvision_weights(backbone, name)``: the ``Weights`` enum member of a weights name
  (``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ``imagenet`` = torchvision's ``DEFAULT``);
  ``load_torchvision_imagenet(weights)``: its state_dict through torchvision's own API
  (``weights.get_state_dict``: ``torch.hub.load_state_dict_from_url`` with ``check_hash``), so the file is
  torchvision's, named as torchvision names it, in torch's hub cache (``torch.hub.get_dir()/checkpoints``,
  ``$TORCH_HOME/hub/checkpoints``). Without network and without the file: one line naming both.
- ``map_torchvision_state_dict(backbone, state)``: a torchvision classification state_dict (the file as
  it is) in a static nasdet backbone's keys: the classifier (``classifier.*``, ``fc.*``) dropped, ResNet's
  ``conv1`` / ``bn1`` as nasdet's ``stem.0`` / ``stem.1``; the MobileNets' ``features.N`` are nasdet's own.
  The MobileNetV2 supernets (``mbv2_elastic``, ``mbv2_width``) take the same file through their
  ``load_standard_state_dict`` (the default subnet becomes torchvision's network; docs/pretrained.md).
- ``load_backbone_state(backbone, state, source)``: nasdet's own layout or torchvision's; anything else is
  one line saying which layout was expected, which was found, and a few keys of each.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn
from torchvision import models as tvm

from ...errors import CheckpointError, ConfigError, PretrainedWeightsUnavailable, unreadable_reason
from .torchvision_backbones import ResNetBackbone, SequentialStagesBackbone

# nasdet backbone -> the torchvision classification network whose weights it takes
TORCHVISION_ARCH = {
    "mobilenet_v2": "mobilenet_v2", "mobilenet_v3_large": "mobilenet_v3_large",
    "mobilenet_v3_small": "mobilenet_v3_small", "resnet18": "resnet18", "resnet34": "resnet34",
    "resnet50": "resnet50", "mbv2_elastic": "mobilenet_v2", "mbv2_width": "mobilenet_v2",
    "mbv3_width": "mobilenet_v3_large",  # its default subnet is torchvision's network (reduced_tail: false)
}
IMAGENET = "imagenet"  # the alias of torchvision's DEFAULT weights
CLASSIFIER_PREFIXES = ("classifier.", "fc.")  # torchvision's MobileNet and ResNet heads
_RESNET_STEM = (("conv1.", "stem.0."), ("bn1.", "stem.1."))  # torchvision ResNet -> nasdet ResNetBackbone
_SHOWN = 3  # keys listed per kind in an error


# ------------------------------------------------------------------------------ weights by name
def torchvision_weights(backbone_name: str, name: str) -> tvm.WeightsEnum:
    """The torchvision weights ``name`` (a member of the network's ``Weights`` enum, ``Enum.MEMBER``, or
    ``imagenet`` = ``DEFAULT``) of nasdet backbone ``backbone_name``; ``ConfigError`` listing the valid ones."""
    arch = TORCHVISION_ARCH.get(backbone_name)
    if arch is None:
        raise ConfigError(f"model.backbone.pretrained: backbone {backbone_name!r} has no torchvision ImageNet "
                          f"weights (those exist for {sorted(TORCHVISION_ARCH)}); give its weights as "
                          "model.backbone.checkpoint")
    enum = tvm.get_model_weights(arch)
    members = {w.name: w for w in enum}  # iteration skips the DEFAULT alias
    short = name[len(enum.__name__) + 1:] if name.startswith(enum.__name__ + ".") else name
    if short.lower() == IMAGENET or short == "DEFAULT":
        return enum.DEFAULT
    if short.upper() in members:
        return members[short.upper()]
    raise ConfigError(f"model.backbone.pretrained {name!r} is not a torchvision weights name of {arch}; choose "
                      f"from {[IMAGENET] + sorted(members)} ({IMAGENET!r} = {enum.DEFAULT.name})")


def torchvision_weights_file(weights: tvm.WeightsEnum) -> Path:
    """Where torchvision keeps ``weights``: torch's hub cache, under the file name of its URL."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def load_torchvision_imagenet(weights: tvm.WeightsEnum, progress: bool = True) -> dict[str, torch.Tensor]:
    """``weights``' state_dict as torchvision loads it: from the hub cache, else downloaded (hash checked)."""
    path = torchvision_weights_file(weights)
    if path.is_dir():  # torch.hub would try to read it (and a message would blame the download)
        raise CheckpointError(f"{path} (torchvision's {weights}) is a folder where torchvision's file should be: "
                              f"remove it, then put {weights.url} there (or let it download)")
    try:
        return weights.get_state_dict(progress=progress, check_hash=True, map_location="cpu", weights_only=True)
    except Exception as e:
        if path.is_file():
            raise CheckpointError(f"{path} (torchvision's {weights}) cannot be loaded: "
                                  f"{unreadable_reason(e, path)}") from e
        if isinstance(e, (OSError, RuntimeError)):  # no network (URLError), a read-only cache, a bad hash
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PretrainedWeightsUnavailable(
                f"torchvision's {weights} needs {path.name} in {path.parent}: it is not there and the download "
                f"failed ({reason}); put {weights.url} in that folder (or point TORCH_HOME at a cache holding it)"
            ) from e
        raise


def load_pretrained_backbone(backbone: nn.Module, backbone_name: str, name: str, width_mult: float,
                             reduced_tail: bool = False) -> None:
    """``model.backbone.pretrained``: torchvision's ImageNet weights ``name`` into ``backbone``."""
    weights = torchvision_weights(backbone_name, name)
    if reduced_tail:  # torchvision publishes no weights of MobileNetV3's reduced tail (a detection-only variant)
        raise ConfigError(f"model.backbone.pretrained {name!r}: torchvision's ImageNet weights of "
                          f"{TORCHVISION_ARCH[backbone_name]} exist without reduced_tail only (set "
                          "model.backbone.reduced_tail: false, or drop pretrained)")
    if width_mult != 1.0:
        raise ConfigError(f"model.backbone.pretrained {name!r}: torchvision's ImageNet weights of "
                          f"{TORCHVISION_ARCH[backbone_name]} exist for width_mult 1.0 only, not {width_mult} "
                          "(set model.backbone.width_mult: 1.0, or drop pretrained)")
    state = load_torchvision_imagenet(weights)
    load_backbone_state(backbone, state, f"{torchvision_weights_file(weights)} (torchvision's {weights})",
                        backbone_name)


# ------------------------------------------------------------------------------------ key layouts
def state_dict_problems(given: Mapping[str, torch.Tensor], expected: Mapping[str, tuple]) -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``given`` against ``expected`` shapes, a few of each
    (``num_batches_tracked`` is optional both ways: frozen BN has none)."""
    optional = lambda k: k.endswith("num_batches_tracked")  # noqa: E731
    missing = [k for k in expected if k not in given and not optional(k)]
    unexpected = [k for k in given if k not in expected and not optional(k)]
    bad_shape = [f"{k}: got {tuple(v.shape)}, expected {tuple(expected[k])}" for k, v in given.items()
                 if k in expected and tuple(v.shape) != tuple(expected[k])]
    return [f"{len(keys)} {what} key(s): {keys[:_SHOWN]}" + (" ..." if len(keys) > _SHOWN else "")
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", bad_shape)) if keys]


def torchvision_key_map(backbone: nn.Module) -> dict[str, str] | None:
    """torchvision classification key -> ``backbone`` key, or None for a backbone without a torchvision twin."""
    if hasattr(backbone, "standard_key_map"):  # the MobileNetV2 supernets
        return backbone.standard_key_map()
    own = backbone.state_dict()
    if isinstance(backbone, ResNetBackbone):
        out = {}
        for key in own:
            std = key
            for tv, mine in _RESNET_STEM:
                if key.startswith(mine):
                    std = tv + key[len(mine):]
            out[std] = key
        return out
    if isinstance(backbone, SequentialStagesBackbone):
        return {k: k for k in own}
    return None


def map_torchvision_state_dict(backbone: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision classification state_dict in ``backbone``'s keys (classifier dropped); ``CheckpointError``
    naming missing, unexpected and mis-shaped keys. Static backbones; the supernets load it themselves."""
    key_map = torchvision_key_map(backbone)
    if key_map is None:
        raise CheckpointError(f"{type(backbone).__name__} has no torchvision layout")
    own = backbone.state_dict()
    given = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    problems = state_dict_problems(given, {k: tuple(own[v].shape) for k, v in key_map.items()})
    if problems:
        raise CheckpointError("; ".join(problems))
    return {key_map[k]: v for k, v in given.items() if k in key_map}


def describe_layout(keys) -> str:
    """What a state_dict looks like, from its keys (for errors)."""
    keys = list(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("backbone.body."):
        return "a nasdet detector's state (backbone.body.*), not a backbone's"
    if has("conv1.") and has("layer1."):
        return "torchvision's ResNet layout (conv1, bn1, layer1-4" + (", fc)" if has("fc.") else ")")
    if has("stem.") and has("layer1."):
        return "nasdet's ResNet backbone layout (stem, layer1-4)"
    if has("features."):
        n = len({k.split(".")[1] for k in keys if k.startswith("features.")})
        return f"torchvision's MobileNet layout (features.0-{n - 1}" + (", classifier)" if has("classifier.") else ")")
    if has("first_conv.") and has("stages."):
        return "a nasdet supernet's layout (first_conv, stages, ...)"
    return f"an unknown layout of {len(keys)} keys"


def _few(keys) -> list[str]:
    return [k for k in keys if not k.endswith("num_batches_tracked")][:_SHOWN]


def load_backbone_state(backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                        backbone_name: str | None = None) -> str:
    """Load ``state`` into ``backbone``: nasdet's own layout (returns ``"nasdet"``) or torchvision's
    classification layout of the same network (``"torchvision"``). Otherwise ``CheckpointError``: which
    layout was expected, which was found, a few keys of each and what does not fit; nothing is loaded then."""
    name = backbone_name or type(backbone).__name__
    own = backbone.state_dict()
    own_problems = state_dict_problems(state, {k: tuple(v.shape) for k, v in own.items()})
    if not own_problems:
        backbone.load_state_dict(state, strict=False)  # only optional num_batches_tracked may differ
        return "nasdet"
    expected = f"nasdet's {name} backbone (e.g. {_few(own)})"
    key_map = torchvision_key_map(backbone)
    problems = own_problems
    if key_map is not None:
        tv_arch = TORCHVISION_ARCH.get(name, "the same network")
        width = getattr(backbone, "width_mult", None)
        tv_arch += f"(width_mult={width})" if width is not None else ""
        same = "the same keys" if _few(key_map) == _few(own) else f"e.g. {_few(key_map)}"
        expected += f" or torchvision's {tv_arch} state_dict ({same}, classifier dropped)"
        if len(set(state) & set(key_map)) >= len(set(state) & set(own)):
            try:
                if hasattr(backbone, "load_standard_state_dict"):
                    backbone.load_standard_state_dict(state)
                else:
                    backbone.load_state_dict(map_torchvision_state_dict(backbone, state), strict=False)
                return "torchvision"
            except CheckpointError as e:
                problems = [str(e)]
    raise CheckpointError(f"{source} does not fit backbone {name}: expected {expected}; found "
                          f"{describe_layout(state)} (e.g. {_few(state)}): " + "; ".join(problems))
