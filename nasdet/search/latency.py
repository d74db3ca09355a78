"""Latency of a candidate: measured (torch, onnxruntime) or predicted by a per-block lookup table.

``cost.latency`` picks how the ``latency`` cost (median ms at batch 1) of a search candidate is taken:

- ``torch``: the exported subnet timed end to end in torch on ``cost.device``;
- ``onnxruntime``: the subnet exported end to end to ONNX (pre-processing, decoding and NMS inside,
  as ``nasdet export`` writes it) and timed in onnxruntime on CPU: the deployment figure;
- ``onnxruntime_int8``: the same file quantized to INT8 as ``nasdet export --int8`` does it
  (``nasdet.quantize``, calibrated on a few images of the search split) and timed in onnxruntime;
- ``lut``: OFA's latency predictor. Every backbone block configuration (its structure and input
  shape) is timed once on the device and stored in a JSON table; the rest of the detector (stem,
  neck, heads, decoding, NMS) is timed once per input size as the full default subnet minus its
  blocks. A candidate's latency is then a sum of table entries: no timing once the table is warm.
  The table lives in ``work_dir/search/latency_lut.json`` keyed by device, so it is measured once per
  device and reused by later searches and workers (each re-reads the file before it times an entry and
  merges into it, the file's entries first: workers predict from the same figures, and on one host the
  timings take turns). A rest entry is keyed by the input size and what the rest is
  (``rest_fingerprint``: its modules and settings such as ``score_thresh`` or NMS), so a table timed for
  other post-processing or another head is not read for this one. With ``cost.lut_precision: int8`` each block is
  exported alone, quantized (QDQ, U8S8, calibrated on random inputs: ranges do not change the time)
  and timed in onnxruntime, and the rest is the reference subnet's ``onnxruntime_int8`` time minus its
  INT8 blocks (table key ``onnxruntime-int8|threads=N``).

A detector whose work follows the image (Faster R-CNN: its box head runs on the RPN's proposals, none on noise
for a trained RPN) is traced and timed as ``nasdet export`` does it, on the real image it detects most in
(``real_images``, ``nasdet.export.timing_inputs``); the others on noise (their figure on any image).
"""
from __future__ import annotations

import copy
import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..files import write_json_atomic
from ..models.families import family_named, family_of
from ..models.supernet import INPUT_SIZE, export_detector
from ..space import SearchSpace
from ..models.cost import _threads, measure_latency

LATENCY_BACKENDS = ("torch", "onnxruntime", "onnxruntime_int8", "lut")
CALIBRATION_SEED = 0


def probe_images(size: int, n: int) -> list[torch.Tensor]:
    """``n`` random uint8 images (3 x size x size): calibration when no real images are given (ranges
    move the accuracy, not the time, of an INT8 graph)."""
    g = torch.Generator().manual_seed(CALIBRATION_SEED)
    return [(torch.rand(3, size, size, generator=g) * 255).to(torch.uint8) for _ in range(n)]


def latency_images(cfg, dataset, model: nn.Module | None = None) -> list[torch.Tensor] | None:
    """The first ``export.check_images`` images (uint8 CHW) of ``dataset``: those a detector whose work follows
    the image picks its timing image from (``nasdet.export.timing_inputs``), as its export does on val's; None for
    a family whose work does not (nothing read). The family is ``model``'s, else ``model.detector``'s."""
    family = family_of(model) if model is not None else family_named(cfg.model.detector)
    if not family.work_follows_the_image:
        return None
    return [dataset.load_image(i).as_subclass(torch.Tensor) for i in range(min(cfg.export.check_images, len(dataset)))]


