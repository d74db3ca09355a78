"""The export stage (``nasdet export``): the tuned (or baseline) model as ONNX, its detections checked
against torch on val images, timed in torch and onnxruntime, its measured cost against the search budget
and the search's prediction (from ``search/best_arch.json``). With ``--int8`` (``export.int8``, or a search
under INT8 latency) also the INT8 file, with both files' val mAP run through onnxruntime and both
latencies. Outputs in ``export/``."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..config import ExperimentConfig
from ..data.build import build_datasets, load_split
from ..data.dataset import to_coco_gt
from ..errors import ConfigError, ExportParityError
from ..export import (check_parity, configured_postprocessing, export_onnx, onnx_metadata, postprocessing, raw_decoding,
                      time_onnx, time_onnx_in_turns, timed_on_image, timing_image, tracing_example)
from ..metrics import coco_evaluate
from ..search.budget import COST_UNITS
from ..quantize import INT8_MIN_OPSET, detection_agreement, network_scopes, onnx_detections, quantize_detector
from ..models.cost import detector_macs, detector_params, measure_latency
from ..models.detectors import get_input_size
from ..models.families import family_named, family_of
from ..train import dist
from ..train.checkpoint import load_checkpoint, unfinished_at
from ..train.trained import load_trained_model, load_tuned_model
from ..train.resume import flatten
from ..threads import set_torch_threads
from ..workdir import CLASSES_JSON, WorkDir, write_json
from .common import scored_val_set, stage_api, stage_threads


def budget_check(cfg: ExperimentConfig, measured: dict, predicted: dict | None) -> dict | None:
    """Measured cost of the exported model against ``search.budget``: a row per metric."""
    b = cfg.search.budget
    if b is None:
        return None
    value = measured.get(b.metric)
    out = {"metric": b.metric, "max": b.max, "measured": value,
           "predicted": None if predicted is None else predicted.get(b.metric),
           "within": value is not None and value <= b.max}
    if b.metric == "latency":
        out["timed_by"] = measured.get("latency_timed_by")
    return out


def wants_int8(cfg: ExperimentConfig) -> bool:
    """The INT8 file is written when asked for, or when the search's latency was INT8 latency (the budget
    is then checked against it)."""
    return cfg.export.int8 or cfg.cost.int8


def calibration_images(cfg: ExperimentConfig, n: int) -> list[torch.Tensor]:
    """``n`` training images of the run, spread evenly over the training set, as read (no augmentation)."""
    train = load_split(cfg, "train")
    n = min(n, len(train))  # (more than the set holds: all of it; the step from the larger n reached half of it)
    picks = sorted({round(i * (len(train) - 1) / max(n - 1, 1)) for i in range(n)})
    return [train.load_image(i).as_subclass(torch.Tensor) for i in picks]


def export_int8(cfg: ExperimentConfig, wd: WorkDir, model: torch.nn.Module, source: str, float_path: Path, val,
                probe: torch.Tensor, console: Console | None = None) -> dict:
    """``export/<source>_int8.onnx`` from the checked float file; both files' COCO metrics on val computed
    by onnxruntime, the drop, how many confident float detections INT8 keeps, both latencies."""
    e, c = cfg.export, cfg.cost
    images = calibration_images(cfg, e.calibration_images)
    int8_path = wd.onnx_int8(source)
    quantized = quantize_detector(float_path, int8_path, images, network_scopes(model), e.calibration_method)
    val = scored_val_set(cfg, val)
    gt = to_coco_gt(val)
    dets = {"float": onnx_detections(float_path, val, c.threads), "int8": onnx_detections(int8_path, val, c.threads)}
    metrics = {k: coco_evaluate(gt, d) for k, d in dets.items()}
    qat = None
    t = cfg.tune
    if t.qat and source == "tune" and metrics["float"]["AP"] - metrics["int8"]["AP"] > t.qat_max_drop:
        qat = {"ptq_metrics": metrics["int8"], "ptq_drop": {k: metrics["float"][k] - metrics["int8"][k] for k in ("AP", "AP50")}}
        with tempfile.TemporaryDirectory(dir=int8_path.parent) as tmp:
            qat_path = Path(tmp) / "qat_int8.onnx"
            qat.update(quantization_aware_tuning(cfg, model, Path(tmp), qat_path, images,
                                                 metadata=onnx_metadata(float_path)))
            qat_dets = onnx_detections(qat_path, val, c.threads)
            qat["qat_metrics"] = coco_evaluate(gt, qat_dets)
            qat["qat_drop"] = {k: metrics["float"][k] - qat["qat_metrics"][k] for k in ("AP", "AP50")}
            # by the gate's own measure (val AP): tuning that did not help must not replace the post-training file
            qat["kept"] = "qat" if qat["qat_metrics"]["AP"] >= metrics["int8"]["AP"] else "ptq"
            qat["judged_on"] = (f"val ({len(val)} images): the images the INT8 AP is reported on, so the kept "
                                "file's AP is the better of two and leans optimistic")
            if qat["kept"] == "qat":
                os.replace(qat_path, int8_path)
                dets["int8"], metrics["int8"] = qat_dets, qat["qat_metrics"]
        (console or Console()).print(Text(
            f"quantization-aware tuning: INT8 AP drop {qat['ptq_drop']['AP']:.4f} after post-training quantization, "
            f"{qat['qat_drop']['AP']:.4f} after tuning: " +
            (f"kept the tuned file ({int8_path.name})" if qat["kept"] == "qat" else
             f"QAT did not help, kept the post-training file ({int8_path.name})"),
            style=None if qat["kept"] == "qat" else "bold yellow"), soft_wrap=True)
    # the two files in turns: their ratio is what a user decides on, and the machine's load drifts in minutes
    lat_float, lat_int8 = time_onnx_in_turns([float_path, int8_path], probe, c.warmup, c.runs, c.threads)
    drop = {k: metrics["float"][k] - metrics["int8"][k] for k in ("AP", "AP50")}
    if qat is not None:
        qat["drop_after"] = drop
    return {"onnx": str(int8_path.resolve()), "quantization": {**quantized, "format": "QDQ", "weights": "int8 per channel",
                                                     "activations": "uint8 per tensor", "calibration_split": "train"},
            "val_images": len(val), "metrics_onnxruntime": metrics, "qat": qat,
            "drop": drop,
            "agreement": detection_agreement(dets["float"], dets["int8"]),
            "latency_onnxruntime": {"float": lat_float, "int8": lat_int8},
            "latency_ratio_int8_to_float": lat_int8["median_ms"] / lat_float["median_ms"]}


def quantization_aware_tuning(cfg: ExperimentConfig, model: torch.nn.Module, folder: Path, int8_path: Path,
                              images: list[torch.Tensor], metadata: dict | None = None) -> dict:
    """``tune.qat``: a copy of the tuned model fine-tuned fake-quantized (``train.qat``), exported and quantized
    into ``int8_path`` (a draft beside the post-training file, which the caller replaces only if this one is not
    worse; the float file stays the tuned model), with the float file's ONNX ``metadata``."""
    import copy

    from ..train.qat import qat_tune

    t, tcfg = cfg.tune, cfg.tune.train or cfg.train
    tuned = copy.deepcopy(model)
    train = build_datasets(cfg, need=("train",))["train"]
    record = qat_tune(tuned, train, family_of(tuned).network_modules, t.qat_steps, t.qat_lr, tcfg.batch_size,
                      torch.device(tcfg.device if tcfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"),
                      cfg.seed)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        qat_float = export_onnx(tuned, Path(tmp) / "qat.onnx", opset=cfg.export.opset, metadata=metadata,
                                example=tracing_example(tuned, images))
        quantize_detector(qat_float, int8_path, images, network_scopes(tuned), cfg.export.calibration_method)
    return record




def export_settings(cfg: ExperimentConfig, source: str) -> dict:
    """What an export's figures are made with besides its checkpoint (its record's ``settings``): the data (val
    images scored, train images INT8 calibrates on) and ``eval.max_images``, the post-processing the graph bakes
    in (``POSTPROCESSING_KEYS`` of ``model``: another threshold is another file), the export and cost sections and,
    for the tuned model, the budget it is checked against and quantization-aware tuning. Not ``export.int8``:
    asking for the INT8 file is ``WorkDir.exported(int8=)``'s check, and a plain export keeps a current one."""
    out = {"eval": {"max_images": cfg.eval.max_images},
           "data": cfg.data.model_dump(mode="json", include={"format", "train", "val", "classes", "data_yaml"}),
           "model": configured_postprocessing(cfg.model),
           "export": cfg.export.model_dump(mode="json", exclude={"source", "int8"}),
           "cost": cfg.cost.model_dump(mode="json")}
    if source == "tune":
        b = cfg.search.budget
        out["search"] = {"budget": None if b is None else b.model_dump(mode="json")}
        out["tune"] = {k: getattr(cfg.tune, k) for k in ("qat", "qat_max_drop", "qat_steps", "qat_lr")}
    return out


def int8_settings(settings: dict) -> dict:
    """The part of ``export_settings`` the INT8 file and its figures are made with (not the budget, the parity
    check, the float latency's device or how the search timed)."""
    e, c = settings.get("export", {}), settings.get("cost", {})
    return {"eval": settings.get("eval"), "data": settings.get("data"), "tune": settings.get("tune"),
            "model": settings.get("model"),
            "export": {k: e.get(k) for k in ("opset", "calibration_images", "calibration_method")},
            "cost": {k: c.get(k) for k in ("warmup", "runs", "threads")}}


def current_export(cfg: ExperimentConfig, wd: WorkDir, source: str, console: Console) -> dict | None:
    """The export record of ``source`` when exporting again would make the same one: newer than its checkpoint
    (``WorkDir.exported``) and made with this config's ``export_settings`` (a record written before records kept
    them is not); else None, and one line says why when there is a record (the caller exports again)."""
    rec = wd.exported(source, wants_int8(cfg))
    if rec is None:
        why = _stale_record(wd, source)
        float_rec = wd.exported(source) if not why and wants_int8(cfg) else None
        if float_rec is not None:  # current but for its INT8 file
            int8 = float_rec.get("int8")
            why = f"names an INT8 file that is not there ({int8['onnx']})" if int8 else "has no INT8 file"
        if why:
            console.print(f"{escape(str(wd.export_record(source).relative_to(wd.root)))} {escape(why)}: exporting again",
                          soft_wrap=True)
        return None
    why = _made_otherwise(rec.get("settings"), export_settings(cfg, source))
    if why:
        console.print(f"{escape(str(wd.export_record(source).relative_to(wd.root)))} {escape(why)}: exporting again",
                      soft_wrap=True)
        return None
    return rec


def _stale_record(wd: WorkDir, source: str) -> str:
    """Why an export record there is not current (``WorkDir.exported`` said None), for a console line; '' when
    there is none or it only lacks an INT8 file (said where that is decided)."""
    path = wd.export_record(source)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    ckpt, own = Path(str(rec.get("checkpoint", ""))), wd.stage(source).checkpoint
    if ckpt.resolve() != own.resolve():  # a copied work dir: the record's files are the original's
        return f"was made in another work dir (from {ckpt})"
    if own.is_file() and path.stat().st_mtime < own.stat().st_mtime:
        return f"is older than {own.relative_to(wd.root)} (trained since)"
    if not Path(str(rec.get("onnx", ""))).is_file():
        return f"names a file that is not there ({rec.get('onnx')})"
    return ""


def settings_changes(made_with: dict, now: dict) -> list[str]:
    """How a record's ``settings`` differ from ``now``'s, one ``key old -> new`` per value (``search.budget.max
    10.0 -> 1.98``); empty when alike."""
    old, new = flatten(made_with), flatten(now)
    show = lambda v: "unset" if v is _UNSET else v if isinstance(v, str) else json.dumps(v)  # noqa: E731
    return [f"{k} {show(old.get(k, _UNSET))} -> {show(new.get(k, _UNSET))}" for k in sorted(set(old) | set(new))
            if old.get(k, _UNSET) != new.get(k, _UNSET)]


_UNSET = object()


def _made_otherwise(made_with: dict | None, now: dict) -> str:
    """Why a record made with ``made_with`` is not one made with ``now`` ('' when it is), for a console line."""
    if made_with is None:
        return "does not say what settings it was made with (written by an earlier nasdet)"
    changes = settings_changes(made_with, now)
    listed = ", ".join(changes[:3]) + (f" and {len(changes) - 3} more" if len(changes) > 3 else "")
    return f"was made with other settings ({listed})" if changes else ""


def earlier_int8(cfg: ExperimentConfig, wd: WorkDir, source: str, ckpt: Path) -> tuple[dict | None, str]:
    """The INT8 record of an earlier ``--int8`` export of the same checkpoint (``WorkDir.exported``: newer than
    it, the INT8 file still there) made with this config's ``int8_settings``: a plain export redoes only the
    float file (the same from the same weights), so the INT8 file and its figures still hold and are kept in
    the record (``kept_from_earlier_export``). Else None, and why an INT8 file there is not this export's."""
    if not wd.export_record(source).is_file():
        return None, "no export record describes it (an earlier export stopped before writing one)"
    earlier = wd.exported(source, int8=True)
    if earlier is None or Path(str(earlier.get("checkpoint"))).resolve() != ckpt.resolve():
        return None, f"it was quantized from an earlier checkpoint than {ckpt}"
    made_with = earlier.get("settings")
    why = _made_otherwise(made_with and int8_settings(made_with), int8_settings(export_settings(cfg, source)))
    if why:
        return None, f"its record {why}"
    return {**earlier["int8"], "kept_from_earlier_export": True}, ""


def class_map(data_format: str, dataset) -> dict[int, dict]:
    """``classes.json``: the graph's label (1..K, the data set's class order) -> its name and the data set's own
    id for it, which a deployer writing results back needs and which is not the label: COCO's ``category_id``
    (1..90 with gaps, a tool's own ids), YOLO's 0-based class index; a VOC class is its name."""
    def source_id(k: int) -> dict:
        if data_format == "coco":
            return {"category_id": int(dataset.category_ids[k])}
        if data_format == "yolo":
            return {"yolo_class": k}
        return {}

    return {k + 1: {"name": name, **source_id(k)} for k, name in enumerate(dataset.classes)}


def onnx_file_metadata(baked: dict, classes: dict, input_size: int, decode: dict | None) -> dict[str, str]:
    """The exported files' ``metadata_props`` (JSON values), so a file alone says what it bakes in and what its
    labels are: the post-processing, ``classes.json``'s map, the input size; a raw file also its decode block."""
    out = {"postprocessing": json.dumps(baked), "classes": json.dumps({str(k): v for k, v in classes.items()}),
           "input_size": json.dumps(input_size)}
    if decode is not None:
        out["decode"] = json.dumps(decode)
    return out


def budget_latency(cfg: ExperimentConfig, lat_torch: dict, lat_ort: dict, int8: dict | None, float_path: Path,
                   probe: torch.Tensor, ort_alone: bool) -> tuple[float, str]:
    """The measured latency the search budget is about, timed as ``cost.latency`` timed candidates during the
    search: the file alone (``ort_alone``: ``lat_ort`` was; the float and INT8 files timed in turns, for their
    ratio, read 3-25 % slower than alone, and a model the search measured within the budget was over it)."""
    c = cfg.cost
    if c.int8:
        alone = time_onnx(Path(int8["onnx"]), probe, c.warmup, c.runs, c.threads)
        return alone["median_ms"], "onnxruntime int8"
    if c.latency == "onnxruntime":
        alone = lat_ort if ort_alone else time_onnx(float_path, probe, c.warmup, c.runs, c.threads)
        return alone["median_ms"], "onnxruntime"
    return lat_torch["median_ms"], f"torch {c.device}"


@stage_api
def run_export(cfg: ExperimentConfig, work_dir: str | Path | None = None, raw: bool = False,
               source: str | None = None, console: Console | None = None, int8: bool | None = None) -> dict:
    """Export the tuned (or baseline) model of the work dir, check it, time it, check the budget; with
    ``int8`` (default: ``wants_int8(cfg)``) also quantize it and score both files through onnxruntime."""
    console = console or Console()
    dist.check_device_available(cfg.cost.device, "cost.device")  # the export is timed there (a traceback after it)
    wd = WorkDir.of(cfg, work_dir)
    source = source or cfg.export.source
    if source not in ("tune", "baseline"):  # (the CLI and export.source take only these)
        raise ConfigError(f"export source must be tune or baseline, got {source!r}")
    # torch's reference outputs for the parity check on the stage's threads, in the pipeline or alone: the thread
    # count changes float rounding, which a model's near-zero-variance BN channels amplify to the box tolerance
    set_torch_threads(stage_threads(cfg, source))
    asked = int8
    int8 = wants_int8(cfg) if int8 is None else int8
    if int8 and raw:
        why = "--int8" if asked else " and ".join(
            (["export.int8: true"] if cfg.export.int8 else []) +
            ([f"cost.latency {cfg.cost.latency}" + (f" (lut_precision {cfg.cost.lut_precision})" if cfg.cost.latency == "lut" else "")
              + " (the budget is INT8 latency)"] if cfg.cost.int8 else []))
        raise ConfigError(f"export: {why} asks for the INT8 file, which quantizes the end-to-end file (its mAP needs "
                          "boxes), so not --raw: " + ("drop --raw" if asked else
                                                      "export --raw with --set export.int8=false" +
                                                      (" and another cost.latency" if cfg.cost.int8 else "")))
    refused = family_named(cfg.model.detector).raw_refused
    if raw and refused:
        raise ConfigError(f"export --raw: detector {cfg.model.detector} has no raw outputs to decode: {refused}; "
                          "export the end-to-end file (drop --raw)")
    if int8 and cfg.export.opset < INT8_MIN_OPSET:  # refused before anything is written: the INT8 file would not load
        why = "--int8" if asked else "export.int8: true" if cfg.export.int8 else \
            f"cost.latency {cfg.cost.latency} (the budget is INT8 latency)"
        raise ConfigError(f"export: export.opset {cfg.export.opset} is too old for the INT8 file {why} asks for: "
                          f"per-channel INT8 weights need export.opset >= {INT8_MIN_OPSET}")
    val = build_datasets(cfg, need=("val",))["val"]
    arch = None
    if source == "tune":
        ckpt = wd.tune.require_checkpoint("tuned model")
        model, arch = load_tuned_model(ckpt, cfg, val.num_classes, classes=val.classes)
    else:
        ckpt = wd.baseline.require_checkpoint()
        model = load_trained_model(cfg, ckpt, val.num_classes, classes=val.classes)
    model.eval()
    state = load_checkpoint(ckpt)
    unfinished = unfinished_at(state)
    if unfinished is not None:  # exported as asked, but said, and kept in the record
        command = "tune" if source == "tune" else "train"
        console.print(Text(f"warning: {ckpt} stopped at step {unfinished[0]} of {unfinished[1]}: its training did "
                           f"not finish (killed, or still running), so this exports a partly trained model; rerun "
                           f"`nasdet {command}` to finish it, then export again", style="yellow"), soft_wrap=True)
    path = wd.onnx(source, raw)
    classes = class_map(cfg.data.format, val)
    baked = postprocessing(model)
    decode = None
    if raw:
        decode = raw_decoding(model)
        decode["anchors"] = {"file": path.with_suffix(".anchors.npy").name, **decode["anchors"]}
    metadata = onnx_file_metadata(baked, classes, get_input_size(model), decode)
    # written under another name and renamed only once checked: a file named tune.onnx is always verified
    draft = path.with_name(f".{path.stem}.unverified.onnx")
    e = cfg.export
    images = [val[i][0] for i in range(min(e.check_images, len(val)))]
    example = None if raw else tracing_example(model, images)
    try:
        unverified = export_onnx(model, draft, raw=raw, opset=e.opset, metadata=metadata, example=example)
    except OSError as e:  # a failed write (a full disk) names the file asked for, not its draft
        asked = {str(draft): path, str(draft.with_suffix(".anchors.npy")): path.with_suffix(".anchors.npy")}
        if e.filename not in asked:
            raise
        raise OSError(e.errno, e.strerror, str(asked[e.filename])) from e
    written = {unverified: path, unverified.with_suffix(".anchors.npy"): path.with_suffix(".anchors.npy")}  # raw
    try:
        parity = check_parity(model, unverified, images, raw, e.box_atol, e.score_atol, e.raw_atol, e.raw_rtol,
                              e.box_rtol)
        if not raw:  # the numbers behind the detections, strictly (NMS near-ties aside, boxes follow from them)
            with tempfile.TemporaryDirectory() as tmp:
                raw_path = export_onnx(model, Path(tmp) / "raw.onnx", raw=True, opset=e.opset)
                parity["raw"] = check_parity(model, raw_path, images, True, e.box_atol, e.score_atol, e.raw_atol,
                                             e.raw_rtol)
    except BaseException as err:
        for tmp_file in written:
            tmp_file.unlink(missing_ok=True)
        if isinstance(err, ExportParityError):
            raise ExportParityError(f"{path} not written: the exported graph fails the check against torch "
                                    f"({err})") from None
        raise
    # read before the record goes: a plain export keeps the INT8 file an earlier --int8 export of this checkpoint made
    kept_int8, not_kept = (None, "") if int8 or raw else earlier_int8(cfg, wd, source, ckpt)
    # the record goes before the files it describes are replaced and comes back last: an export that fails or is
    # killed in between leaves no record, so a rerun exports again instead of trusting the old figures
    record_path = wd.export_record(source, raw)
    record_path.unlink(missing_ok=True)
    for tmp_file, final in written.items():
        if tmp_file.exists():
            os.replace(tmp_file, final)
    c = cfg.cost
    measured = {"macs": detector_macs(model, backbone=False)["total"], "params": detector_params(model)["total"]}
    s = get_input_size(model)
    probe = timing_image(model, example)  # Faster R-CNN on its tracing example, as the search timed it
    lat_torch = measure_latency(model, device=c.device, warmup=c.warmup, runs=c.runs, threads=c.threads,
                                image=timed_on_image(model, example))
    lat_torch["input"] = list(probe.shape)  # measure_latency's image is at input_size too
    int8_record = export_int8(cfg, wd, model, source, path, val, probe, console) if int8 else kept_int8
    # with an INT8 file made, the float file was timed in turns with it: one timing, the same in both tables
    lat_ort = int8_record["latency_onnxruntime"]["float"] if int8 else time_onnx(path, probe, c.warmup, c.runs, c.threads)
    stale = wd.onnx_int8(source)
    if not int8 and not raw and int8_record is None and stale.is_file():  # another checkpoint's, or other settings'
        stale.unlink()
        console.print(f"removed {escape(str(stale))}: {escape(not_kept)} (export --int8 writes it again)",
                      soft_wrap=True)
    measured["latency"], measured["latency_timed_by"] = budget_latency(cfg, lat_torch, lat_ort, int8_record, path, probe,
                                                                       ort_alone=not int8)
    predicted = wd.predicted_costs(arch)
    # the budget is the found model's; the baseline is not meant to fit it (it is the reference)
    budget = budget_check(cfg, measured, predicted) if source == "tune" else None
    write_json(wd.export / CLASSES_JSON, classes)
    # absolute: a record is read from any folder (a relative path named another file from elsewhere: the same
    # checkpoint was "an earlier checkpoint", and its INT8 file deleted)
    result = {"onnx": str(path.resolve()), "source": source, "checkpoint": str(ckpt.resolve()),
              "checkpoint_step": state.get("step"), "finished_training": unfinished is None,
              "raw": raw, "input_size": s,
              "latency_input": (f"one image already at input_size ({s}x{s} px, [3, {s}, {s}] uint8): the graph "
                                "resizes inside, so a larger frame takes longer than these latencies"),
              "parity": parity, "measured": measured, "predicted": predicted, "latency_torch": lat_torch,
              "latency_onnxruntime": lat_ort, "budget": budget, "arch": arch, "int8": int8_record,
              "postprocessing": baked, **({"decode": decode} if raw else {}),
              "settings": export_settings(cfg, source)}
    write_json(record_path, result)

    console.print(export_table(path, measured, predicted, lat_torch, lat_ort))
    if int8_record is not None:
        console.print(int8_table(int8_record))
    if raw:
        console.print(f"parity: raw outputs within {parity['max_abs_diff']:.1e} of torch on {parity['images']} val images")
    else:
        console.print(f"parity: {parity['matched']}/{parity['detections_torch']} detections matched on "
                      f"{parity['images']} val images, boxes within {parity['max_box_diff_px']:.1e} px, "
                      f"scores within {parity['max_score_diff']:.1e}; raw outputs within "
                      f"{parity['raw']['max_abs_diff']:.1e}")
        if not parity["matched"]:  # (QA: "0/1800 matched", "0/0 matched" read as a passed check)
            why = (f"no detection could be paired between torch and onnxruntime (each of the "
                   f"{parity['detections_torch']} ties another's score: a detector that does not detect yet?)"
                   if parity["detections_torch"] else f"torch detects nothing on the {parity['images']} val images "
                   "(a detector that does not detect yet, or model.score_thresh above its scores)")
            console.print(Text(f"note: {why}: the boxes were not compared, only the raw outputs", style="yellow"),
                          soft_wrap=True)
    if budget is not None and not budget["within"]:
        scale, unit = (1e6, f" M {COST_UNITS[budget['metric']]}") if budget["metric"] in ("macs", "params") else (1.0, " ms")
        pred = "-" if budget["predicted"] is None else f"{budget['predicted'] / scale:.4g}{unit}"
        what = f"latency ({budget['timed_by']})" if budget["metric"] == "latency" else budget["metric"]
        console.print(Panel(f"the exported model breaks the search budget: {what} measured "
                            f"{budget['measured'] / scale:.4g}{unit} vs predicted {pred} vs budget "
                            f"{budget['max'] / scale:.4g}{unit}",
                            title="OVER BUDGET", style="bold red"))
    return result


def export_table(path: Path, measured: dict, predicted: dict | None, lat_torch: dict, lat_ort: dict) -> Table:
    """Measured cost beside the search's prediction; a predicted latency goes under the latency of its own
    kind (``measured["latency_timed_by"]``: torch, onnxruntime, or an INT8 column after an INT8-latency search)."""
    timed_by = measured.get("latency_timed_by") or "torch"
    int8 = timed_by == "onnxruntime int8"
    cols = ["", "MACs", "params", "latency torch", "latency onnxruntime"] + (["latency onnxruntime INT8"] if int8 else [])
    table = Table(title=f"export: {escape(str(path))}")
    for col in cols:
        table.add_column(col, justify="right")
    latencies = [f"{lat_torch['median_ms']:.2f} ms", f"{lat_ort['median_ms']:.2f} ms"]
    table.add_row("measured", f"{measured['macs'] / 1e6:.1f} M", f"{measured['params'] / 1e6:.3f} M", *latencies,
                  *([f"{measured['latency']:.2f} ms"] if int8 else []))
    if predicted:
        guess = ["-"] * len(cols[3:])
        if "latency" in predicted:
            at = 2 if int8 else 1 if timed_by == "onnxruntime" else 0
            guess[at] = f"{predicted['latency']:.2f} ms"
        table.add_row("search predicted", f"{predicted['macs'] / 1e6:.1f} M" if "macs" in predicted else "-",
                      f"{predicted['params'] / 1e6:.3f} M" if "params" in predicted else "-", *guess)
    return table


def int8_table(rec: dict) -> Table:
    """Float vs INT8, both run by onnxruntime: val AP, AP50, latency, file size."""
    m, lat, q = rec["metrics_onnxruntime"], rec["latency_onnxruntime"], rec["quantization"]
    table = Table(title=f"INT8: {escape(rec['onnx'])} ({q['quantized_ops']} ops quantized, calibrated by "
                        f"{q['method']} on {q['calibration_images']} train images)")
    for col in ("onnxruntime", f"AP (val, {rec['val_images']})", "AP50", "latency", "file"):
        table.add_column(col, justify="right")
    for k, size in (("float", q["float_bytes"]), ("int8", q["int8_bytes"])):
        table.add_row(k, f"{m[k]['AP']:.4f}", f"{m[k]['AP50']:.4f}", f"{lat[k]['median_ms']:.2f} ms",
                      f"{size / 1e6:.2f} MB")
    table.add_row("int8 - float", f"{-rec['drop']['AP']:+.4f}", f"{-rec['drop']['AP50']:+.4f}",
                  f"x{rec['latency_ratio_int8_to_float']:.2f}", f"x{q['int8_bytes'] / q['float_bytes']:.2f}")
    qat = rec.get("qat")
    if qat:
        after = qat.get("qat_drop", qat["drop_after"])  # records before the comparison kept the tuned file always
        table.caption = (f"quantization-aware tuning ({qat['steps']} steps): AP drop "
                         f"{qat['ptq_drop']['AP']:.4f} after post-training quantization, {after['AP']:.4f} after "
                         f"tuning; kept: {'post-training' if qat.get('kept') == 'ptq' else 'tuned'} file")
    return table
