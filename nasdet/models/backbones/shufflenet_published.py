"""Published architectures by name: the DetNAS and SPOS choice lists, as (backbone, arch) of nasdet.

``tune.arch: COCO-FPN-300M`` trains one of them instead of a searched arch. Choice lists are copied
from megvii-model/DetNAS ``maskrcnn_benchmark/modeling/backbone/detnasnet.py`` (identical in
megvii-model/ShuffleNet-Series ``DetNAS/network.py``, which adds the two VOC lists) and
megvii-model/SinglePathOneShot ``README.md``. Index order: 0 = ShuffleNet 3x3, 1 = 5x5, 2 = 7x7,
3 = Xception. The published figures (ImageNet classification form: last 1x1 conv + FC 1000) are
kept beside each list; ``tests/test_detnas.py`` checks the sizes nasdet builds against them.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...space import ArchError
from .shufflenet_spos import BACKBONE_NAMES, arch_from_list


@dataclass(frozen=True)
class PublishedArch:
    backbone: str  # a nasdet backbone name (model.backbone.name)
    choices: tuple[int, ...]  # DetNAS's flat list
    source: str
    figures: str  # what the authors report


_LIST_1_3G = (0, 0, 3, 1, 2, 1, 0, 2, 0, 3, 1, 2, 3, 3, 2, 0, 2, 1, 1, 3,
              2, 0, 2, 2, 2, 1, 3, 1, 0, 3, 3, 3, 1, 3, 3, 3, 3, 3, 3, 3)

PUBLISHED_ARCHS: dict[str, PublishedArch] = {
    "COCO-FPN-300M": PublishedArch(
        "detnas_300M", (2, 1, 2, 0, 2, 1, 1, 2, 3, 3, 1, 3, 0, 0, 3, 1, 3, 1, 3, 2), "DetNAS detnasnet.py",
        "300M FLOPs, 3.5M params, ImageNet top-1 err 26.2, COCO minival AP 36.6 (Faster R-CNN FPN 1x)"),
    "COCO-RetinaNet-300M": PublishedArch(
        "detnas_300M", (2, 3, 1, 1, 3, 2, 1, 3, 3, 1, 1, 1, 3, 3, 2, 0, 3, 3, 3, 3), "DetNAS detnasnet.py",
        "300M FLOPs, 3.7M params, ImageNet top-1 err 26.0, COCO minival AP 34.1 (RetinaNet 1x)"),
    "COCO-FPN-1.3G": PublishedArch(
        "detnas_1.3G", _LIST_1_3G, "DetNAS detnasnet.py",
        "1.3G FLOPs, 10.4M params, ImageNet top-1 err 22.8, COCO minival AP 40.3 (Faster R-CNN FPN 1x)"),
    "COCO-FPN-3.8G": PublishedArch(
        "detnas_3.8G", _LIST_1_3G, "DetNAS detnasnet.py (the same list as 1.3G, wider channels)",
        "3.8G FLOPs, 29.5M params, ImageNet top-1 err 21.6, COCO minival AP 42.0 (Faster R-CNN FPN 1x)"),
    "VOC-FPN-300M": PublishedArch(
        "detnas_300M", (2, 1, 0, 3, 1, 3, 0, 3, 2, 0, 1, 1, 3, 3, 3, 3, 3, 3, 3, 1), "ShuffleNet-Series DetNAS/network.py",
        "300M FLOPs, 3.7M params, ImageNet top-1 err 25.9, VOC mAP 81.5 (Faster R-CNN FPN)"),
    "VOC-RetinaNet-300M": PublishedArch(
        "detnas_300M", (1, 3, 0, 0, 2, 3, 3, 3, 2, 3, 3, 3, 3, 2, 2, 0, 2, 3, 1, 1), "ShuffleNet-Series DetNAS/network.py",
        "300M FLOPs, 3.5M params, ImageNet top-1 err 25.4, VOC mAP 80.1 (RetinaNet)"),
    "SPOS-ImageNet": PublishedArch(
        "detnas_300M", (2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3), "SinglePathOneShot README.md",
        "323M FLOPs, 3.5M params, ImageNet top-1 err 25.6 (block search on ImageNet, not detection)"),
}


def published_arch(name: str) -> tuple[str, dict[str, int]]:
    """``(backbone name, backbone arch)`` of a published architecture, e.g. ``("detnas_300M", {...})``.

    The arch has the backbone's own choice names (no ``backbone.`` prefix). An unknown name is an
    ``ArchError`` listing the known ones.
    """
    if name not in PUBLISHED_ARCHS:
        raise ArchError(f"{name!r} is not a published architecture; known: {', '.join(PUBLISHED_ARCHS)}")
    p = PUBLISHED_ARCHS[name]
    return p.backbone, arch_from_list(p.choices, BACKBONE_NAMES[p.backbone])
