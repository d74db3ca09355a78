"""How sure is a ranking of detectors by COCO AP on a few hundred images? A paired bootstrap over images.

COCO AP is not a mean over images, so a resample cannot average per-image scores: each resample (the same
multiset of images for every candidate: *paired*) re-runs COCOeval's accumulation on the per-image
matches that ``COCOeval.evaluate`` computed once (pycocotools' ``evalImgs``). On the identity sample
this gives pycocotools' own AP and AP50 to the last bit (tested), so the bootstrap measures the noise of
exactly the number the search ranks by.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from ..errors import DataError
from .coco import own_dicts


class PooledMatches(NamedTuple):
    """One category's matches of every image laid end to end in image order (``ImageMatches._pool``)."""

    has: np.ndarray  # [images] bool: the image has matches (detections or ground truth) in this category
    offsets: np.ndarray  # [images]: where its detections start
    lengths: np.ndarray  # [images]: how many it has
    npig: np.ndarray  # [images]: its non-ignored ground truth count
    scores: np.ndarray  # [D]
    tp: np.ndarray  # [T x D] bool: matched and not ignored, per IoU threshold
    fp: np.ndarray  # [T x D] bool: neither matched nor ignored
    by_score: np.ndarray  # [D]: COCOeval's order (descending score, ties in pooled order)
    image_by_score: np.ndarray  # [D]: the image of each detection in that order
    ties: bool  # two detections of one image have equal scores
    fp_by_score: np.ndarray  # [T x D] bool: ``fp`` in that order
    tp_rows: np.ndarray  # [P]: the IoU threshold of each true positive in that order (row-major: by threshold, then order)
    tp_cols: np.ndarray  # [P]: its position in that order


