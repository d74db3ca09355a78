"""``nasdet pipeline``: [classify ->] baseline -> pretrain -> search [-> diagnose] -> tune [-> controls] -> export
-> report, in one work dir; it only orders the stages (``nasdet.stages``).

Each stage is the same function its own command runs, and each already skips itself when its outputs
are complete and resumes when interrupted (training from ``ckpt/last.pt``, the search from its Optuna
study), so rerunning the pipeline after a kill continues where it stopped. The report compares the
baseline and the found model trained with the same recipe (ENOT's fair comparison): ``report.md``,
``report.json`` and ``pareto.png`` in the work dir.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.rule import Rule
from rich.text import Text

from .config import ExperimentConfig, run_without_start_weights
from .errors import ConfigError
from .stages.baseline import run_baseline, run_cost
from .stages.classify import run_classify
from .stages.common import stage_api
from .stages.export import current_export, run_export
from .stages.pretrain import run_pretrain
from .stages.report import CONTROLS_UNDER_TORCHRUN, unlike, write_report
from .stages.search import run_search
from .stages.tune import run_tune
from .workdir import ARCH_JSON, CONTROLS, WorkDir, write_json

STAGES = ("classify", "baseline", "pretrain", "search", "diagnose", "tune", "controls", "export", "report")


def controls_settings(cfg: ExperimentConfig) -> dict:
    """What the control archs are drawn with besides the found arch: a plan drawn otherwise is drawn again."""
    from .search.controls import EDGE_DRAWS

    r, b = cfg.report, cfg.search.budget
    return {"report.controls_seeds": r.controls_seeds, "report.controls_tolerance": r.controls_tolerance,
            "report.controls_draws": r.controls_draws,
            "search.budget": {"metric": b.metric, "max": b.max} if b else None, "seed": cfg.seed, "model.input_size": cfg.model.input_size,
            "search.resolution_tolerance": cfg.search.resolution_tolerance, "edge_draws": EDGE_DRAWS}


def controls_plan(cfg: ExperimentConfig, w: WorkDir, console: Console | None = None) -> list[dict]:
    """The report's control archs (``search/controls.py``) for the arch the tune stage trained, chosen once
    (``controls/archs.json``, with the settings drawn with) so that a rerun tunes the same ones; drawn again
    when the found arch or a setting changed, refused while a control's folder holds another arch's tune."""
    from .data.build import load_split
    from .models.supernet import build_supernet
    from .search.budget import Budget, CostModel, restrict_resolution
    from .search.controls import control_archs
    from .space import load_arch

    console = console or Console(quiet=True)
    found_file = w.tune / ARCH_JSON
    settings = json.loads(json.dumps(controls_settings(cfg)))  # as archs.json holds them
    if w.controls_plan.is_file():
        plan = json.loads(w.controls_plan.read_text())
        changed = _plan_changes(plan, settings, _sha(found_file))
        if not changed:
            return plan["controls"]
        console.print(f"controls: {escape(str(w.controls_plan))} was drawn {changed}: drawing the control archs again")
    r = cfg.report
    model, space = build_supernet(run_without_start_weights(cfg), len(load_split(cfg, "val").classes))  # (costs)
    found = load_arch(found_file, space)
    search_space = restrict_resolution(space, cfg.model.input_size, cfg.search.resolution_tolerance)
    budget = Budget(cfg.search.budget.metric, cfg.search.budget.max) if cfg.search.budget else None
    cost_fn = CostModel(model, space, ("macs", "params"))
    controls = control_archs(search_space, space.default(), cost_fn(found), cost_fn, budget, r.controls_seeds,
                             r.controls_tolerance, r.controls_draws, cfg.seed, console=console)
    _refuse_stale_controls(w, controls)  # before the plan is written: the report reads each folder by its name
    write_json(w.controls_plan, {"found_arch": found, "found_arch_file_sha": _sha(found_file), "settings": settings,
                                 "controls": controls})
    return controls


def _plan_changes(plan: dict, settings: dict, found_sha: str) -> str:
    """How ``plan`` (``controls/archs.json``) was drawn otherwise than now, said for the console; "" if alike."""
    if plan.get("found_arch_file_sha") != found_sha:
        return "for another found arch (tune/arch.json changed)"
    if "settings" not in plan:
        return "without recording its settings (an older nasdet)"
    old = plan["settings"]
    changed = [f"{k} {json.dumps(old.get(k))} (now {json.dumps(v)})" for k, v in settings.items() if old.get(k) != v]
    return "with " + ", ".join(changed) if changed else ""


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refuse_stale_controls(w: WorkDir, controls: list[dict]) -> None:
    """A control folder tuned (``metrics.json`` or a checkpoint) for another arch than the plan's of its name
    would be reported as that control: refused, naming the folders to delete."""
    stale = []
    for c in controls:
        d = w.control(c["name"])
        record = d / "metrics.json" if (d / "metrics.json").is_file() else d / ARCH_JSON
        if not (d.has_checkpoint() or (d / "metrics.json").is_file()) or not record.is_file():
            continue
        if json.loads(record.read_text()).get("arch") != json.loads(json.dumps(c["arch"])):
            stale.append(str(d.root))
    if stale:
        from .errors import ResumeMismatch

        raise ResumeMismatch(f"the control archs were drawn again and {', '.join(stale)} holds a tune of another arch "
                             f"than the new plan's: delete {'it' if len(stale) == 1 else 'them'} to tune the new "
                             "arch(s) (or restore the settings the plan was drawn with)")


def run_controls(cfg: ExperimentConfig, wd: Path, console: Console) -> dict:
    """Tune each control arch exactly as the found one was tuned (same supernet, init and recipe), each in
    ``controls/<name>/``; returns name -> tune record."""
    out = {}
    found = WorkDir(wd).tune.metrics  # written by the tune stage, which runs before the controls
    found = json.loads(found.read_text()) if found.is_file() else None
    if found is not None and (found.get("processes") or 1) > 1:
        # tuned here in one process, each control was then left out of the report as tuned unlike the found arch
        # (and the console's "delete it to tune it again" tuned it the same way again)
        console.print(Text(f"controls: not tuned: {CONTROLS_UNDER_TORCHRUN.format(n=found['processes'])}",
                           style="yellow"), soft_wrap=True)
        return out
    for c in controls_plan(cfg, WorkDir(wd), console):
        tune = cfg.tune.model_copy(update={"arch": c["arch"], "searched_arch": None})
        console.print(f"control {c['name']}: {c['costs'].get('macs', 0) / 1e6:.1f} M MACs")
        out[c["name"]] = run_tune(cfg.model_copy(update={"tune": tune}), wd, console=console,
                                  stage=f"{CONTROLS}/{c['name']}")
        differ = unlike(found, out[c["name"]]) if found is not None else []
        if differ:  # a control finished under other settings: kept, but the report leaves it out of its comparisons
            console.print(f"[yellow]warning: control {c['name']} was tuned unlike the found arch ({', '.join(differ)}): "
                          f"the report leaves it out; delete {escape(str(WorkDir(wd).control(c['name']).root))} to "
                          "tune it again[/]")
    return out


def diagnose_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config ``pipeline.diagnose: K`` runs ``nasdet diagnose`` with: the ``diagnose`` section, K archs."""
    return cfg.model_copy(update={"diagnose": cfg.diagnose.model_copy(update={"archs": cfg.pipeline.diagnose})})


