"""COCO-format annotations (a json file + an image folder) parsed into a ``DetectionDataset``.

Everything that can be checked without decoding pixels is checked here, when the data set is
opened: structure of the json, ids, categories, boxes, image sizes and (``check_files``) that every
image file exists and is the size the json gives (its header read, no pixels decoded). Each problem raises
``DataError`` naming the annotation file and the id at fault.

Classes are the categories sorted by id; labels are contiguous ``1..K`` and
``dataset.category_ids[k - 1]`` is the original id of label ``k``. Boxes ``[x, y, w, h]`` become
absolute XYXY. A box with ``w <= 0`` or ``h <= 0`` is degenerate: it is dropped (one warning for
the whole file gives the count). A box that leaves the image by more than ``BOX_TOLERANCE`` pixels
is an error; one within the tolerance is clipped to the image. Crowd boxes are kept with
``iscrowd=1`` (training and evaluation ignore them). Images without annotations are kept.
"""
from __future__ import annotations

import glob
import json
import math
import os
import stat
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..files import os_reason, relative_hint
from ..user_data import IMAGE_SUFFIXES
from .dataset import DataError, DetectionDataset, ImageRecord, check_image_sizes

__all__ = ["load_coco", "BOX_TOLERANCE"]

# How far (pixels) a box may leave the image before it is an error rather than clipped.
BOX_TOLERANCE = 1.0
# How many missing image files an error message lists before "... and N more".
MAX_LISTED = 5


def _is_number(v) -> bool:
    """A finite json number (bool excluded). ``type(...) is`` keeps this fast on COCO-sized files."""
    t = type(v)
    return t is int or (t is float and math.isfinite(v))


def _is_int(v) -> bool:
    t = type(v)
    return t is int or (t is float and math.isfinite(v) and v.is_integer())


def fit_box(x1: float, y1: float, x2: float, y2: float, width: int, height: int):
    """``(status, box)`` for an absolute XYXY box on a ``width x height`` image.

    status ``"ok"``: ``box`` is the box clipped to the image; ``"degenerate"``: zero or negative
    width/height (before or after clipping): drop it; ``"outside"``: it leaves the image by more
    than ``BOX_TOLERANCE`` pixels.
    """
    if x2 <= x1 or y2 <= y1:
        return "degenerate", None
    t = BOX_TOLERANCE
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        return "outside", None
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        return "degenerate", None
    return "ok", (x1, y1, x2, y2)


def missing_files_message(source: str, missing: Sequence[tuple[Path, object]], total: int, where: str,
                          what: str = "missing") -> str:
    """An error message listing the first ``MAX_LISTED`` missing (or ``what``) images and the count."""
    shown = ", ".join(f"{p} (image id {i})" for p, i in missing[:MAX_LISTED])
    more = f", and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
    hint = ""
    if what == "missing":  # an image converted after labelling (a .jpg named, a .png there): say so
        there = [q for p, _ in missing[:MAX_LISTED] for q in sorted(p.parent.glob(glob.escape(p.stem) + ".*"))
                 if q != p and q.suffix.lower() in IMAGE_SUFFIXES]
        if there:
            hint = (f" ({there[0].name} is there under another extension: name it in the annotations, e.g. VOC's "
                    "<filename> or COCO's file_name, or convert it)")
    return f"{source}: {len(missing)} of {total} image files are {what} {where}: {shown}{more}{hint}"


def check_image_files(source: str, files: Sequence[tuple[Path, object]], where: str) -> None:
    """``DataError`` naming the missing images (first) or the empty ones (a copy or download cut short), by id:
    one stat each, as cheap as ``is_file``."""
    sizes = []
    for path, _ in files:
        try:
            st = path.stat()
            sizes.append(st.st_size if stat.S_ISREG(st.st_mode) else None)
        except OSError:
            sizes.append(None)
    for what, bad in (("missing", None), ("empty (0 bytes)", 0)):
        listed = [f for f, size in zip(files, sizes) if size == bad]
        if listed:
            raise DataError(missing_files_message(source, listed, len(files), where, what))