class ImageMatches:
    """One detector's per-image, per-category matches on one ground truth (COCOeval.evaluate, area "all",
    100 detections per image), ready to be re-accumulated over any multiset of images."""

    def __init__(self, gt: dict, detections: Sequence[dict]):
        if not gt.get("annotations"):
            raise DataError("ground truth has no annotations: mAP is undefined")
        self.image_ids = sorted({int(im["id"]) for im in gt["images"]})
        self.num_images = len(self.image_ids)
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = own_dicts(gt)
            coco_gt.createIndex()
            params_source = COCOeval(coco_gt, iouType="bbox")
            self.iou_thresholds = np.asarray(params_source.params.iouThrs)
            self.recall_thresholds = np.asarray(params_source.params.recThrs)
            self.max_dets = int(params_source.params.maxDets[-1])
            cat_ids = list(params_source.params.catIds)
            # per category: image index -> (scores, matched [T x D], ignored [T x D], non-ignored gt count)
            self.per_category: list[dict[int, tuple]] = [{} for _ in cat_ids]
            if detections:
                coco_dt = coco_gt.loadRes([dict(d) for d in detections])
                ev = COCOeval(coco_gt, coco_dt, "bbox")
                ev.evaluate()
                n_area, n_img = len(ev.params.areaRng), len(ev.params.imgIds)
                assert list(ev.params.imgIds) == self.image_ids
                for k in range(len(cat_ids)):
                    for i in range(n_img):
                        e = ev.evalImgs[k * n_area * n_img + i]  # area range 0 = "all"
                        if e is None:
                            continue
                        self.per_category[k][i] = (
                            np.asarray(e["dtScores"][:self.max_dets], dtype=np.float64),
                            np.asarray(e["dtMatches"][:, :self.max_dets]) != 0,
                            np.asarray(e["dtIgnore"][:, :self.max_dets]).astype(bool),
                            int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)))
            else:  # no detection at all (COCOeval refuses an empty result): every category with ground truth scores 0
                t = len(self.iou_thresholds)
                for k, c in enumerate(cat_ids):
                    for i, img in enumerate(self.image_ids):
                        anns = [a for a in coco_gt.imgToAnns[img] if a["category_id"] == c]
                        if anns:
                            n = sum(1 for a in anns if not a.get("iscrowd", 0) and not a.get("ignore", 0))
                            self.per_category[k][i] = (np.zeros(0), np.zeros((t, 0), bool), np.zeros((t, 0), bool), n)
        self._pooled = [self._pool(per_image) for per_image in self.per_category]

    def _pool(self, per_image: dict[int, tuple]) -> PooledMatches:
        """One category's per-image matches laid end to end in image order, with each image's offset and
        length, so that a resample gathers its detections with one index array instead of a Python loop.

        Also the pooled detections' order by score (COCOeval's: descending, ties in pooled order) and whether
        two detections of one image tie on score: without such ties a resample's order is that order with each
        detection repeated as often as its image is drawn, and needs no sort of its own."""
        t = len(self.iou_thresholds)
        has = np.zeros(self.num_images, bool)
        lengths = np.zeros(self.num_images, np.int64)
        npig = np.zeros(self.num_images, np.int64)
        parts = [per_image[i] for i in sorted(per_image)]
        for i in per_image:
            has[i], lengths[i], npig[i] = True, len(per_image[i][0]), per_image[i][3]
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        scores = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
        matched = np.concatenate([p[1] for p in parts], axis=1) if parts else np.zeros((t, 0), bool)
        ignored = np.concatenate([p[2] for p in parts], axis=1) if parts else np.zeros((t, 0), bool)
        image_of = np.repeat(np.arange(self.num_images), lengths)
        by_score = np.argsort(-scores, kind="mergesort")
        # a tie inside one image: equal scores next to each other in the pooled order (sorted by image, then score)
        within = np.lexsort((-scores, image_of))
        ties = bool(np.any((np.diff(image_of[within]) == 0) & (np.diff(scores[within]) == 0)))
        tp, fp = matched & ~ignored, ~matched & ~ignored
        tp_rows, tp_cols = np.nonzero(tp[:, by_score])
        return PooledMatches(has, offsets, lengths, npig, scores, tp, fp, by_score, image_of[by_score], ties,
                             fp[:, by_score], tp_rows, tp_cols)

    def _precision_at_true_positives(self, c: PooledMatches, counts: np.ndarray, npig: int) -> np.ndarray:
        """COCOeval's interpolated precision [T x R] of one category on a resample without score ties inside an
        image, from its true positives alone (4x faster than the cumulative sums over every detection; the same
        values to the bit). The resample's order is ``by_score`` with each detection repeated ``w`` times (its
        image's draws). Precision rises only at a true positive and a recall threshold is first reached at one,
        so the envelope at the threshold's position is the largest precision at a true positive from there on.
        At the k-th true positive copy the counts are k and the false positives before it (a cumulative sum of
        ``fp x w`` in that order), which give COCOeval's floats through its own expressions."""
        t_count, r_count = len(self.iou_thresholds), len(self.recall_thresholds)
        w = counts[c.image_by_score]
        fp_before = np.cumsum(c.fp_by_score * w, axis=1)  # [T x D]: false positives up to each detection
        copies = w[c.tp_cols]
        rows = np.repeat(c.tp_rows, copies)
        per_row = np.bincount(rows, minlength=t_count)
        longest = int(per_row.max()) if len(rows) else 0
        if longest == 0:
            return np.zeros((t_count, r_count))
        k = np.arange(len(rows)) - np.repeat(np.cumsum(per_row) - per_row, per_row) + 1  # 1.. within each row
        tp = k.astype(np.float64)
        fp = np.repeat(fp_before[c.tp_rows, c.tp_cols], copies).astype(np.float64)
        pr = np.full((t_count, longest), -1.0)
        pr[rows, k - 1] = tp / (fp + tp + np.spacing(1))
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # the envelope (the padding never wins)
        reached = np.searchsorted(np.arange(1, longest + 1, dtype=np.float64) / npig, self.recall_thresholds,
                                  side="left")  # the same recalls k / npig in every row
        ok = reached[None, :] < per_row[:, None]
        return np.where(ok, pr[:, np.minimum(reached, longest - 1)], 0.0)

    def metrics(self, sample: Sequence[int] | None = None) -> dict[str, float]:
        """AP and AP50 on the multiset of image indices ``sample`` (positions in ``self.image_ids``; repeats
        count again; None = every image once, which equals COCOeval's own figures)."""
        sample = np.arange(self.num_images) if sample is None else np.sort(np.asarray(sample, dtype=np.int64))
        counts = np.bincount(sample, minlength=self.num_images)
        t_count, r_count = len(self.iou_thresholds), len(self.recall_thresholds)
        precisions = []  # [T x R] per category that has ground truth in the sample
        for c in self._pooled:
            if not counts[c.has].any():  # none of the sample's images has matches for this category
                continue
            npig = int((c.npig * counts).sum())
            if npig == 0:
                continue
            if not c.ties:
                precisions.append(self._precision_at_true_positives(c, counts, npig))
                continue
            if c.ties:  # the sample's detections in sample order (as COCOeval concatenates them), then sorted
                parts = sample[c.has[sample]]
                lens = c.lengths[parts]
                idx = np.repeat(c.offsets[parts] - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
                order = idx[np.argsort(-c.scores[idx], kind="mergesort")]  # COCOeval's order, ties by position
            else:  # the same order: by score, an image's copies adjacent, images in sample (= index) order
                order = np.repeat(c.by_score, counts[c.image_by_score])
            # (counted in integers, then as floats, as COCOeval does: the same values, 4x faster than a float cumsum)
            tp = np.cumsum(np.take(c.tp, order, axis=1), axis=1).astype(np.float64)
            fp = np.cumsum(np.take(c.fp, order, axis=1), axis=1).astype(np.float64)
            q = np.zeros((t_count, r_count))
            rc = tp / npig
            pr = tp / (fp + tp + np.spacing(1))
            pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # the precision envelope
            for t in range(t_count):
                idx = np.searchsorted(rc[t], self.recall_thresholds, side="left")
                ok = idx < pr.shape[1]  # recall levels never reached keep precision 0, as in COCOeval
                q[t, ok] = pr[t, idx[ok]]
            precisions.append(q)
        if not precisions:
            return {"AP": -1.0, "AP50": -1.0}
        p = np.stack(precisions)  # [K x T x R]
        iou50 = int(np.argmin(np.abs(self.iou_thresholds - 0.5)))
        return {"AP": float(p.mean()), "AP50": float(p[:, iou50].mean())}


def bootstrap_samples(num_images: int, resamples: int, seed: int = 0) -> np.ndarray:
    """``resamples`` x ``num_images`` image indices drawn with replacement (seeded: reproducible)."""
    return np.random.default_rng(seed).integers(0, num_images, size=(resamples, num_images))


def resampled_metric(matches: Mapping[str, ImageMatches], samples: np.ndarray | Sequence[Sequence[int]],
                     metric: str = "AP") -> tuple[dict[str, float], dict[str, np.ndarray], np.ndarray]:
    """Each candidate's ``metric`` on all images (``point``) and on every resample of ``samples`` where it is
    defined for all (``values``, paired: position i is one resample for every candidate), and that mask."""
    if not matches:
        raise ValueError("a paired bootstrap needs at least one candidate")
    sizes = {m.num_images for m in matches.values()}
    if len(sizes) != 1:
        raise ValueError(f"candidates were evaluated on different image sets (sizes {sorted(sizes)})")
    names = list(matches)
    point = {n: matches[n].metrics()[metric] for n in names}
    values = {n: np.array([matches[n].metrics(s)[metric] for s in samples]) for n in names}
    # a resample whose images hold no ground-truth box has no AP (COCOeval's -1): not a value of the metric, it
    # made intervals reach -1 on small splits; such resamples are left out, for every candidate alike
    defined = np.all([values[n] >= 0 for n in names], axis=0) if len(samples) else np.zeros(0, bool)
    return point, {n: v[defined] for n, v in values.items()}, defined


def difference_interval(point: float, values: np.ndarray, level: float = 0.9) -> dict:
    """A paired difference (``point`` on all images, ``values`` per resample): its percentile interval, the share
    of resamples above zero (ties one half), and whether the interval holds zero (``distinguishable`` False)."""
    alpha = (1 - level) / 2
    if not len(values):
        return {"point": point, "low": point, "high": point, "p_positive": None, "distinguishable": None}
    low, high = float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))
    return {"point": point, "low": low, "high": high,
            "p_positive": float(np.mean((values > 0) + 0.5 * (values == 0))), "distinguishable": not low <= 0 <= high}