def run_pipeline_diagnose(cfg: ExperimentConfig, wd: Path, console: Console) -> dict:
    """``nasdet diagnose`` on ``pipeline.diagnose`` archs, unless a diagnose with these settings finished
    (its ``summary.json``); an interrupted one continues from its records."""
    from .search.diagnose import finished_summary
    from .stages.diagnose import run_diagnose

    from .train.checkpoint import file_sha256

    dcfg = diagnose_config(cfg)
    supernet = WorkDir(wd).supernet.checkpoint
    done = finished_summary(dcfg, WorkDir(wd).diagnose, file_sha256(supernet) if supernet.is_file() else None)
    if done is not None:
        console.print(f"diagnose: done ({done['archs']} archs), kept")
        return done
    return run_diagnose(dcfg, wd, console=console)


@stage_api
def run_pipeline(cfg: ExperimentConfig, work_dir: str | Path | None = None, console: Console | None = None) -> dict:
    """Run every stage that is not complete yet; returns the report (also written as report.json)."""
    console = console or Console()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # its search would score on every rank through the group
        raise ConfigError("nasdet pipeline runs in one process, not under torchrun: run the training stages under "
                          "torchrun one by one (nasdet train, pretrain, tune), the search with `nasdet search "
                          "--workers N`, then nasdet export and nasdet pipeline for the report (README, 'Recipes at full scale')")
    if cfg.pipeline.classify and (cfg.classify is None or cfg.classify.arch is not None):
        raise ConfigError("pipeline.classify trains the supernet as a classifier before pretraining: it needs a "
                          "classify section without classify.arch")
    if cfg.pipeline.classify and cfg.model.backbone.checkpoint:
        raise ConfigError("pipeline.classify: the supernet starts from classify/backbone.pt; unset "
                          "model.backbone.checkpoint")
    if cfg.search.strategy != "darts" and cfg.search.score_on == "search" and cfg.data.search_fraction == 0:
        # said before the pretrain (hours on a real set), which would then have to be redone with the split
        raise ConfigError("the search scores candidates on the search split (search.score_on: search), which "
                          "data.search_fraction: 0 leaves empty: set data.search_fraction (e.g. 0.1: the supernet "
                          "then trains on the rest of train) or search.score_on: val")
    w = WorkDir.of(cfg, work_dir)
    wd = w.root
    wd.mkdir(parents=True, exist_ok=True)  # each stage writes config.yaml once its checks pass (a resume)
    times: dict[str, float] = {}

    def stage(name: str, fn):
        console.print(Rule(f"[bold]{name}"))
        t = time.perf_counter()
        out = fn()
        times[name] = round(time.perf_counter() - t, 1)
        return out

    if cfg.pipeline.classify:
        stage("classify", lambda: run_classify(cfg, wd, console=console))
    if cfg.pipeline.baseline:
        stage("baseline", lambda: run_baseline(cfg, wd, console=console))
    if cfg.search.strategy != "darts":  # a darts (FAD) search trains its own search network
        stage("pretrain", lambda: run_pretrain(cfg, wd, console=console))
    stage("search", lambda: run_search(cfg, wd, console=console))
    if cfg.pipeline.diagnose:
        stage("diagnose", lambda: run_pipeline_diagnose(cfg, wd, console))
    stage("tune", lambda: run_tune(cfg, wd, console=console))
    if cfg.report.controls:
        if cfg.search.strategy == "darts":
            console.print("report.controls: a darts (FAD) search has no supernet to take control archs from; skipped")
        else:
            stage("controls", lambda: run_controls(cfg, wd, console))
    exports = {}
    if cfg.pipeline.export:
        def export_all():
            for source in ("tune", "baseline") if cfg.pipeline.baseline else ("tune",):
                exports[source] = current_export(cfg, w, source, console) or run_export(cfg, wd, source=source,
                                                                                          console=console)
        stage("export", export_all)
    costs = {}
    if not cfg.pipeline.export and cfg.pipeline.baseline and w.baseline.has_checkpoint():  # sizes without an export
        costs["baseline"] = run_cost(cfg, wd, latency=False, console=Console(quiet=True))
    report = stage("report", lambda: write_report(cfg, wd, exports, console, costs))
    # a rerun finds stages done in a second: their seconds are the earlier runs' plus this one's
    try:
        earlier = json.loads(w.report_json.read_text()).get("stage_seconds") or {}
    except (OSError, ValueError, AttributeError):
        earlier = {}
    report["stage_seconds"] = {k: round(float(earlier.get(k) or 0.0) + v, 1) for k, v in times.items()}
    report["stage_seconds_this_run"] = times
    write_json(w.report_json, report)
    return report
