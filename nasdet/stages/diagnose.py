"""The diagnose stage (``nasdet diagnose``): does the search's ranking of archs hold when they are trained alone?

K archs spread over the space's cost range (``search.diagnose.stratified_archs``: smallest and largest
always, the rest the seeded uniform draws nearest to evenly spaced MACs) are each

1. scored with the trained supernet exactly as ``nasdet search`` scores them (``search.scorers.load_trained_supernet``:
   inherited weights, BN recalibrated, COCO metrics on the search split);
2. scored by each zero-cost proxy (``search/proxies.py``) at the subnet's scratch init;
3. trained alone with one short shared recipe (the top-level ``train`` section with ``diagnose.epochs``),
   from scratch and/or from the supernet's weights (``diagnose.init``), and evaluated on val.

Every ranker (the supernet score, MACs alone, params alone, each proxy) is then compared with the
stand-alone AP: Kendall's tau and Spearman's rho with bootstrap 90 % intervals, top-k overlap. With
``diagnose.noise_check`` the plan's middle arch is trained once more (seed + 1): when its two APs differ as
much as the archs' do, the target is noise and the output says so (``search.diagnose.target_noise``).

Work dir ``diagnose/``: ``archs.json`` (the plan), ``records/<id>.json`` (one finished arch each, written
atomically: a kill loses at most the arch in progress, whose training also resumes from its checkpoint in
``archs/<id>/<init>/``), ``noise/<id>_seed<s>.json`` (the noise check's second training, in
``archs/<id>/<init>_seed<s>/``), ``claims/`` (which process holds which arch: several processes, ``--workers``,
share the plan; a claim of a dead process of this host is taken over), and once every arch is done
``results.csv``, ``summary.json``, ``rank.png``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.text import Text

from ..config import ExperimentConfig
from ..data.build import build_datasets
from ..errors import ConfigError
from ..files import write_json_atomic
from ..models.supernet import export_detector
from ..search.budget import CostModel, restrict_resolution
from ..search.diagnose import (Claims, arch_id, noise_arch, ranker_table, stratified_archs,
                               write_diagnose_outputs)
from ..search.proxies import proxy_batch, proxy_score, scratch_subnet, untrained_supernet
from ..search.scorers import load_trained_supernet
from ..search.study import worker_id
from ..train.bn import recalibrate_static
from ..train.checkpoint import file_sha256
from ..train.resume import flatten
from ..train.trained import TuneTrainer
from ..workdir import DIAGNOSE, LOG_FILE, DiagnoseDir, StageDir, WorkDir, checkpoint_in
from .common import stage_api


def train_standalone(cfg: ExperimentConfig, ctx, data: Mapping[str, Any], arch: Mapping[str, Any], init: str,
                     out_dir: Path, console: Console, seed: int | None = None) -> dict:
    """``arch`` trained alone with the diagnose recipe (resuming from ``out_dir/ckpt/last.pt``): from its
    scratch init or from the supernet's weights (BN recalibrated first, as ``nasdet tune``); val metrics.
    ``seed`` (default ``cfg.seed``) seeds the init, the BN calibration batches, the data order and augmentation."""
    d = cfg.diagnose
    seed = cfg.seed if seed is None else seed
    recipe = cfg.train.model_copy(update={"epochs": d.epochs, "max_steps": d.max_steps})
    cfg = cfg.model_copy(update={"seed": seed})
    tcfg = cfg.model_copy(update={"train": recipe})
    if init == "scratch":
        model = scratch_subnet(ctx.untrained, ctx.space, arch, cfg.seed)
    else:
        model = export_detector(ctx.model, arch, ctx.space)
        if cfg.tune.recalib_batches and not checkpoint_in(out_dir).is_file():
            recalibrate_static(model.to(ctx.device), data["train"].with_transforms(None), ctx.device,
                               cfg.tune.recalib_batches, cfg.eval.batch_size, cfg.data.num_workers, cfg.seed)
    torch.manual_seed(cfg.seed)
    trainer = TuneTrainer.from_config(tcfg, model, data["train"], data["val"], out_dir, console=console, arch=arch)
    # each item's augmentation seeded from its step, with loader workers or without: `data.num_workers: auto` gives
    # none under --workers 2 (a core each) and one alone, and the stand-alone APs, the noise verdict with them, were
    # another process count's
    trainer.settings = dataclasses.replace(trainer.settings, augment_stream="item")
    trainer.start_note = "from scratch" if init == "scratch" else "from the supernet's weights"
    trainer.prepare()
    folder = StageDir(out_dir, DIAGNOSE)
    done = folder.completed(trainer.final_step)
    if done is not None:
        return done["metrics"]
    metrics = trainer.run()
    write_json_atomic(folder.metrics, {"metrics": metrics, "step": trainer.step, "arch": dict(arch), "init": init,
                                       "seed": seed, "val_images": trainer.val_images,
                                       "threads": _logged_threads(out_dir / LOG_FILE)})
    return metrics


def _logged_threads(log: Path) -> list[int]:
    """The torch thread counts a training's logged steps ran on (the thread governor follows the machine's
    load; two counts round floats differently, so two seeds of one arch can differ by that too)."""
    if not log.is_file():
        return []
    counts = set()
    for line in log.read_text().splitlines():
        try:
            counts.add(json.loads(line)["threads"])
        except (ValueError, KeyError, TypeError):  # a line cut by a kill, a record without the field
            continue
    return sorted(counts)


def diagnose_arch(cfg: ExperimentConfig, ctx, data: Mapping[str, Any], cost_fn, batch, arch: Mapping[str, Any],
                  out: DiagnoseDir, console: Console) -> dict:
    """Every score of one arch: costs, the supernet's, each proxy's, and the stand-alone val metrics."""
    d = cfg.diagnose
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    costs = cost_fn(arch)
    supernet = ctx.scorer(arch)
    seconds["supernet"] = time.perf_counter() - t
    proxies = {}
    for name in d.proxies:
        t = time.perf_counter()
        proxies[name] = proxy_score(name, ctx.untrained, ctx.space, arch, batch[0], batch[1], seed=d.seed)
        seconds[name] = time.perf_counter() - t
    standalone = {}
    for init in d.init:
        t = time.perf_counter()
        standalone[init] = train_standalone(cfg, ctx, data, arch, init, out.training(arch_id(arch), init), console)
        seconds[f"train_{init}"] = time.perf_counter() - t
    trained = {init: _training_record(out.training(arch_id(arch), init)) for init in d.init}
    return {"arch_id": arch_id(arch), "arch": dict(arch), "costs": costs, "supernet": supernet, "proxies": proxies,
            "standalone": standalone, "seconds": seconds, "worker": worker_id(),
            "search_images": len(ctx.search_set), "val_images": _val_images(cfg, data),
            "steps": {init: r["step"] for init, r in trained.items()},
            "threads": {init: r.get("threads") for init, r in trained.items()}}


def _training_record(out_dir: Path) -> dict:
    """The metrics record of a finished stand-alone training (optimizer steps, thread counts, ...)."""
    return json.loads(StageDir(out_dir, DIAGNOSE).metrics.read_text())


def _val_images(cfg: ExperimentConfig, data: Mapping[str, Any]) -> int:
    n = len(data["val"])
    return min(n, cfg.eval.max_images) if cfg.eval.max_images else n


def repeat_target(cfg: ExperimentConfig, ctx, data: Mapping[str, Any], arch: Mapping[str, Any], out: DiagnoseDir,
                  console: Console) -> dict:
    """The noise check: ``arch``'s target (``diagnose.target``) trained again, with seed ``cfg.seed + 1``."""
    d = cfg.diagnose
    seed = cfg.seed + 1
    console.print(f"diagnose: noise check, arch {arch_id(arch)} trained again with seed {seed}")
    t = time.perf_counter()
    folder = out.training(arch_id(arch), d.target, seed)
    metrics = train_standalone(cfg, ctx, data, arch, d.target, folder, console, seed=seed)
    return {"arch_id": arch_id(arch), "arch": dict(arch), "init": d.target, "seed": seed, "metrics": metrics,
            "seconds": time.perf_counter() - t, "worker": worker_id(), "threads": _training_record(folder).get("threads")}


