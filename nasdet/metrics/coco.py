"""COCO box mAP through COCOeval: faster-coco-eval by default, pycocotools on request (same numbers)."""
from __future__ import annotations

import contextlib
import io

import numpy as np

from ..errors import ConfigError, DataError

# Order of COCOeval.stats for iouType="bbox".
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def own_dicts(gt: dict) -> dict:
    """``gt`` with its own image, annotation and category dicts. COCO's loaders and COCOeval (both backends) add
    keys to those dicts (``area``, ``id``, ``iscrowd``, ``segmentation``, ``ignore``) and change nothing deeper,
    so a one-level copy keeps the caller's data as it was (a test checks); a deep copy was 40 % of a
    faster-coco-eval evaluation of the demo's search split."""
    return {**gt, **{k: [dict(x) for x in gt[k]] for k in ("images", "annotations", "categories") if k in gt}}


# COCOeval's default area range "all" (Params.areaRng[0]): a box outside it is not counted.
_ALL_AREAS = (0.0, 1e5**2)


def gt_boxes_per_category(gt: dict, area_range: tuple[float, float] = _ALL_AREAS) -> dict[int, int]:
    """Category id -> ground-truth boxes COCOeval counts at area "all": non-crowd (VOC's difficult boxes are
    crowd in ``to_coco_gt``), on one of ``gt``'s images, of an area in ``area_range``."""
    counts = {int(c["id"]): 0 for c in gt.get("categories", [])}
    images = {im["id"] for im in gt.get("images", [])}
    for a in gt["annotations"]:
        area = a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3]
        if not a.get("iscrowd", 0) and a["image_id"] in images and area_range[0] <= area <= area_range[1]:
            counts[int(a["category_id"])] = counts.get(int(a["category_id"]), 0) + 1
    return counts


def _class_names(gt: dict) -> dict[int, str]:
    """Category id -> the key ``per_class`` uses, in ``gt``'s category order (``to_coco_gt``'s: label order); a
    name two categories share gets its id added, so neither is lost."""
    cats = gt.get("categories", [])
    seen = [c["name"] for c in cats]
    return {int(c["id"]): c["name"] if seen.count(c["name"]) == 1 else f"{c['name']} (id {c['id']})" for c in cats}


def per_class_ap(ev, gt: dict) -> dict[str, dict]:
    """Class name -> ``{"AP", "AP50", "gt_boxes"}`` from an accumulated COCOeval ``ev`` (either backend): its
    ``eval["precision"]`` [T, R, K, A, M] at area "all" and maxDets 100, averaged as ``summarize`` averages
    the whole set (entries of -1 left out), so a class's AP is the summary AP of a run on that class alone.
    A class without a counted val box has no AP: None (JSON null), not 0 or -1 (COCOeval leaves it out of
    the mean)."""
    p = ev.params
    precision = ev.eval["precision"][:, :, :, p.areaRngLbl.index("all"), p.maxDets.index(100)]
    at50 = precision[np.where(0.5 == p.iouThrs)[0]]  # as summarize picks iouThr=.5
    k_of = {int(c): k for k, c in enumerate(p.catIds)}
    counts = gt_boxes_per_category(gt, tuple(p.areaRng[p.areaRngLbl.index("all")]))
    out = {}
    for cid, name in _class_names(gt).items():
        k = k_of.get(cid)
        out[name] = {"AP": None if k is None else _mean_of_defined(precision[:, :, k]),
                     "AP50": None if k is None else _mean_of_defined(at50[:, :, k]),
                     "gt_boxes": counts.get(cid, 0)}
    return out


def _mean_of_defined(s: np.ndarray) -> float | None:
    """``summarize``'s mean over the entries that are not -1 (None where none is)."""
    s = s[s > -1]
    return float(np.mean(s)) if len(s) else None


def coco_evaluate(gt: dict, detections: list[dict], backend: str = "faster",
                  per_class: bool = False) -> dict:
    """Box metrics of ``detections`` against ``gt`` (a COCO-format dict, e.g. from ``to_coco_gt``).

    ``detections``: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per box.
    No detections at all gives 0.0 everywhere (COCOeval itself refuses an empty result list).
    ``backend``: "faster" (faster-coco-eval) or "pycocotools"; they agree to float precision.
    ``per_class``: add ``"per_class"``: class name -> ``{"AP", "AP50", "gt_boxes"}`` (``per_class_ap``), read
    from the same run; the summary figures are the same either way.
    """
    if not gt.get("annotations"):
        raise DataError("ground truth has no annotations: mAP is undefined")
    if not detections:
        out = {k: 0.0 for k in COCO_METRIC_NAMES}
        if per_class:  # nothing detected: 0 where a class has a counted box, else no AP (as COCOeval would say)
            counts = gt_boxes_per_category(gt)
            out["per_class"] = {}
            for cid, name in _class_names(gt).items():
                ap = 0.0 if counts.get(cid) else None
                out["per_class"][name] = {"AP": ap, "AP50": ap, "gt_boxes": counts.get(cid, 0)}
        return out
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster as COCOeval
    elif backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        raise ConfigError(f"unknown COCO eval backend {backend!r}: use 'faster' or 'pycocotools'")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = own_dicts(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = np.asarray(ev.stats, dtype=np.float64)
    # -1 (COCOeval's value where a size range has no ground truth) is kept: "no such objects" is not "all missed".
    out = {k: float(v) for k, v in zip(COCO_METRIC_NAMES, stats)}
    if per_class:
        out["per_class"] = per_class_ap(ev, gt)
    return out
