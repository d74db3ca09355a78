"""SSD and SSDLite (torchvision's), on backbone levels plus stride-2 extra layers after C5 (four; two in ENOT's).

``model.layout: enot`` is ENOT's ssd_mnv2 (ENOT-AutoDL/mmdetection-enot, configs/ssd/pascal_voc/ssd_mnv2.py, on
MMDetection 2.16's MobileNetV2, SSDNeck, SSDHead and AnchorGenerator); own code, same arithmetic:
- maps: the stride-8 / 16 / 32 stage outputs, on MobileNetV2 of 32 / 96 / 320 channels (MobileNetV2 out_indices
  2, 4, 6: ``c3``, ``c4`` and ``c5_pre``, before the final 1x1 expand, which is still computed and counted as
  MMDetection's MobileNetV2 runs its conv2; other backbones: ``c5``), then two extras of 512 and 256 channels
  (SSDNeck, ``use_depthwise`` False: 1x1 to half the output width, then a full 3x3 stride 2, BN and ReLU6 each;
  Xavier-uniform init);
- head: SSDLite's (SSDHead ``use_depthwise`` True: per map a depthwise 3x3 with BN (eps 1e-3, momentum 0.03) and
  ReLU6, then a 1x1 to classes + background and one to 4 box deltas; every conv N(0, 0.001), as its init_cfg);
- anchors: AnchorGenerator, octave_base_scale 4, 3 scales an octave, ratios 1, 0.5, 2, 0.6666, 1.5: 15 a location
  at strides 8 to 128, on each cell's origin, in pixels whatever the input size (``mmdet_layout``);
- loss: SSD's (MaxIoUAssigner 0.5 / 0.5, each box's best anchor, softmax with 3:1 hard negatives, smooth L1,
  deltas scaled by 0.1, 0.1, 0.2, 0.2: torchvision's SSD is the same); test path: torchvision's SSD, as MMDetection
  2.16's keeps boxes left empty by clipping (3.x drops them: ``layout: mmdetection``), with ENOT's thresholds in its
  configs (``topk_candidates`` 1000 per class where MMDetection keeps the best 1000 anchors a level: the same while
  neither cuts); input: ENOT's normalisation, the ImageNet mean subtracted from 0-255 pixels and no
  division (its img_norm_cfg std 1; its MMDetection ImageNet backbone was trained with the std, as torchvision's
  are: ENOT's recipe starts from that mismatch, and its checkpoints need its normalisation).
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Literal, Optional

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSDHead
from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block

from ...errors import ConfigError
from ..mmdet_layout import enot_ssd_anchors, mmdet_ssdlite_anchors, with_mmdet_test_path
from ..config import BaseModelConfig
from ..ssd_focal import FocalSSD
from .base import (BN_MOMENTUM, IMAGE_MEAN, IMAGE_STD, OneStageFamily, head_and_anchors, image_list, match_anchors,
                   resize_transform)


class SSDModelConfig(BaseModelConfig):
    detector: Literal["ssd", "ssdlite"] = "ssdlite"
    extra_channels: list[int] = [512, 256, 256, 128]  # SSD/SSDLite extra layers after C5
    anchor_ratio_range: tuple[float, float] = (0.2, 0.95)  # SSD default boxes: smallest, largest scale
    # Backbone levels SSD/SSDLite predicts on, the extras follow the last. ["c4", "c5"] is torchvision's
    # SSDLite and aw_nas's SSD (19x19 first map at 300 px). At small inputs (demos at 160 px: 10x10) add
    # "c3" (stride 8): on the shapes set it raises the GTs with an IoU >= 0.5 default box from 54 % to 87 %.
    ssd_levels: list[Literal["c2", "c3", "c4", "c5"]] = ["c4", "c5"]
    # SSD default-box aspect ratios per map (len(ssd_levels) + 4 maps); default: [[2, 3]] per map for ssdlite
    # (torchvision), [[2], [2, 3], [2, 3], [2, 3], [2], [2]] for ssd (SSD300, aw_nas; [2] for an added first map)
    anchor_aspect_ratios: Optional[list[list[int]]] = None
    # SSD/SSDLite classification loss: "hard_negative" = SSD's softmax cross-entropy with 3:1 hard negative
    # mining (torchvision, the SSD paper); "focal" = aw_nas's SSD supernets: sigmoid focal loss (alpha 0.25,
    # gamma 2) over the object classes, IoU in [0.4, 0.5) ignored, sigmoid scores at inference
    ssd_loss: Literal["hard_negative", "focal"] = "hard_negative"
    topk_candidates: int = Field(300, gt=0)
    # "torchvision": ssdlite320_mobilenet_v3_large's layout (SSDLiteMobileNetNeck: the first map is the
    # expansion inside the last stride-2 block, its extras, inputs scaled to [-1, 1]); with
    # backbone.reduced_tail it is that model exactly. "nasdet": the C4/C5 stage outputs (the demos' layout).
    # "mmdetection": the nasdet layout (on mobilenet_v2: MMDetection's ssdlite_mobilenetv2) with that
    # model's SSDAnchorGenerator (models/anchors.py; its sizes at 320 px, scaled at other sizes)
    # "enot": ENOT's ssd_mnv2 (see the module doc): c3, c4, c5 (c5_pre on MobileNets) and two extras ([512, 256]
    # unless extra_channels says otherwise), 15 octave anchors a location, SSDLite's head
    layout: Literal["nasdet", "torchvision", "mmdetection", "enot"] = "nasdet"
    # SSDLite's four extra layers: "torchvision" (1x1 to half the OUTPUT width, depthwise 3x3 s2, 1x1, ReLU6 each,
    # BN eps 1e-3), "awnas" (aw_nas's SSD supernets: MobileNetV3Block with expansion 0.5, i.e. half the INPUT width,
    # ReLU, a linear 1x1 projection, BN eps 1e-5; 56.8 M MACs at 300 px against 30.3 for torchvision's on OFA's
    # 960-wide C5: the published detector sizes)
    ssdlite_extras: Literal["torchvision", "awnas"] = "torchvision"

    @model_validator(mode="after")
    def _reference_layout(self):
        if self.layout == "enot":
            return self._enot_layout()
        if len(self.extra_channels) != 4:
            raise ValueError(f"extra_channels must be 4 positive ints (levels 3..6 after C4, C5), got "
                             f"{self.extra_channels} (two: model.layout enot)")
        if self.layout != "nasdet" and (self.detector != "ssdlite" or self.ssd_levels != ["c4", "c5"]):
            name = "ssdlite320's" if self.layout == "torchvision" else "ssdlite_mobilenetv2's"
            raise ValueError(f"model.layout {self.layout} is {name} (detector ssdlite, ssd_levels [c4, c5]), "
                             f"got detector {self.detector}, ssd_levels {self.ssd_levels}")
        if self.ssdlite_extras != "torchvision" and (self.detector != "ssdlite" or self.layout == "torchvision"):
            raise ValueError(f"model.ssdlite_extras {self.ssdlite_extras} is a choice of SSDLite's own extra layers "
                             f"(detector ssdlite, layout nasdet or mmdetection), got detector {self.detector}, "
                             f"layout {self.layout}")
        if self.layout == "mmdetection" and self.anchor_aspect_ratios is not None:
            raise ValueError("model.layout mmdetection has ssdlite_mobilenetv2's anchors: drop anchor_aspect_ratios")
        return self

    def _enot_layout(self):
        if self.detector != "ssdlite":
            raise ValueError(f"model.layout enot is ENOT's ssd_mnv2, an SSDLite (detector ssdlite), got detector "
                             f"{self.detector}")
        if "ssd_levels" in self.model_fields_set and self.ssd_levels != ["c3", "c4", "c5"]:
            raise ValueError(f"model.layout enot predicts on c3, c4, c5 (MobileNetV2 out_indices 2, 4, 6), got "
                             f"ssd_levels {self.ssd_levels}: drop ssd_levels")
        if "extra_channels" in self.model_fields_set and len(self.extra_channels) != 2:
            raise ValueError(f"model.layout enot has two extra layers (ENOT's 512, 256), got extra_channels "
                             f"{self.extra_channels}")
        if self.anchor_aspect_ratios is not None or self.ssdlite_extras != "torchvision":
            raise ValueError("model.layout enot has ENOT's anchors and extra layers: drop anchor_aspect_ratios and "
                             "ssdlite_extras")
        # (validate_assignment runs these validators again on each assignment: checks first, then only what differs)
        if self.ssd_levels != ["c3", "c4", "c5"]:
            self.ssd_levels = ["c3", "c4", "c5"]
        if "extra_channels" not in self.model_fields_set:
            self.extra_channels = [512, 256]
        return self

    @field_validator("anchor_aspect_ratios")
    @classmethod
    def _ratios(cls, v):
        if v is not None and any(r < 1 for level in v for r in level):
            raise ValueError(f"anchor_aspect_ratios must be ratios >= 1, got {v}")
        return v

    @field_validator("ssd_levels")
    @classmethod
    def _levels(cls, v):
        order = ["c2", "c3", "c4", "c5"]
        if not v or v[-1] != "c5" or len(set(v)) != len(v) or v != sorted(v, key=order.index):
            raise ValueError(f"ssd_levels must be increasing backbone levels ending with c5 (the extras follow it), got {v}")
        return v

    @model_validator(mode="after")
    def _ratios_per_map(self):
        maps = len(self.ssd_levels) + len(self.extra_channels)
        if self.anchor_aspect_ratios is not None and len(self.anchor_aspect_ratios) != maps:
            raise ValueError(f"anchor_aspect_ratios lists {len(self.anchor_aspect_ratios)} maps, but ssd_levels "
                             f"{self.ssd_levels} + {len(self.extra_channels)} extras make {maps}")
        return self

    @field_validator("extra_channels")
    @classmethod
    def _positive_extras(cls, v):
        if any(c <= 0 for c in v):
            raise ValueError(f"extra_channels must be positive ints, got {v}")
        return v


def default_aspect_ratios(lite: bool, maps: int) -> list[list[int]]:
    """``model.anchor_aspect_ratios`` left unset: torchvision's SSDLite [2, 3] on every map; SSD300's per map, its
    last maps keeping these and an added first map [2]."""
    ssd300 = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    return [[2, 3]] * maps if lite else ([[2]] * max(0, maps - 6) + ssd300)[-maps:]


def _extra_block_lite(cin: int, cout: int, norm_layer) -> nn.Sequential:
    """SSDLite extra layer: 1x1 reduce, depthwise 3x3 stride 2, 1x1 expand (torchvision/MobileNetV2 paper)."""
    mid = max(cout // 2, 1)
    act = partial(nn.ReLU6, inplace=True)
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1, bias=False), norm_layer(mid), act(),
        nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False), norm_layer(mid), act(),
        nn.Conv2d(mid, cout, 1, bias=False), norm_layer(cout), act(),
    )


def _extra_block_awnas(cin: int, cout: int, norm_layer=None) -> nn.Sequential:
    """aw_nas's SSD extra layer: its ``MobileNetV3Block`` with expansion 0.5, stride 2, kernel 3, ReLU, no SE: 1x1 to
    half the input width, depthwise 3x3 stride 2, linear 1x1 projection (PyTorch's BN defaults, as aw_nas's)."""
    mid = max(int(cin * 0.5), 1)
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
    )


def _extra_block_enot(cin: int, cout: int, norm_layer=None) -> nn.Sequential:
    """ENOT's ssd_mnv2 extra layer (MMDetection's SSDNeck, ``use_depthwise`` False, ``act_cfg`` ReLU6, BN with
    PyTorch's defaults): 1x1 to half the output width, 3x3 stride 2; Xavier-uniform convs (its init_cfg)."""
    mid = max(cout // 2, 1)
    block = nn.Sequential(
        nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(inplace=True),
        nn.Conv2d(mid, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True),
    )
    for m in block:
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
    return block


def _extra_block_ssd(cin: int, cout: int, norm_layer) -> nn.Sequential:
    """SSD extra layer: 1x1 reduce then 3x3 stride 2 (SSD300 / aw_nas's extras, with BN)."""
    mid = max(cout // 2, 1)
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1, bias=False), norm_layer(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, cout, 3, stride=2, padding=1, bias=False), norm_layer(cout), nn.ReLU(inplace=True),
    )


