"""Float vs INT8 end-to-end latency in onnxruntime, side by side, for subnets of a config's space.

For each of the space's smallest, default and largest subnets (and ``--random K`` random ones), the
end-to-end file ``nasdet export`` writes and its INT8 version (``nasdet export --int8``'s quantization,
calibrated on ``--calib`` training images) are timed in turns, one run of each per round, so that both
see the same machine load; the ratio INT8 / float is the figure (absolute milliseconds move with the
load). Random supernet weights: the boxes each file returns are printed, because they move the time more
than the network does (with the demo's random weights the float file keeps 100 boxes and the INT8 file
none, so its "2-3x faster" is NMS work it skips: see benchmarks/README.md, INT8).

    python benchmarks/int8_latency.py configs/demo/pipeline_shapes.yaml --runs 50 --threads 1
"""
from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

from latency_lut import random_supernet, timing_parser  # benchmarks/ is on sys.path when run as a script
from nasdet.export import export_onnx
from nasdet.models.cost import onnx_session
from nasdet.models.detectors import get_input_size
from nasdet.models.supernet import export_detector
from nasdet.quantize import network_scopes, quantize_detector
from nasdet.stages.export import calibration_images


def side_by_side(sessions: dict, feeds: dict, warmup: int, runs: int) -> dict[str, float]:
    """Median ms per session, the sessions run in turns (one run each per round) so that all see the same
    machine load; ``feeds``: the input of each session, by the same keys."""
    times = {k: [] for k in sessions}
    for i in range(warmup + runs):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds[k])
            if i >= warmup:
                times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = timing_parser(__doc__, 50)
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--random", type=int, default=0)
    args = ap.parse_args()
    cfg, model, space = random_supernet(args)
    rng = random.Random(0)
    archs = {"smallest": space.smallest(), "default": space.default(), "largest": space.largest()}
    archs.update({f"random{i}": space.sample(rng) for i in range(args.random)})
    images = calibration_images(cfg, args.calib)
    print(f"{cfg.model.detector} on {cfg.model.backbone.name} x{cfg.model.backbone.width_mult}, onnxruntime CPU, "
          f"{args.threads} thread(s), {args.runs} runs each in turns, calibrated on {len(images)} train images")
    print(f"{'arch':>10s} {'size':>5s} {'float ms':>9s} {'int8 ms':>8s} {'int8/float':>10s} {'file int8/float':>15s} "
          f"{'boxes float/int8':>16s}")
    for name, arch in archs.items():
        static = export_detector(model, arch, space).eval()
        s = get_input_size(static)
        with tempfile.TemporaryDirectory() as tmp:
            f = export_onnx(static, Path(tmp) / "float.onnx")
            q = quantize_detector(f, Path(tmp) / "int8.onnx", images, network_scopes(static))
            sessions = {"float": onnx_session(f, args.threads), "int8": onnx_session(Path(tmp) / "int8.onnx", args.threads)}
        feed = {"image": images[0].numpy()}  # a train image, resized inside
        ms = side_by_side(sessions, {k: feed for k in sessions}, 5, args.runs)
        boxes = "/".join(str(len(sessions[k].run(None, feed)[0])) for k in ("float", "int8"))
        print(f"{name:>10s} {s:5d} {ms['float']:9.2f} {ms['int8']:8.2f} {ms['int8'] / ms['float']:10.2f} "
              f"{q['int8_bytes'] / q['float_bytes']:15.2f} {boxes:>16s}")


if __name__ == "__main__":
    main()
