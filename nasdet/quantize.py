"""INT8: onnxruntime static quantization of an exported detector, and its COCO mAP run through onnxruntime.

``quantize_detector`` takes the end-to-end file ``nasdet export`` writes (uint8 image in; boxes, scores,
labels out) and quantizes only the network: the nodes the TorchScript exporter scoped under the
detector's backbone (with its neck) and heads (``DetectorFamily.network_modules``). Pre-processing
(cast, normalise, resize), anchors, box decoding and NMS stay float, so the file keeps its inputs and
outputs and ``examples/onnx_infer.py`` runs either one.

The recipe is onnxruntime's for CPUs (onnxruntime.ai, "Quantize ONNX models"): ``quant_pre_process``
(ONNX shape inference and graph optimisation, which folds the exporter's Identity-wrapped biases into
initializers so they quantize), then ``quantize_static`` in QDQ format with per-channel int8 weights and
uint8 activations (U8S8: on x86 the int8/int8 pair is left unfused, DequantizeLinear -> float Conv ->
QuantizeLinear, slower than float), activation ranges calibrated on images of the run by MinMax,
Entropy or Percentile.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import QuantizationError
from .export import onnx_metadata, set_onnx_metadata
from .files import atomic_path
from .models.cost import onnx_session
from .models.families import family_of

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANTIZED_COMPUTE = ("Conv", "MatMul", "Gemm")  # the ops whose weights must come out int8
# per-channel int8 weights are DequantizeLinear with ``axis``, which ONNX has from opset 13 on: with an older
# opset quantize_static still writes the file, and onnxruntime then refuses to load it (INVALID_GRAPH)
INT8_MIN_OPSET = 13


def network_scopes(detector: nn.Module) -> tuple[str, ...]:
    """Node-name prefixes of the network part of ``detector``'s exported graph: the TorchScript exporter
    names a node ``/<module path, one level per />/<Op>_N`` (``/backbone/body/...``, ``/rpn/head/...``)."""
    return tuple("/" + "/".join(m.split(".")) + "/" for m in family_of(detector).network_modules)


class _Feeds:
    """onnxruntime's ``CalibrationDataReader`` over a list of feeds (input name -> array)."""

    def __init__(self, feeds: list[dict]):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


