"""Faster R-CNN (torchvision's) on FPN P2-P6, as DetNAS."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..config import BaseModelConfig
from ..necks import FPNNeck
from .base import UNLIMITED, DetectorFamily, image_list, keep_all, lower_cuts, resize_transform


class FasterRCNNModelConfig(BaseModelConfig):
    detector: Literal["faster_rcnn"]
    fpn_channels: int = Field(256, gt=0)
    rpn_post_nms_top_n_test: int = Field(1000, gt=0)  # proposals at test (also used for MACs)
    # torchvision's builders: v1 = fasterrcnn_resnet50_fpn; v2 = fasterrcnn_resnet50_fpn_v2: BN in the FPN,
    # two convs in the RPN head, a box head of four 3x3 conv-BN-ReLU and one FC (1024)
    variant: Literal["v1", "v2"] = "v1"


class FasterRCNNFamily(DetectorFamily):
    names = ("faster_rcnn",)
    config = FasterRCNNModelConfig
    model_types = (FasterRCNN,)
    distillable = False  # its logits are per proposal, not per anchor
    # the RPN's and box head's layers; proposal decoding, NMS and RoIAlign stay float
    network_modules = ("backbone", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor")
    class_layers = (r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)",)  # boxes per class too
    raw_refused = ("its second stage classifies and regresses the RPN's proposals, which depend on the image: no "
                   "dense outputs give its detections (the raw graph's last outputs run the box head on zeros, "
                   "for cost only)")
    single_nms = False  # the RPN's NMS, by objectness, before the box head's
    # its box head runs on the image's proposals; and torchvision's graph cannot run on none (box decoding's
    # reshape(0, -1) fails in onnxruntime)
    work_follows_the_image = True

    def build(self, cfg: FasterRCNNModelConfig, num_classes: int, body: nn.Module, fad_search: bool) -> nn.Module:
        c, v2 = cfg.fpn_channels, cfg.variant == "v2"
        neck = FPNNeck(body, ("c2", "c3", "c4", "c5"), c, LastLevelMaxPool(),  # P2-P6, as DetNAS
                       norm_layer=nn.BatchNorm2d if v2 else None)
        heads = {}
        if v2:
            heads = {"rpn_head": RPNHead(c, 3, conv_depth=2),  # 3 aspect ratios per location (the default anchors)
                     "box_head": FastRCNNConvFCHead((c, 7, 7), [256] * 4, [1024], norm_layer=nn.BatchNorm2d)}
        model = FasterRCNN(
            neck, num_classes, **heads, box_score_thresh=cfg.score_thresh, box_nms_thresh=cfg.nms_thresh,
            box_detections_per_img=cfg.detections_per_img, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        )
        model.transform = resize_transform(cfg.input_size, size_divisible=32)
        return model

    # (dense_has_every_bn stays False: v2's box head has BatchNorm and runs on pooled proposals, which
    # dense_forward replaces with zeros)

    def dense_forward(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        """The box head runs on ``rpn_post_nms_top_n_test`` pooled proposals (a fixed count, so its
        cost does not depend on the data)."""
        feats = model.backbone(x)
        objectness, deltas = model.rpn.head(list(feats.values()))
        n = model.rpn.post_nms_top_n()
        pool = model.roi_heads.box_roi_pool
        side = pool.output_size[0] if isinstance(pool.output_size, (tuple, list)) else pool.output_size
        pooled = x.new_zeros((n * x.shape[0], model.backbone.out_channels, side, side))
        scores, boxes = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
        return [*objectness, *deltas, scores, boxes]

    def detect(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        images = image_list(x)
        feats = model.backbone(x)
        proposals, _ = model.rpn(images, feats)
        # and a proposal of no area at the corner: the box head's post-processing drops its box as empty (decoded
        # from no width or height), and the graph never decodes zero proposals (torchvision's reshape(0, -1),
        # which onnxruntime refuses: the exported file failed on an image its RPN proposed nothing in, a blank one)
        proposals = [torch.cat([p, p.new_zeros(1, 4)]) for p in proposals]
        return model.roi_heads(feats, proposals, images.image_sizes)[0][0]

    # raw export: positional outputs and no fixed anchors (proposals are data dependent): the defaults;
    # ``nasdet export --raw`` is refused (raw_refused), the parity check of the end-to-end export uses it

    def postprocessing(self, model: nn.Module) -> dict:
        roi, rpn = model.roi_heads, model.rpn
        return {"score_thresh": roi.score_thresh, "nms_thresh": roi.nms_thresh,
                "detections_per_img": roi.detections_per_img,
                "rpn_pre_nms_top_n_test": rpn._pre_nms_top_n["testing"],  # per level
                "rpn_post_nms_top_n_test": rpn._post_nms_top_n["testing"],
                "rpn_nms_thresh": rpn.nms_thresh, "rpn_score_thresh": rpn.score_thresh}

    def set_postprocessing(self, model: nn.Module, cfg: FasterRCNNModelConfig) -> None:
        roi = model.roi_heads
        roi.score_thresh, roi.nms_thresh, roi.detections_per_img = cfg.score_thresh, cfg.nms_thresh, cfg.detections_per_img
        model.rpn._post_nms_top_n["testing"] = cfg.rpn_post_nms_top_n_test

    def keep_every_candidate(self, model: nn.Module, score_margin: float) -> None:
        # the RPN's NMS too: a flip there lets another proposal through, whose box torch then has among these
        lower_cuts(model.roi_heads, ("score_thresh",), score_margin)
        keep_all(model.roi_heads, "nms_thresh", "detections_per_img")
        lower_cuts(model.rpn, ("score_thresh",), score_margin)
        keep_all(model.rpn, "nms_thresh")
        model.rpn._post_nms_top_n["testing"] = UNLIMITED


FAMILY = FasterRCNNFamily()
