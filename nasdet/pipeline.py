"""``nasdet pipeline``: baseline -> pretrain -> search -> tune -> export -> report, in one work dir.

Each stage is the same function its own command runs, and each already skips itself when its outputs
are complete and resumes when interrupted (training from ``ckpt/last.pt``, the search from its Optuna
study), so rerunning the pipeline after a kill continues where it stopped. The report compares the
baseline and the found model trained with the same recipe (ENOT's fair comparison): ``report.md``,
``report.json`` and ``pareto.png`` in the work dir.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from .config import ExperimentConfig, save_config
from .files import atomic_path, write_text_atomic
from .experiment import BASELINE, SUPERNET, baseline_config, run_pretrain, run_train, work_dir_of, write_json

STAGES = ("baseline", "pretrain", "search", "tune", "export", "report")


def _pretrain_config(cfg: ExperimentConfig, wd: Path) -> ExperimentConfig:
    """ENOT: the supernet starts from the baseline's weights (``pipeline.init_supernet_from_baseline``)."""
    if not (cfg.pipeline.init_supernet_from_baseline and cfg.pipeline.baseline):
        return cfg
    sn = cfg.supernet.model_copy(update={"init_from": str(wd / BASELINE / "ckpt" / "last.pt")})
    return cfg.model_copy(update={"supernet": sn})


def _exported(wd: Path, source: str) -> dict | None:
    """The export record of ``source`` if it is newer than the checkpoint it exported."""
    path = wd / "export" / f"{source}.json"
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    ckpt = Path(rec.get("checkpoint", ""))
    if not ckpt.is_file() or ckpt.stat().st_mtime > path.stat().st_mtime or not Path(rec["onnx"]).is_file():
        return None
    return rec


def run_pipeline(cfg: ExperimentConfig, work_dir: str | Path | None = None, console: Console | None = None) -> dict:
    """Run every stage that is not complete yet; returns the report (also written as report.json)."""
    from .export import run_export
    from .search.run import run_search
    from .tune import run_tune

    console = console or Console()
    wd = work_dir_of(cfg, work_dir)
    wd.mkdir(parents=True, exist_ok=True)
    save_config(cfg, wd / "config.yaml")
    times: dict[str, float] = {}

    def stage(name: str, fn):
        console.print(Rule(f"[bold]{name}"))
        t = time.perf_counter()
        out = fn()
        times[name] = round(time.perf_counter() - t, 1)
        return out

    if cfg.pipeline.baseline:
        stage("baseline", lambda: run_train(cfg, wd, stage=BASELINE, console=console))
    if cfg.search.strategy != "darts":  # a darts (FAD) search trains its own search network
        stage("pretrain", lambda: run_pretrain(_pretrain_config(cfg, wd), wd, console=console))
    stage("search", lambda: run_search(cfg, wd, console=console))
    stage("tune", lambda: run_tune(cfg, wd, console=console))
    exports = {}
    if cfg.pipeline.export:
        def export_all():
            for source in ("tune", "baseline") if cfg.pipeline.baseline else ("tune",):
                exports[source] = _exported(wd, source) or run_export(cfg, wd, source=source, console=console)
        stage("export", export_all)
    report = stage("report", lambda: write_report(cfg, wd, exports, console))
    report["stage_seconds"] = times
    write_json(wd / "report.json", report)
    return report


# ------------------------------------------------------------------------------------------- report
def _row(name: str, metrics: dict, export: dict | None, cost: dict | None) -> dict:
    row = {"model": name, "AP": metrics.get("AP"), "AP50": metrics.get("AP50")}
    if export is not None:
        row.update(macs=export["measured"]["macs"], params=export["measured"]["params"],
                   latency_torch_ms=export["latency_torch"]["median_ms"],
                   latency_onnxruntime_ms=export["latency_onnxruntime"]["median_ms"])
    elif cost is not None:
        row.update(macs=cost["macs"]["total"], params=cost["params"]["total"])
    return row


