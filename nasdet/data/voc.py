"""Pascal VOC (``VOCdevkit/VOC2007`` style folders) parsed into a ``DetectionDataset``.

A root is a VOC year folder holding ``Annotations/<name>.xml``, ``JPEGImages/<name>.jpg`` and
``ImageSets/Main/<split>.txt``. Several roots can be concatenated (VOC07+12: ``root=[voc07, voc12]``,
``split=["trainval", "trainval"]``, or one split name for all roots); images get consecutive ids
``1..N`` in order (roots in the order given, then split-file order). The image's file path
(``.../VOC2007/JPEGImages/000005.jpg``) names it in later messages.

Coordinates: VOC boxes are 1-based inclusive pixel indices. Like torchvision's detection references
and mmdet, a box ``(xmin, ymin, xmax, ymax)`` becomes the 0-based XYXY box
``(xmin - 1, ymin - 1, xmax, ymax)``, so a box covering the whole ``W x H`` image is
``(0, 0, W, H)`` and a one-pixel box has width 1. Objects marked ``difficult`` are kept with
``iscrowd=1`` (ignored by training and evaluation, as the VOC devkit does). Boxes follow the same
rules as COCO: degenerate ones are dropped (one warning with the count), ones leaving the image by
more than 1 px are an error, the rest are clipped. ``category_ids`` are ``1..K``.
"""
from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..files import os_reason, relative_hint
from .coco import BOX_TOLERANCE, check_image_files, fit_box, warn_degenerate
from .dataset import DataError, DetectionDataset, ImageRecord, check_image_sizes
from .yolo import upright_size

__all__ = ["VOC_CLASSES", "load_voc"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _pairs(root, split) -> list[tuple[Path, str]]:
    roots, splits = _as_list(root), _as_list(split)
    if not roots or not splits:
        raise DataError("VOC: no root or no split given")
    if len(roots) == 1 and len(splits) > 1:
        roots = roots * len(splits)
    elif len(splits) == 1 and len(roots) > 1:
        splits = splits * len(roots)
    if len(roots) != len(splits):
        raise DataError(f"VOC: {len(roots)} roots but {len(splits)} splits: {roots} vs {splits}")
    return [(Path(r), str(s)) for r, s in zip(roots, splits)]


def _read_split(root: Path, split: str) -> list[str]:
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    try:
        text = split_file.read_text(encoding="utf-8-sig")
    except FileNotFoundError as e:
        hint = "" if root.is_dir() else f" (the root {root} does not exist{relative_hint(root)})"
        raise DataError(f"{split_file}: split file for split {split!r} does not exist{hint}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{split_file}: cannot read the split file: {os_reason(e)}") from e
    names = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"{split_file}: no images (the split file is empty)")
    return names


def _number(text: str | None, what: str) -> float:
    if text is None or not text.strip():
        raise DataError(f"{what} is missing")
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{what} is not a number: {text.strip()!r}") from None


def _parse_xml(xml_file: Path, label_of: dict[str, int], classes: Sequence[str],
               image_size: Callable[[str | None], tuple[int, int]]):
    """``(width, height, boxes, labels, iscrowd, degenerate_count, filename, sized_by_image)`` of one annotation
    file (``filename``: its ``<filename>``, or None). Without ``<size>``, or with a zero one (some exporters
    write 0 when they do not know), the size is ``image_size(filename)``, the image's own."""
    try:
        tree = ET.parse(xml_file)
    except FileNotFoundError as e:
        raise DataError(f"{xml_file}: annotation file does not exist") from e
    except ET.ParseError as e:
        raise DataError(f"{xml_file}: cannot parse the xml: {e}") from e
    except OSError as e:
        raise DataError(f"{xml_file}: cannot read the annotation file: {os_reason(e)}") from e
    ann = tree.getroot()
    if ann.tag.startswith("{"):  # a default XML namespace (some exporters): VOC's element names without it
        for el in ann.iter():
            el.tag = el.tag.split("}", 1)[-1]
    filename = (ann.findtext("filename") or "").strip() or None
    size = ann.find("size")
    unknown = size is None or all((size.findtext(k) or "").strip() in ("", "0") for k in ("width", "height"))
    if unknown:
        width, height = image_size(filename)
    else:
        dims = []
        for key in ("width", "height"):
            v = _number(size.findtext(key), f"{xml_file}: <size>/<{key}>")
            if v <= 0 or not float(v).is_integer():
                raise DataError(f"{xml_file}: <size>/<{key}> must be a positive integer, got {size.findtext(key)!r}")
            dims.append(int(v))
        width, height = dims

    boxes, labels, crowd, degenerate = [], [], [], 0
    for j, obj in enumerate(ann.findall("object")):
        name = (obj.findtext("name") or "").strip()
        what = f"{xml_file}: object #{j} ({name or 'no name'})"
        if name not in label_of:
            hint = "; a set with other classes lists them in data.classes" if list(classes) == list(VOC_CLASSES) else ""
            raise DataError(f"{what}: unknown class name {name!r} (known classes: {list(classes)}{hint})")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"{what}: no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(bnd.findtext(k), f"{what}: <bndbox>/<{k}>")
                                  for k in ("xmin", "ymin", "xmax", "ymax"))
        diff_text = (obj.findtext("difficult") or "0").strip() or "0"
        try:
            difficult = int(float(diff_text))
        except ValueError:
            raise DataError(f"{what}: <difficult> must be 0 or 1, got {diff_text!r}") from None
        if difficult not in (0, 1):
            raise DataError(f"{what}: <difficult> must be 0 or 1, got {diff_text!r}")
        # 1-based inclusive pixel indices -> 0-based XYXY (torchvision / mmdet convention).
        status, box = fit_box(xmin - 1, ymin - 1, xmax, ymax, width, height)
        if status == "degenerate":
            degenerate += 1
            continue
        if status == "outside":
            raise DataError(
                f"{what}: box (xmin, ymin, xmax, ymax) = ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) lies outside "
                f"the {width}x{height} image by more than {BOX_TOLERANCE:g} px"
            )
        boxes.append(box)
        labels.append(label_of[name])
        crowd.append(difficult)
    return width, height, boxes, labels, crowd, degenerate, filename, unknown


