"""How well OFA's per-block latency table predicts measured latency, and what it saves.

For ``--archs`` random subnets of the config's supernet, the table's prediction against the subnet timed
end to end: in torch on CPU (``--precision float``), or quantized to INT8 and run by onnxruntime
(``--precision int8``: the INT8 table, ``cost.lut_precision: int8``, against ``cost.latency:
onnxruntime_int8``). The network's time does not depend on the weights, but the end-to-end time does:
random weights send up to ``detections_per_img`` boxes through NMS in float and, after quantization,
often none. ``--weights`` takes a trained supernet checkpoint instead (subnets recalibrated on nothing:
the timing needs real score distributions, not accurate ones), with ``--set model.score_thresh=...`` as
the deployed model has it. Prints the mean absolute and
relative error, Kendall's tau of the two rankings, and the time to warm the table vs the time a
predicted candidate then costs.

    python benchmarks/latency_lut.py configs/demo/pipeline_shapes.yaml --archs 20 --threads 1
    python benchmarks/latency_lut.py configs/demo/pipeline_shapes.yaml --archs 20 --threads 1 --precision int8
    python benchmarks/latency_lut.py /tmp/ctl_pipe/seed0/config.yaml --archs 12 --threads 1 --precision int8 \
        --weights /tmp/ctl_pipe/seed0/supernet/ckpt/last.pt --set model.score_thresh=0.1
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nasdet.config import load_config
from nasdet.models.supernet import build_supernet
from nasdet.models.supernet import export_detector
from nasdet.search.cost import measure_latency
from nasdet.search.latency import LatencyTable, measure_latency_onnx_int8


def kendall_tau(a: list[float], b: list[float]) -> float:
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += (1 if (a[i] - a[j]) * (b[i] - b[j]) > 0 else -1)
    return s / (n * (n - 1) / 2)


def timing_parser(doc: str, runs: int) -> argparse.ArgumentParser:
    """CONFIG, --threads, --runs, --set: what the latency benchmarks share."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=runs)
    ap.add_argument("--set", action="append", default=[])
    return ap


def random_supernet(args):
    """(config, supernet with random weights in eval mode, its space): latency does not depend on weights."""
    cfg = load_config(args.config, args.set)
    torch.manual_seed(0)
    model, space = build_supernet(cfg, 8)
    return cfg, model.eval(), space


def main() -> None:
    ap = timing_parser(__doc__, 30)
    ap.add_argument("--archs", type=int, default=20)
    ap.add_argument("--precision", choices=("float", "int8"), default="float")
    ap.add_argument("--weights", help="a trained supernet checkpoint of the config's space (default: random weights)")
    args = ap.parse_args()
    cfg, model, space = random_supernet(args)
    if args.weights:
        from nasdet.train.checkpoint import load_checkpoint, load_model_weights

        load_model_weights(model, load_checkpoint(args.weights, space_id=space.space_id), source=args.weights)
        model.eval()
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(args.archs)]
    with tempfile.TemporaryDirectory() as tmp:
        table = LatencyTable(Path(tmp) / "lut.json", warmup=5, runs=args.runs, threads=args.threads,
                             precision=args.precision)
        t0 = time.perf_counter()
        predicted = [table.predict(export_detector(model, a, space), a, model, space) for a in archs]
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = [table.predict(export_detector(model, a, space), a, model, space) for a in archs]
        per_candidate_warm = (time.perf_counter() - t0) / len(archs)
        assert again == predicted
    t0 = time.perf_counter()
    if args.precision == "int8":
        measured = [measure_latency_onnx_int8(export_detector(model, a, space).eval(), None, 5, args.runs,
                                              args.threads)["median_ms"] for a in archs]
    else:
        measured = [measure_latency(export_detector(model, a, space), warmup=5, runs=args.runs,
                                    threads=args.threads)["median_ms"] for a in archs]
    per_candidate_measured = (time.perf_counter() - t0) / len(archs)
    abs_err = [abs(p - m) for p, m in zip(predicted, measured)]
    rel_err = [abs(p - m) / m for p, m in zip(predicted, measured)]
    print(f"{args.archs} random archs of {cfg.model.backbone.name} x{cfg.model.backbone.width_mult} "
          f"({cfg.model.detector}; {'trained' if args.weights else 'random'} weights, score_thresh "
          f"{cfg.model.score_thresh}), " + ("onnxruntime INT8" if args.precision == "int8" else "torch")
          + f" CPU, {args.threads} thread(s)")
    print(f"measured   ms: min {min(measured):.2f} median {statistics.median(measured):.2f} max {max(measured):.2f}")
    print(f"predicted  ms: min {min(predicted):.2f} median {statistics.median(predicted):.2f} max {max(predicted):.2f}")
    print(f"mean abs error {statistics.mean(abs_err):.2f} ms, mean rel error {statistics.mean(rel_err):.1%}, "
          f"max rel error {max(rel_err):.1%}, Kendall tau {kendall_tau(predicted, measured):.2f}")
    print(f"table: {len(table.blocks)} block entries + {len(table.rest)} sizes, warmed in {warm:.1f} s; "
          f"a candidate then costs {per_candidate_warm * 1e3:.0f} ms (export + lookup) vs "
          f"{per_candidate_measured * 1e3:.0f} ms to time it")


if __name__ == "__main__":
    main()