def warn_degenerate(source: str, count: int, first: str | None = None) -> None:
    """One warning for the boxes of no area dropped, naming the ``first`` (where to find it: a COCO annotation id, a
    VOC xml, a YOLO label file): the count alone left a user of a large set nothing to fix."""
    if count:
        warnings.warn(
            f"{source}: dropped {count} degenerate box{'es' if count != 1 else ''} "
            "(zero or negative width or height: swapped corners, a point)" + (f", the first in {first}" if first else ""),
            UserWarning,
            stacklevel=3,
        )


def _read_json(ann_file: Path):
    try:
        with open(ann_file, encoding="utf-8-sig") as f:  # a BOM (Windows editors) is allowed
            return json.load(f)
    except FileNotFoundError as e:
        raise DataError(f"{ann_file}: annotation file does not exist{relative_hint(ann_file)}") from e
    except json.JSONDecodeError as e:
        raise DataError(
            f"{ann_file}: not valid json: {e}"  # json's own "<what>: line L column C (char N)" (its "... at at")
        ) from e
    except UnicodeDecodeError as e:
        raise DataError(f"{ann_file}: not valid json: not UTF-8 text ({e})") from e
    except OSError as e:
        raise DataError(f"{ann_file}: cannot read the annotation file: {os_reason(e)}") from e


