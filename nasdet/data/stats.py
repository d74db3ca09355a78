"""What is in a data set: images, boxes per class and box sizes (no pixels are decoded).

Box-size counts (relative-size histogram, COCO small / medium / large) cover the boxes training and
evaluation use, i.e. crowd / difficult boxes excluded; those are counted separately.
"""
from __future__ import annotations

import numpy as np
from rich.markup import escape
from rich.table import Table

from .dataset import DetectionDataset

__all__ = ["dataset_stats", "stats_tables", "REL_SIZE_EDGES", "REL_SIZE_BINS", "COCO_AREA_BINS"]

# sqrt(box area) / sqrt(image area): the side of the box relative to the image's side.
REL_SIZE_EDGES = (0.04, 0.08, 0.16, 0.32, 0.64)
REL_SIZE_BINS = ("<4%", "4-8%", "8-16%", "16-32%", "32-64%", ">=64%")
# COCO's area ranges (absolute pixels): small < 32^2 <= medium < 96^2 <= large.
COCO_AREA_BINS = ("small", "medium", "large")
_COCO_EDGES = (32.0**2, 96.0**2)


def dataset_stats(ds: DetectionDataset) -> dict:
    """Counts over ``ds`` as a json-serialisable dict.

    Keys: ``source``, ``images``, ``boxes`` (all, crowd included), ``crowd_boxes`` (COCO crowd / VOC
    difficult), ``images_without_boxes`` (no box at all), ``images_only_crowd`` (boxes, all crowd),
    ``classes`` (per class name: ``id``, ``boxes`` and ``crowd`` counts, ``images`` containing a
    non-crowd box of it), ``relative_size`` (``REL_SIZE_BINS`` -> count of non-crowd boxes),
    ``coco_area`` (``small`` / ``medium`` / ``large`` -> count of non-crowd boxes, binned by the annotation's
    ``area`` where it has one, as the evaluation bins them, else by the box's).
    """
    k = ds.num_classes
    boxes_per = np.zeros(k + 1, dtype=np.int64)
    crowd_per = np.zeros(k + 1, dtype=np.int64)
    images_per = np.zeros(k + 1, dtype=np.int64)
    rel_hist = np.zeros(len(REL_SIZE_BINS), dtype=np.int64)
    area_hist = np.zeros(len(COCO_AREA_BINS), dtype=np.int64)
    n_boxes = n_crowd = no_boxes = only_crowd = 0
    for rec in ds.records:
        n = len(rec.labels)
        n_boxes += n
        if n == 0:
            no_boxes += 1
            continue
        crowd = rec.iscrowd != 0
        n_crowd += int(crowd.sum())
        if crowd.all():
            only_crowd += 1
        np.add.at(crowd_per, rec.labels[crowd], 1)
        labels, boxes = rec.labels[~crowd], rec.boxes[~crowd].astype(np.float64)
        np.add.at(boxes_per, labels, 1)
        images_per[np.unique(labels)] += 1
        area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
        rel = np.sqrt(area) / np.sqrt(float(rec.width) * float(rec.height))
        rel_hist += np.bincount(np.digitize(rel, REL_SIZE_EDGES), minlength=len(REL_SIZE_BINS))
        # COCO's bins are taken on the annotation's own area (a segmentation's) where it has one, as the
        # evaluation's APs / APm / APl are; box areas otherwise (VOC, YOLO)
        coco = rec.areas[~crowd].astype(np.float64) if rec.areas is not None else area
        area_hist += np.bincount(np.digitize(coco, _COCO_EDGES), minlength=len(COCO_AREA_BINS))
    return {
        "source": ds.source,
        "images": len(ds.records),
        "boxes": n_boxes,
        "crowd_boxes": n_crowd,
        "images_without_boxes": no_boxes,
        "images_only_crowd": only_crowd,
        "classes": {
            name: {"id": int(cid), "boxes": int(boxes_per[i + 1] + crowd_per[i + 1]),
                   "crowd": int(crowd_per[i + 1]), "images": int(images_per[i + 1])}
            for i, (name, cid) in enumerate(zip(ds.classes, ds.category_ids))
        },
        "relative_size": {b: int(c) for b, c in zip(REL_SIZE_BINS, rel_hist)},
        "coco_area": {b: int(c) for b, c in zip(COCO_AREA_BINS, area_hist)},
    }


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "-"


def stats_tables(stats: dict, title: str) -> list[Table]:
    """``dataset_stats`` output as rich tables: summary, per class, relative sizes, COCO areas. ``title`` and
    class names are plain text (a source's ``[train]`` is not rich markup)."""
    title = escape(title)
    summary = Table(title=title)
    summary.add_column("images", justify="right")
    summary.add_column("boxes", justify="right")
    summary.add_column("crowd/difficult", justify="right")
    summary.add_column("images without boxes", justify="right")
    summary.add_column("images with only crowd", justify="right")
    summary.add_column("classes", justify="right")
    summary.add_row(str(stats["images"]), str(stats["boxes"]), str(stats["crowd_boxes"]),
                    str(stats["images_without_boxes"]), str(stats["images_only_crowd"]), str(len(stats["classes"])))

    # images: those a class's non-crowd box is in (the boxes training learns and val scores), so a class whose
    # boxes in an image are all difficult does not count it (a YOLO copy of a VOC set, without difficult, does)
    per_class = Table(title=f"{title}: boxes per class",
                      caption="images*: those with a non-crowd / non-difficult box of the class")
    for col in ("class", "id", "boxes", "crowd/difficult", "images*", "share of boxes"):
        per_class.add_column(col, justify="left" if col == "class" else "right")
    for name, c in stats["classes"].items():
        per_class.add_row(escape(name), str(c["id"]), str(c["boxes"]), str(c["crowd"]), str(c["images"]),
                          _pct(c["boxes"], stats["boxes"]))

    tables = [summary, per_class]
    for key, sub, caption in (
        ("relative_size", "box side / image side", "sqrt(box area / image area), non-crowd boxes"),
        ("coco_area", "COCO area", "small < 32², medium < 96² px, non-crowd boxes"),
    ):
        hist = stats[key]
        total = sum(hist.values())
        t = Table(title=f"{title}: {sub}", caption=caption)
        for b in hist:
            t.add_column(b, justify="right")
        t.add_row(*[str(n) for n in hist.values()])
        t.add_row(*[_pct(n, total) for n in hist.values()])
        tables.append(t)
    return tables