def measure_latency_onnx_int8(model: nn.Module, images: list[torch.Tensor] | None = None, warmup: int = 5,
                              runs: int = 30, threads: int | None = None,
                              real_images: Sequence[torch.Tensor] | None = None) -> dict:
    """Median ms of the end-to-end ONNX graph of ``model`` quantized to INT8 (``nasdet export --int8``'s:
    the network quantized, calibrated on ``images``, default 4 random ones) in onnxruntime on CPU, traced and
    timed as the export does (``real_images``: ``nasdet.export.timing_inputs``)."""
    from ..export import export_onnx, timing_inputs
    from ..models.cost import onnx_session, time_session
    from ..models.detectors import get_input_size
    from ..quantize import network_scopes, quantize_detector

    example, image = timing_inputs(model, real_images)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", example=example)
        quantize_detector(path, Path(tmp) / "int8.onnx", images or probe_images(get_input_size(model), 4),
                          network_scopes(model))
        session = onnx_session(Path(tmp) / "int8.onnx", threads)
    return {**time_session(session, {"image": image.numpy()}, warmup, runs), "threads": threads}


def measure_latency_onnx_e2e(model: nn.Module, warmup: int = 5, runs: int = 30, threads: int | None = None,
                             real_images: Sequence[torch.Tensor] | None = None) -> dict:
    """Median ms of the end-to-end ONNX graph of ``model`` (``nasdet export``'s) in onnxruntime on CPU, traced and
    timed as the export does (``real_images``: ``nasdet.export.timing_inputs``)."""
    from ..export import export_onnx, timing_inputs
    from ..models.cost import onnx_session, time_session

    example, image = timing_inputs(model, real_images)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", example=example)
        session = onnx_session(path, threads)
    return {**time_session(session, {"image": image.numpy()}, warmup, runs), "threads": threads}


def measure_latency_torch(model: nn.Module, device: str = "cpu", warmup: int = 5, runs: int = 30,
                          threads: int | None = None, real_images: Sequence[torch.Tensor] | None = None) -> dict:
    """``measure_latency`` of ``model`` on the image its export is timed on (``nasdet.export.timing_inputs``)."""
    from ..export import timed_on_image, timing_inputs

    example, _ = timing_inputs(model, real_images)
    return measure_latency(model, device=device, warmup=warmup, runs=runs, threads=threads,
                           image=timed_on_image(model, example))


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


def _setting(value) -> str | None:
    """A module attribute that can change what it computes (a threshold, a size, a count; a dict of them such as
    the RPN's pre-NMS top-n), as text; None for anything else (tensors, submodules, hooks)."""
    plain = (bool, int, float, str, type(None))
    if isinstance(value, plain):
        return repr(value)
    if isinstance(value, (tuple, list)) and all(isinstance(v, plain) for v in value):
        return repr(value)
    if isinstance(value, dict) and value and all(isinstance(v, plain) for v in value.values()):
        return repr(sorted(value.items(), key=str))
    return None


# module attributes that are state, not what the module computes: the mode, hook bookkeeping, and what
# torchvision's MultiScaleRoIAlign infers at its first forward (``scales``, ``map_levels``: the same rest hashed
# two ways, a Faster R-CNN rest timed twice and candidates predicted from either, qa_s33 #1)
_NOT_SETTINGS = frozenset({"training", "_is_full_backward_hook", "scales", "map_levels"})


