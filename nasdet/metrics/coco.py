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


def coco_evaluate(gt: dict, detections: list[dict], backend: str = "faster") -> dict[str, float]:
    """Box metrics of ``detections`` against ``gt`` (a COCO-format dict, e.g. from ``to_coco_gt``).

    ``detections``: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per box.
    No detections at all gives 0.0 everywhere (COCOeval itself refuses an empty result list).
    ``backend``: "faster" (faster-coco-eval) or "pycocotools"; they agree to float precision.
    """
    if not gt.get("annotations"):
        raise DataError("ground truth has no annotations: mAP is undefined")
    if not detections:
        return {k: 0.0 for k in COCO_METRIC_NAMES}
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
    return {k: float(v) for k, v in zip(COCO_METRIC_NAMES, stats)}
