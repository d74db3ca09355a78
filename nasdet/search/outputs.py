"""The search stage's outputs from its records: ``results.csv``, ``best_arch.json`` (with the predicted
costs), ``pareto.json``, ``pareto.png``, and the table of the best candidates."""
from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.table import Table

from ..errors import ConfigError
from ..files import atomic_path, file_stamp
from ..space import SearchSpace, save_arch
from ..workdir import BEST_ARCH, CONFIDENCE_JSON, PARETO_JSON, PARETO_PNG, RESULTS_CSV, write_json
from .budget import COST_UNITS, Budget
from .strategies import OBJECTIVE
from .study import best_record, pareto_front

METRIC_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def outputs_key(config: Mapping, records: Sequence[dict], files: Sequence[Path | None]) -> str:
    """A digest of what a search's outputs are computed from: the run's config, its scored candidates and the
    checkpoints it scores or times (path, size, modification time): a rerun with the same key writes the same
    outputs, so it keeps them (the baseline's scoring and the confidence's rescoring are not redone)."""
    stats = [file_stamp(p) for p in files]
    rows = [[r["trial"], r["arch"], r["metrics"], r["costs"], r["feasible"]] for r in sorted(records, key=lambda r: r["trial"])]
    text = json.dumps({"config": config, "records": rows, "files": stats}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def output_files(out_dir: Path) -> dict[str, str]:
    """Name -> path of the files ``write_search_outputs`` writes (the summary's ``files``)."""
    return {n: str(out_dir / n) for n in (RESULTS_CSV, BEST_ARCH, PARETO_JSON, PARETO_PNG)}


def kept_outputs(out_dir: Path, key: str) -> dict | None:
    """``pareto.json`` of the outputs in ``out_dir`` when they were written under ``key`` and are all there."""
    try:
        pareto = json.loads((out_dir / PARETO_JSON).read_text())
    except (OSError, ValueError):
        return None
    complete = all((out_dir / n).is_file() for n in (RESULTS_CSV, PARETO_PNG))
    return pareto if complete and isinstance(pareto, dict) and pareto.get("outputs_key") == key else None


def write_search_outputs(records: Sequence[dict], space: SearchSpace, out_dir: str | Path, cost_metric: str,
                         budget: Budget | None = None, extremes: Mapping[str, dict] | None = None,
                         baseline: dict | None = None, objective: str = OBJECTIVE, confidence: dict | None = None,
                         study: Mapping[str, str] | None = None, key: str | None = None) -> dict:
    """``results.csv``, ``best_arch.json`` (best AP under the budget, via ``save_arch``), ``pareto.json``,
    ``pareto.png``; ``extremes`` (name -> {arch, costs}) and the ``baseline`` ({costs, metrics}) are
    marked on the plot; ``confidence`` (``search/confidence.search_confidence``) -> ``confidence.json`` and
    its columns in ``results.csv``; ``study`` ({study_name, strategy}: which search wrote them) and ``key``
    (``outputs_key``) go into ``pareto.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results_csv(records, out_dir / RESULTS_CSV, confidence)
    if confidence is not None:
        write_json(out_dir / CONFIDENCE_JSON, confidence)
    else:  # one from an earlier search (other settings) would read as this one's
        (out_dir / CONFIDENCE_JSON).unlink(missing_ok=True)
    best = best_record(records, objective)
    if best is not None:  # with the costs the search predicted, which export compares its measurement to
        save_arch(out_dir / BEST_ARCH, best["arch"], space, costs=best["costs"])
    front = pareto_front([r for r in records if r["feasible"]], cost_metric, objective)
    scored = {json.dumps(r["arch"], sort_keys=True): r for r in records}
    marks = {}
    for name, e in (extremes or {}).items():
        r = scored.get(json.dumps(dict(e["arch"]), sort_keys=True))
        marks[name] = {"arch": dict(e["arch"]), "costs": dict(e["costs"]),
                       "metrics": r["metrics"] if r else None, "trial": r["trial"] if r else None}
    pareto = {**(study or {}), "space_id": space.space_id, "cost_metric": cost_metric,
              "budget": {"metric": budget.metric, "max": budget.max} if budget else None,
              "front": [_plain(r) for r in front], "extremes": marks, "baseline": baseline, "scored": len(records),
              "outputs_key": key}
    if baseline is not None:
        marks = {**marks, "baseline": baseline}
    write_json(out_dir / PARETO_JSON, pareto)
    plot_pareto(records, front, cost_metric, out_dir / PARETO_PNG, budget, marks, objective)
    return {"best": best, "front": front, "records": len(records), "files": output_files(out_dir)}


def _plain(r: dict) -> dict:
    return {k: r[k] for k in ("trial", "arch", "metrics", "costs", "seconds", "feasible")}


def write_results_csv(records: Sequence[dict], path: Path, confidence: dict | None = None) -> None:
    """One row per candidate; the bootstrapped top candidates also carry their AP interval and the probability
    that the winner beats them (``ap_low``, ``ap_high``, ``p_winner_beats``; empty for the others). A zero-cost
    proxy's score (``search.scorer``) has its own column after the APs (it had none: a proxy search's csv held no
    score, qa_latency #2)."""
    scores = sorted({k for r in records for k in r["metrics"]} - set(METRIC_COLUMNS))
    cols = ["trial", "arch", *METRIC_COLUMNS, *scores, "macs", "params", "latency_ms", "seconds", "feasible",
            "worker", "ap_low", "ap_high", "p_winner_beats"]
    boot = (confidence or {}).get("candidates", {})
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in records:
            m, c = r["metrics"], r["costs"]
            w.writerow([r["trial"], json.dumps(r["arch"], sort_keys=True),
                        *[m.get(k, "") for k in (*METRIC_COLUMNS, *scores)],
                        c.get("macs", ""), c.get("params", ""), c.get("latency", ""),
                        "" if r["seconds"] is None else round(r["seconds"], 3), r["feasible"], r["worker"] or "",
                        *_interval_columns(boot.get(str(r["trial"])))])


def _interval_columns(b: dict | None) -> list:
    if b is None:
        return ["", "", ""]
    return [round(b["low"], 6), round(b["high"], 6), "" if b["p_winner_beats"] is None else round(b["p_winner_beats"], 4)]


def plot_pareto(records: Sequence[dict], front: Sequence[dict], cost: str, path: Path, budget: Budget | None = None,
                marks: Mapping[str, dict] | None = None, objective: str = OBJECTIVE) -> None:
    """AP vs cost: every scored candidate, the Pareto front as a line, the budget, smallest/largest subnets."""
    # a Figure of its own, not pyplot's: no backend switched under the caller (a notebook's inline plots)
    from matplotlib.figure import Figure

    scale, unit = (1e6, f"M {COST_UNITS[cost]}") if cost in ("macs", "params") else (1.0, COST_UNITS[cost])
    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.subplots()
    pts = [r for r in records if cost in r["costs"]]
    ax.scatter([r["costs"][cost] / scale for r in pts], [r["metrics"][objective] for r in pts], s=14, c="tab:gray",
               alpha=0.6, label=f"candidates ({len(pts)})")
    if front:
        ax.plot([r["costs"][cost] / scale for r in front], [r["metrics"][objective] for r in front], "-o",
                c="tab:red", ms=5, label="Pareto front")
    if budget is not None:
        ax.axvline(budget.max / scale, c="tab:blue", ls="--", lw=1, label=f"budget {budget.max / scale:.4g} {unit}")
    styles = {"smallest": ("v", "tab:green"), "largest": ("^", "tab:purple"), "baseline": ("*", "tab:orange")}
    for name, m in (marks or {}).items():
        style = styles.get(name, ("D", "tab:brown"))
        label = "baseline (trained on all of train)" if name == "baseline" else f"{name} subnet"
        if m.get("scored_note"):
            label = label[:-1] + f";\n{m['scored_note']})"
        if cost == "latency" and m.get("latency_note"):
            label = label[:-1] + f";\nlatency {m['latency_note']})"
        x = m["costs"].get(cost)
        if x is None:
            continue
        if m["metrics"]:
            ax.scatter([x / scale], [m["metrics"][objective]], marker=style[0], s=110 if name == "baseline" else 80,
                       c=style[1], zorder=3, label=label)
        else:
            ax.axvline(x / scale, c=style[1], ls=":", lw=1, label=f"{label} (cost)")
    ax.set_xlabel(f"{cost} ({unit})")
    ax.set_ylabel("AP (search split)" if objective == OBJECTIVE else f"{objective} (zero-cost proxy)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def top_table(records: Sequence[dict], cost: str, k: int, title: str, objective: str = OBJECTIVE) -> Table:
    table = Table(title=title)
    for col in ("trial", objective, "AP50", "MACs", "params", "latency", "input", "feasible"):
        table.add_column(col, justify="right")
    top = sorted(records, key=lambda r: (-r["metrics"][objective], r["trial"]))[:k]
    for r in top:
        c, m = r["costs"], r["metrics"]
        table.add_row(str(r["trial"]), f"{m[objective]:.4f}", f"{m.get('AP50', float('nan')):.4f}",
                      f"{c['macs'] / 1e6:.1f} M" if "macs" in c else "-",
                      f"{c['params'] / 1e6:.3f} M" if "params" in c else "-",
                      f"{c['latency']:.2f} ms" if "latency" in c else "-",
                      str(r["arch"].get("input_size", "")), "yes" if r["feasible"] else "no")
    return table


def refuse_other_search(out_dir: str | Path, study_name: str, strategy: str) -> None:
    """Refuse a search whose outputs would replace those of another study (another ``search.strategy`` or
    ``search.study_name``) in ``out_dir``: rerunning a study, or rejudging it under a new budget, is fine."""
    path = Path(out_dir) / PARETO_JSON
    if not path.is_file():
        return
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):  # unreadable: the new outputs will replace it anyway
        return
    name = earlier.get("study_name") if isinstance(earlier, dict) else None
    if name is None or name == study_name:  # written before pareto.json named its study, or the same study
        return
    raise ConfigError(f"{out_dir} holds the outputs of the finished search study {name!r} (search.strategy "
                      f"{earlier.get('strategy')}); this run's study {study_name!r} (search.strategy {strategy}) "
                      f"would replace its results.csv, best_arch.json and pareto.json: use another --work-dir "
                      f"to compare searches, or delete {out_dir} to replace it")
