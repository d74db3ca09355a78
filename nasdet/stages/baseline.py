"""The baseline stage (``nasdet train``): the config's detector (``pipeline.baseline_backbone`` swapped in
when set) trained on the whole training set into ``baseline/``, or the user's trained detector
(``pipeline.baseline_checkpoint``) imported there; and the commands that read a trained checkpoint:
``nasdet eval`` (COCO metrics on val) and ``nasdet cost`` (MACs, params, latency)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from ..config import ExperimentConfig, config_to_dict, without_start_weights
from ..errors import ConfigError
from ..data.build import build_datasets, load_split
from ..export import configured_postprocessing
from ..models import build_detector, get_input_size
from ..models.detectors import set_aspect_resize
from ..models.cost import detector_macs, detector_params, measure_latency_onnx
from ..models.imports import map_detector_weights, read_checkpoint_and_model, refuse_other_anchors
from ..train.checkpoint import (CheckpointError, class_record, file_sha256, load_checkpoint, nasdet_checkpoint_kind,
                               save_checkpoint)
from ..train import dist
from ..train.evaluate import evaluate_detector
from ..train.loop import check_scored_val_set, resolve_device
from ..train.bn import recalibrate_bn
from ..train.trained import load_checkpoint_model, load_trained_model
from ..files import why_not_a_file
from ..models.backbones import SUPERNET_BACKBONES
from ..threads import set_torch_threads
from ..workdir import BASELINE, COST_JSON, METRICS_FILE, WorkDir, stage_dir_of, write_json
from .common import (baseline_config, checkpoint_stage, cost_table, evaluated_again, metrics_table, per_class_table,
                     recorded_postprocessing, scored_val_set, stage_api, stage_threads, train_detector)


IMPORT_KEY = "pipeline.baseline_checkpoint"


@stage_api
def run_baseline(cfg: ExperimentConfig, work_dir: str | Path | None = None, console: Console | None = None) -> dict:
    """Train ``baseline_config(cfg)`` into ``baseline/`` (resumed, or skipped when complete), or import
    ``pipeline.baseline_checkpoint`` there; val metrics."""
    out = WorkDir.of(cfg, work_dir).baseline
    if cfg.pipeline.baseline_checkpoint:
        source = Path(cfg.pipeline.baseline_checkpoint)
        if source.exists() or not _holds_import_of(out, source):
            return import_baseline(baseline_config(cfg), work_dir, console)
        # the imported file moved or deleted since: the stage holds all of it (every rerun of the command stopped)
        (console or Console()).print(f"pipeline.baseline_checkpoint {escape(str(source))} is not there; "
                                     f"{escape(str(out.root))} holds its import: going on from it", soft_wrap=True)
        cfg = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"baseline_checkpoint": None})})
        if _imported_record(out) is None:  # its fine-tune under way: resumed, its record saying what it came from
            origin = _import_started(load_checkpoint(out.checkpoint))
            return _fine_tuned_again(baseline_config(cfg), work_dir, {"imported_from": origin}, console)
    imported = _imported_record(out)
    if imported is not None and imported.get("step"):  # fine-tuned from the import: resumed as any training is
        return _fine_tuned_again(baseline_config(cfg), work_dir, imported, console)
    if imported is not None and out.has_checkpoint():  # rerun without the --set that imported it: it is done
        console = console or Console()
        imported = _scored_as_configured(cfg, out, imported, console)
        console.print(f"[green]{escape(str(out.root))} is {escape(str(imported['imported_from'].get('path')))}, "
                      "imported[/]; delete it to train the config's baseline instead")
        console.print(metrics_table(imported["metrics"], "baseline: val mAP"))
        return imported["metrics"]
    return train_detector(baseline_config(cfg), work_dir, BASELINE, console)


def _holds_import_of(out, source: Path) -> bool:
    """Whether the baseline folder ``out`` holds the import of ``source`` (finished, or its fine-tune under way),
    by the path it was imported from (the file itself is gone)."""
    done = _imported_record(out)
    if done is not None:
        return Path(str(done["imported_from"].get("path"))).expanduser().resolve() == source.expanduser().resolve()
    if not out.has_checkpoint():
        return False
    started = _import_started(load_checkpoint(out.checkpoint)).get("path")
    return started is not None and Path(started) == source.expanduser().resolve()


def _import_started(state: dict) -> dict:
    """What a training checkpoint records of the imported file its weights started from (``_import_start``), or
    {} (a baseline trained here, or a fine-tune written before starts were kept)."""
    return ((state.get("extra") or {}).get("starts") or {}).get(IMPORT_KEY) or {}


def _fine_tuned_again(cfg: ExperimentConfig, work_dir, done: dict, console: Console | None) -> dict:
    """A rerun of an import that was fine-tuned (other classes): the training's checkpoint decides, as for a
    baseline trained here: a longer ``train.max_steps`` continues it, a changed recipe is refused, a changed
    ``eval.max_images`` is evaluated again; the record keeps ``imported_from``."""
    origin = done["imported_from"]
    return train_detector(cfg, work_dir, BASELINE, console, record={"imported_from": origin},
                          start_note=f"from {origin.get('path')} (imported)",
                          starts=_import_start(Path(origin.get("path") or ""), origin))


def _import_start(source: Path, origin: dict) -> dict:
    """An imported file as the fine-tune's start (``Trainer.starts``): by its bytes, from any folder."""
    return {IMPORT_KEY: {**origin, "path": str(source.expanduser().resolve())}}


