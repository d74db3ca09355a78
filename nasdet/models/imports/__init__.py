"""A trained detector's weights as the weights of a nasdet detector of the same layout.

Sources: nasdet's own checkpoints, torchvision's detection checkpoints (a plain ``state_dict`` as
torchvision publishes them, or its detection references' ``{"model": .., "args": ..}``), mapped by
``torchvision_detection``, and MMDetection's (``{"meta": .., "state_dict": ..}``), mapped by
``mmdetection``. The mapping is a rename of keys into a detector whose modules compute what the
reference's compute (tests/test_imports.py checks raw head outputs and detections against torchvision's
own model, tests/test_imports_mmdet.py against a functional forward of MMDetection's). When the run has
other classes than the checkpoint, the family's class-dependent layers (``DetectorFamily.class_layers``)
keep the new model's own initialisation and everything else is kept, as torchvision's and MMDetection's
fine-tuning recipes do; except when the run's classes are among the checkpoint's: torchvision's COCO
labels (91, the category ids) for a run on COCO classes, or the class names an MMDetection or nasdet
checkpoint lists; then each class keeps its own rows.
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ...errors import CheckpointError, unreadable_reason
from ...files import why_not_a_file
from ..families import family_of
from .mmdetection import checkpoint_classes, mmdet_layout
from .torchvision_detection import COCO_LABELS, torchvision_keys


TORCHVISION_SSDLITE = "torchvision's ssdlite320_mobilenet_v3_large layout"
TORCHVISION_MOBILENET_FRCNN = "torchvision's fasterrcnn_mobilenet_v3_large_fpn (or _320_fpn) layout"
# the torchvision detectors whose files nasdet imports (torchvision_detection.py), for a file of another
IMPORTED_TORCHVISION = ("nasdet imports torchvision's ssdlite320_mobilenet_v3_large and retinanet / fcos / fasterrcnn "
                        "_resnet50_fpn (and _v2) files; for another detector start from its ImageNet backbone "
                        "(model.backbone.pretrained: imagenet)")


@dataclass
class ImportedWeights:
    """A full state_dict of the nasdet model, where it came from, and the layers left at their own init."""

    state: dict[str, torch.Tensor]
    source_format: str  # "nasdet" | "torchvision" | "mmdetection"
    reinitialised: list[str] = field(default_factory=list)  # module names (class-dependent layers)
    coco_labels: bool = False  # the class layers' rows were picked from torchvision's 91 COCO labels
    picked_classes: bool = False  # the class layers' rows were picked by name from the checkpoint's classes
    unnamed_classes: bool = False  # class layers kept by index: the checkpoint records no class names
    category_id_labels: bool = False  # torchvision's references' labels: each class's rows at its category id


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: a plain state_dict, or the one under ``model`` (nasdet, torchvision's
    detection references, which also pickle their ``argparse.Namespace`` of arguments) or ``state_dict``
    (MMDetection)."""
    return read_checkpoint(path)[0]


def read_checkpoint(path: str | Path, key: str = "checkpoint") -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """``read_weights`` and the class names the file lists (MMDetection's meta, nasdet's ``classes``), or None;
    ``key``: the config key or option that named the file, for errors."""
    return read_checkpoint_and_model(path, key)[:2]


# model keys that change what a detector's outputs mean without changing a tensor's shape: a nasdet file trained
# with other values loads, and decodes its boxes against other anchors (layout: SSD's MMDetection anchors, YOLOv3's
# LeakyReLU backbone; variant: RetinaNet's P6 and anchors)
ANCHOR_KEYS = ("anchors", "anchor_ratio_range", "anchor_aspect_ratios", "layout", "variant")


def _anchor_setting(model_cfg: dict, key: str):
    """``model_cfg[key]`` as the detector uses it: SSD's unset aspect ratios are its family's default."""
    value = model_cfg.get(key)
    if key == "anchor_aspect_ratios" and value is None and model_cfg.get("detector") in ("ssd", "ssdlite"):
        from ..families.ssd import default_aspect_ratios

        maps = len(model_cfg.get("ssd_levels") or ["c4", "c5"]) + len(model_cfg.get("extra_channels") or [0] * 4)
        return default_aspect_ratios(model_cfg["detector"] == "ssdlite", maps)
    return value


