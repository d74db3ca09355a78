"""Run a detector exported by ``nasdet export`` with onnxruntime alone (no torch, no nasdet).

    python examples/onnx_infer.py runs/demo_pipeline/export/tune.onnx image.jpg [--classes classes.json]
    python examples/onnx_infer.py runs/demo_pipeline/export/tune_int8.onnx image.jpg   # nasdet export --int8

The INT8 file (``nasdet export --int8``) takes and returns the same: only its network is quantized.

The end-to-end graph takes one RGB image as uint8 (3, H, W), any size, and returns ``boxes`` (N, 4;
x1, y1, x2, y2 in the image's pixels), ``scores`` (N) and ``labels`` (N; 1..K in the data set's class order,
not its category ids: ``export/classes.json`` gives each label's ``name`` and the data set's own id,
``category_id`` (COCO) or ``yolo_class`` (YOLO)). Resizing, normalisation, box decoding and NMS happen inside
the graph.

The file says what it bakes in: ``nasdet export`` writes JSON values into its ONNX ``metadata_props``:
``postprocessing`` (``score_thresh``: no lower score comes back, ``nms_thresh``, ``detections_per_img``, ...),
``classes`` (classes.json's map, used when no classes.json is found) and ``input_size``; the text output
starts with the post-processing line.

The pixels must be the ones nasdet trained and scored on: ``load_image`` reads a file as nasdet's
``decode_upright_rgb`` does (EXIF orientation applied, 16-bit scaled to 8 bits), so boxes are in the upright
frame the annotations use.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

EXIF_ORIENTATION = 0x0112


def load_image(path: str) -> np.ndarray:
    """An image file -> uint8 array (3, H, W), RGB, upright: a copy of nasdet.data.dataset.decode_upright_rgb
    (this script runs without nasdet). A phone photo stored sideways is turned by its EXIF orientation, as the
    annotations and nasdet's scores assume; 16-bit images are scaled from 0..65535, not clipped to 255."""
    with Image.open(path) as im:
        upright = ImageOps.exif_transpose(im) if im.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1) else im
        if upright.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
            wide = np.asarray(upright.convert("I"), dtype=np.float64)
            gray = np.clip(np.rint(wide * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
            rgb = np.repeat(gray[:, :, None], 3, axis=2)
        else:
            rgb = np.asarray(upright.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def file_metadata(session: ort.InferenceSession) -> dict:
    """The JSON values nasdet export wrote into the file's metadata_props (empty for a file without them)."""
    out = {}
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        if key in ("postprocessing", "classes", "input_size"):
            out[key] = json.loads(value)
    return out


def detect(session: ort.InferenceSession, image: np.ndarray, min_score: float = 0.0):
    boxes, scores, labels = session.run(None, {"image": image})
    keep = scores >= min_score
    return boxes[keep], scores[keep], labels[keep]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="the .onnx file written by nasdet export")
    ap.add_argument("images", nargs="+", help="image files")
    ap.add_argument("--classes", help="classes.json (default: beside the model)")
    ap.add_argument("--min-score", type=float, default=None,
                    help="show only detections scoring at least this (default 0.3; with --json: none dropped)")
    ap.add_argument("--json", action="store_true",
                    help="print every detection the file returns as JSON lines (all of them, as AP needs, "
                         "unless --min-score is given)")
    args = ap.parse_args()
    if args.min_score is None:
        args.min_score = 0.0 if args.json else 0.3

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = file_metadata(session)
    classes_path = Path(args.classes) if args.classes else Path(args.model).with_name("classes.json")
    classes = json.loads(classes_path.read_text()) if classes_path.is_file() else meta.get("classes", {})
    # classes.json written before it held ids maps a label to its name alone
    names = {label: c["name"] if isinstance(c, dict) else c for label, c in classes.items()}
    if not args.json and "postprocessing" in meta:
        print("baked into the file: " + ", ".join(f"{k} {v}" for k, v in meta["postprocessing"].items()))
    for path in args.images:
        boxes, scores, labels = detect(session, load_image(path), args.min_score)
        if args.json:
            line = {"image": path, "boxes": boxes.tolist(), "scores": scores.tolist(), "labels": labels.tolist()}
            ids = [classes.get(str(int(label)), {}) for label in labels]
            if ids and all(isinstance(c, dict) and "category_id" in c for c in ids):  # for COCO results
                line["category_ids"] = [c["category_id"] for c in ids]
            print(json.dumps(line))
            continue
        print(f"{path}: {len(scores)} detections with score >= {args.min_score}")
        for box, score, label in zip(boxes, scores, labels):
            name = names.get(str(int(label)), str(int(label)))
            print(f"  {name:>12s} {score:.3f}  [{box[0]:.1f}, {box[1]:.1f}, {box[2]:.1f}, {box[3]:.1f}]")


if __name__ == "__main__":
    main()