def _imported_record(out) -> dict | None:
    """The finished record of a baseline folder that holds an imported checkpoint, else None."""
    if not out.metrics.is_file():
        return None
    done = json.loads(out.metrics.read_text())
    return done if done.get("imported_from") and "metrics" in done else None


def _scored_as_configured(cfg: ExperimentConfig, out, done: dict, console: Console) -> dict:
    """An imported baseline's record, evaluated again when ``eval.max_images`` changed (``evaluated_again``, as a
    trained stage's): the report's rows then score the same images."""
    val = build_datasets(cfg, need=("val",))["val"]
    scored = scored_val_set(cfg, val)

    def evaluate() -> dict:
        device = resolve_device(cfg.train.device)
        model = load_trained_model(cfg, out.checkpoint, val.num_classes).to(device)
        return evaluate_detector(model, scored, device, cfg.eval.batch_size, cfg.data.num_workers, per_class=True)

    return evaluated_again(out, done, val.source, len(scored), evaluate, console, configured_postprocessing(cfg.model))


def _setting_it_fits(cfg: ExperimentConfig, weights: dict, val, checkpoint_classes) -> str | None:
    """``key: value`` of the one model setting the README's import table tells apart (MobileNetV3's reduced tail,
    torchvision's v1 / v2 detectors) with which a file that does not fit the config's detector would, else None."""
    m, b = without_start_weights(cfg.model), cfg.model.backbone
    tries = []
    if b.name.startswith("mobilenet_v3") or b.name == "mbv3_width":
        tries.append(("model.backbone.reduced_tail", not b.reduced_tail,
                      m.model_copy(update={"backbone": m.backbone.model_copy(update={"reduced_tail": not b.reduced_tail})})))
    variant = getattr(m, "variant", None)
    if variant in ("v1", "v2"):
        other = "v2" if variant == "v1" else "v1"
        tries.append(("model.variant", other, m.model_copy(update={"variant": other})))
    for key, value, other_model in tries:
        try:
            model = build_detector(other_model, num_classes=val.num_classes)
            map_detector_weights(model, weights, "", "", classes=list(zip(val.category_ids, val.classes)),
                                 checkpoint_classes=checkpoint_classes)
        except (CheckpointError, ConfigError, ValueError):
            continue
        return f"{key}: {str(value).lower() if isinstance(value, bool) else value}"
    return None