def plan_archs(cfg: ExperimentConfig, ctx, cost_fn, out: DiagnoseDir) -> dict:
    """``diagnose/archs.json``: the stratified archs of the config (computed once; a plan for other settings,
    archs or training recipe, is refused once archs of it are done: their records would mix two recipes)."""
    d = cfg.diagnose
    if d.archs > d.pool:  # (a pipeline config's: its load checked pipeline.diagnose's archs against the pool)
        raise ConfigError(f"diagnose.pool ({d.pool}) must be >= diagnose.archs ({d.archs})")
    plan_path = out.plan
    t = cfg.train
    recipe = {"epochs": d.epochs, "max_steps": d.max_steps, "init": list(d.init), "seed": cfg.seed,
              "batch_size": t.batch_size, "optimizer": t.optimizer.model_dump(mode="json"),
              "scheduler": t.scheduler.model_dump(mode="json"), "grad_clip": t.grad_clip}
    s = cfg.search
    # how each record was scored and evaluated too: records of two settings would be ranked as one; and the supernet
    # they were scored with and started from (pretrained again in the same work dir, its old records were reused)
    plan_key = {"space_id": ctx.space.space_id, "archs": d.archs, "pool": d.pool, "seed": d.seed, "recipe": recipe,
                "eval_max_images": cfg.eval.max_images, "proxies": list(d.proxies),
                "proxy_batch_size": d.proxy_batch_size,
                "search_scoring": {k: getattr(s, k) for k in ("recalib_batches", "batch_size", "max_images", "score_on")},
                "standalone_recalibration": {"batches": cfg.tune.recalib_batches, "batch_size": cfg.eval.batch_size},
                "supernet_sha256": ctx.supernet_sha256}
    plan = json.loads(plan_path.read_text()) if plan_path.is_file() else None
    old_key = (plan or {}).get("key") or {}
    # a plan written before a key was part of it is not refused for that key
    changed = [k for k in plan_key if k in old_key and old_key[k] != plan_key[k]]
    if plan is None or changed or not set(old_key) <= set(plan_key):
        if plan is not None and any(out.records.glob("*.json")):
            # the values that differ, not the whole of each setting (a recipe's ~900 characters for one max_steps)
            was, now = flatten({k: old_key[k] for k in changed}), flatten({k: plan_key[k] for k in changed})
            what = "; ".join(f"{k}: {was.get(k)} -> {now.get(k)}" for k in sorted(set(was) | set(now))
                             if was.get(k) != now.get(k)) or f"keys {sorted(set(old_key) - set(plan_key))}"
            raise ConfigError(f"{plan_path} was planned with other settings than the config's ({what}); records of "
                              f"both would be ranked as one: use another --work-dir or delete {out.root}")
        space = restrict_resolution(ctx.space, cfg.model.input_size, cfg.search.resolution_tolerance)
        plan = {"key": plan_key, "archs": stratified_archs(space, lambda a: cost_fn(a)["macs"], d.archs, d.pool, d.seed)}
        write_json_atomic(plan_path, plan)
    return plan


