"""What several stages share and no stage owns: a stage's train recipe, the baseline's config, training a
detector into a stage folder, and the tables the stages print. Stages import this, never each other."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..config import ExperimentConfig, save_run_record, takes_config, without_start_weights
from ..errors import ConfigError
from ..data.build import build_datasets
from ..export import configured_postprocessing
from ..metrics import COCO_METRIC_NAMES
from ..models import build_detector
from ..models.backbones import BACKBONES, SUPERNET_BACKBONES
from ..train import dist
from ..train.checkpoint import backbone_start, load_checkpoint
from ..threads import keeps_callers_threads
from ..train.loop import Trainer, start_note_of  # noqa: F401 (the stages' shared start note)
from ..workdir import BASELINE, CKPT_DIR, CONTROLS, SUPERNET, TUNE, StageDir, WorkDir, write_json


def stage_api(stage):
    """A stage's Python API (``run_*``): its config may be a plain dict of the config's keys (``takes_config``), and
    the call leaves torch's threads and the governor as the caller had them (``keeps_callers_threads``)."""
    return takes_config(keeps_callers_threads(stage))


def with_train_recipe(cfg: ExperimentConfig, train) -> ExperimentConfig:
    """``cfg`` with its ``train`` section replaced by a stage's own recipe (``supernet.train``,
    ``tune.train``) when one is given."""
    return cfg if train is None else cfg.model_copy(update={"train": train})


def stage_threads(cfg: ExperimentConfig, stage: str) -> int | None:
    """The torch threads ``stage`` trained and evaluated its model on (its own recipe's, ``tune.train`` /
    ``supernet.train``, when set): an eval or export of its checkpoint takes the same, for the same float rounding
    (the same AP, the parity check's boxes within tolerance)."""
    own = {TUNE: cfg.tune.train, CONTROLS: cfg.tune.train, SUPERNET: cfg.supernet.train}.get(stage)
    return (own or cfg.train).threads


def checkpoint_stage(ckpt: Path) -> str:
    """The stage folder a work dir's checkpoint ``<stage>/ckpt/<file>`` is in (``controls`` for a control's
    ``controls/<arch>/ckpt/<file>``); another path is taken for the baseline's."""
    folder = ckpt.resolve().parent.parent
    return CONTROLS if folder.parent.name == CONTROLS else folder.name if ckpt.parent.name == CKPT_DIR else BASELINE


def recipe_key(section: str, train) -> str:
    """The config key of the train recipe a stage runs with: ``supernet.train`` when set, else ``train``."""
    return "train" if train is None else f"{section}.train"