def paired_bootstrap(matches: Mapping[str, ImageMatches], samples: np.ndarray | Sequence[Sequence[int]],
                     metric: str = "AP", level: float = 0.9) -> dict:
    """Each candidate's ``metric`` on every resample of ``samples`` (the same images for all: paired), its
    ``level`` percentile interval, and for the best candidate on the full set (the winner) the probability
    that it beats each other one (ties count one half).

    Returns ``{"winner", "metric", "level", "resamples", "candidates": {name: {"point", "low", "high",
    "p_winner_beats"}}}``; ``p_winner_beats`` is None for the winner itself.
    """
    names = list(matches)
    point, values, defined = resampled_metric(matches, samples, metric)
    winner = max(names, key=lambda n: (point[n], -names.index(n)))
    alpha = (1 - level) / 2
    out = {}
    for n in names:
        v = values[n]
        beats = None
        if n != winner and len(v):
            w = values[winner]
            beats = float(np.mean((w > v) + 0.5 * (w == v)))
        low, high = (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))) if len(v) else (point[n],) * 2
        out[n] = {"point": point[n], "low": low, "high": high, "p_winner_beats": beats}
    return {"winner": winner, "metric": metric, "level": level, "resamples": int(defined.sum()),
            "resamples_without_boxes": int(len(samples) - defined.sum()), "candidates": out}
