"""once-for-all's released MobileNetV3 supernets -> nasdet's ``OFAMobileNetV3`` state_dict.

OFA's model zoo files ``ofa_mbv3_d234_e346_k357_w1.0`` / ``_w1.2`` hold ``{"state_dict": ...}`` of
``OFAMobileNetV3`` (once-for-all ``ofa/imagenet_classification/elastic_nn/networks/ofa_mbv3.py``).
Its keys, and where nasdet keeps the same tensor (the modules compute the same thing: OFA's
``DynamicSeparableConv2d.get_active_filter`` centre crop + ``{k}to{k'}_matrix`` chain is
``ElasticConv2d.active_weight``; ``DynamicSE`` is ``ElasticSE``; channel prefixes everywhere)::

    first_conv.{conv,bn}                                   first_conv.{0,1}
    blocks.0.conv.{depth_conv,point_linear}.{conv,bn}      first_block.layers.{0,1} / {3,4}
    blocks.N.conv.inverted_bottleneck.conv.conv            stages.S.blocks.J.expand_conv.conv
    blocks.N.conv.inverted_bottleneck.bn.bn                stages.S.blocks.J.expand_bn.bn
    blocks.N.conv.depth_conv.conv.conv                     stages.S.blocks.J.depth_conv.conv
    blocks.N.conv.depth_conv.conv.7to5_matrix (5to3)       stages.S.blocks.J.depth_conv.kernel_transforms.7to5
    blocks.N.conv.depth_conv.bn.bn                         stages.S.blocks.J.depth_bn.bn
    blocks.N.conv.depth_conv.se.fc.{reduce,expand}         stages.S.blocks.J.se.{reduce,expand}
    blocks.N.conv.point_linear.{conv.conv,bn.bn}           stages.S.blocks.J.project_{conv.conv,bn.bn}
    final_expand_layer.{conv,bn}                           final_expand.{0,1}
    feature_mix_layer.conv, classifier.linear              (ImageNet form) feature_mix.0, classifier

with block N = 1 + 4 (S) + J (OFA numbers the elastic blocks 1..20 stage by stage, 4 per stage).
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from ...errors import CheckpointError

FIXED = {  # OFA module -> nasdet module, outside the elastic blocks
    "first_conv.conv": "first_conv.0",
    "first_conv.bn": "first_conv.1",
    "blocks.0.conv.depth_conv.conv": "first_block.layers.0",
    "blocks.0.conv.depth_conv.bn": "first_block.layers.1",
    "blocks.0.conv.point_linear.conv": "first_block.layers.3",
    "blocks.0.conv.point_linear.bn": "first_block.layers.4",
    "final_expand_layer.conv": "final_expand.0",
    "final_expand_layer.bn": "final_expand.1",
}
HEAD = {"feature_mix_layer.conv": "feature_mix.0", "classifier.linear": "classifier"}  # OFA's ImageNet head
ELASTIC = {  # inside an elastic block ``blocks.N.conv.``
    "inverted_bottleneck.conv.conv": "expand_conv.conv",
    "inverted_bottleneck.bn.bn": "expand_bn.bn",
    "depth_conv.conv.conv": "depth_conv.conv",
    "depth_conv.bn.bn": "depth_bn.bn",
    "depth_conv.se.fc.reduce": "se.reduce",
    "depth_conv.se.fc.expand": "se.expand",
    "point_linear.conv.conv": "project_conv.conv",
    "point_linear.bn.bn": "project_bn.bn",
}
_BLOCK = re.compile(r"blocks\.(\d+)\.conv\.(.+)\.([^.]+)$")
_MATRIX = re.compile(r"blocks\.(\d+)\.conv\.depth_conv\.conv\.(\d+to\d+)_matrix$")


def is_ofa_state_dict(state: Mapping[str, torch.Tensor]) -> bool:
    return "first_conv.conv.weight" in state and "blocks.0.conv.depth_conv.conv.weight" in state


def ofa_key_of(key: str, state: Mapping[str, torch.Tensor]) -> str | None:
    """The OFA key (as ``state``, an OFA state_dict, would hold it) of nasdet's backbone ``key``; None if none: a key
    missing from a released file is named as the file names it (a user looks for it there)."""
    elastic = {int(m.group(1)) for k in state if (m := _BLOCK.match(k)) and m.group(1) != "0"}
    per_stage = max(len(elastic) // 5, 1)
    module, _, param = key.rpartition(".")
    fixed = {v: k for k, v in FIXED.items()}
    if module in fixed:
        return f"{fixed[module]}.{param}"
    m = re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)", module)
    if m is None:
        return None
    block = int(m.group(1)) * per_stage + int(m.group(2)) + 1
    if m.group(3) == "depth_conv.kernel_transforms":
        return f"blocks.{block}.conv.depth_conv.conv.{param}_matrix"
    inner = {v: k for k, v in ELASTIC.items()}.get(m.group(3))
    return f"blocks.{block}.conv.{inner}.{param}" if inner else None


def load_ofa_supernet(state: Mapping[str, torch.Tensor], with_head: bool = False) -> dict[str, torch.Tensor]:
    """OFA ``OFAMobileNetV3`` state_dict -> nasdet ``OFAMobileNetV3`` state_dict (same tensors, new keys).

    ``with_head``: keys of ``ofa_mobilenet.ImageNetForm`` (the backbone under ``backbone.``, OFA's
    feature mix and classifier); otherwise OFA's head is dropped. A key that fits none of OFA's
    modules is a ``CheckpointError`` naming it.
    """
    elastic = sorted({int(m.group(1)) for k in state if (m := _BLOCK.match(k)) and m.group(1) != "0"})
    if not elastic or len(elastic) % 5 or elastic != list(range(1, len(elastic) + 1)):
        raise CheckpointError(f"not an OFA MobileNetV3 supernet: elastic blocks {elastic[:3]}..{elastic[-3:]} "
                              "are not 5 stages of equal depth numbered from 1")
    per_stage = len(elastic) // 5
    out: dict[str, torch.Tensor] = {}
    prefix = "backbone." if with_head else ""
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in FIXED:
            out[prefix + f"{FIXED[module]}.{param}"] = value
        elif module in HEAD:
            if with_head:
                out[f"{HEAD[module]}.{param}"] = value
        elif m := _MATRIX.match(key):
            s, j = divmod(int(m.group(1)) - 1, per_stage)
            out[prefix + f"stages.{s}.blocks.{j}.depth_conv.kernel_transforms.{m.group(2)}"] = value
        elif (m := _BLOCK.match(key)) and m.group(2) in ELASTIC:
            s, j = divmod(int(m.group(1)) - 1, per_stage)
            out[prefix + f"stages.{s}.blocks.{j}.{ELASTIC[m.group(2)]}.{m.group(3)}"] = value
        else:
            raise CheckpointError(f"OFA MobileNetV3 supernet key {key!r} fits none of OFA's modules")
    return out