def _nasdet_kind(path: Path) -> str | None:
    """``nasdet_checkpoint_kind`` of a file, None when it is not a nasdet checkpoint."""
    try:
        return nasdet_checkpoint_kind(load_checkpoint(path))
    except CheckpointError:
        return None


def _same_import(out, source: Path, sha256: str) -> dict | None:
    """The finished record when ``out`` holds this very file's import, None when it holds nothing to keep (or
    this import's interrupted fine-tune); importing over another baseline (trained, under way, or imported
    from another file) would lose it: refused."""
    done = _imported_record(out)
    if done is not None and done["imported_from"].get("sha256") == sha256:
        return done
    held = None
    if done is not None:
        held = f"a baseline imported from {done['imported_from'].get('path')}"
    elif out.metrics.is_file():
        held = "a trained baseline"
    elif out.has_checkpoint():
        state = load_checkpoint(out.checkpoint)
        was = ((state.get("config") or {}).get("pipeline") or {}).get("baseline_checkpoint")
        started = _import_started(state).get("sha256")
        if started == sha256 or (started is None and was and
                                 Path(was).expanduser().resolve() == source.expanduser().resolve()):
            return None  # this import's fine-tune, interrupted: it resumes (the same file, from any folder)
        held = "a baseline whose training is under way"
    if held is not None:
        raise ConfigError(f"pipeline.baseline_checkpoint {source}: {out.root} already holds {held}, which importing "
                          "would replace; import into another work dir (--work-dir) or delete that folder first")
    return None


def describe_model(model_cfg) -> str:
    """The detector a config builds, in words (what an imported checkpoint must be)."""
    b = model_cfg.backbone
    layout = getattr(model_cfg, "layout", "nasdet")
    variant = getattr(model_cfg, "variant", "v1")
    kind = f" (layout {layout})" if layout != "nasdet" else f" (variant {variant})" if variant != "v1" else ""
    return (f"model.detector {model_cfg.detector}{kind} on "
            f"{b.name}{' (reduced_tail)' if b.reduced_tail else ''} width {b.width_mult:g}")