@contextmanager
def _quiet_onnxruntime():
    """quantize_static logs a warning per tensor (biases, pre-processing advice): keep the console readable."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _name_unnamed_nodes(model) -> None:
    """Name the nodes graph optimisation left unnamed (HardSwish split into HardSigmoid and Mul) after the
    scope of the node that feeds them, so that they fall on the right side of ``nodes_to_exclude``."""
    producer: dict[str, str] = {}
    for i, n in enumerate(model.graph.node):  # ONNX keeps nodes in topological order
        if not n.name:
            fed_by = next((producer[x] for x in n.input if producer.get(x)), "")
            n.name = f"{fed_by.rpartition('/')[0]}/{n.op_type}_unnamed_{i}"
        for o in n.output:
            producer[o] = n.name


def _same_size(feeds: list[dict]) -> list[dict]:
    """Every uint8 (3, H, W) image resized (bilinear) to the first one's size: the pre-processing's tensors
    then have one shape over the samples (the graph resizes to the model's size anyway)."""
    h, w = next(iter(feeds[0].values())).shape[1:]
    out = []
    for f in feeds:
        (name, image), = f.items()
        x = torch.from_numpy(image).float()[None]
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        out.append({name: x[0].round().clamp(0, 255).to(torch.uint8).numpy()})
    return out


def _consumers(model) -> dict[str, list]:
    """Tensor name -> the nodes of ``model``'s graph that read it."""
    out: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _histogram_ranges(model, inside: list, feeds: list[dict], calibrate, tmp: Path) -> dict[str, tuple[float, float]]:
    """Entropy / Percentile ranges of the tensors up to the network's outputs (the graph cut there)."""
    import onnx
    from onnxruntime.quantization.calibrate import create_calibrator

    names = {n.name for n in inside}
    consumers = _consumers(model)
    graph_outputs = {o.name for o in model.graph.output}
    boundary = sorted({o for n in inside for o in n.output
                       if o in graph_outputs or any(c.name not in names for c in consumers.get(o, []))})
    cut = tmp / "network.onnx"
    onnx.save(onnx.utils.Extractor(model).extract_model([i.name for i in model.graph.input], boundary), str(cut))
    calibrator = create_calibrator(cut, None, augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=calibrate, extra_options={"symmetric": False})
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
        calibrator.collect_data(_Feeds(_same_size(feeds)))
        data = calibrator.compute_data()
    return {name: (float(np.min(r.range_value[0])), float(np.max(r.range_value[1]))) for name, r in data.data.items()}


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def network_tail(model, inside: Sequence) -> list[str]:
    """Names of the nodes of ``inside`` that feed no Conv/MatMul/Gemm of ``inside``: the heads' reshapes,
    transposes and the concatenation of every level's logits and box deltas after their last convs. Kept in
    float: quantized, the concatenated logits share one uint8 scale over all levels and classes (a background
    logit of -119 made it 0.47 per step on the demo, so the INT8 file gave 8 distinct scores and every box
    once per class at one tied score); each last conv's own output keeps its finer scale."""
    names = {n.name for n in inside}
    consumers = _consumers(model)
    feeds_compute: set[str] = set()
    for n in reversed(list(model.graph.node)):  # topological order reversed: consumers first
        if n.name not in names:
            continue
        if any(c.name in names and (c.op_type in QUANTIZED_COMPUTE or c.name in feeds_compute)
               for o in n.output for c in consumers.get(o, [])):
            feeds_compute.add(n.name)
    return [n.name for n in inside if n.op_type not in QUANTIZED_COMPUTE and n.name not in feeds_compute]


def quantize_onnx(src: str | Path, dst: str | Path, feeds: Iterable[dict], scopes: Sequence[str] | None = None,
                  method: str = "minmax") -> None:
    """onnxruntime static quantization of ``src`` into ``dst`` (QDQ, U8S8, per-channel weights), activation
    ranges from ``feeds`` (input name -> array, one dict per calibration sample); only the nodes under
    ``scopes`` (node-name prefixes), or all nodes with ``scopes`` None. ``QuantizationError`` names the
    node and op that failed."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise QuantizationError(f"calibration method {method!r} is not one of {CALIBRATION_METHODS}")
    feeds = list(feeds)
    if not feeds:
        raise QuantizationError(f"{src}: INT8 calibration needs at least one sample")
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory() as tmp, _quiet_onnxruntime():
        prepared = Path(tmp) / "prepared.onnx"
        try:
            # symbolic shape inference cannot follow NMS's data-dependent shapes; ONNX's own inference can
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises bare Exceptions with its reason
            raise QuantizationError(f"{src}: onnxruntime's pre-processing for quantization failed: {_first_line(e)}") from None
        model = onnx.load(str(prepared))
        _name_unnamed_nodes(model)
        onnx.save(model, str(prepared))
        inside = [n for n in model.graph.node if scopes is None or n.name.startswith(tuple(scopes))]
        if not any(n.op_type in QUANTIZED_COMPUTE for n in inside):
            raise QuantizationError(f"{src}: no Conv/MatMul/Gemm node under {list(scopes or ['the graph'])}: nothing to "
                                    "quantize (was the file written by nasdet export?)")
        excluded = [n.name for n in model.graph.node if scopes is not None and not n.name.startswith(tuple(scopes))]
        excluded += network_tail(model, inside)
        draft = Path(tmp) / "int8.onnx"
        try:
            options = {}
            if method != "minmax" and scopes is not None:
                # histogram methods stack each tensor over the samples, and the tensors after NMS have one
                # length per image: their ranges come from the graph cut at the network's outputs, handed
                # to the quantizer as overrides of its min/max ranges
                ranges = _histogram_ranges(model, inside, feeds, calibrate, Path(tmp))
                options["TensorQuantOverrides"] = {k: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
                                                   for k, (lo, hi) in ranges.items()}
                calibrate = CalibrationMethod.MinMax
            quantize_static(str(prepared), str(draft), _Feeds(feeds), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=calibrate, nodes_to_exclude=excluded, extra_options=options)
        except Exception as e:  # noqa: BLE001
            text = _first_line(e)
            node = next((n for n in inside if n.name and n.name in text), None)
            where = f" at node {node.name} ({node.op_type})" if node else ""
            raise QuantizationError(f"{src}: onnxruntime could not quantize the network{where}: {text}") from None
        # the shapes ONNX inferred for NMS's data-dependent tensors are wrong when no box passes the score
        # threshold: onnxruntime folds them into a Reshape that then fails on 0 boxes; it infers its own
        quantized = onnx.load(str(draft))
        del quantized.graph.value_info[:]
        # the float file's metadata_props (post-processing, classes), which the INT8 file describes as well
        set_onnx_metadata(quantized, onnx_metadata(src))
        with atomic_path(dst) as final:
            onnx.save(quantized, str(final))


def quantize_detector(float_path: str | Path, out_path: str | Path, images: Sequence[torch.Tensor | np.ndarray],
                      scopes: Sequence[str], method: str = "minmax") -> dict:
    """Write the INT8 version of the end-to-end ONNX file ``float_path`` to ``out_path``, checked; returns
    what was quantized (node counts, sizes). ``images``: uint8 (3, H, W) calibration images; ``scopes``:
    ``network_scopes(detector)``. ``QuantizationError`` names the node and op that failed or stayed float."""
    float_path, out_path = Path(float_path), Path(out_path)
    feeds = [{"image": np.ascontiguousarray(np.asarray(im, dtype=np.uint8))} for im in images]
    with tempfile.TemporaryDirectory() as tmp:
        draft = Path(tmp) / "int8.onnx"
        quantize_onnx(float_path, draft, feeds, scopes, method)
        report = check_quantized(draft, scopes)
        try:  # the quantizer writes graphs onnxruntime then refuses (an opset too old for per-channel weights)
            onnx_session(draft, 1).run(None, feeds[0])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types with the reason
            raise QuantizationError(f"{float_path}: the INT8 file onnxruntime's quantizer made does not run in "
                                    f"onnxruntime, so {out_path} was not written: {_first_line(e)}") from None
        with atomic_path(out_path) as final:
            Path(final).write_bytes(draft.read_bytes())
    report.update(method=method, calibration_images=len(images), float_bytes=float_path.stat().st_size,
                  int8_bytes=out_path.stat().st_size)
    return report


def check_quantized(path: str | Path, scopes: Sequence[str]) -> dict:
    """Every Conv/MatMul/Gemm of the network reads int8 weights through a DequantizeLinear, and nothing
    outside the network is quantized; else ``QuantizationError`` naming the first node that is not."""
    import onnx

    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    int8 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    compute = [n for n in model.graph.node if n.op_type in QUANTIZED_COMPUTE]
    for n in compute:
        inside = n.name.startswith(tuple(scopes))
        w = producer.get(n.input[1]) if len(n.input) > 1 else None
        quantized = w is not None and w.op_type == "DequantizeLinear" and w.input[0] in int8
        if inside and not quantized:
            raise QuantizationError(f"{path}: node {n.name} ({n.op_type}) of the network was left in float "
                                    "(onnxruntime's quantizer skipped it)")
        if not inside and quantized:
            raise QuantizationError(f"{path}: node {n.name} ({n.op_type}) outside the network was quantized")
    ops = Counter(n.op_type for n in model.graph.node)
    return {"quantized_ops": sum(n.name.startswith(tuple(scopes)) for n in compute),
            "quantize_linear": ops["QuantizeLinear"], "dequantize_linear": ops["DequantizeLinear"],
            "int8_initializers": len(int8)}


# ------------------------------------------------------------------------------ mAP through onnxruntime
def onnx_detections(path: str | Path, dataset, threads: int | None = None) -> list[dict]:
    """COCO-format detections of the end-to-end ONNX file on every image of ``dataset`` (onnxruntime)."""
    session = onnx_session(path, threads)
    results = []
    for index in range(len(dataset)):
        image = dataset.load_image(index)
        boxes, scores, labels = session.run(None, {"image": image.numpy()})
        image_id = int(dataset.target(index)["image_id"])
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            if label < 1 or label > dataset.num_classes:
                continue  # background / padding class of sigmoid heads (as train.evaluate.predict)
            x1, y1, x2, y2 = box
            # unrounded, as train.evaluate.predict: rounded scores tie across images and change COCOeval's ranking
            # (the float file's AP through onnxruntime came out 0.0017 for a model whose AP is 0.0014)
            results.append({"image_id": image_id, "category_id": int(dataset.category_ids[label - 1]),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return results


def onnx_coco_metrics(path: str | Path, dataset, threads: int | None = None) -> dict[str, float]:
    """COCO box metrics of the ONNX file on ``dataset``, every detection computed by onnxruntime."""
    from .data.dataset import to_coco_gt
    from .metrics import coco_evaluate

    return coco_evaluate(to_coco_gt(dataset), onnx_detections(path, dataset, threads))


def detection_agreement(float_dets: list[dict], int8_dets: list[dict], min_score: float = 0.3,
                        iou: float = 0.5) -> dict:
    """Share of the float model's detections scoring >= ``min_score`` that the INT8 model also makes (same
    image and class, IoU >= ``iou``, scoring >= ``min_score`` too): how far INT8 detections follow the float
    ones at that operating point. (Any score was enough before: an INT8 file that returned every box once per
    class at one low tied score matched them all.)"""
    from torchvision.ops import box_iou

    def xyxy(d):
        x, y, w, h = d["bbox"]
        return [x, y, x + w, y + h]

    by_key: dict[tuple[int, int], list[list[float]]] = {}
    for d in int8_dets:
        if d["score"] >= min_score:
            by_key.setdefault((d["image_id"], d["category_id"]), []).append(xyxy(d))
    confident = [d for d in float_dets if d["score"] >= min_score]
    found = 0
    for d in confident:
        others = by_key.get((d["image_id"], d["category_id"]))
        if others and float(box_iou(torch.tensor([xyxy(d)]), torch.tensor(others)).max()) >= iou:
            found += 1
    return {"float_detections": len(confident), "matched_by_int8": found, "min_score": min_score, "iou": iou,
            "share": found / len(confident) if confident else None}