def refuse_other_anchors(recorded: dict | None, model_cfg: dict, source: str) -> None:
    """``CheckpointError`` when a nasdet checkpoint's recorded ``model`` section (``recorded``) has other anchors
    than ``model_cfg`` (both as plain data): YOLOv3's w / h outputs are log(box / anchor), SSD's offsets are
    relative to its default boxes, so the same tensors are another detector."""
    if not recorded:
        return
    plain = lambda v: json.loads(json.dumps(v))  # noqa: E731 (tuples as lists)
    other = [(k, recorded[k], model_cfg.get(k)) for k in ANCHOR_KEYS if k in recorded and k in model_cfg
             and plain(_anchor_setting(recorded, k)) != plain(_anchor_setting(model_cfg, k))]
    if other:
        said = "; ".join(f"model.{k} {was!r} in the file, {now!r} here" for k, was, now in other)
        raise CheckpointError(f"{source} was trained with other anchors ({said}): its box outputs are offsets from "
                              f"its own anchors (the layout or variant: another anchor generator or network), so it "
                              f"would load as another detector; set "
                              f"{', '.join(f'model.{k}: {was!r}' for k, was, _ in other)} as it was trained")


def read_checkpoint_and_model(path: str | Path, key: str = "checkpoint"
                              ) -> tuple[dict[str, torch.Tensor], list[str] | None, dict | None]:
    """``read_checkpoint`` and the ``model`` section a nasdet checkpoint records (None for other files)."""
    path = Path(path)
    if why := why_not_a_file(path):
        raise CheckpointError(f"{key} {path} {why}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(f"{key} {path} cannot be read: {unreadable_reason(e, path)}") from e
    classes = checkpoint_classes(state) or recorded_class_names(state)
    config = state.get("config") if isinstance(state, dict) else None
    recorded = config.get("model") if isinstance(config, dict) and isinstance(config.get("model"), dict) else None
    for entry in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(entry), dict):
            state = state[entry]
            break
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{key} {path} holds no state_dict of tensors (a plain one, or under 'model' / "
                              f"'state_dict'), found {type(state).__name__}")
    # saved from a DistributedDataParallel / DataParallel wrapper (torch.save(ddp_model.state_dict())), from
    # torch.compile's (torch.compile(model).state_dict()), or both, in either order
    wrapped = [w for w in ("module.", "_orig_mod.") if all(isinstance(k, str) and k.startswith(w) for k in state)]
    while wrapped:
        state = {k[len(wrapped[0]):]: v for k, v in state.items()}
        wrapped = [w for w in ("module.", "_orig_mod.") if all(k.startswith(w) for k in state)]
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # a diverged training's last checkpoint: imported, it scores 0 AP and says nothing
        raise CheckpointError(f"{key} {path} has non-finite weights (NaN or inf) in {len(bad)} tensors, e.g. "
                              f"{bad[:3]}: a training that diverged? Take an earlier checkpoint")
    return state, classes, recorded


def recorded_class_names(state) -> list[str] | None:
    """The class names a nasdet checkpoint records (``train.checkpoint.class_record``), or None (older checkpoints, other files)."""
    classes = state.get("classes") if isinstance(state, dict) else None
    if isinstance(classes, list) and classes and all(isinstance(c, (list, tuple)) and len(c) == 2 for c in classes):
        return [str(name) for _, name in classes]
    return None


def describe_weights(weights: dict[str, torch.Tensor]) -> str:
    """What a state_dict looks like, from its key names (for errors)."""
    keys = list(weights)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("bbox_head.") or has("neck."):
        backbone = ("MobileNetV2" if has("backbone.layer1.0.depthwise_conv.") else
                    "ResNet" if has("backbone.layer1.0.conv1.") else "another backbone")
        head = ("ssd_mnv2 of ENOT (SSDHead, depthwise; SSDNeck of full 3x3 convs)" if
                has("bbox_head.cls_convs.0.0.bn.") and has("neck.extra_layers.0.1.conv.") else
                "ssdlite (SSDHead, depthwise)" if has("bbox_head.cls_convs.0.0.bn.") else
                "SSD" if has("neck.extra_layers.") else "yolov3" if has("bbox_head.convs_pred.") else
                "retinanet" if has("bbox_head.retina_cls.") else "another detector")
        return f"an MMDetection {head} on {backbone} (bbox_head./neck. keys)"
    if has("backbone.features.0.0.0."):
        return TORCHVISION_SSDLITE
    if has("backbone.body.conv1."):
        kind = ("fasterrcnn_resnet50_fpn" if has("roi_heads.") else
                "fcos_resnet50_fpn" if has("head.regression_head.bbox_ctrness") else "retinanet_resnet50_fpn")
        v2 = has("backbone.fpn.inner_blocks.0.1.") or has("head.classification_head.conv.0.1.")  # FPN BN / head GN
        return f"torchvision's {kind}{'_v2' if v2 else ''} layout"
    if not has("head.") and not has("roi_heads.") and (has("fc.") or has("classifier.")):
        return "a classification network (fc./classifier. keys, no detection head)"
    if has("backbone.body.0.") and has("roi_heads."):  # its MobileNet's features indexed under body (nasdet: body.features)
        return TORCHVISION_MOBILENET_FRCNN
    if has("backbone.features.") and has("backbone.extra.") and has("head.classification_head.module_list."):
        return "torchvision's ssd300_vgg16 layout"
    if has("backbone.body.") or has("backbone.extras."):
        return "a nasdet detector of another layout"
    return f"{len(keys)} tensors with keys like {keys[:2]}"