def load_coco(ann_file: str | Path, image_dir: str | Path, *, check_files: bool = True) -> DetectionDataset:
    """Parse and validate a COCO json; images are ``image_dir / file_name``, sorted by image id."""
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    src = str(ann_file)
    data = _read_json(ann_file)
    if not isinstance(data, dict):
        raise DataError(f"{src}: the top level must be a json object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{src}: missing top-level key {key!r}")
        if not isinstance(data[key], list):
            raise DataError(f"{src}: top-level {key!r} must be a list, got {type(data[key]).__name__}")
    if not data["images"]:
        raise DataError(f"{src}: no images (the 'images' list is empty)")
    if not data["categories"]:
        raise DataError(f"{src}: no categories (the 'categories' list is empty)")

    # ---------------------------------------------------------------------------- categories
    cat_names: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise DataError(f"{src}: category #{i} has no integer 'id': {cat!r}")
        cid = int(cat["id"])
        if cid in cat_names:
            raise DataError(f"{src}: duplicate category id {cid}")
        name = cat.get("name")
        if not isinstance(name, str) or not name:
            raise DataError(f"{src}: category id {cid} has no 'name'")
        cat_names[cid] = name
    category_ids = sorted(cat_names)
    label_of = {cid: k + 1 for k, cid in enumerate(category_ids)}

    # -------------------------------------------------------------------------------- images
    images: dict[int, dict] = {}
    id_of_file: dict[str, int] = {}  # one image, one id (VOC and YOLO refuse a file listed twice too)
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            raise DataError(f"{src}: image #{i} has no integer 'id'")
        iid = int(img["id"])
        if iid in images:
            raise DataError(f"{src}: duplicate image id {iid}")
        for key in ("width", "height"):
            if key not in img:
                raise DataError(f"{src}: image id {iid} has no '{key}'")
            if not _is_int(img[key]) or img[key] <= 0:
                raise DataError(f"{src}: image id {iid} has an invalid {key} {img[key]!r} (need a positive integer)")
        fname = img.get("file_name")
        if not isinstance(fname, str) or not fname:
            raise DataError(f"{src}: image id {iid} has no 'file_name'")
        inside = os.path.normpath(fname)
        if os.path.isabs(inside) or inside == os.pardir or inside.startswith(os.pardir + os.sep):
            # a link or copy of it (to-yolo) would take a file from outside the data set
            raise DataError(f"{src}: image id {iid} has file_name {fname!r}, which points outside the image "
                            f"folder {image_dir}")
        if inside in id_of_file:  # its copy would train the image's objects as background, or land in another split
            raise DataError(f"{src}: image ids {id_of_file[inside]} and {iid} have the same file_name {fname!r}: "
                            "one image, one entry (its annotations under that one id)")
        id_of_file[inside] = iid
        images[iid] = {"file": image_dir / fname, "width": int(img["width"]), "height": int(img["height"]),
                       "boxes": [], "labels": [], "iscrowd": [], "areas": []}

    if check_files:
        if not image_dir.is_dir():
            raise DataError(f"{src}: image folder {image_dir} does not exist{relative_hint(image_dir)}")
        check_image_files(src, [(im["file"], iid) for iid, im in sorted(images.items())], f"under {image_dir}")

    # --------------------------------------------------------------------------- annotations
    degenerate, first_degenerate = 0, None
    ann_ids: set = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise DataError(f"{src}: annotation #{i} is not a json object")
        aid = ann.get("id", f"#{i}")
        if "id" in ann:  # pycocotools indexes annotations by id: a duplicate would silently replace a box
            key = aid if isinstance(aid, (int, str)) else repr(aid)
            if key in ann_ids:
                raise DataError(f"{src}: duplicate annotation id {aid!r} (annotation #{i}; ids must be unique)")
            ann_ids.add(key)
        what = f"{src}: annotation id {aid}"
        iid = ann.get("image_id")
        if not _is_int(iid) or int(iid) not in images:
            raise DataError(f"{what}: image_id {iid!r} is not among the images")
        im = images[int(iid)]
        cid = ann.get("category_id")
        if not _is_int(cid) or int(cid) not in label_of:
            raise DataError(
                f"{what} (image id {iid}): category_id {cid!r} is not among the categories "
                f"(known ids: {category_ids})"
            )
        bbox = ann.get("bbox")
        if bbox is None:
            raise DataError(f"{what} (image id {iid}): no 'bbox'")
        if (type(bbox) is not list or len(bbox) != 4 or not _is_number(bbox[0]) or not _is_number(bbox[1])
                or not _is_number(bbox[2]) or not _is_number(bbox[3])):
            raise DataError(f"{what} (image id {iid}): malformed bbox {bbox!r} (need [x, y, w, h], 4 finite numbers)")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1):
            raise DataError(f"{what} (image id {iid}): iscrowd must be 0 or 1, got {crowd!r}")
        x, y, w, h = (float(v) for v in bbox)
        status, box = fit_box(x, y, x + w, y + h, im["width"], im["height"])
        if status == "degenerate":
            degenerate += 1
            first_degenerate = first_degenerate or f"annotation id {aid} (image id {iid}, bbox {bbox})"
            continue
        if status == "outside":
            raise DataError(
                f"{what} (image id {iid}): bbox {bbox} (XYXY [{x:g}, {y:g}, {x + w:g}, {y + h:g}]) lies outside "
                f"the {im['width']}x{im['height']} image by more than {BOX_TOLERANCE:g} px"
            )
        im["boxes"].append(box)
        im["labels"].append(label_of[int(cid)])
        im["iscrowd"].append(int(crowd))
        # COCO's own area (of the segmentation) decides APs/APm/APl; box area when absent.
        area = ann.get("area")
        im["areas"].append(float(area) if _is_number(area) and area > 0 else (box[2] - box[0]) * (box[3] - box[1]))

    records = [
        ImageRecord(
            image_id=iid, file=im["file"], width=im["width"], height=im["height"],
            boxes=np.asarray(im["boxes"], dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(im["labels"], dtype=np.int64), iscrowd=np.asarray(im["iscrowd"], dtype=np.int64),
            areas=np.asarray(im["areas"], dtype=np.float32),
        )
        for iid, im in sorted(images.items())
    ]
    if check_files:
        check_image_sizes(src, records)
    warn_degenerate(src, degenerate, first_degenerate)
    return DetectionDataset(records, [cat_names[c] for c in category_ids], category_ids, source=src)