def baseline_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config the baseline trains with: ``model.backbone.name`` replaced by
    ``pipeline.baseline_backbone`` when set (e.g. torchvision's mobilenet_v2 for an mbv2_elastic space)."""
    name = cfg.pipeline.baseline_backbone
    if name is None:
        return cfg
    given = cfg.model.backbone.name
    for key, value in (("pipeline.baseline_backbone", name), ("model.backbone.name", given)):
        if value not in BACKBONES:  # a typo (mobilenetv2) was taken for a static backbone and the advice named it
            raise ConfigError(f"{key} {value!r} is not a known backbone; choose from {sorted(BACKBONES)}")
    if given != name and given not in SUPERNET_BACKBONES:  # e.g. `--set model.backbone.name=resnet50` for a baseline
        raise ConfigError(f"pipeline.baseline_backbone {name} is the baseline's backbone, in place of the supernet's "
                          f"model.backbone.name; {given} is no supernet, so this config would train a {name} baseline "
                          f"and ignore {given}: set pipeline.baseline_backbone={given} (or null) for a {given} baseline, "
                          f"or model.backbone.name to a searchable backbone ({', '.join(sorted(SUPERNET_BACKBONES))})")
    model = cfg.model.model_copy(update={"backbone": cfg.model.backbone.model_copy(update={"name": name})})
    return cfg.model_copy(update={"model": model})


def train_detector(cfg: ExperimentConfig, work_dir: str | Path | None, stage: str,
                   console: Console | None = None, init=None, record: dict | None = None,
                   start_note: str | None = None, starts: dict | None = None) -> dict:
    """Train the config's detector on the whole training set into the folder ``stage`` of the work dir;
    resume if its checkpoint exists, skip if its record says training finished. Returns val metrics.
    ``init(model)`` sets the starting weights (fine-tuning; ``start_note`` says which; ``starts``: the files they
    come from, as ``files_by_content``, compared by their bytes on a rerun as the backbone's file is); ``record`` is
    added to ``metrics.json``."""
    console = console or Console()
    wd = WorkDir.of(cfg, work_dir)
    torch.manual_seed(cfg.seed)
    data = build_datasets(cfg)
    out = wd.stage(stage)
    # resumed (or finished), every weight is in its checkpoint: no start file to read, or to need any more
    model = build_detector(without_start_weights(cfg.model) if out.has_checkpoint() else cfg.model,
                           num_classes=data["train"].num_classes)
    if init is not None:
        init(model)
    out_dir = out.root
    trainer = Trainer.from_config(cfg, model, data["train"], data["val"], out_dir, console=console)
    trainer.start_note = start_note or start_note_of(cfg)
    trainer.starts = {**backbone_start(cfg), **(starts or {})}
    trainer.prepare()  # a checkpoint that does not fit fails here, before anything is written
    if dist.is_main():
        save_run_record(cfg, wd.config)
    done = finished_record(out, trainer.final_step, console, "train again",
                           lambda d: metrics_table(d["metrics"], f"{stage}: val mAP"), trainer,
                           configured_postprocessing(cfg.model))
    if done is not None:
        return done["metrics"]
    metrics = trainer.run()
    if dist.is_main():
        write_json(out.metrics, {"metrics": metrics, "step": trainer.step, "checkpoint": str(out.checkpoint),
                                 "val": data["val"].source, "val_images": trainer.val_images,
                                 "postprocessing": configured_postprocessing(cfg.model), **(record or {})})
        console.print(metrics_table(metrics, f"{stage}: val mAP ({trainer.val_images} images)"))
        if metrics.get("per_class"):
            console.print(per_class_table(metrics["per_class"], f"{stage}: per-class AP"))
    return metrics


def finished_record(out: StageDir, final_step: int, console: Console, again: str,
                    table: Callable[[dict], Table], trainer=None, postprocessing: dict | None = None) -> dict | None:
    """The record of a stage folder whose training reached ``final_step`` (said, with ``table(record)``), else
    None: a rerun of a finished stage reports it instead of training again. With the stage's ``trainer``
    (resumed at its last checkpoint), a record of the same val set on another number of images (a changed
    ``eval.max_images``) is evaluated again and rewritten: records of one run score the same images."""
    done = out.completed(final_step)
    if done is None:
        return None
    if trainer is not None and trainer.val_set is not None:
        done = evaluated_again(out, done, trainer.val_set.source, trainer.val_images, trainer.evaluate, console,
                               postprocessing)
    if dist.is_main():
        console.print(f"[green]{escape(str(out.root))} is complete[/] (step {done['step']}); delete it to {again}")
        console.print(table(done))
    return done


def recorded_postprocessing(record: dict | None, checkpoint: Path, state: dict | None = None) -> dict | None:
    """The post-processing a stage's record was evaluated after: its own ``postprocessing``, else (a record from
    before records kept it) its checkpoint's config's (``state``, the checkpoint already read); None without
    either."""
    if record is not None and record.get("postprocessing") is not None:
        return record["postprocessing"]
    if state is None:
        if not Path(checkpoint).is_file():
            return None
        state = load_checkpoint(checkpoint)
    return configured_postprocessing((state.get("config") or {}).get("model") or {})


def evaluated_again(out: StageDir, done: dict, val_source: str, val_images: int, evaluate: Callable[[], dict],
                    console: Console, postprocessing: dict | None = None) -> dict:
    """A stage's record of the same val set scored on another number of images than it scores now (a changed
    ``eval.max_images``) or after other post-processing (``postprocessing``, the config's now: a changed
    ``model.score_thresh`` is another AP, and the one the export now bakes in): ``evaluate()`` again, the record
    rewritten and said; else the record as it is. A record without post-processing (written before records kept
    it) is taken to be of its checkpoint's config's."""
    if done.get("val") != val_source:
        return done
    why = []
    if done.get("val_images") not in (None, val_images):
        why.append(f"on {val_images} val images (its record had {done['val_images']}: eval.max_images changed)")
    had = recorded_postprocessing(done, out.checkpoint) if postprocessing is not None else None
    if postprocessing is not None and had is not None and had != postprocessing:
        changed = ", ".join(f"model.{k} {had.get(k)} -> {postprocessing.get(k)}"
                            for k in sorted(set(had) | set(postprocessing)) if had.get(k) != postprocessing.get(k))
        why.append(f"after other post-processing ({changed})")
    if not why:
        return done
    done = {**done, "metrics": evaluate(), "val_images": val_images,
            **({"postprocessing": postprocessing} if postprocessing is not None else {})}
    if dist.is_main():
        write_json(out.metrics, done)
        console.print(f"{escape(str(out.root))}: evaluated again " + " and ".join(why))
    return done


def scored_val_set(cfg: ExperimentConfig, val):
    """The val images a stage scores: the first ``eval.max_images`` (as ``Trainer.scored_val``)."""
    return val.first(cfg.eval.max_images)


def metrics_table(metrics: dict[str, float], title: str) -> Table:
    table = Table(title=title)
    names = [n for n in COCO_METRIC_NAMES[:6] if n in metrics]
    for n in names:
        table.add_column(n, justify="right")
    table.add_row(*[f"{metrics[n]:.4f}" if metrics[n] >= 0 else "n/a" for n in names])
    return table


def per_class_table(per_class: dict[str, dict], title: str) -> Table:
    """``coco_evaluate``'s ``per_class`` as a table in label order: which class drags the mean AP. A class
    without a val box has no AP (COCOeval leaves it out of the mean), said as such, never as 0."""
    table = Table(title=title, caption=_per_class_caption(per_class))
    for col in ("class", "AP", "AP50", "val boxes"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, c in per_class.items():
        ap = [f"{c[k]:.4f}" if c[k] is not None else "no val boxes" for k in ("AP", "AP50")]
        table.add_row(escape(name), *ap, str(c["gt_boxes"]))
    return table


def _per_class_caption(per_class: dict[str, dict]) -> str:
    scored = sum(c["AP"] is not None for c in per_class.values())
    caption = f"AP, AP50 are the mean of these over the {scored} class{'es' if scored != 1 else ''} with val boxes"
    caption += "; val boxes: non-crowd / non-difficult, as COCOeval counts them"
    return caption


def cost_table(cost: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("input", "MACs total", "MACs backbone+neck", "params total", "params backbone+neck", "latency median",
                "latency p90", "onnxruntime (no NMS)"):
        table.add_column(col, justify="right")
    lat = cost.get("latency", {})
    ort_lat = cost.get("latency_onnxruntime", {})
    table.add_row(
        f"{cost['input_size']}x{cost['input_size']}", f"{cost['macs']['total'] / 1e6:.1f} M",
        f"{cost['macs']['backbone'] / 1e6:.1f} M", f"{cost['params']['total'] / 1e6:.3f} M",
        f"{cost['params']['backbone'] / 1e6:.3f} M",
        f"{lat['median_ms']:.2f} ms ({lat['device']}, {lat['threads']} thr)" if lat else "-",
        f"{lat['p90_ms']:.2f} ms" if lat else "-",
        f"{ort_lat['median_ms']:.2f} ms" if ort_lat else "-",
    )
    return table


def subnets_table(results: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("subnet", "input", "AP", "AP50", "AP75", "MACs"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        m = r["metrics"]
        macs = f"{r['macs'] / 1e6:.1f} M" if "macs" in r else "-"
        table.add_row(name, str(r["arch"].get("input_size", "")), f"{m['AP']:.4f}", f"{m['AP50']:.4f}",
                      f"{m['AP75']:.4f}", macs)
    return table


def detnas_list_arch(choices, cfg: ExperimentConfig, key: str) -> dict:
    """DetNAS's flat list of ops (``[2, 1, 2, 0, ...]``: how DetNAS, SPOS and MMRazor 0.x write an arch) as the
    backbone's choices (``stage1.block0.op``, ...); ``key`` (``tune.arch``, its file) names it in a refusal."""
    from ..models.backbones.shufflenet_spos import arch_from_list
    from ..space import ArchError

    name = cfg.model.backbone.name
    if not name.startswith("detnas_"):
        raise ArchError(f"{key}: a flat list of choices is DetNAS's form of an arch (the detnas_* backbones); "
                        f"model.backbone.name {name!r} takes a mapping of choices (as search/best_arch.json holds)")
    try:
        return arch_from_list(list(choices), name[len("detnas_"):])
    except ArchError as e:
        raise ArchError(f"{key}: {e}") from None