def import_baseline(cfg: ExperimentConfig, work_dir: str | Path | None = None, console: Console | None = None) -> dict:
    """ENOT's start: the user's trained detector (nasdet's, torchvision's or MMDetection's checkpoint) mapped into the
    config's detector, written as ``baseline/ckpt/last.pt`` and evaluated on val (skipped when that record
    is of the same file). When the data's classes are not the checkpoint's, the class-dependent layers are
    re-initialised (said) and the baseline is fine-tuned from it with the ``train`` recipe."""
    dist.init_distributed(cfg.train.device)  # under torchrun: rank 0 writes and speaks (is_main)
    set_torch_threads(cfg.train.threads)  # its evaluation on the threads a training of the config would take
    console = dist.main_console(console or Console())
    source = Path(cfg.pipeline.baseline_checkpoint)
    weights, checkpoint_classes, recorded_model = read_checkpoint_and_model(source, "pipeline.baseline_checkpoint")
    origin = {"path": str(source), "sha256": file_sha256(source)}
    out = WorkDir.of(cfg, work_dir).baseline
    done = _same_import(out, source, origin["sha256"])
    dist.barrier()  # every rank decided before rank 0 writes (rank 1 took rank 0's fresh import for an earlier one)
    if done is not None and done.get("step"):
        return _fine_tuned_again(cfg, work_dir, done, console)
    if done is not None and out.has_checkpoint():
        done = _scored_as_configured(cfg, out, done, console)
        console.print(f"[green]{escape(str(out.root))} is {escape(str(source))}, imported[/]; delete it to import again")
        console.print(metrics_table(done["metrics"], "baseline: val mAP"))
        return done["metrics"]
    data = build_datasets(cfg, need=("val",))
    model = build_detector(without_start_weights(cfg.model), num_classes=data["val"].num_classes)  # the file's
    val = data["val"]
    hint = None
    if cfg.model.backbone.name in SUPERNET_BACKBONES:  # (no pipeline.baseline_backbone: baseline_config applied it)
        # a pipeline's config: the file's network goes to pipeline.baseline_backbone, model.backbone stays the supernet
        hint = (f"; this config's model.backbone {cfg.model.backbone.name} is a supernet, whose default subnet is the "
                "baseline unless pipeline.baseline_backbone names the standard network a detector file was trained "
                "on (mobilenet_v3_large for torchvision's ssdlite320, mobilenet_v2 for MMDetection's MobileNetV2 "
                "models): set it, with the file's model settings (README, Start from your trained detector)")
    try:
        imported = map_detector_weights(model, weights, f"pipeline.baseline_checkpoint {source}",
                                        describe_model(cfg.model), classes=list(zip(val.category_ids, val.classes)),
                                        checkpoint_classes=checkpoint_classes, hint=hint)
    except CheckpointError as e:
        kind = _nasdet_kind(source)
        if kind is None:
            setting = _setting_it_fits(cfg, weights, val, checkpoint_classes)
            if setting is not None:  # the shapes' message said "another width, backbone or layout?"
                raise CheckpointError(f"{e}; the file fits with {setting}") from None
            raise
        # nasdet's own files: say which stage wrote it and what it is for (its keys said "another layout")
        raise CheckpointError(f"pipeline.baseline_checkpoint {source} is {kind}; the baseline is a detector of this "
                              f"config's model ({describe_model(cfg.model)}) ({e})") from None
    if imported.source_format == "nasdet":
        refuse_other_anchors(recorded_model, config_to_dict(cfg)["model"], f"pipeline.baseline_checkpoint {source}")
    origin["format"] = imported.source_format
    console.print(f"imported {escape(str(source))} ({imported.source_format}'s layout) as the baseline"
                  + (f"; its COCO labels picked for the data's {val.num_classes} classes" if imported.coco_labels else "")
                  + (f"; the rows of the data's {val.num_classes} classes picked by name from its "
                     f"{len(checkpoint_classes or [])}" if imported.picked_classes else "")
                  + (f"; each class's rows picked at its category id ({', '.join(map(str, val.category_ids[:4]))}"
                     f"{', ...' if val.num_classes > 4 else ''}: torchvision's references train on them as labels)"
                     if imported.category_id_labels else ""))
    if imported.unnamed_classes:
        why = ("written before nasdet kept them" if imported.source_format == "nasdet" else
               "no meta with CLASSES or dataset_meta classes")
        console.print(f"[yellow]warning:[/] {escape(str(source))} records no class names ({why}): its class layers "
                      f"are kept as they are, label k as the data's k-th class ({', '.join(val.classes[:3])}"
                      f"{', ...' if val.num_classes > 3 else ''}); if it was trained on other classes or another "
                      "order, its detections are mislabelled", soft_wrap=True)
    if imported.reinitialised:
        console.print(f"its classes are not the data's {data['val'].num_classes}: re-initialised "
                      f"{', '.join(imported.reinitialised)}; fine-tuning it with the train recipe")
        return train_detector(cfg, work_dir, BASELINE, console, init=lambda m: m.load_state_dict(imported.state),
                              record={"imported_from": origin}, start_note=f"from {source} (imported)",
                              starts=_import_start(source, origin))
    model.load_state_dict(imported.state)
    device = resolve_device(cfg.train.device)
    scored = scored_val_set(cfg, val)  # the images every other stage scores (eval.max_images)
    metrics = evaluate_detector(model.to(device), scored, device, cfg.eval.batch_size, cfg.data.num_workers,
                                per_class=True)
    if not dist.is_main():  # under torchrun every rank predicts a shard, rank 0 scores and writes
        return {}
    # written once evaluated: an import stopped during its evaluation (minutes on COCO) leaves nothing, so that
    # any rerun imports again (a checkpoint without its record was taken for a training under way)
    save_checkpoint({"model": model.cpu().state_dict(), "config": config_to_dict(cfg), "step": 0,
                     "classes": class_record(val), "imported_from": origin}, out.checkpoint)
    write_json(out.metrics, {"metrics": metrics, "step": 0, "checkpoint": str(out.checkpoint), "val": val.source,
                             "val_images": len(scored), "imported_from": origin,
                             "postprocessing": configured_postprocessing(cfg.model)})
    console.print(metrics_table(metrics, f"baseline (imported): val mAP ({len(scored)} images)"))
    return metrics