def _module_names(keys: list[str]) -> list[str]:
    return sorted({k.rsplit(".", 1)[0] for k in keys})


def _without_counters(keys) -> set[str]:
    # BN's num_batches_tracked: absent where torchvision trained with FrozenBatchNorm2d, never used in eval
    return {k for k in keys if not k.endswith("num_batches_tracked")}


def pick_label_rows(tensor: torch.Tensor, lead: int, labels: int, picked: list[int],
                    rows_per_class: int = 1) -> torch.Tensor | None:
    """The rows of a class layer whose outputs per anchor are ``lead`` others then ``labels`` classes of
    ``rows_per_class`` rows each (as the heads view them), keeping the labels ``picked`` (in that order); None
    if the layer is not such."""
    per_anchor = lead + labels * rows_per_class
    if tensor.shape[0] % per_anchor:
        return None
    blocks = tensor.reshape(-1, per_anchor, *tensor.shape[1:])
    classes = blocks[:, lead:].reshape(blocks.shape[0], labels, rows_per_class, *tensor.shape[1:])[:, picked]
    return torch.cat([blocks[:, :lead], classes.flatten(1, 2)], 1).reshape(-1, *tensor.shape[1:])


def class_layer_keys(model: nn.Module, keys) -> list[str]:
    """Those of ``keys`` that name the class-dependent layers of ``model``'s family (``DetectorFamily.class_layers``)."""
    class_layers = [re.compile(p) for p in family_of(model).class_layers]
    return sorted(k for k in keys if any(r.fullmatch(k) for r in class_layers))


def rows_by_class_name(model: nn.Module, weights: dict[str, torch.Tensor], keys, checkpoint_classes: list[str],
                       names: list[str]) -> dict[str, torch.Tensor] | None:
    """The class layers ``keys`` of ``weights`` (a nasdet checkpoint of ``model``'s family, trained on
    ``checkpoint_classes``) cut to the run's class ``names``, each taking its own rows; None when a name is not
    among the checkpoint's or a layer is not laid out per class, or a picked layer does not fit ``model``."""
    if not set(names) <= set(checkpoint_classes):
        return None
    family = family_of(model)
    bg = int(family.class_background)  # background first, if the family has it
    labels = [*range(bg), *(bg + list(checkpoint_classes).index(n) for n in names)]
    own = model.state_dict()
    rows = {k: pick_label_rows(weights[k], family.class_lead, len(checkpoint_classes) + bg, labels,
                               4 if ".bbox_pred." in k else 1) for k in keys}
    if all(v is not None and v.shape == own[k].shape for k, v in rows.items()):
        return rows
    return None


def coco_rows(tensor: torch.Tensor, category_ids: list[int], rows_per_class: int) -> torch.Tensor | None:
    """The rows of a class layer trained on torchvision's 91 COCO labels for the classes of ``category_ids``
    (background first); None if not such."""
    return pick_label_rows(tensor, 0, len(COCO_LABELS), [0, *category_ids], rows_per_class)


