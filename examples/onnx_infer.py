"""Run a detector exported by ``nasdet export`` with onnxruntime alone (no torch, no nasdet).

    python examples/onnx_infer.py runs/demo_pipeline/export/tune.onnx image.jpg [--classes classes.json]
    python examples/onnx_infer.py runs/demo_pipeline/export/tune_int8.onnx image.jpg   # nasdet export --int8

The INT8 file (``nasdet export --int8``) takes and returns the same: only its network is quantized.

The end-to-end graph takes one RGB image as uint8 (3, H, W), any size, and returns ``boxes`` (N, 4;
x1, y1, x2, y2 in the image's pixels), ``scores`` (N) and ``labels`` (N; 1..K, names in
``export/classes.json``). Resizing, normalisation, box decoding and NMS happen inside the graph.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def load_image(path: str) -> np.ndarray:
    """An image file -> uint8 array (3, H, W), RGB."""
    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB")).transpose(2, 0, 1))


def detect(session: ort.InferenceSession, image: np.ndarray, min_score: float = 0.0):
    boxes, scores, labels = session.run(None, {"image": image})
    keep = scores >= min_score
    return boxes[keep], scores[keep], labels[keep]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="the .onnx file written by nasdet export")
    ap.add_argument("images", nargs="+", help="image files")
    ap.add_argument("--classes", help="classes.json (default: beside the model)")
    ap.add_argument("--min-score", type=float, default=0.3)
    ap.add_argument("--json", action="store_true", help="print all detections as JSON lines")
    args = ap.parse_args()

    classes_path = Path(args.classes) if args.classes else Path(args.model).with_name("classes.json")
    names = json.loads(classes_path.read_text()) if classes_path.is_file() else {}
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    for path in args.images:
        boxes, scores, labels = detect(session, load_image(path), args.min_score)
        if args.json:
            print(json.dumps({"image": path, "boxes": boxes.tolist(), "scores": scores.tolist(),
                              "labels": labels.tolist()}))
            continue
        print(f"{path}: {len(scores)} detections with score >= {args.min_score}")
        for box, score, label in zip(boxes, scores, labels):
            name = names.get(str(int(label)), str(int(label)))
            print(f"  {name:>12s} {score:.3f}  [{box[0]:.1f}, {box[1]:.1f}, {box[2]:.1f}, {box[3]:.1f}]")


if __name__ == "__main__":
    main()