def _image_file(voc_root: Path, name: str, filename: str | None) -> Path:
    """``JPEGImages/<name>.jpg`` as VOC lays it out, or the xml's ``<filename>`` when that file is there instead
    (CVAT and LabelImg export PNG or upper-case ``.JPG`` images so)."""
    file = voc_root / "JPEGImages" / f"{name}.jpg"
    if filename and filename == Path(filename).name and Path(filename).stem == name and not file.is_file():
        named = voc_root / "JPEGImages" / filename
        if named.is_file():
            return named
    return file


def load_voc(
    root: str | Path | Sequence[str | Path],
    split: str | Sequence[str],
    *,
    classes: Sequence[str] = VOC_CLASSES,
    check_files: bool = True,
) -> DetectionDataset:
    """Parse and validate the images of ``<root>/ImageSets/Main/<split>.txt`` (one or several roots)."""
    classes = list(classes)
    if not classes:
        raise DataError("VOC: the class list is empty")
    if len(set(classes)) != len(classes):
        dup = sorted({c for c in classes if classes.count(c) > 1})
        raise DataError(f"VOC: duplicate class names {dup}")
    label_of = {c: k + 1 for k, c in enumerate(classes)}
    pairs = _pairs(root, split)
    source = " + ".join(f"{r} [{s}]" for r, s in pairs)

    records: list[ImageRecord] = []
    seen: dict[tuple[Path, str], str] = {}
    files: list[tuple[Path, int]] = []  # to check: (file, image id)
    degenerate = no_size = 0
    first_degenerate = None
    for voc_root, split_name in pairs:
        names = _read_split(voc_root, split_name)
        key_root = voc_root.resolve()
        for name in names:
            where = f"{voc_root}/ImageSets/Main/{split_name}.txt"
            if (key_root, name) in seen:
                raise DataError(f"{where}: image {voc_root.name}/{name} is already listed in {seen[key_root, name]}")
            seen[key_root, name] = where
            xml_file = voc_root / "Annotations" / f"{name}.xml"
            width, height, boxes, labels, crowd, n_degenerate, filename, sized_by_image = _parse_xml(
                xml_file, label_of, classes,
                lambda filename: upright_size(_image_file(voc_root, name, filename), f"{xml_file} has no <size>")[:2])
            degenerate += n_degenerate
            first_degenerate = first_degenerate or (str(xml_file) if n_degenerate else None)
            no_size += sized_by_image
            image_id = len(records) + 1
            file = _image_file(voc_root, name, filename)
            if check_files:
                files.append((file, image_id))
            records.append(ImageRecord(
                image_id=image_id, file=file, width=width, height=height,
                boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                labels=np.asarray(labels, dtype=np.int64), iscrowd=np.asarray(crowd, dtype=np.int64),
            ))
    check_image_files(source, files, "from JPEGImages")
    if check_files:  # each image the size its <size> says (the header read): found now, not when first read
        check_image_sizes(source, records)
    warn_degenerate(source, degenerate, first_degenerate)
    if no_size:
        warnings.warn(f"{source}: {no_size} annotation file{'s have' if no_size != 1 else ' has'} no <size> (or a "
                      "zero one): the image's own size is used", UserWarning, stacklevel=2)
    return DetectionDataset(records, classes, list(range(1, len(classes) + 1)), source=source)
