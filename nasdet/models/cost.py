"""Cost of a detector: MACs and params (counted), latency (measured).

MACs come from ``torch.utils.flop_counter`` (MACs = FLOPs / 2; convs and matmuls, the ops it has
formulas for) over the data-independent part of the detector at its input size: backbone, neck and
heads, not box decoding or NMS (see ``dense_forward``). Large models are counted on the meta device
(no arithmetic, so any size counts in a fraction of a second), small ones by a real forward, which is
faster for them: the meta device runs many ops through Python reference kernels.
"""
from __future__ import annotations

import copy
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .detectors import dense_forward, get_input_size


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(fn, *args) -> int:
    """Multiply-accumulates of ``fn(*args)`` (FLOPs / 2 as torch's counter reports them)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops()) // 2


def _meta_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("meta")


# below this many MACs a real forward counts faster than the meta device (benchmarks/README)
REAL_COUNT_MACS = 1e9
# detectors' MACs / (params x input pixels), configs/: 1/84 (ENOT's RetinaNet at 512 px) to 1/758 (the demo's
# baseline), 1/177 to 1/189 for the R50 / DetNAS FPN detectors at 800 px; 1/50 over-estimates them all
MACS_PER_PARAM_PIXEL = 1 / 50


def counts_faster_for_real(model: nn.Module, input_size: int, batch: int = 1) -> bool:
    """Whether a real forward of ``model`` counts its MACs faster than the meta device: its MACs, over-estimated
    from its size (params x pixels), stay under ``REAL_COUNT_MACS``."""
    return count_params(model) * input_size ** 2 * batch * MACS_PER_PARAM_PIXEL < REAL_COUNT_MACS


def detector_macs(model: nn.Module, input_size: int | None = None, batch: int = 1,
                  backbone: bool = True, real: bool | None = None) -> dict[str, int]:
    """MACs of the backbone (with neck) and of the whole dense detector at ``input_size`` (square); with
    ``backbone=False`` only the total (a search's budget check: each count is a forward under the counter).

    ``real=False``: the count runs on a copy on the meta device: no arithmetic, so any model counts in a
    fraction of a second. ``real=True``: a forward of ``model`` itself on its device (no copy, eval mode, no
    grad), faster for small models (the meta device runs many ops through Python reference kernels: the
    demo's 50 M MACs subnet counts in 0.06 s against 0.29 s); the counts are the same. ``None`` (default):
    a real forward when ``counts_faster_for_real``."""
    s = input_size or get_input_size(model)
    if real is None:
        real = counts_faster_for_real(model, s, batch)
    if real:
        p = next(model.parameters())
        m, x = model, torch.zeros(batch, 3, s, s, device=p.device, dtype=p.dtype)
    else:
        m, x = _meta_copy(model), torch.empty(batch, 3, s, s, device="meta")
    was_training = m.training
    m.eval()
    try:
        with torch.no_grad():
            parts = {"backbone": count_macs(m.backbone, x)} if backbone else {}
            return {**parts, "total": count_macs(dense_forward, m, x)}
    finally:
        m.train(was_training)


def detector_params(model: nn.Module) -> dict[str, int]:
    return {"backbone": count_params(model.backbone), "total": count_params(model)}


@contextmanager
def _threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@torch.no_grad()
def measure_latency(model: nn.Module, input_size: int | None = None, device: str = "cpu", warmup: int = 5,
                    runs: int = 30, threads: int | None = None, image: torch.Tensor | None = None) -> dict[str, float]:
    """Median / p90 wall time in ms of the full detector (pre-processing, network, decoding, NMS) at batch 1.

    ``image`` defaults to a random image already at ``input_size`` (the resize is then a no-op); random
    weights give few boxes after thresholding, so NMS time is a lower bound of a trained model's.
    """
    return measure_latencies_in_turns([model], device, warmup, runs, threads, [image] if image is not None else None,
                                      [input_size] if input_size else None)[0]


@torch.no_grad()
def measure_latencies_in_turns(models: Sequence[nn.Module], device: str = "cpu", warmup: int = 5, runs: int = 30,
                               threads: int | None = None, images: Sequence[torch.Tensor] | None = None,
                               input_sizes: Sequence[int] | None = None) -> list[dict[str, float]]:
    """``measure_latency`` of several detectors taking turns run by run (after each one's warmup), each on its
    own image (default: a random one at its input size): their ratio then compares the models, not the
    machine's load at two moments (two exports minutes apart gave found / baseline x0.73 to x1.05)."""
    dev = torch.device(device)
    nets = [copy.deepcopy(m).to(dev).eval() for m in models]
    sizes = input_sizes or [get_input_size(m) for m in models]
    imgs = [(img if img is not None else torch.rand(3, s, s, generator=torch.Generator().manual_seed(0))).to(dev)
            for img, s in zip(images or [None] * len(nets), sizes)]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times: list[list[float]] = [[] for _ in nets]
    with _threads(threads):
        for i in range(warmup + runs):
            for net, img, spent in zip(nets, imgs, times):
                sync()
                t = time.perf_counter()
                net([img])
                sync()
                if i >= warmup:
                    spent.append((time.perf_counter() - t) * 1e3)
    out = []
    for spent in times:
        spent.sort()
        out.append({"median_ms": statistics.median(spent), "p90_ms": spent[min(int(0.9 * len(spent)), len(spent) - 1)],
                    "runs": runs, "device": str(dev), "threads": threads or torch.get_num_threads()})
    return out


class DenseDetector(nn.Module):
    """The data-independent part of a detector as a module (for ONNX export and timing)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(dense_forward(self.detector, x))


@torch.no_grad()
def measure_latency_onnx(model: nn.Module, input_size: int | None = None, warmup: int = 5, runs: int = 30,
                         threads: int | None = None) -> dict[str, float]:
    """Median / p90 ms of the dense part (backbone, neck, heads; no decoding or NMS) in onnxruntime
    on CPU at batch 1. The graph is checked against torch first: a wrong graph's latency is no figure."""
    s = input_size or get_input_size(model)
    dense = DenseDetector(copy.deepcopy(model).cpu().eval()).eval()
    x = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    expected = dense(x)
    n_threads = threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dense.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(dense, (x,), str(path), dynamo=False, opset_version=17, input_names=["images"])
        session = onnx_session(path, n_threads)
    feed = {"images": x.numpy()}
    got = session.run(None, feed)
    worst = max(float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected))
    if worst > 1e-3:
        raise RuntimeError(f"onnxruntime output differs from torch by {worst:.2e}: the exported graph is wrong")
    return {**time_session(session, feed, warmup, runs), "threads": n_threads, "part": "dense", "max_abs_diff": worst}


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session of ``path`` (all graph optimisations, ``threads`` intra-op threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_session(session, feed: dict, warmup: int, runs: int) -> dict:
    """Median / p90 ms of ``session.run(None, feed)`` (an onnxruntime session) after ``warmup`` runs."""
    return time_sessions([session], feed, warmup, runs)[0]


def time_sessions(sessions: Sequence, feed: dict | Sequence[dict], warmup: int, runs: int) -> list[dict]:
    """``time_session`` of several sessions taking turns run by run (after each one's warmup): a ratio of their
    latencies then compares the models, not the machine's load at two moments. ``feed``: one for all, or one per
    session (models of other input sizes)."""
    feeds = [feed] * len(sessions) if isinstance(feed, dict) else list(feed)
    for session, f in zip(sessions, feeds):
        for _ in range(warmup):
            session.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for session, f, spent in zip(sessions, feeds, times):
            t = time.perf_counter()
            session.run(None, f)
            spent.append((time.perf_counter() - t) * 1e3)
    out = []
    for spent in times:
        spent.sort()
        out.append({"median_ms": statistics.median(spent), "p90_ms": spent[min(int(0.9 * len(spent)), len(spent) - 1)],
                    "runs": runs, "device": "onnxruntime-cpu"})
    return out
