"""``nasdet export``: a trained detector to ONNX, checked against torch on real val images.

End to end (default): ``image`` (uint8, 3 x H x W, RGB, any size) -> ``boxes`` (N x 4, xyxy pixels of
the input image), ``scores`` (N), ``labels`` (N, int64, 1..K as in training; ``classes.json`` names
them). Conversion to float, normalisation, the resize to the model's input size, the heads, box
decoding and NMS are all in the graph: a deployer needs onnxruntime and nothing else.

Raw (``--raw``): the same pre-processing, then the dense head outputs before any decoding, plus the
anchors (or FCOS's points) they refer to, for deployers who decode and suppress themselves; ``raw_decoding``
says how (score activation and columns, box coder and its constants, the thresholds and NMS of the end-to-end
file), read from the model: the raw export record's ``decode`` block.

``nasdet export`` writes into each file's ``metadata_props`` (JSON values) what a deployer needs without
nasdet: ``postprocessing`` (the values baked in), ``classes`` (classes.json's map), ``input_size``, and for a
raw file ``decode``; the INT8 file keeps them.

The graph is built from the torchvision model's own parts (backbone, head, anchor generator,
``postprocess_detections``), so its arithmetic is the model's; the box rescale to the input image
size uses the traced image shape, so one file serves every image size.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from .files import atomic_path
from .models.cost import onnx_session
from .models.detectors import dense_forward, get_input_size
from .errors import ExportParityError
from .models.families import family_of


def _linear_taps(n: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of a bilinear resize from ``n`` (a 0-d int64 tensor, dynamic in ONNX)
    to ``size`` samples, with ATen's formula (align_corners=False): src = (dst + 0.5) * n / size - 0.5,
    clamped at 0; i1 = i0 + 1 except at the border."""
    scale = n.to(torch.float32) / float(size)
    src = ((torch.arange(size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0.0)
    i0 = src.to(torch.int64)  # src >= 0: truncation is floor
    i1 = torch.minimum(i0 + 1, n - 1)
    i0 = torch.minimum(i0, n - 1)
    l1 = (src - i0.to(torch.float32)).clamp(0.0, 1.0)
    return i0, i1, 1.0 - l1, l1


def bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) -> (C, size, size), numerically ``F.interpolate(mode="bilinear", align_corners=False)``,
    written with gathers so that onnxruntime computes exactly what torch does (ONNX's Resize derives its
    sampling grid from a float scale and drifts by ~1e-5, which the network amplifies)."""
    shape = torch._shape_as_tensor(x)
    y0, y1, wy0, wy1 = _linear_taps(shape[1], size)
    x0, x1, wx0, wx1 = _linear_taps(shape[2], size)
    top, bottom = x.index_select(1, y0), x.index_select(1, y1)
    wx0, wx1 = wx0.view(1, 1, -1), wx1.view(1, 1, -1)
    top = top.index_select(2, x0) * wx0 + top.index_select(2, x1) * wx1
    bottom = bottom.index_select(2, x0) * wx0 + bottom.index_select(2, x1) * wx1
    return top * wy0.view(1, -1, 1) + bottom * wy1.view(1, -1, 1)


class _Preprocess(nn.Module):
    """uint8 CHW image -> normalised 1 x 3 x s x s batch (torchvision's order: normalise, then resize)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.size = get_input_size(detector)
        transform = detector.transform  # the detector's own normalisation (ssdlite320's layout: [-1, 1])
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(transform.image_std).view(3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.float() / 255.0 - self.mean) / self.std
        return bilinear_resize(x, self.size)[None]


class EndToEndDetector(nn.Module):
    """A torchvision detector (eval mode) as image -> (boxes, scores, labels) for one image."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector.eval()
        self.size = get_input_size(detector)
        self.pre = _Preprocess(detector)

    def _detect(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return family_of(self.detector).detect(self.detector, x)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        det = self._detect(self.pre(image))
        hw = torch._shape_as_tensor(image)[1:].to(torch.float32)  # dynamic in the ONNX graph
        scale = torch.stack([hw[1], hw[0], hw[1], hw[0]]) / float(self.size)
        return det["boxes"] * scale, det["scores"], det["labels"]


class RawDetector(nn.Module):
    """image -> the dense head outputs (no decoding, no NMS). ``anchors`` (the boxes or FCOS points
    they refer to, at the model's input size) are written beside the ONNX file as ``.anchors.npy``."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector.eval()
        self.size = get_input_size(detector)
        self.pre = _Preprocess(detector)
        self.register_buffer("anchors", self._anchors(), persistent=False)

    @torch.no_grad()
    def _anchors(self) -> torch.Tensor:
        m, s = self.detector, self.size
        x = torch.zeros(1, 3, s, s, device=next(m.parameters()).device)
        return family_of(m).raw_anchors(m, x).cpu()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(dense_forward(self.detector, self.pre(image)))

    def output_names(self) -> list[str]:
        return family_of(self.detector).raw_output_names(self.detector)  # [] = positional outputs


# ------------------------------------------------------------------------ what a deployer needs to know
# the model keys the end-to-end graph bakes in (its thresholds, NMS and candidate counts), of whichever family;
# an AP is taken after them too (a search's scores depend on them)
POSTPROCESSING_KEYS = ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates", "conf_thresh",
                       "rpn_post_nms_top_n_test")


def configured_postprocessing(model_cfg) -> dict:
    """The ``POSTPROCESSING_KEYS`` a model config (a section, or its dict in a checkpoint's config) sets: what an
    AP is taken after. Records of metrics keep it; one of other values is not the same figure."""
    get = model_cfg.get if isinstance(model_cfg, dict) else (lambda k: getattr(model_cfg, k, None))
    return {k: get(k) for k in POSTPROCESSING_KEYS if get(k) is not None}


def postprocessing(detector: nn.Module) -> dict:
    """The post-processing values ``detector``'s eval path, and so its end-to-end graph, bakes in."""
    return family_of(detector).postprocessing(detector)


@torch.no_grad()
def raw_decoding(detector: nn.Module) -> dict:
    """How ``detector``'s raw outputs and anchors become its end-to-end detections (``DetectorFamily.raw_decoding``)."""
    det = copy.deepcopy(detector).cpu().eval()
    s = get_input_size(det)
    return family_of(det).raw_decoding(det, torch.zeros(1, 3, s, s))


def set_onnx_metadata(model, metadata: Mapping[str, str]) -> None:
    """``metadata`` into an onnx ModelProto's ``metadata_props``, replacing the same keys."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


# ------------------------------------------------------------------------------------------- export
def resized_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 CHW ``image`` resized (bilinear) to ``height`` x ``width``."""
    x = nn.functional.interpolate(image[None].float(), size=(height, width), mode="bilinear", align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def tracing_example(detector: nn.Module, images: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The image to trace ``detector``'s end-to-end graph on: of ``images`` (uint8 CHW) resized to (s + 37) x (s + 11)
    (not square, as export_onnx's own example: a trace on a square image may take its height for its width), the
    one it detects most in. A trace records the path its example takes: on export_onnx's random noise a trained
    Faster R-CNN's RPN proposed nothing, and the graph traced on that empty path gave other detections on every
    real image. None when no image gives a detection."""
    module = EndToEndDetector(copy.deepcopy(detector).cpu().eval())
    s, best, most = module.size, None, 0
    for img in images:
        x = resized_image(img, s + 37, s + 11)
        n = len(module(x)[1])
        if n > most:
            best, most = x, n
    return best


def noise_image(size: int) -> torch.Tensor:
    """The uint8 random image (3 x size x size, seed 0) detectors whose work does not depend on the image are timed
    on: any image gives their figure, and none needs reading."""
    return (torch.rand(3, size, size, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)


def timing_image(detector: nn.Module, example: torch.Tensor | None) -> torch.Tensor:
    """The uint8 image at its input size ``detector`` is timed on (the graph's resize then a no-op): noise, unless
    its work follows the image (``DetectorFamily.work_follows_the_image``: Faster R-CNN's box head runs on the RPN's
    proposals, and a trained RPN proposes nothing on noise: the box head's cost went missing) and it has a tracing
    ``example`` (``tracing_example``: the image it detects most in), which is then resized to the input size."""
    s = get_input_size(detector)
    if example is not None and family_of(detector).work_follows_the_image:
        return resized_image(example, s, s)
    return noise_image(s)


def timing_inputs(detector: nn.Module, images: Sequence[torch.Tensor] | None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(example, image)``: what ``detector`` is traced on (None: export_onnx's own example) and timed on
    (``timing_image``), as ``nasdet export`` does; ``images`` (uint8 CHW, real ones) are read only by a detector
    whose work follows the image: the search's candidates and the report's models are timed as their export is."""
    example = tracing_example(detector, images) if images and family_of(detector).work_follows_the_image else None
    return example, timing_image(detector, example)


def timed_on_image(detector: nn.Module, example: torch.Tensor | None) -> torch.Tensor | None:
    """The float [0, 1] image torch times ``detector`` on (``measure_latency``'s ``image``), None for its default."""
    return timing_image(detector, example).float() / 255 if example is not None and \
        family_of(detector).work_follows_the_image else None


def export_onnx(detector: nn.Module, path: str | Path, raw: bool = False, opset: int = 17,
                example: torch.Tensor | None = None, metadata: Mapping[str, str] | None = None) -> Path:
    """Write the ONNX file of ``detector`` (end to end, or raw), with ``metadata`` in its ``metadata_props``;
    returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    det = copy.deepcopy(detector).cpu().eval()
    module = RawDetector(det) if raw else EndToEndDetector(det)
    s = module.size
    if example is None:
        example = (torch.rand(3, s + 37, s + 11, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    if raw:
        n_out = len(module(example))
        names = module.output_names() or [f"output{i}" for i in range(n_out)]
    else:
        names = ["boxes", "scores", "labels"]
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=names,
                          dynamic_axes={"image": {1: "height", 2: "width"},
                                        **({} if raw else {n: {0: "detections"} for n in names})})
        if metadata:
            import onnx

            model = onnx.load(str(tmp))
            set_onnx_metadata(model, metadata)
            onnx.save(model, str(tmp))
    if raw:
        import numpy as np

        with atomic_path(path.with_suffix(".anchors.npy")) as tmp, open(tmp, "wb") as f:
            np.save(f, module.anchors.numpy())
    return path


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou
    return box_iou(a, b)


def _nms_conflict(box: torch.Tensor, label: torch.Tensor, other: dict[str, torch.Tensor], nms_thresh: float | None,
                  among: torch.Tensor | None = None) -> bool:
    """A same-label box of ``other`` (those of mask ``among``) overlaps ``box`` by about ``nms_thresh`` or more."""
    if nms_thresh is None or not len(other["scores"]):
        return False
    same = other["labels"] == label
    if among is not None:
        same &= among
    if not same.any():
        return False
    return bool((_box_iou(box[None], other["boxes"][same])[0] >= nms_thresh - 0.01).any())


def _in_candidates(box: torch.Tensor, label: torch.Tensor, score: torch.Tensor, candidates: dict[str, torch.Tensor],
                   score_atol: float, box_atol: float, box_rtol: float) -> bool:
    """``candidates`` hold a detection of ``label`` at ``box`` and ``score`` (within the parity tolerances)."""
    same = (candidates["labels"] == label) & ((candidates["scores"] - score).abs() <= score_atol)
    if not same.any():
        return False
    size = float((box[2:] - box[:2]).abs().max())
    return bool(((candidates["boxes"][same] - box).abs().amax(-1) <= box_atol + box_rtol * size).any())


FAR_BOXES = 10.0  # boxes beyond this many image sizes: a detector that does not detect yet (the parity check's words)


def match_detections(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor], score_cut: float,
                     score_atol: float, nms_thresh: float | None = None, box_rtol: float = 0.0,
                     candidates: dict[str, torch.Tensor] | None = None, box_atol: float = 0.0,
                     cap: int | None = None, suppressor_scores_higher: bool = True,
                     certain: dict[str, torch.Tensor] | None = None) -> dict:
    """Pair each reference detection with the candidate of the same label and highest IoU.

    Returns the worst box and score differences of the pairs (``max_box_excess``: the worst box difference less
    ``box_rtol`` times the reference box's longer side), and the unmatched detections that are
    not explained by a cut where float noise may legitimately flip a decision: a score within
    ``score_atol`` of the lowest score kept on the other side or of ``score_cut``, or (with
    ``nms_thresh``) an NMS decision: a same-label box on the other side overlapping it by about the
    NMS threshold or more (a near-tie in score or overlap suppressed one or the other).

    With ``candidates`` (the reference model's detections before NMS and count limits, score cuts lowered by
    ``score_atol``) a detection only ``got`` holds must be one of them (within ``box_atol + box_rtol`` x its
    longer side and ``score_atol``): a flip picks another of the model's candidates, it never moves a box; and a
    reference detection explained by NMS needs a ``got`` box that is a candidate or paired, scored as high
    (a box suppresses only boxes of lower scores; not ``suppressor_scores_higher`` where an earlier NMS, a
    two-stage detector's RPN, decides by another score), or one of ``got``'s own candidates of a tied score took
    its place (a top-k or NMS swap of tied candidates). Without them, a box moved a few px by a wrong resize pairs
    with nothing and each side's box was explained by its own moved twin.

    ``cap`` (``detections_per_img``): a side holding that many detections may have pushed out any below its lowest
    (one flip higher up shifts the whole tail), so the other side's detections under it are explained.
    ``certain``: the candidates with every score cut raised by ``score_atol``: a detection not among them is near a
    cut, whichever quantity the cut is on (YOLOv3's class probability and objectness, not the score). A pair whose
    boxes differ but whose ``got`` box is one of the candidates is two tied candidates swapped, not a box error.
    Without ``suppressor_scores_higher`` (a two-stage detector: an RPN flip lets any other proposal through), a
    candidate only ``got`` holds needs no more, and a reference detection is explained in an image with one."""
    worst_box, worst_excess, worst_score, unexplained = 0.0, 0.0, 0.0, []
    used = torch.zeros(len(got["scores"]), dtype=torch.bool)
    lowest_got = float(got["scores"].min()) if len(got["scores"]) else score_cut
    lowest_ref = float(ref["scores"].min()) if len(ref["scores"]) else score_cut
    if len(ref["scores"]) and len(got["scores"]):
        # a box clipped to a line at the image's border has no area: its IoU with anything is NaN, so two such
        # boxes of near-tied scores (listed in another order by the other runtime) are told apart by distance
        iou = _box_iou(ref["boxes"], got["boxes"]).nan_to_num(-1.0)
        dist = (ref["boxes"][:, None, :] - got["boxes"][None, :, :]).abs().amax(-1)
    pending = []  # reference detections to explain once every pair is known
    for i in range(len(ref["scores"])):
        cand = (got["labels"] == ref["labels"][i]) & ~used
        j = -1
        if cand.any():
            nearest = int(torch.where(cand, dist[i], torch.full_like(dist[i], float("inf"))).argmin())
            masked = torch.where(cand, iou[i], torch.full_like(iou[i], -1.0))
            j = nearest if float(dist[i, nearest]) <= 1.0 else int(masked.argmax())
            if float(dist[i, j]) > 1.0 and float(masked[j]) < 0.99:
                j = -1
        if j < 0:
            pending.append(i)
            continue
        used[j] = True
        diff = float((got["boxes"][j] - ref["boxes"][i]).abs().max())
        size = float((ref["boxes"][i, 2:] - ref["boxes"][i, :2]).abs().max())
        if diff - box_rtol * size > box_atol and candidates is not None and _in_candidates(
                got["boxes"][j], got["labels"][j], got["scores"][j], candidates, score_atol, box_atol, box_rtol):
            diff = 0.0  # a near-duplicate candidate of a tied score kept in its place (an NMS or top-k swap)
        worst_box, worst_excess = max(worst_box, diff), max(worst_excess, diff - box_rtol * size)
        worst_score = max(worst_score, float((got["scores"][j] - ref["scores"][i]).abs()))
    def at_a_cut(d: dict[str, torch.Tensor], k: int, other: dict[str, torch.Tensor], lowest_other: float) -> bool:
        s = float(d["scores"][k])
        if min(abs(s - lowest_other), abs(s - score_cut)) <= score_atol:
            return True
        if certain is not None and not _in_candidates(d["boxes"][k], d["labels"][k], d["scores"][k], certain,
                                                      score_atol, box_atol, box_rtol):
            return True
        return cap is not None and len(other["scores"]) >= cap and s <= lowest_other + score_atol

    def tied(s: float, other: dict[str, torch.Tensor], mask: torch.Tensor | None = None) -> bool:
        """The other side kept a detection of this score: a tied group that top-k or NMS split otherwise."""
        close = (other["scores"] - s).abs() <= score_atol
        return bool((close if mask is None else close & mask).any())

    legit = used.clone()  # onnxruntime's boxes torch has: paired, or among its candidates
    for j in torch.nonzero(~used).flatten().tolist():
        s = float(got["scores"][j])
        known = candidates is None or _in_candidates(got["boxes"][j], got["labels"][j], got["scores"][j], candidates,
                                                     score_atol, box_atol, box_rtol)
        legit[j] = known
        flip = (at_a_cut(got, j, ref, lowest_ref) or _nms_conflict(got["boxes"][j], got["labels"][j], ref, nms_thresh)
                or (candidates is not None and (tied(s, ref) or not suppressor_scores_higher)))
        if not known or not flip:
            unexplained.append(("onnxruntime only", s))
    flipped_in = bool((legit & ~used).any())  # onnxruntime kept a candidate torch did not
    torch_only = []
    for i in pending:
        s = float(ref["scores"][i])
        among = None
        if candidates is not None:
            among = legit & (got["scores"] >= s - score_atol) if suppressor_scores_higher else legit
            if tied(s, got, legit) or (flipped_in and not suppressor_scores_higher):
                continue
        if not (at_a_cut(ref, i, got, lowest_got) or _nms_conflict(ref["boxes"][i], ref["labels"][i], got, nms_thresh,
                                                                   among)):
            torch_only.append(("torch only", s))
    unexplained = torch_only + unexplained
    return {"max_box_diff": worst_box, "max_box_excess": worst_excess, "max_score_diff": worst_score,
            "unexplained": unexplained, "matched": int(used.sum())}


class _NMSKeepingAll:
    """torchvision's NMS at a threshold of 1 or more returns every box, by score, without its pairwise loop: the
    candidate runs keep tens of thousands of boxes (score_thresh 0.001), on which that loop took minutes an image.
    Every torchvision detector (and nasdet's) reaches ``torchvision.ops.boxes.nms`` through ``batched_nms``."""

    def __enter__(self):
        import torchvision.ops.boxes as box_ops

        self.box_ops, self.nms = box_ops, box_ops.nms

        def nms(boxes, scores, iou_threshold):
            if iou_threshold >= 1.0:
                return scores.argsort(descending=True)
            return self.nms(boxes, scores, iou_threshold)

        box_ops.nms = nms
        return self

    def __exit__(self, *exc):
        self.box_ops.nms = self.nms


def _max_same_label_iou(d: dict[str, torch.Tensor]) -> float:
    """The largest IoU of two detections of one label in ``d`` (0 when none overlap)."""
    worst = 0.0
    for label in d["labels"].unique():
        boxes = d["boxes"][d["labels"] == label]
        if len(boxes) > 1:
            iou = _box_iou(boxes, boxes).nan_to_num(0.0)
            iou.fill_diagonal_(0.0)
            worst = max(worst, float(iou.max()))
    return worst


@torch.no_grad()
def check_parity(detector: nn.Module, path: Path, images: Sequence[torch.Tensor], raw: bool,
                 box_atol: float, score_atol: float, raw_atol: float, raw_rtol: float = 0.0,
                 box_rtol: float = 0.0) -> dict:
    """Run torch and onnxruntime on ``images`` (uint8 CHW) and compare; raises ExportParityError (saying
    what differs; the caller names the file). Raw outputs pass within ``raw_atol + raw_rtol * |torch's|`` (at least
    the output's root mean square), boxes
    within ``box_atol + box_rtol * the box's longer side``."""
    det = copy.deepcopy(detector).cpu().eval()
    session = onnx_session(path)
    report = {"images": len(images), "raw": raw}
    if raw:
        module = RawDetector(det)
        worst = excess = 0.0
        for img in images:
            expected = module(img)
            got = session.run(None, {"image": img.numpy()})
            for g, e in zip(got, expected):
                diff = (torch.from_numpy(g) - e).abs()
                worst = max(worst, float(diff.max()))
                # float32 rounding follows the magnitudes a value is computed from, not the value: a value near 0
                # of an output whose values are around 1 differs by as much as they do (the largest OFA subnet's
                # regression of 0.70 differed by 2.5e-4 in an output of root mean square 0.58)
                scale = e.abs().clamp_min(float(e.pow(2).mean().sqrt()))
                excess = max(excess, float((diff - raw_rtol * scale).max()))
        report["max_abs_diff"] = worst
        if excess > raw_atol:
            raise ExportParityError(f"raw outputs differ from torch by up to {worst:.2e}, more than export.raw_atol "
                                    f"{raw_atol:g} + export.raw_rtol {raw_rtol:g} x |torch's value| (at least the "
                                    f"output's root mean square)")
        return report
    worst_box = worst_excess = worst_score = worst_model = 0.0
    n_ref = n_matched = 0
    problems = []
    roi = getattr(det, "roi_heads", None)
    cut = float(getattr(det, "score_thresh", getattr(roi, "score_thresh", 0.0)))
    nms = float(getattr(det, "nms_thresh", getattr(roi, "nms_thresh", 0.5)))
    module = EndToEndDetector(det)
    family = family_of(det)
    cap = postprocessing(det).get("detections_per_img")
    # the same graph without NMS or counts: the candidates a float-noise flip may turn into a detection
    every = copy.deepcopy(det)
    family.keep_every_candidate(every, score_atol)
    every_module = EndToEndDetector(every)
    # and with every cut raised by score_atol: a detection not among these is near a cut
    sure = copy.deepcopy(det)
    family.keep_every_candidate(sure, -score_atol)
    sure_module = EndToEndDetector(sure)
    worst_model_excess = worst_model_score = 0.0
    model_problems, overlaps = [], []
    farthest = 0.0  # the largest box coordinate over the image's longer side
    for k, img in enumerate(images):
        boxes, scores, labels = module(img)
        ref = {"boxes": boxes, "scores": scores, "labels": labels}
        if len(boxes):
            farthest = max(farthest, float(boxes.abs().max()) / max(img.shape[-2:]))
        with _NMSKeepingAll():
            candidates = dict(zip(("boxes", "scores", "labels"), every_module(img)))
            certain = dict(zip(("boxes", "scores", "labels"), sure_module(img)))
        # the export module is the model: the same detections as its own forward (which resizes with ATen), by the
        # same rules, the forward's detections judged against the export module's candidates (a fault in its resize
        # or box scaling moves those too): the graph is traced from the export module, so such a fault is on both
        # sides of the onnxruntime comparison (paired: near-tied scores may come in another order)
        own = det([img.float() / 255.0])[0]
        mm = match_detections(ref, own, cut, score_atol, nms, box_rtol, candidates, box_atol, cap, family.single_nms,
                              certain)
        worst_model, worst_model_score = max(worst_model, mm["max_box_diff"]), max(worst_model_score, mm["max_score_diff"])
        worst_model_excess = max(worst_model_excess, mm["max_box_excess"])
        sides = {"torch only": "export module only", "onnxruntime only": "model's forward only"}
        model_problems += [(k, sides[side], s) for side, s in mm["unexplained"]]
        b, s, lab = session.run(None, {"image": img.numpy()})
        got = {"boxes": torch.from_numpy(b), "scores": torch.from_numpy(s), "labels": torch.from_numpy(lab)}
        # NMS leaves no two boxes of a label overlapping above its threshold: a graph without it (or with another
        # threshold) kept the duplicates, each of them one of torch's candidates
        over = _max_same_label_iou(got)
        if over > max(nms, _max_same_label_iou(ref)) + 0.01:
            overlaps.append((k, round(over, 3)))
        m = match_detections(ref, got, cut, score_atol, nms, box_rtol, candidates, box_atol, cap, family.single_nms,
                             certain)
        worst_box, worst_score = max(worst_box, m["max_box_diff"]), max(worst_score, m["max_score_diff"])
        worst_excess = max(worst_excess, m["max_box_excess"])
        n_ref += len(ref["scores"])
        n_matched += m["matched"]
        problems += [(k, *u) for u in m["unexplained"]]
    report.update(detections_torch=n_ref, matched=n_matched, max_box_diff_px=worst_box, max_score_diff=worst_score,
                  max_box_diff_vs_model_forward_px=worst_model)
    if (worst_model_excess > box_atol or worst_model_score > score_atol or model_problems) and farthest > FAR_BOXES:
        raise ExportParityError(
            f"the detector's boxes reach {farthest:.3g} times the image's size on {len(images)} val images (an "
            f"untrained or diverged detector: YOLOv3 decodes exp(w, h) without clipping), where float rounding moves "
            f"a box by up to {worst_model:.2e} px: its export cannot be checked; train it until its boxes lie near "
            "its images, then export")
    if worst_model_excess > box_atol or worst_model_score > score_atol or model_problems:
        raise ExportParityError(
            f"the export module's torch detections differ from the model's own forward on {len(images)} val images "
            f"(a fault in the graph's pre-processing, resize or box scaling, a nasdet bug: please report it): max box "
            f"diff {worst_model:.2e} px, max score diff {worst_model_score:.2e}, {len(model_problems)} unmatched "
            f"detections {model_problems[:5]}")
    if overlaps:
        raise ExportParityError(
            f"onnxruntime keeps boxes of one label overlapping above the NMS threshold {nms:g} (image, IoU): "
            f"{overlaps[:5]}: the graph's NMS is missing or at another threshold")
    if worst_excess > box_atol or worst_score > score_atol or problems:
        raise ExportParityError(
            f"onnxruntime detections differ from torch's on {len(images)} val images: max box diff "
            f"{worst_box:.2e} px (limit export.box_atol {box_atol:g} + export.box_rtol {box_rtol:g} x the box's "
            f"longer side), max score diff {worst_score:.2e} (limit "
            f"export.score_atol {score_atol:g}), {len(problems)} unmatched detections {problems[:5]}")
    return report


def time_onnx(path: Path, image: torch.Tensor, warmup: int, runs: int, threads: int | None) -> dict:
    """Latency of the ONNX file ``path`` on ``image`` (batch 1, onnxruntime on the CPU)."""
    return time_onnx_in_turns([path], image, warmup, runs, threads)[0]


def time_onnx_in_turns(paths: Sequence[Path], image: torch.Tensor, warmup: int, runs: int,
                       threads: int | None) -> list[dict]:
    """``time_onnx`` of several files taking turns run by run, so that a ratio of their latencies compares the
    files (the float and INT8 files timed minutes apart gave x0.26 and x0.54 where in turns they were x0.97 and
    x1.00)."""
    from .models.cost import time_sessions

    timings = time_sessions([onnx_session(p, threads) for p in paths], {"image": image.numpy()}, warmup, runs)
    # the input size is part of the figure: the graph resizes inside, so a larger frame takes longer
    turns = {"timed": "in turns with " + ", ".join(p.name for p in paths)} if len(paths) > 1 else {}
    return [{**t, "threads": threads, "part": "end to end (with NMS)", "input": list(image.shape), **turns}
            for t in timings]