def _fmt(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    if key in ("AP", "AP50"):
        return f"{v:.4f}"
    if key == "macs":
        return f"{v / 1e6:.1f} M"
    if key == "params":
        return f"{v / 1e6:.3f} M"
    return f"{v:.2f} ms"


COLUMNS = (("AP", "AP"), ("AP50", "AP50"), ("macs", "MACs"), ("params", "params"),
           ("latency_torch_ms", "CPU latency torch"), ("latency_onnxruntime_ms", "CPU latency onnxruntime"))


def write_report(cfg: ExperimentConfig, wd: Path, exports: dict, console: Console) -> dict:
    """``report.md`` + ``pareto.png``: baseline vs found model, the budget, the search summary."""
    rows = []
    base_metrics = wd / BASELINE / "metrics.json"
    if base_metrics.is_file():
        name = f"baseline ({baseline_config(cfg).model.backbone.name})"
        rows.append(_row(name, json.loads(base_metrics.read_text())["metrics"], exports.get("baseline"), None))
    tune = json.loads((wd / "tune" / "metrics.json").read_text())
    rows.append(_row("found (tuned)", tune["metrics"], exports.get("tune"), None))
    initial = wd / "tune" / "initial_metrics.json"
    init_metrics = json.loads(initial.read_text())["metrics"] if initial.is_file() else None

    table = Table(title=f"{cfg.name}: baseline vs found model (val, same training recipe)")
    table.add_column("model")
    for _, title in COLUMNS:
        table.add_column(title, justify="right")
    for r in rows:
        table.add_row(r["model"], *[_fmt(r, k) for k, _ in COLUMNS])
    console.print(table)

    budget = cfg.search.budget
    train = cfg.data.train
    data = train.annotations or train.root or train.images or cfg.data.data_yaml
    lines = [f"# nasdet report: {cfg.name}", "",
             f"Detector {cfg.model.detector}, search space {cfg.model.backbone.name} "
             f"(width {cfg.model.backbone.width_mult}), data {data}.", ""]
    if budget is not None:
        scale, unit = (1e6, "M") if budget.metric in ("macs", "params") else (1.0, "ms")
        lines += [f"Budget: {budget.metric} <= {budget.max / scale:.4g} {unit}.", ""]
    lines += ["| model | " + " | ".join(t for _, t in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines += ["| " + r["model"] + " | " + " | ".join(_fmt(r, k) for k, _ in COLUMNS) + " |" for r in rows]
    lines.append("")
    if len(rows) == 2 and rows[0].get("macs") and rows[1].get("macs"):
        b, f = rows
        lines.append(f"The found model has {f['macs'] / b['macs']:.0%} of the baseline's MACs and "
                     f"{f['params'] / b['params']:.0%} of its parameters; AP50 {f['AP50'] - b['AP50']:+.4f}, "
                     f"AP {f['AP'] - b['AP']:+.4f}.")
        lines.append("")
    if init_metrics is not None:
        lines += [f"Inherited supernet weights before tuning: AP {init_metrics['AP']:.4f}, AP50 {init_metrics['AP50']:.4f}.", ""]
    tuned_export = exports.get("tune")
    if tuned_export and tuned_export.get("budget"):
        bc = tuned_export["budget"]
        verdict = "within" if bc["within"] else "**OVER**"
        unit = {"macs": (1e6, "M MACs"), "params": (1e6, "M params"), "latency": (1.0, "ms")}[bc["metric"]]

        def show(v):
            return "-" if v is None else f"{v / unit[0]:.4g} {unit[1]}"
        lines += [f"Measured {bc['metric']} of the exported model: {show(bc['measured'])} ({verdict} the budget "
                  f"{show(bc['max'])}; the search predicted {show(bc['predicted'])}).", ""]
    pareto = wd / "search" / "pareto.png"
    if pareto.is_file():
        with atomic_path(wd / "pareto.png") as tmp:
            shutil.copyfile(pareto, tmp)
        lines += ["![candidates on the search split](pareto.png)", ""]
    search_summary = wd / "search" / "pareto.json"
    if search_summary.is_file():
        p = json.loads(search_summary.read_text())
        lines += [f"Search: {p['scored']} candidates scored ({cfg.search.strategy}), {len(p['front'])} on the Pareto front.", ""]
    lines += ["Files: `baseline/` (checkpoint, metrics), `supernet/` (checkpoint, subnets' metrics), `search/` "
              "(study.journal, results.csv, best_arch.json, pareto.json/png), `tune/` (arch.json, checkpoint, "
              "metrics), `export/` (ONNX files, parity and latency records, classes.json).", ""]
    write_text_atomic(wd / "report.md", "\n".join(lines))
    console.print(f"report: {wd / 'report.md'}")
    return {"rows": rows, "initial_tune_metrics": init_metrics, "budget": None if budget is None else budget.model_dump(),
            "supernet": str(wd / SUPERNET)}