def map_detector_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str, expected: str,
                         classes: list[tuple[int, str]] | None = None,
                         checkpoint_classes: list[str] | None = None, hint: str | None = None) -> ImportedWeights:
    """``weights`` (nasdet's, torchvision's or MMDetection's keys) as a full state_dict of ``model``;
    ``hint``: what a file of another model's keys should be told, in place of the settings that file needs.
    ``expected`` says what model that is (for errors). Class-dependent layers of another shape keep
    ``model``'s init, unless the run's ``classes`` (category id, name; in label order) are COCO's and the
    layers have its 91 labels, or are among the ``checkpoint_classes`` the file names (MMDetection's meta,
    nasdet's ``classes``): then each keeps its own rows. A run on other classes than the named ones, even as
    many, starts them afresh too."""
    own = model.state_dict()
    rename = torchvision_keys(model)
    candidates = [("nasdet", dict(weights))]
    if rename is not None:
        candidates.append(("torchvision", {rename(k): v for k, v in weights.items()}))
    mmdet = mmdet_layout(model)
    if mmdet is not None:
        candidates.append(("mmdetection", mmdet.convert(model, weights)))
    want = _without_counters(own)

    def mismatch(mapped):
        have = _without_counters(mapped)
        return sorted(want - have), sorted(have - want)

    fmt, mapped = min(candidates, key=lambda c: sum(map(len, mismatch(c[1]))))
    missing, unexpected = mismatch(mapped)
    if missing or unexpected:
        looks = describe_weights(weights)
        hint = hint if hint is not None else (
            "; for that file set model.detector: ssdlite, model.layout: torchvision, model.backbone: {name: "
            "mobilenet_v3_large, width_mult: 1.0, reduced_tail: true}" if looks == TORCHVISION_SSDLITE else
            f"; {IMPORTED_TORCHVISION}" if looks.startswith("torchvision's") and "resnet50" not in looks else
            "; for that file set model.detector: ssdlite, model.layout: enot, model.backbone: {name: mobilenet_v2, "
            "width_mult: 1.0}" if "ssd_mnv2 of ENOT" in looks else
            "; for that file set model.detector: ssdlite, model.layout: mmdetection, model.backbone: {name: "
            "mobilenet_v2, width_mult: 1.0}, model.extra_channels: [512, 256, 256, 128] (configs/mmdetection/"
            "ssdlite_mobilenetv2_import_coco.yaml)" if looks.startswith("an MMDetection ssdlite") else "")
        raise CheckpointError(
            f"{source} is not a checkpoint of {expected}: it looks like {looks} "
            f"({len(missing)} of this model's keys missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, "
            f"e.g. {unexpected[:2]}){hint}")
    if fmt == "mmdetection" and mmdet.needs:
        raise CheckpointError(f"{source} is MMDetection's {mmdet.name}, whose function {expected} does not compute: "
                              f"set {mmdet.needs}")
    class_layers = [re.compile(p) for p in family_of(model).class_layers]
    is_class_layer = lambda k: any(r.fullmatch(k) for r in class_layers)  # noqa: E731
    wrong, per_class = [], []
    for k in want:
        if mapped[k].shape != own[k].shape:
            (per_class if is_class_layer(k) else wrong).append(k)
    if wrong:
        k = sorted(wrong)[0]
        raise CheckpointError(
            f"{source} does not fit {expected}: {k} is {tuple(mapped[k].shape)} in the checkpoint but "
            f"{tuple(own[k].shape)} in this model ({len(wrong)} such tensors: another width, backbone or layout?)")
    names = [name for _, name in classes] if classes is not None else None
    picked = False
    if checkpoint_classes and names is not None and names != list(checkpoint_classes):
        per_class = [k for k in want if is_class_layer(k)]  # the same count may still be other classes
        rows = None
        if fmt == "mmdetection" and set(names) <= set(checkpoint_classes):
            rows = {k: pick_label_rows(mapped[k], mmdet.class_lead, len(checkpoint_classes),
                                       [list(checkpoint_classes).index(n) for n in names]) for k in per_class}
        elif fmt == "nasdet":
            rows = rows_by_class_name(model, mapped, per_class, checkpoint_classes, names)
        if rows is not None and all(v is not None and v.shape == own[k].shape for k, v in rows.items()):
            mapped, per_class, picked = {**mapped, **rows}, [], True
    coco = fmt != "mmdetection" and bool(per_class) and classes is not None and all(
        0 < i < len(COCO_LABELS) and COCO_LABELS[i] == name for i, name in classes)
    if coco:  # Faster R-CNN's box deltas are 4 rows per class
        rows = {k: coco_rows(mapped[k], [i for i, _ in classes], 4 if ".bbox_pred." in k else 1) for k in per_class}
        if all(v is not None and v.shape == own[k].shape for k, v in rows.items()):
            mapped, per_class = {**mapped, **rows}, []
        else:
            coco = False
    by_id = False
    if per_class and fmt == "torchvision" and classes is not None and all(i > 0 for i, _ in classes):
        # torchvision's detection references train on a COCO file's category ids as labels (num_classes = the
        # largest id + 1): a set with gaps in its ids (4, 7, ..) has each class's rows at its own id, as COCO's 91
        top = max(i for i, _ in classes) + 1
        rows = {k: pick_label_rows(mapped[k], 0, top, [0, *[i for i, _ in classes]], 4 if ".bbox_pred." in k else 1)
                for k in per_class}
        if all(v is not None and v.shape == own[k].shape for k, v in rows.items()):
            mapped, per_class, by_id = {**mapped, **rows}, [], True
    if per_class:  # other classes: every class-dependent layer starts afresh, not only those of another shape
        per_class = [k for k in want if any(r.fullmatch(k) for r in class_layers)]
    # a checkpoint of the same class count that records no names: a nasdet one written before they were kept, an
    # MMDetection one without its meta (mmdetection-enot's own training loop saves {"epoch", "model", ..})
    unnamed = fmt in ("nasdet", "mmdetection") and not per_class and not checkpoint_classes and classes is not None
    state = {k: own[k] if k in per_class or k not in mapped else mapped[k] for k in own}
    return ImportedWeights(state, fmt, _module_names(per_class), coco, picked, unnamed, by_id)