def rest_fingerprint(static: nn.Module) -> str:
    """What the rest of a detector (everything outside its backbone blocks: stem, neck, heads, the transform,
    decoding and NMS) is: each module's name, type, ``extra_repr`` and settings (``_setting``), hashed. A table's
    rest timed for one is not read for another (a rest keyed by the input size alone was read after
    ``model.score_thresh`` changed: predictions 30-60 % low, qa_latency #1)."""
    inside = {id(m) for block in backbone_blocks(static) for m in block.modules()}
    inside.add(id(static.backbone.body))  # its own settings name the arch (depths, ops); its other children count
    parts = []
    for name, module in static.named_modules():
        if id(module) in inside:
            continue
        settings = {k: t for k, v in vars(module).items() if k not in _NOT_SETTINGS and (t := _setting(v)) is not None}
        parts.append(f"{name}:{type(module).__name__}({module.extra_repr()}){sorted(settings.items())}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:12]


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
                 threads: int | None = None, precision: str = "float", calibration: list[torch.Tensor] | None = None,
                 real_images: Sequence[torch.Tensor] | None = None):
        if precision not in ("float", "int8"):
            raise ConfigError(f"cost.lut_precision {precision!r} is not one of ('float', 'int8')")
        self.path = Path(path) if path else None
        self.device, self.warmup, self.runs, self.threads = device, warmup, runs, threads
        self.precision, self.calibration, self.real_images = precision, calibration, real_images
        # INT8 blocks run in onnxruntime on CPU whatever cost.device is
        where = "onnxruntime-int8" if precision == "int8" else device
        self.key = f"{where}|threads={threads or torch.get_num_threads()}"
        self.blocks: dict[str, float] = {}
        self.rest: dict[str, float] = {}
        self.measured = 0  # table entries timed by this process
        if self.path is not None and self.path.is_file():
            data = self._read().get(self.key, {})
            self.blocks, self.rest = dict(data.get("blocks", {})), dict(data.get("rest", {}))

    def _read(self) -> dict:
        """The table file's devices; any other file is refused (ConfigError) before it is rewritten."""
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"cost.lut {self.path} is not a latency lookup table (not JSON: {e}); nasdet "
                              "would write its table over it: name a new file") from None
        entries = data if isinstance(data, dict) else {}
        if not isinstance(data, dict) or not all(
                "|threads=" in k and isinstance(v, dict) and set(v) <= {"blocks", "rest"} for k, v in entries.items()):
            keys = ", ".join(repr(k) for k in list(entries)[:3]) or type(data).__name__
            raise ConfigError(f"cost.lut {self.path} is not a latency lookup table (it holds {keys}, not "
                              "'<device>|threads=N' tables of blocks): nasdet would write its table into it: name "
                              "a new file")
        return data

    def reload(self) -> None:
        """Take in the entries another process (a search worker) saved since: the file's figures first."""
        if self.path is not None and self.path.is_file():
            data = self._read().get(self.key, {})
            self.blocks.update(data.get("blocks", {}))
            self.rest.update(data.get("rest", {}))

    def save(self) -> None:
        """Merge this table into the file, the file's entries first (a worker that timed an entry another one
        saved meanwhile takes the saved figure: every candidate of a study predicted from one table)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self._read() if self.path.is_file() else {}
        saved = data.get(self.key, {})
        self.blocks = {**self.blocks, **saved.get("blocks", {})}
        self.rest = {**self.rest, **saved.get("rest", {})}
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
        if self.precision == "int8":
            return time_block_int8(block, in_shape, self.warmup, self.runs, self.threads)
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
        blocks = [(self.block_key(block, shape), block, shape) for block, shape in self._block_inputs(static, s)]
        if any(k not in self.blocks for k, _, _ in blocks):
            self.reload()
            new = False
            for k, block, shape in blocks:
                if k not in self.blocks:
                    self.blocks[k] = self._time_block(block, shape)
                    self.measured += 1
                    new = True
            if new:
                self.save()
        return sum(self.blocks[k] for k, _, _ in blocks)

    def rest_key(self, static: nn.Module, s: int) -> str:
        """The rest's entry at size ``s`` for what the rest is (``rest_fingerprint``); its own per image kind for a
        detector whose work follows the image (a table timed on noise, as before, left Faster R-CNN's box head
        out: its trained RPN proposed nothing)."""
        from ..models.families import family_of

        key = f"{s}|{rest_fingerprint(static)}"
        return f"{key}|real image" if self.real_images and family_of(static).work_follows_the_image else key

    def rest_ms(self, reference_static: nn.Module, s: int) -> float:
        """Everything but the blocks at size ``s``: the full reference subnet timed (on the image its export
        would be timed on: ``nasdet.export.timing_inputs``), minus its blocks."""
        key = self.rest_key(reference_static, s)
        if key not in self.rest:
            self.reload()
        if key not in self.rest:
            if self.precision == "int8":
                full = measure_latency_onnx_int8(reference_static, self.calibration, self.warmup, self.runs,
                                                 self.threads, self.real_images)["median_ms"]
            else:
                full = measure_latency_torch(reference_static, self.device, self.warmup, self.runs, self.threads,
                                             self.real_images)["median_ms"]
            self.rest[key] = max(full - self.blocks_ms(reference_static, s), 0.0)
            self.measured += 1
            self.save()
        return self.rest[key]

    def predict(self, static: nn.Module, arch: Mapping[str, Any], supernet: nn.Module, space: SearchSpace) -> float:
        """Predicted ms of ``static`` (the export of ``arch``); the rest at its size is timed on the
        space's default subnet the first time that size is seen (on the candidate itself when its rest is
        another one: a space with choices outside the backbone's blocks)."""
        s = int(arch[INPUT_SIZE])
        key = self.rest_key(static, s)
        if key not in self.rest:
            self.reload()
        if key not in self.rest:
            reference = export_detector(supernet, dict(space.default(), **{INPUT_SIZE: s}), space).eval()
            self.rest_ms(reference if self.rest_key(reference, s) == key else static.eval(), s)
        return self.rest[key] + self.blocks_ms(static.eval(), s)


