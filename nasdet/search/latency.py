"""Latency of a candidate: measured (torch, onnxruntime) or predicted by a per-block lookup table.

``cost.latency`` picks how the ``latency`` cost (median ms at batch 1) of a search candidate is taken:

- ``torch``: the exported subnet timed end to end in torch on ``cost.device``;
- ``onnxruntime``: the subnet exported end to end to ONNX (pre-processing, decoding and NMS inside,
  as ``nasdet export`` writes it) and timed in onnxruntime on CPU: the deployment figure;
- ``lut``: OFA's latency predictor. Every backbone block configuration (its structure and input
  shape) is timed once on the device and stored in a JSON table; the rest of the detector (stem,
  neck, heads, decoding, NMS) is timed once per input size as the full default subnet minus its
  blocks. A candidate's latency is then a sum of table entries: no timing once the table is warm.
  The table lives in ``work_dir/search/latency_lut.json`` keyed by device, so it is measured once per
  device and reused by later searches and workers.
"""
from __future__ import annotations

import copy
import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..files import write_json_atomic
from ..models.supernet import INPUT_SIZE, export_detector
from ..space import SearchSpace
from ..models.cost import _threads, measure_latency

LATENCY_BACKENDS = ("torch", "onnxruntime", "lut")


def measure_latency_onnx_e2e(model: nn.Module, warmup: int = 5, runs: int = 30, threads: int | None = None) -> dict:
    """Median ms of the end-to-end ONNX graph of ``model`` (``nasdet export``'s) in onnxruntime on CPU."""
    from ..export import export_onnx
    from ..models.cost import onnx_session
    from ..models.detectors import get_input_size
    from ..models.cost import time_session

    s = get_input_size(model)
    image = (torch.rand(3, s, s, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx")
        session = onnx_session(path, threads)
    return {**time_session(session, {"image": image.numpy()}, warmup, runs), "threads": threads}


def backbone_blocks(static_detector: nn.Module) -> list[nn.Module]:
    """The searchable blocks of an exported detector's backbone: the modules of ``body.stages``
    (OFA MobileNetV3, ShuffleNet), of ``body.features`` (torchvision-style MobileNetV2), else the
    body's children."""
    body = static_detector.backbone.body
    stages = getattr(body, "stages", None)
    if stages is None:
        features = getattr(body, "features", None)
        return list(features) if isinstance(features, nn.Sequential) else list(body.children())
    return [b for stage in stages for b in (stage if isinstance(stage, nn.Sequential) else [stage])]


def _median_ms(fn, warmup: int, runs: int) -> float:
    times = []
    for i in range(warmup + runs):
        t = time.perf_counter()
        fn()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


class LatencyTable:
    """OFA-style latency lookup table for one device: ``block key -> ms`` and ``input size -> rest ms``."""

    def __init__(self, path: str | Path | None, device: str = "cpu", warmup: int = 5, runs: int = 30,
                 threads: int | None = None):
        self.path = Path(path) if path else None
        self.device, self.warmup, self.runs, self.threads = device, warmup, runs, threads
        self.key = f"{device}|threads={threads or torch.get_num_threads()}"
        self.blocks: dict[str, float] = {}
        self.rest: dict[str, float] = {}
        self.measured = 0  # table entries timed by this process
        if self.path is not None and self.path.is_file():
            data = json.loads(self.path.read_text()).get(self.key, {})
            self.blocks, self.rest = dict(data.get("blocks", {})), dict(data.get("rest", {}))

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        data[self.key] = {"blocks": self.blocks, "rest": self.rest}
        write_json_atomic(self.path, data, indent=1, sort_keys=True)

    @staticmethod
    def block_key(block: nn.Module, in_shape: tuple[int, ...]) -> str:
        return hashlib.sha1(f"{tuple(in_shape)}|{block!r}".encode()).hexdigest()[:16]

    @torch.no_grad()
    def _block_inputs(self, static: nn.Module, s: int) -> list[tuple[nn.Module, tuple[int, ...]]]:
        """Each backbone block with the shape of its input at input size ``s`` (one forward with hooks)."""
        blocks = backbone_blocks(static)
        shapes: dict[int, tuple[int, ...]] = {}
        def record(i):
            def hook(module, args):
                shapes.setdefault(i, tuple(args[0].shape))  # returns None: the input is left alone
            return hook
        hooks = [b.register_forward_pre_hook(record(i)) for i, b in enumerate(blocks)]
        try:
            static.backbone.body(torch.zeros(1, 3, s, s, device=next(static.parameters()).device))
        finally:
            for h in hooks:
                h.remove()
        if not shapes:
            raise ConfigError(f"cost.latency: lut found no blocks in {type(static.backbone.body).__name__} (none of its "
                             "stages/features/children ran as a module): use cost.latency torch or onnxruntime")
        return [(b, shapes[i]) for i, b in enumerate(blocks) if i in shapes]

    @torch.no_grad()
    def _time_block(self, block: nn.Module, in_shape: tuple[int, ...]) -> float:
        dev = torch.device(self.device)
        b = copy.deepcopy(block).to(dev).eval()
        x = torch.randn(in_shape, generator=torch.Generator().manual_seed(0)).to(dev)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

        def run():
            b(x)
            sync()
        with _threads(self.threads):
            return _median_ms(run, self.warmup, self.runs)

    def blocks_ms(self, static: nn.Module, s: int) -> float:
        total, new = 0.0, False
        for block, shape in self._block_inputs(static, s):
            k = self.block_key(block, shape)
            if k not in self.blocks:
                self.blocks[k] = self._time_block(block, shape)
                self.measured += 1
                new = True
            total += self.blocks[k]
        if new:
            self.save()
        return total

    def rest_ms(self, reference_static: nn.Module, s: int) -> float:
        """Everything but the blocks at size ``s``: the full reference subnet timed, minus its blocks."""
        if str(s) not in self.rest:
            full = measure_latency(reference_static, device=self.device, warmup=self.warmup, runs=self.runs,
                                   threads=self.threads)["median_ms"]
            self.rest[str(s)] = max(full - self.blocks_ms(reference_static, s), 0.0)
            self.measured += 1
            self.save()
        return self.rest[str(s)]

    def predict(self, static: nn.Module, arch: Mapping[str, Any], supernet: nn.Module, space: SearchSpace) -> float:
        """Predicted ms of ``static`` (the export of ``arch``); the rest at its size is timed on the
        space's default subnet the first time that size is seen."""
        s = int(arch[INPUT_SIZE])
        if str(s) not in self.rest:
            reference = dict(space.default(), **{INPUT_SIZE: s})
            self.rest_ms(export_detector(supernet, reference, space).eval(), s)
        return self.rest[str(s)] + self.blocks_ms(static.eval(), s)


def latency_function(backend: str, supernet: nn.Module, space: SearchSpace, device: str = "cpu", warmup: int = 5,
                     runs: int = 30, threads: int | None = None, lut_path: str | Path | None = None):
    """``(static subnet, arch) -> ms`` for ``cost.latency``'s backend."""
    if backend == "torch":
        return lambda static, arch: float(measure_latency(static, device=device, warmup=warmup, runs=runs,
                                                          threads=threads)["median_ms"])
    if backend == "onnxruntime":
        return lambda static, arch: float(measure_latency_onnx_e2e(static, warmup, runs, threads)["median_ms"])
    if backend == "lut":
        table = LatencyTable(lut_path, device, warmup, runs, threads)
        fn = lambda static, arch: table.predict(static, arch, supernet, space)  # noqa: E731
        fn.table = table
        return fn
    raise ConfigError(f"cost.latency {backend!r} is not one of {LATENCY_BACKENDS}")