def _same_postprocessing(stage_record: Path, ckpt: Path, state: dict, cfg: ExperimentConfig) -> bool:
    """Whether ``cfg`` evaluates with the post-processing the stage's record was taken after: an eval with another
    threshold is not the stage's AP, and went over it."""
    record = json.loads(stage_record.read_text()) if stage_record.is_file() else None
    return recorded_postprocessing(record, ckpt, state) == configured_postprocessing(cfg.model)


def default_checkpoint(cfg: ExperimentConfig, work_dir: str | Path | None, stage: str = BASELINE) -> Path:
    return WorkDir.of(cfg, work_dir).stage(stage).require_checkpoint(hint=", or pass --ckpt")


@stage_api
def run_eval(cfg: ExperimentConfig, work_dir: str | Path | None = None, ckpt: str | Path | None = None,
             console: Console | None = None, keep_aspect: tuple[int, int] | None = None) -> dict:
    """COCO metrics of a checkpoint on the val set, written where ``eval_record_path`` says. ``keep_aspect``
    (min size, max size): images resized with their aspect ratio kept (``set_aspect_resize``), not to the
    square ``model.input_size``: the AP the detector has where it was tested that way, recorded apart
    (``eval/<..>_keep_aspect_<min>x<max>_metrics.json``) so that no stage's record or report reads it."""
    console = console or Console()
    given = ckpt is not None
    ckpt = Path(ckpt) if given else default_checkpoint(cfg, work_dir)
    # as the stage that evaluated it: the same float rounding, the same AP
    set_torch_threads(stage_threads(cfg, checkpoint_stage(ckpt)))
    val = build_datasets(cfg, need=("val",))["val"]
    scored = scored_val_set(cfg, val)
    check_scored_val_set(scored, len(scored))  # (its mAP would be "undefined", naming no set)
    model, held = load_checkpoint_model(cfg, ckpt, val.num_classes, classes=val.classes)
    if keep_aspect is not None:  # before a supernet subnet's BN recalibration: it then sees these sizes too
        set_aspect_resize(model, *keep_aspect)
    # under torchrun every rank predicts a shard of val and rank 0 scores and writes (each evaluated all of it)
    device = resolve_device(cfg.train.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device, _, _ = dist.init_distributed(cfg.train.device)
    model.to(device)
    state = load_checkpoint(ckpt)
    same_post = _same_postprocessing(ckpt.parent.parent / METRICS_FILE, ckpt, state, cfg)
    own = (not given and not (cfg.eval.max_images and cfg.eval.max_images < len(val))
           and _same_val_set(state.get("config"), config_to_dict(cfg)) and same_post and keep_aspect is None)
    what = describe_held(held, size=f"with the aspect ratio kept ({keep_aspect[0]}, {keep_aspect[1]})"
                         if keep_aspect is not None else None)
    if "supernet_subnet" in held:  # shared BN statistics are wrong for any one subnet: as pretrain evaluates them
        calib = build_datasets(cfg, need=("supernet_train",))["supernet_train"].with_transforms(None)
        n = recalibrate_bn(model, calib, device, cfg.supernet.recalib_batches, cfg.eval.batch_size,
                           cfg.data.num_workers, seed=cfg.seed)
        what += f", BatchNorm recalibrated on {n} training images"
    if what and dist.is_main():
        console.print(Text(f"{ckpt}: {what}"), soft_wrap=True)
    val = scored
    metrics = evaluate_detector(model, val, device, cfg.eval.batch_size, cfg.data.num_workers, per_class=True)
    if metrics is None:
        return {}
    resized = f"keep_aspect_{keep_aspect[0]}x{keep_aspect[1]}_" if keep_aspect is not None else ""
    out = eval_record_path(cfg, work_dir, ckpt, given or keep_aspect is not None, own, what=resized + "metrics")
    record = {"metrics": metrics, "checkpoint": str(ckpt), "val": val.source, "val_images": len(val),
              "step": state.get("step"), "postprocessing": configured_postprocessing(cfg.model), **held}
    if keep_aspect is not None:
        record["resize"] = {"keep_aspect": {"min_size": keep_aspect[0], "max_size": keep_aspect[1]}}
    before = json.loads(out.read_text()) if out.is_file() else None
    if own and before is not None:  # the stage's own record: what else it says (e.g. imported_from) stays
        record = {**before, **record}
    if record != before:  # the same figures again: the record (and report.md's age against it) left as it was
        write_json(out, record)
    how = (f", aspect kept: shorter side {keep_aspect[0]}, longer at most {keep_aspect[1]}" if keep_aspect is not None
           else "")
    console.print(metrics_table(metrics, f"val mAP of {escape(str(ckpt))} ({len(val)} images{how})"))
    if metrics.get("per_class"):
        console.print(per_class_table(metrics["per_class"], f"per-class AP of {escape(str(ckpt))}"))
    why = ("another resize than the stage's record" if keep_aspect is not None else "not the run's own val set"
           if same_post else "other post-processing (model.*) than the stage's record")
    kept = "" if own or given else f" ({why}: {escape(str(ckpt.parent.parent / METRICS_FILE))} is kept)"
    console.print(f"metrics -> {escape(str(out))}{kept}")
    return metrics


def _same_val_set(trained: dict | None, now: dict) -> bool:
    """Whether ``now`` evaluates on the val set of the run a checkpoint's config (``trained``) describes."""
    saved = (trained or {}).get("data") or {}
    return bool(saved) and all(saved.get(k) == now["data"].get(k) for k in ("format", "val", "data_yaml", "classes"))


def describe_held(held: dict, verb: str = "evaluated", size: str | None = None) -> str:
    """What ``load_checkpoint_model`` found, for the line eval and cost print ('' for a trained detector);
    ``size``: how the images are resized, if not to the subnet's input size (``nasdet eval --keep-aspect``)."""
    if "tuned_arch" in held:
        return "a tuned subnet (its arch from the checkpoint)"
    if "supernet_subnet" in held:
        size = size or f"at input size {held['supernet_subnet'].get('input_size')}"
        return (f"a supernet checkpoint: {verb} its default subnet {size} (its arch is recorded as supernet_subnet; "
                "`nasdet tune` trains the searched one)")
    if "trained_subnet" in held:
        return ("a detector on a supernet backbone, trained on its default subnet: " + verb + " as that subnet "
                "made static (the choice blocks it did not use are not counted)")
    return ""


def eval_record_path(cfg: ExperimentConfig, work_dir: str | Path | None, ckpt: Path, given: bool,
                     own_val: bool = True, what: str = "metrics") -> Path:
    """Where ``nasdet eval`` writes: the baseline's own ``metrics.json`` when it re-evaluates the baseline
    by default on the run's whole val set (``own_val``); else ``eval/<stage>_<name>_metrics.json``, never a
    stage's own record (the report reads the baseline's; pretrain reads the supernet's), nor a file beside
    a checkpoint given from elsewhere. ``what``: ``cost`` for ``nasdet cost --ckpt``."""
    if not given and own_val:
        return ckpt.parent.parent / f"{what}.json"
    wd = WorkDir.of(cfg, work_dir)
    stage = stage_dir_of(ckpt)
    name = f"{stage.name}_{ckpt.stem}" if stage is not None else ckpt.stem
    # a checkpoint of another run is named by that run's folder too: two runs' baseline/ckpt/last.pt differ
    holder = (stage.parent if stage is not None else ckpt.parent).resolve()
    if holder != wd.root.resolve():
        name = f"{holder.name}_{name}"
    return wd.eval.root / f"{name}_{what}.json"


@stage_api
def run_cost(cfg: ExperimentConfig, work_dir: str | Path | None = None, ckpt: str | Path | None = None,
             latency: bool = True, console: Console | None = None) -> dict:
    """MACs, params and latency of the config's detector (trained weights if a checkpoint exists,
    so NMS sees a realistic number of boxes)."""
    console = console or Console()
    if latency:  # (a ~100-line traceback from the first .to(device) before)
        dist.check_device_available(cfg.cost.device, "cost.device")
    wd = WorkDir.of(cfg, work_dir)
    given_cfg, cfg = cfg, baseline_config(cfg)
    num_classes = cfg.model.num_classes
    if num_classes is None:
        num_classes = load_split(cfg, "val").num_classes
    path = Path(ckpt) if ckpt else wd.baseline.checkpoint
    held = {}
    if path.is_file():
        model, held = load_checkpoint_model(given_cfg, path, num_classes, detector_cfg=cfg)
        if held:
            console.print(Text(f"{path}: {describe_held(held, 'costed')}"), soft_wrap=True)
    elif ckpt:
        raise CheckpointError(f"--ckpt {path} {why_not_a_file(path)}")
    else:
        model = build_detector(without_start_weights(cfg.model), num_classes=num_classes)
    model.eval()
    detector, backbone = costed_names(path, cfg) if path.is_file() else (cfg.model.detector, cfg.model.backbone.name)
    result = {"input_size": get_input_size(model), "macs": detector_macs(model), "params": detector_params(model),
              "detector": detector, "backbone": backbone,
              "weights": str(path) if path.is_file() else "random", **held}
    if latency:
        from ..models.families import family_of
        from ..search.latency import latency_images, measure_latency_torch

        c = cfg.cost
        # a detector whose work follows the image (Faster R-CNN) on the val image its export is timed on
        real = latency_images(cfg, load_split(cfg, "val"), model) if family_of(model).work_follows_the_image else None
        result["latency"] = measure_latency_torch(model, c.device, c.warmup, c.runs, c.threads, real)
        if c.onnxruntime:
            result["latency_onnxruntime"] = measure_latency_onnx(model, warmup=c.warmup, runs=c.runs, threads=c.threads)
    out = eval_record_path(cfg, work_dir, path, True, what="cost") if ckpt else wd.baseline / COST_JSON
    write_json(out, result)
    console.print(f"cost -> {escape(str(out))}")
    console.print(cost_table(result, f"cost of {detector} / {backbone}"))
    if latency and cfg.cost.int8:  # what an INT8 latency budget is about needs calibration images and a val set
        console.print(f"cost.latency {cfg.cost.latency}{'/' + cfg.cost.lut_precision if cfg.cost.latency == 'lut' else ''}: "
                      "these latencies are of the float model; the INT8 file's end to end, which the budget is "
                      "about, is measured by `nasdet export CONFIG --int8 --source baseline` (export/baseline.json)",
                      soft_wrap=True)
    return result


def costed_names(ckpt: Path, cfg: ExperimentConfig) -> tuple[str, str]:
    """The detector and backbone a checkpoint holds (from the config recorded in it), else ``cfg``'s."""
    model = ((load_checkpoint(ckpt).get("config") or {}).get("model") or {})
    backbone = model.get("backbone") if isinstance(model.get("backbone"), dict) else {}
    return str(model.get("detector") or cfg.model.detector), str(backbone.get("name") or cfg.model.backbone.name)
