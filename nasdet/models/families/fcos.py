"""FCOS (torchvision's) on FPN P3-P7, with FAD's searched towers as an option."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import model_validator
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from ..config import FPNModelConfig
from ..heads.fad import FADFCOSHead, fad_towers
from ..necks import FPNNeck
from .base import OneStageFamily, head_and_anchors, resize_transform


class FCOSModelConfig(FPNModelConfig):
    detector: Literal["fcos"]

    @model_validator(mode="after")
    def _fcos_group_norm(self):
        # torchvision's FCOS head normalises its towers with GroupNorm(32, fpn_channels)
        if self.fpn_channels % 32:
            raise ValueError(f"model.fpn_channels must be a multiple of 32 for detector fcos (its head uses "
                             f"GroupNorm(32)), got {self.fpn_channels}")
        # P7 (stride 128) is 1x1 up to 128 px: GroupNorm(32) over 32 channels normalises single values there,
        # which torch refuses for one image (ONNX export, latency, a last eval batch of one)
        if self.fpn_channels == 32 and self.input_size <= 128 and self.head.genotype is None:
            raise ValueError(f"model.fpn_channels 32 with input_size {self.input_size}: FCOS's head GroupNorm(32) on the "
                             "1x1 P7 map normalises single values, which torch refuses for one image (export, latency); "
                             "use fpn_channels >= 64 or input_size > 128")
        return self


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


class FCOSFamily(OneStageFamily):
    names = ("fcos",)
    config = FCOSModelConfig
    model_types = (FCOS,)
    fad_heads = True
    class_layers = (r"head\.classification_head\.cls_logits\.(weight|bias)",)

    def build(self, cfg: FCOSModelConfig, num_classes: int, body: nn.Module, fad_search: bool) -> nn.Module:
        n, c = num_classes, cfg.fpn_channels
        neck = FPNNeck(body, ("c3", "c4", "c5"), c, LastLevelP6P7(c, c))  # P3-P7, P6 from P5
        fad = fad_search or cfg.head.genotype is not None
        head = FADFCOSHead(fad_towers(c, cfg.head, search=fad_search), c, n) if fad else None
        model = FCOS(neck, n, head=head, topk_candidates=cfg.topk_candidates, score_thresh=cfg.score_thresh,
                     nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img)
        model.transform = resize_transform(cfg.input_size, size_divisible=32)
        return model

    def raw_output_names(self, model: nn.Module) -> list[str]:
        return ["cls_logits", "bbox_regression", "bbox_ctrness"]

    def raw_decoding(self, model: nn.Module, x: torch.Tensor) -> dict:
        columns = self.raw_layout(model, x)[0]["cls_logits"][-1]
        scores = {"output": "cls_logits", "activation": "sigmoid", "columns": [0, columns - 1],
                  "times_sigmoid_of": "bbox_ctrness", "sqrt": True,
                  "formula": "sqrt(sigmoid(cls_logits[a, c]) * sigmoid(bbox_ctrness[a, 0]))",
                  "label": "the column index (column 0 is the background: scored like the others, as in the "
                           "end-to-end file)"}
        candidates = {"score_above": float(model.score_thresh), "top_k": int(model.topk_candidates),
                      "top_k_per": "level", "over": "each level's (point, column) pairs (anchors.levels gives "
                                                   "each level's rows, in order)"}
        block = self.decode_block(model, x, scores, candidates)
        block["anchors"]["points"] = ("FCOS's points, as boxes centred on them" +
                                      (" whose size scales l, t, r, b" if block["boxes"].get("normalize_by_size") else ""))
        return block

    def losses_with_logits(self, model, images, targets):
        features, head_outputs, anchors = head_and_anchors(model, images)
        losses, matched = _fcos_losses(model, targets, head_outputs, anchors, features)
        return losses, head_outputs["cls_logits"], torch.stack([mi >= 0 for mi in matched])


FAMILY = FCOSFamily()