class SSDNeck(nn.Module):
    """Backbone levels (default C4, C5) and extra stride-2 layers after C5: the maps of SSD's default boxes.
    ``extras`` "enot": ENOT's extra layers, and on a MobileNet its C5 is ``c5_pre`` (before the final expand)."""

    def __init__(self, body: nn.Module, extra_channels: list[int], lite: bool, levels: tuple[str, ...] = ("c4", "c5"),
                 extras: str = "torchvision"):
        super().__init__()
        self.body = body
        self.levels = tuple(levels)
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=BN_MOMENTUM)
        if extras == "enot":
            make = _extra_block_enot
        else:
            make = (_extra_block_awnas if extras == "awnas" else _extra_block_lite) if lite else _extra_block_ssd
        pre = getattr(body, "pre_expand_channels", None) if extras == "enot" else None
        self.c5 = "c5_pre" if pre else "c5"
        widths = {**body.out_channels, "c5": pre or body.out_channels["c5"]}
        chans = [widths["c5"], *extra_channels]
        self.extras = nn.ModuleList(make(chans[i], chans[i + 1], norm_layer) for i in range(len(extra_channels)))
        self.out_channels_list = [widths[lv] for lv in self.levels] + list(extra_channels)

    def forward(self, x):
        feats = self.body(x, pre_expand=True) if self.c5 == "c5_pre" else self.body(x)
        out = OrderedDict((lv, feats[self.c5 if lv == "c5" else lv]) for lv in self.levels)
        y = feats[self.c5]
        for i, block in enumerate(self.extras):
            y = block(y)
            out[f"e{i}"] = y
        return out


