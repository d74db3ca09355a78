"""The search's confidence in its own winner: a paired bootstrap over the search split's images of the top
candidates' AP (``metrics/bootstrap.py``), and the warning that a split is too small to rank on.

The top candidates are scored again exactly as the search scored them (BN recalibrated with the same
seed), this time keeping their detections, so the bootstrap resamples the very numbers the search
ranked; ``search/confidence.json`` holds the result and ``results.csv`` the per-candidate columns.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..data.dataset import DetectionDataset, to_coco_gt
from ..metrics.bootstrap import ImageMatches, bootstrap_samples, paired_bootstrap
from ..models.supernet import set_detector_arch
from ..space import SearchSpace
from ..train.bn import preserved_bn_state, recalibrate_bn
from ..train.evaluate import predict

# Below these the split cannot separate candidates. Measured with the noisy detections of
# tests/test_bootstrap.py (AP about 0.08, two boxes per image): the winner's 90 % bootstrap interval of AP is
# 0.086 wide on 25 images (58 boxes), 0.056 on 50 (100), 0.042 on 100 (200), 0.024 on 200 (400). Under 50
# images or 100 boxes it is wider than half the AP itself, more than the AP spread of a search's top
# candidates, so "the best candidate" is mostly the luckiest one.
MIN_SEARCH_IMAGES = 50
MIN_SEARCH_BOXES = 100
# P(winner beats the runner-up) under which the report says the two are not distinguishable
DISTINGUISHABLE = 0.9


def split_size_warning(search_set: DetectionDataset, where: str = "the search split") -> str | None:
    """A one-sentence warning when ``search_set`` is too small to rank candidates by AP, else None."""
    images = len(search_set)
    boxes = sum(int((r.iscrowd == 0).sum()) for r in search_set.records)
    if images >= MIN_SEARCH_IMAGES and boxes >= MIN_SEARCH_BOXES:
        return None
    remedy = ("use a larger val set (the candidates are scored on it: search.score_on: val)"
              if where == "the validation set" else
              "raise data.search_fraction (and pretrain again), or score on the val set with search.score_on: val "
              "(then val no longer reports the found model without bias)")
    return (f"{where} has {images} images and {boxes} boxes (fewer than {MIN_SEARCH_IMAGES} images or "
            f"{MIN_SEARCH_BOXES} boxes): AP on it is too noisy to tell the top candidates apart; {remedy}")


@torch.no_grad()
def arch_detections(model: torch.nn.Module, space: SearchSpace, arch: Mapping, search_set: DetectionDataset,
                    calib_set: DetectionDataset, device, recalib_batches: int, batch_size: int, num_workers: int,
                    seed: int) -> list[dict]:
    """The detections of ``arch`` on ``search_set``, computed as ``scoring.score_arch`` computes them."""
    with preserved_bn_state(model):
        set_detector_arch(model, space.validate(arch), space)
        recalibrate_bn(model, calib_set, device, recalib_batches, batch_size, num_workers, seed=seed)
        return predict(model, search_set, device, batch_size, num_workers)


def top_candidates(records: Sequence[dict], k: int, objective: str = "AP") -> list[dict]:
    """The ``k`` best feasible records by ``objective`` (ties: the earlier trial)."""
    feasible = [r for r in records if r["feasible"]]
    return sorted(feasible, key=lambda r: (-r["metrics"][objective], r["trial"]))[:k]


def search_confidence(detections: Mapping[int, list[dict]], search_set: DetectionDataset, resamples: int = 1000,
                      seed: int = 0, level: float = 0.9) -> dict:
    """Paired bootstrap of AP over the images of ``search_set`` for ``detections`` (trial -> COCO detections,
    best first). Returns the bootstrap summary keyed by trial plus the split's size and a verdict sentence."""
    gt = to_coco_gt(search_set)
    matches = {str(t): ImageMatches(gt, d) for t, d in detections.items()}
    samples = bootstrap_samples(len(gt["images"]), resamples, seed)
    result = paired_bootstrap(matches, samples, "AP", level)
    result["images"] = len(gt["images"])
    result["boxes"] = sum(1 for a in gt["annotations"] if not a["iscrowd"])
    result["verdict"] = verdict(result)
    return result


def verdict(result: Mapping) -> str:
    """One sentence: can the winner be told apart from the runner-up on this split?"""
    cands = result["candidates"]
    w = result["winner"]
    c = cands[w]
    pct = f"{result['level']:.0%}"
    head = (f"On the search split ({result['images']} images), the winner (trial {w}) has AP {c['point']:.4f} "
            f"[{c['low']:.4f}, {c['high']:.4f}] ({pct} bootstrap interval over images, {result['resamples']} resamples"
            + (f"; {result['resamples_without_boxes']} that drew no box left out" if result.get("resamples_without_boxes")
               else "") + ")")
    others = [(n, o) for n, o in cands.items() if n != w]
    if not others:
        return head + "."
    runner, r = max(others, key=lambda item: item[1]["point"])
    p = r["p_winner_beats"]
    if p < DISTINGUISHABLE:
        return (head + f"; it beats the runner-up (trial {runner}, AP {r['point']:.4f}) in only {p:.0%} of the "
                "resamples: the two are not distinguishable on this split.")
    return head + f"; it beats the runner-up (trial {runner}, AP {r['point']:.4f}) in {p:.0%} of the resamples."


def confidence_of_search(cfg, model: torch.nn.Module, space: SearchSpace, records: Sequence[dict],
                         search_set: DetectionDataset, calib_set: DetectionDataset, device) -> dict | None:
    """``search_confidence`` of the ``cfg.search.confidence_top`` best feasible candidates of ``records``,
    each scored again as the search scored it; None when off or fewer than two candidates are feasible."""
    s = cfg.search
    top = top_candidates(records, s.confidence_top)
    if s.confidence_top < 2 or len(top) < 2:
        return None
    dets = {r["trial"]: arch_detections(model, space, r["arch"], search_set, calib_set, device, s.recalib_batches,
                                        s.batch_size, cfg.data.num_workers, cfg.seed) for r in top}
    result = search_confidence(dets, search_set, s.confidence_resamples, seed=s.seed)
    for r in top:  # the search's own figure, beside the one bootstrapped (equal unless threads made them drift)
        result["candidates"][str(r["trial"])]["search_ap"] = r["metrics"]["AP"]
    return result
