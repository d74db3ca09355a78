"""The adapter every detector family implements, and what the families share (normalisation, resize).

A family (SSD/SSDLite, RetinaNet, FCOS, Faster R-CNN, YOLOv3) is one file in this package: its config
keys (a pydantic model, one member of ``model``'s discriminated union), ``build`` from that config, and
the few things the rest of nasdet needs to know about its model without looking at its type:

- ``dense_forward``: backbone, neck and heads on a normalised batch, no decoding (MACs, latency, raw export);
- ``detect``: the eval path on one normalised ``1 x 3 x s x s`` batch -> detections at ``s x s`` (export);
- ``raw_output_names`` / ``raw_anchors``: what the raw ONNX export gives and the anchors its outputs refer to;
- ``postprocessing`` / ``set_postprocessing``: the thresholds and counts the end-to-end graph bakes in;
- ``raw_decoding``: how the raw outputs become those detections (the raw export record's ``decode`` block);
- ``losses_with_logits``: the training losses plus classification logits and positive mask (distillation);
- ``set_input_size``: what besides the transform depends on the resolution.

The train/eval contract is torchvision's: ``model(images, targets)`` -> loss dict in train mode,
``model(images)`` -> list of {boxes, scores, labels} in eval mode; labels 1..K, 0 = background.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ..config import BaseModelConfig
from ..mmdet_layout import DropsEmptyBoxes  # MMDetection's test path: a decode step more

IMAGE_MEAN = [0.485, 0.456, 0.406]
IMAGE_STD = [0.229, 0.224, 0.225]
# torchvision's detection MobileNets use BN momentum 0.01-0.03, tuned for 600-epoch schedules from
# pretrained weights; from scratch on short schedules the running statistics then lag the weights
# so far that eval-mode outputs are garbage while the training loss is fine. PyTorch's 0.1 keeps up.
BN_MOMENTUM = 0.1


def resize_transform(input_size: int, size_divisible: int, mean: list[float] = IMAGE_MEAN,
                     std: list[float] = IMAGE_STD) -> GeneralizedRCNNTransform:
    """Normalise and resize to ``input_size x input_size`` inside the model (see nasdet.models.detectors)."""
    s = int(input_size)
    return GeneralizedRCNNTransform(s, s, mean, std, size_divisible=size_divisible, fixed_size=(s, s))


class DetectorFamily:
    """One detector family's adapter (see the module docstring). Subclasses set the class attributes."""

    names: tuple[str, ...] = ()  # its ``model.detector`` values
    config: type[BaseModelConfig] = BaseModelConfig  # its member of the model config union
    model_types: tuple[type, ...] = ()  # classes of the models ``build`` returns
    fad_heads: bool = False  # FAD's searched towers can replace its head (search.strategy: darts)
    distillable: bool = True  # ``losses_with_logits`` is implemented
    # regexes of the state_dict keys whose shape depends on the number of classes: re-initialised when a
    # trained detector becomes the baseline of a run with other classes (models.imports)
    class_layers: tuple[str, ...] = ()
    # per anchor, the outputs of a class layer before the class ones (YOLOv3's x, y, w, h, objectness); the
    # classes follow, background first where ``class_background`` (models.imports picks them by name)
    class_lead: int = 0
    class_background: bool = True
    # the modules that make the network (convs and linears, no decoding or NMS): what INT8 quantizes
    network_modules: tuple[str, ...] = ("backbone", "head")
    # why ``nasdet export --raw`` makes no file its detections can be decoded from ('' = it does)
    raw_refused: str = ""
    # its detections come from one NMS, by their own scores (a two-stage detector's RPN runs one before, by
    # objectness: a flip there can drop a box scored above every box that overlaps it)
    single_nms: bool = True
    # how much it computes depends on the image (a two-stage detector's box head runs on the proposals it gives):
    # ONNX latency is timed on a val image, not random noise (on which a trained RPN proposes nothing)
    work_follows_the_image: bool = False

    def build(self, cfg: BaseModelConfig, num_classes: int, body: nn.Module, fad_search: bool) -> nn.Module:
        """The detector for ``cfg`` around backbone ``body``; ``num_classes`` includes the background."""
        raise NotImplementedError

    def set_input_size(self, model: nn.Module, size: int) -> None:
        """Resolution-dependent state besides the transform (which the caller sets)."""

    # every BatchNorm sits in the part ``dense_forward`` runs, on the inputs the model's own forward gives it:
    # BN recalibration then runs only that part (decoding and NMS were ~40 % of an untrained net's eval forward)
    dense_has_every_bn: bool = False

    def dense_forward(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def calibration_forward(self, model: nn.Module, images: list[torch.Tensor]) -> None:
        """The forward BN recalibration runs on ``images`` (float, as the model takes them; model in eval mode,
        its BatchNorms in train mode): the dense part on the transformed batch where it holds every BN."""
        if self.dense_has_every_bn:
            self.dense_forward(model, model.transform(images)[0].tensors)
        else:
            model(images)

    def detect(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def raw_output_names(self, model: nn.Module) -> list[str]:
        return []  # positional outputs

    def raw_anchors(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Anchors (or points) the raw outputs refer to, for the normalised batch ``x`` at the input size."""
        return torch.zeros(0, 4)

    def losses_with_logits(self, model: nn.Module, images, targets) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """On transformed ``images`` (ImageList) and ``targets``: (losses, cls logits [N, A, C], positives [N, A])."""
        raise NotImplementedError

    def postprocessing(self, model: nn.Module) -> dict:
        """The post-processing values the eval path (and so the end-to-end graph) uses, read from ``model``,
        named as the ``model`` config keys that set them."""
        return {k: getattr(model, k) for k in POSTPROCESSING_ATTRS}

    def set_postprocessing(self, model: nn.Module, cfg: BaseModelConfig) -> None:
        """``cfg``'s post-processing values onto ``model`` (a trained checkpoint rebuilds with the values it was
        trained with; an export bakes in the run's)."""
        for k in POSTPROCESSING_ATTRS:
            if hasattr(cfg, k):
                setattr(model, k, getattr(cfg, k))

    def keep_every_candidate(self, model: nn.Module, score_margin: float) -> None:
        """Set ``model``'s eval path to return every candidate a float-noise flip could turn into a detection: no
        NMS, no per-level or per-image count, score cuts lowered by ``score_margin`` (raised by a negative one: the
        candidates surely above every cut). The export's parity check takes a detection only onnxruntime gives as
        such a flip only when torch holds it among these."""
        lower_cuts(model, ("score_thresh",), score_margin)
        keep_all(model, "nms_thresh", "detections_per_img", "topk_candidates")

    def raw_decoding(self, model: nn.Module, x: torch.Tensor) -> dict:
        """How the raw outputs (``dense_forward``) and ``raw_anchors`` of the normalised batch ``x`` at the input
        size become the detections of ``detect``: the raw export record's ``decode`` block."""
        raise NotImplementedError


# the attributes torchvision's one-stage detectors (and YOLOv3) keep their post-processing in
POSTPROCESSING_ATTRS = ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates")

# a count no image reaches (candidates, detections)
UNLIMITED = 1 << 30


def lower_cuts(owner, attrs: tuple[str, ...], margin: float) -> None:
    for a in attrs:
        setattr(owner, a, max(0.0, float(getattr(owner, a)) - margin))


def keep_all(owner, nms_attr: str, *count_attrs: str) -> None:
    """NMS that removes nothing (torchvision drops a box whose IoU is above the threshold: never above 1) and counts
    no image reaches, on ``owner`` (the attributes it has)."""
    if hasattr(owner, nms_attr):
        setattr(owner, nms_attr, 1.0)
    for a in count_attrs:
        if hasattr(owner, a):
            setattr(owner, a, UNLIMITED)


# ------------------------------------------------------------------- the raw export's decode block
def box_coding(coder) -> dict:
    """How a torchvision box coder turns 4 regression values and an anchor into a box, with its constants."""
    from torchvision.models.detection import _utils as det_utils

    if isinstance(coder, det_utils.BoxCoder):
        return {"coder": "deltas", "weights": [float(w) for w in coder.weights],
                "max_dw_dh": float(coder.bbox_xform_clip),
                "formula": "anchor w = x2 - x1, h = y2 - y1, centre cx = x1 + w / 2, cy = y1 + h / 2; "
                           "dx, dy, dw, dh = the 4 values divided by weights; dw, dh = min(dw, max_dw_dh), "
                           "min(dh, max_dw_dh); box centre (cx + dx * w, cy + dy * h), size (w * exp(dw), "
                           "h * exp(dh)); box = centre -/+ size / 2 (x1, y1, x2, y2)"}
    if isinstance(coder, det_utils.BoxLinearCoder):
        scaled = bool(coder.normalize_by_size)
        return {"coder": "ltrb", "normalize_by_size": scaled,
                "formula": "anchor centre cx, cy" + (" and size w = x2 - x1, h = y2 - y1" if scaled else "") +
                           "; l, t, r, b = the 4 values" + (" times (w, h, w, h)" if scaled else "") +
                           "; box = (cx - l, cy - t, cx + r, cy + b)"}
    raise TypeError(f"no decode description for box coder {type(coder).__name__}")


def anchor_description(anchors: int, levels: list[int], s: int) -> dict:
    """The ``.anchors.npy`` beside a raw file: one row per output row, in which frame."""
    return {"shape": [anchors, 4], "format": "x1, y1, x2, y2", "levels": levels,
            "frame": f"pixels of the network input: the image resized to {s} x {s} inside the graph (not the "
                     "image's pixels)"}


def nms_description(model: nn.Module) -> dict:
    return {"iou_thresh": float(model.nms_thresh), "per_class": True,
            "rule": "torchvision.ops.batched_nms: per label, highest score first, a box whose IoU with a kept box "
                    "is above iou_thresh is dropped"}


def to_image(s: int) -> str:
    return (f"boxes are in the {s} x {s} network input: multiply x by W / {s} and y by H / {s} for the image of "
            "W x H pixels given to the graph (the end-to-end graph does)")


# ------------------------------------------------------------------- helpers of the torchvision families
def match_anchors(model: nn.Module, targets: list[dict], anchors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``model.proposal_matcher`` per image (-1 for every anchor of an image without objects)."""
    from torchvision.ops import box_iou

    out = []
    for anchors_i, t in zip(anchors, targets):
        if t["boxes"].numel() == 0:
            out.append(torch.full((anchors_i.shape[0],), -1, dtype=torch.int64, device=anchors_i.device))
        else:
            out.append(model.proposal_matcher(box_iou(t["boxes"], anchors_i)))
    return out


def image_list(x: torch.Tensor):
    from torchvision.models.detection.image_list import ImageList

    s = x.shape[-1]
    return ImageList(x, [(s, s)] * x.shape[0])


def generator_anchors(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The anchor generator's anchors (or FCOS's points) of the first image of batch ``x``."""
    features = list(model.backbone(x).values())
    return model.anchor_generator(image_list(x), features)[0]


def head_and_anchors(model: nn.Module, images) -> tuple[list[torch.Tensor], dict[str, torch.Tensor], list[torch.Tensor]]:
    """Features, head outputs and anchors of transformed ``images`` (ImageList) for torchvision's one-stage detectors."""
    features = list(model.backbone(images.tensors).values())
    return features, model.head(features), model.anchor_generator(images, features)


def detect_per_level(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """RetinaNet / FCOS eval path: their ``postprocess_detections`` takes outputs and anchors split by level."""
    images = image_list(x)
    features, head_outputs, anchors = head_and_anchors(model, images)
    per_level = [f.size(2) * f.size(3) for f in features]
    a = head_outputs["cls_logits"].size(1) // sum(per_level)  # anchors per location (FCOS: 1 point)
    per_level = [n * a for n in per_level]
    split_outputs = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
    split_anchors = [list(a.split(per_level)) for a in anchors]
    return model.postprocess_detections(split_outputs, split_anchors, images.image_sizes)[0]


class OneStageFamily(DetectorFamily):
    """SSD, RetinaNet, FCOS: torchvision's one-stage detectors (a head returning a dict, an anchor generator)."""

    dense_has_every_bn = True  # backbone and head; the anchors, decoding and NMS have none

    def dense_forward(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        return list(model.head(list(model.backbone(x).values())).values())

    def detect(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return detect_per_level(model, x)

    def raw_anchors(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return generator_anchors(model, x)

    def raw_layout(self, model: nn.Module, x: torch.Tensor) -> tuple[dict[str, list[int]], list[int]]:
        """The raw outputs' shapes (by name) and the anchors (output rows) per level, in order."""
        features = list(model.backbone(x).values())
        outputs = model.head(features)
        cells = [f.size(2) * f.size(3) for f in features]
        per_location = outputs["cls_logits"].size(1) // sum(cells)
        return {k: list(v.shape) for k, v in outputs.items()}, [n * per_location for n in cells]

    def decode_block(self, model: nn.Module, x: torch.Tensor, scores: dict, candidates: dict) -> dict:
        """The ``decode`` block of a torchvision one-stage detector around its ``scores`` and ``candidates``."""
        shapes, levels = self.raw_layout(model, x)
        s = x.shape[-1]
        return {"input_size": s, "outputs": shapes, "anchors": anchor_description(sum(levels), levels, s),
                "scores": scores, "candidates": candidates,
                "boxes": {**box_coding(model.box_coder), "clip_to_input": True,
                          # MMDetection's test path (layout / variant mmdetection)
                          "drop_empty_before_nms": isinstance(model, DropsEmptyBoxes)},
                "nms": nms_description(model), "detections_per_img": int(model.detections_per_img),
                "to_image": to_image(s),
                "steps": ["scores from cls_logits (scores)", "candidates: score > score_above, then the top_k "
                          "highest per top_k_per (candidates)", "their boxes from bbox_regression and their anchors "
                          "(boxes), clipped to the network input when clip_to_input", "drop boxes of zero width or "
                          "height when drop_empty_before_nms", "NMS (nms)", "the first detections_per_img by score",
                          "to the image's pixels (to_image)"]}