class SSDLiteMobileNetNeck(nn.Module):
    """torchvision's ssdlite320 maps on a nasdet MobileNet (``SSDLiteFeatureExtractorMobileNet``): the
    expansion (1x1) output inside the last stride-2 block (MobileNetV3 paper, section 6.3), the network's
    last layer (C5), then four extras. The weights stay in the body's own modules, so the body is the
    same MobileNet as everywhere else in nasdet; ``models.imports`` maps torchvision's keys onto it."""

    def __init__(self, body: nn.Module, extra_channels: list[int], norm_layer):
        super().__init__()
        self.c4_pos = getattr(body, "stage_ends", {}).get("c4", -1) + 1  # torchvision's ``stage_indices[-2]``
        features = getattr(body, "features", None)  # the last stride-2 block is features[c4_pos]
        block = features[self.c4_pos] if isinstance(features, nn.Sequential) and self.c4_pos else None
        if not isinstance(getattr(block, "block", None), nn.Sequential) or block.use_res_connect:
            raise ConfigError(f"model.layout torchvision taps inside a MobileNetV3 block, as torchvision's ssdlite320: "
                              f"backbone {type(body).__name__} is not mobilenet_v3_large / mobilenet_v3_small (on "
                              "mobilenet_v2, SSDLite's layouts are nasdet's, mmdetection and enot)")
        self.body = body
        chans = [body.out_channels["c5"], *extra_channels]
        self.extra = nn.ModuleList(_extra_block(chans[i], chans[i + 1], norm_layer) for i in range(len(extra_channels)))
        self.out_channels_list = [block.block[0].out_channels, *chans]

    def forward(self, x):
        features, out = self.body.features, OrderedDict()
        for m in features[:self.c4_pos]:
            x = m(x)
        inner = features[self.c4_pos].block
        x = inner[0](x)
        out["c4"] = x
        for m in [*inner[1:], *features[self.c4_pos + 1:]]:
            x = m(x)
        out["c5"] = x
        for i, block in enumerate(self.extra):
            x = block(x)
            out[f"e{i}"] = x
        return out