@stage_api
def run_diagnose(cfg: ExperimentConfig, work_dir: str | Path | None = None, console: Console | None = None,
                 worker: int = 0, plan_only: bool = False, outputs: bool = True) -> dict:
    """Score, proxy and train the plan's archs not yet done (shared with other processes through claims);
    when all are done, write ``results.csv``, ``summary.json``, ``rank.png``. Returns the summary (or
    ``{"pending": [...]}`` while other processes still hold archs). ``plan_only``: write ``archs.json`` and
    return the plan (before starting workers, so that they do not each compute it). ``outputs=False``: only
    the trainings (a worker of ``--workers``, whose launcher then writes and prints the summary once)."""
    console = console or Console()
    d = cfg.diagnose
    w = WorkDir.of(cfg, work_dir)
    out = w.diagnose
    t_start = time.perf_counter()
    ctx = load_trained_supernet(cfg, w, console)
    ctx.supernet_sha256 = file_sha256(ctx.checkpoint)
    ctx.untrained = untrained_supernet(cfg, ctx.search_set.num_classes, d.seed)  # scratch inits and proxies
    cost_fn = CostModel(ctx.model, ctx.space, ("macs", "params"))
    plan = plan_archs(cfg, ctx, cost_fn, out)
    if plan_only:
        return plan
    archs = [ctx.space.validate(a) for a in plan["archs"]]
    data = build_datasets(cfg, need=("train", "val"))
    batch = proxy_batch(data["supernet_train"].with_transforms(None), d.proxy_batch_size, d.seed) \
        if "grad_norm" in d.proxies else ([], [])
    claims = Claims(out.claims)
    # the jobs: each arch's record, then the noise check's second training of the middle arch
    jobs = [(arch_id(a), out.record(arch_id(a)), a, i) for i, a in enumerate(archs)]
    if d.noise_check:
        middle = noise_arch(archs)
        jobs.append((f"{arch_id(middle)}_seed{cfg.seed + 1}", out.repeat_record(arch_id(middle), cfg.seed + 1),
                     middle, None))
    done_here = 0
    for name, record_path, arch, i in jobs:
        if record_path.is_file() or not claims.take(name):
            continue
        try:
            if record_path.is_file():  # finished by another process between the check and the claim
                continue
            if i is None:
                record = repeat_target(cfg, ctx, data, arch, out, console)
            else:
                console.print(f"diagnose: arch {i + 1}/{len(archs)} ({name}, {cost_fn(arch)['macs'] / 1e6:.1f} M MACs)")
                record = diagnose_arch(cfg, ctx, data, cost_fn, batch, arch, out, console)
                record["index"] = i
            write_json_atomic(record_path, record)
            done_here += 1
        finally:
            claims.release(name)
    pending = [name for name, path, _, _ in jobs if not path.is_file()]
    if not outputs:
        return {"pending": pending, "trained_here": done_here}
    if pending:
        console.print(f"diagnose: {len(jobs) - len(pending)}/{len(jobs)} trainings done; {len(pending)} held by "
                      "other processes")
        return {"pending": pending}
    records = [json.loads(out.record(arch_id(a)).read_text()) for a in archs]
    repeat = json.loads(jobs[-1][1].read_text()) if d.noise_check else None
    summary = write_diagnose_outputs(records, cfg, out, repeat, ctx.supernet_sha256)
    summary["seconds_this_process"] = time.perf_counter() - t_start
    summary["archs_this_process"] = done_here
    console.print(ranker_table(summary))
    for note in ("warning", "few_archs"):
        if summary.get(note):
            console.print(Text(f"warning: {summary[note]}", style="yellow"), soft_wrap=True)
    if summary["noise"]:
        console.print(Text(summary["noise"]["verdict"], style="yellow" if summary["noise"]["is_noise"] else ""),
                      soft_wrap=True)
    return summary