def time_block_int8(block: nn.Module, in_shape: tuple[int, ...], warmup: int, runs: int, threads: int | None) -> float:
    """Median ms of one backbone block exported alone, quantized (all of it) and run by onnxruntime."""
    import warnings

    from ..models.cost import onnx_session
    from ..quantize import quantize_onnx

    b = copy.deepcopy(block).cpu().eval()
    g = torch.Generator().manual_seed(CALIBRATION_SEED)
    samples = [torch.randn(in_shape, generator=g) for _ in range(2)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "block.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(b, (samples[0],), str(path), dynamo=False, opset_version=17, input_names=["x"])
        quantize_onnx(path, Path(tmp) / "int8.onnx", [{"x": x.numpy()} for x in samples])
        session = onnx_session(Path(tmp) / "int8.onnx", threads)
    feed = {"x": samples[0].numpy()}
    return _median_ms(lambda: session.run(None, feed), warmup, runs)


def latency_function(backend: str, supernet: nn.Module, space: SearchSpace, device: str = "cpu", warmup: int = 5,
                     runs: int = 30, threads: int | None = None, lut_path: str | Path | None = None,
                     lut_precision: str = "float", calibration: list[torch.Tensor] | None = None,
                     real_images: Sequence[torch.Tensor] | None = None):
    """``(static subnet, arch) -> ms`` for ``cost.latency``'s backend; ``calibration``: uint8 images the
    INT8 backends calibrate on (default: random ones); ``real_images``: uint8 images a candidate whose work follows
    the image is traced and timed on, as its export would be (``nasdet.export.timing_inputs``; default: noise)."""
    if backend == "torch":
        return lambda static, arch: float(measure_latency_torch(static, device, warmup, runs, threads,
                                                                real_images)["median_ms"])
    if backend == "onnxruntime":
        return lambda static, arch: float(measure_latency_onnx_e2e(static, warmup, runs, threads,
                                                                   real_images)["median_ms"])
    if backend == "onnxruntime_int8":
        return lambda static, arch: float(measure_latency_onnx_int8(static, calibration, warmup, runs, threads,
                                                                    real_images)["median_ms"])
    if backend == "lut":
        table = LatencyTable(lut_path, device, warmup, runs, threads, lut_precision, calibration, real_images)
        fn = lambda static, arch: table.predict(static, arch, supernet, space)  # noqa: E731
        fn.table = table
        return fn
    raise ConfigError(f"cost.latency {backend!r} is not one of {LATENCY_BACKENDS}")