class SSDFamily(OneStageFamily):
    names = ("ssd", "ssdlite")
    config = SSDModelConfig
    model_types = (SSD,)
    class_layers = (r"head\.classification_head\.module_list\.\d+\.(1\.)?(weight|bias)",)  # SSDLite: its 1x1

    def build(self, cfg: SSDModelConfig, num_classes: int, body: nn.Module, fad_search: bool) -> nn.Module:
        n, s = num_classes, cfg.input_size
        lite = cfg.detector == "ssdlite"
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=BN_MOMENTUM)
        torchvision_layout = cfg.layout == "torchvision"
        if torchvision_layout:
            neck = SSDLiteMobileNetNeck(body, cfg.extra_channels, norm_layer)
        else:
            extras = "enot" if cfg.layout == "enot" else cfg.ssdlite_extras
            neck = SSDNeck(body, cfg.extra_channels, lite=lite, levels=tuple(cfg.ssd_levels), extras=extras)
        maps = len(neck.out_channels_list)
        ratios = cfg.anchor_aspect_ratios or default_aspect_ratios(lite, maps)
        lo, hi = cfg.anchor_ratio_range
        if cfg.layout == "mmdetection":
            anchors = mmdet_ssdlite_anchors()
        elif cfg.layout == "enot":
            anchors = enot_ssd_anchors()
        else:
            anchors = DefaultBoxGenerator(ratios, min_ratio=lo, max_ratio=hi)
        per_loc = anchors.num_anchors_per_location()
        if lite:  # ENOT's head norm_cfg: BN eps 1e-3, momentum 0.03
            head_norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03) if cfg.layout == "enot" else norm_layer
            head = SSDLiteHead(neck.out_channels_list, per_loc, n, head_norm)
        else:
            head = SSDHead(neck.out_channels_list, per_loc, n)
        if cfg.layout == "enot":  # SSDHead's init_cfg: Normal(std 0.001) on every conv (torchvision's: 0.03)
            for m in head.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=0.001)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        ssd_cls = FocalSSD if cfg.ssd_loss == "focal" else SSD
        if cfg.layout == "mmdetection":
            ssd_cls = with_mmdet_test_path(ssd_cls)
        mean, std = ([0.5] * 3, [0.5] * 3) if torchvision_layout else (IMAGE_MEAN, IMAGE_STD)  # ssdlite320: [-1, 1]
        if cfg.layout == "enot":
            std = [1 / 255] * 3  # ENOT's img_norm_cfg: mean [123.675, 116.28, 103.53], std [1, 1, 1] in 0-255
        model = ssd_cls(neck, anchors, (s, s), n, image_mean=mean, image_std=std, head=head,
                        topk_candidates=cfg.topk_candidates, score_thresh=cfg.score_thresh,
                        nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img)
        model.transform = resize_transform(s, size_divisible=1, mean=mean, std=std)
        return model

    def set_input_size(self, model: nn.Module, size: int) -> None:
        model.size = (size, size)

    def detect(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        images = image_list(x)
        _, head_outputs, anchors = head_and_anchors(model, images)
        return model.postprocess_detections(head_outputs, anchors, images.image_sizes)[0]

    def raw_output_names(self, model: nn.Module) -> list[str]:
        return ["bbox_regression", "cls_logits"]  # SSDHead's dict order

    def raw_decoding(self, model: nn.Module, x: torch.Tensor) -> dict:
        columns = self.raw_layout(model, x)[0]["cls_logits"][-1]
        thresh, k = float(model.score_thresh), int(model.topk_candidates)
        if isinstance(model, FocalSSD):  # ssd_loss: focal (FocalSSD.postprocess_detections)
            scores = {"output": "cls_logits", "activation": "sigmoid", "columns": [1, columns - 1],
                      "background_column": 0, "label": "the column index (1..K); column 0 is never scored"}
            candidates = {"score_above": thresh, "top_k": k * (columns - 1), "top_k_per": "image",
                          "over": "every (anchor, column) pair of the image (topk_candidates x K)"}
        else:  # torchvision's SSD (ssd_loss: hard_negative)
            scores = {"output": "cls_logits", "activation": "softmax", "softmax_over": "all columns, background 0 "
                      "included", "columns": [1, columns - 1], "background_column": 0,
                      "label": "the column index (1..K)"}
            candidates = {"score_above": thresh, "top_k": k, "top_k_per": "class",
                          "over": "each column's anchors separately (topk_candidates per class)"}
        return self.decode_block(model, x, scores, candidates)

    def losses_with_logits(self, model, images, targets):
        _, head_outputs, anchors = head_and_anchors(model, images)
        matched = match_anchors(model, targets, anchors)
        losses = model.compute_loss(targets, head_outputs, anchors, matched)
        return losses, head_outputs["cls_logits"], torch.stack([mi >= 0 for mi in matched])


FAMILY = SSDFamily()
