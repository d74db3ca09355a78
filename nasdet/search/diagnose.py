"""The library of ``nasdet diagnose`` (the stage is ``nasdet.stages.diagnose``): which archs it trains
(``stratified_archs``: smallest and largest always, the rest the seeded draws nearest to evenly spaced MACs),
the claims that let several processes share them, and the outputs: every ranker (the supernet score, MACs
alone, params alone, each zero-cost proxy) compared with the stand-alone AP (Kendall's tau and Spearman's rho
with bootstrap 90 % intervals, top-k overlap): ``results.csv``, ``summary.json``, ``rank.png``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from ..config import ExperimentConfig
from ..files import atomic_path, write_json_atomic
from ..workdir import DiagnoseDir
from ..space import SearchSpace
from .scoring import arch_key
from .study import _alive, worker_id

COST_RANKERS = ("macs", "params")


def arch_id(arch: Mapping[str, Any]) -> str:
    """A short stable name of an arch (hash of its canonical key): file names of its record and training."""
    return hashlib.sha256(arch_key(arch).encode()).hexdigest()[:12]


def tilted_sample(space: SearchSpace, rng: random.Random) -> dict:
    """An arch drawn with a random tilt ``t`` in [0, 1]: each choice is, with probability 1/2, the one at
    ``t`` of its (ascending) options, else uniform. Uniform draws pile up in the middle of the cost range
    (a sum of independent choices); tilted ones also reach its tails."""
    t = rng.random()
    return {n: opts[round(t * (len(opts) - 1))] if rng.random() < 0.5 else rng.choice(opts)
            for n, opts in ((n, space[n]) for n in space.names)}


def stratified_archs(space: SearchSpace, macs_of: Callable[[Mapping], float], k: int, pool: int,
                     seed: int = 0) -> list[dict]:
    """``k`` distinct archs covering the MACs range of ``space``: its smallest and largest, and for each of
    the ``k - 2`` evenly spaced MACs between them the nearest unused arch of ``pool`` seeded draws
    (``tilted_sample``). Sorted by MACs."""
    rng = random.Random(seed)
    lo, hi = space.smallest(), space.largest()
    candidates: dict[str, dict] = {}
    for a in [lo, hi] + [tilted_sample(space, rng) for _ in range(pool)]:
        candidates.setdefault(arch_key(a), dict(a))
    macs = {key: float(macs_of(a)) for key, a in candidates.items()}
    m_lo, m_hi = macs[arch_key(lo)], macs[arch_key(hi)]
    chosen = [arch_key(lo), arch_key(hi)] if arch_key(lo) != arch_key(hi) else [arch_key(lo)]
    for i in range(1, k - 1):
        target = m_lo + (m_hi - m_lo) * i / (k - 1)
        free = [key for key in candidates if key not in chosen]
        if not free:
            break
        chosen.append(min(free, key=lambda key: (abs(macs[key] - target), key)))
    return [candidates[key] for key in sorted(chosen, key=lambda key: (macs[key], key))]


# --------------------------------------------------------------------------------------------- claims
class Claims:
    """One file per arch being worked on, created exclusively (``O_EXCL``): of two processes racing for an
    arch, one wins. A claim left by a dead process of this host is removed and can be taken again."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.me = worker_id()

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.claim"

    def take(self, name: str) -> bool:
        path = self._path(name)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._stale(path):
                    return False
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self.me)
            return True
        return False

    def _stale(self, path: Path) -> bool:
        import socket

        try:
            owner = path.read_text()
        except FileNotFoundError:
            return True
        host, _, pid = owner.rpartition(":")
        return host == socket.gethostname() and pid.isdigit() and owner != self.me and not _alive(int(pid))

    def release(self, name: str) -> None:
        path = self._path(name)
        try:
            if path.read_text() == self.me:
                path.unlink()
        except FileNotFoundError:
            pass


# -------------------------------------------------------------------------------------------- outputs
def ranker_scores(records: Sequence[dict], proxies: Sequence[str], metric: str) -> dict[str, list[float]]:
    """Each ranker's score per record (higher = predicted better): supernet, MACs, params, each proxy."""
    out = {"supernet": [float(r["supernet"].get(metric, math.nan)) for r in records]}
    for c in COST_RANKERS:
        out[c] = [float(r["costs"][c]) for r in records]
    for p in proxies:
        out[p] = [float(r["proxies"][p]) for r in records]
    return out


def summarize(records: Sequence[dict], cfg: ExperimentConfig) -> dict:
    """Rank agreement of every ranker with the stand-alone metric of ``diagnose.target``."""
    from .rank import rank_agreement

    d = cfg.diagnose
    truth = [float(r["standalone"][d.target].get(d.metric, math.nan)) for r in records]
    rankers = {name: rank_agreement(scores, truth, d.top_k, d.bootstrap, 0.9, d.seed)
               for name, scores in ranker_scores(records, d.proxies, d.metric).items()}
    extra = {}
    for init in d.init:  # agreement of each other stand-alone AP with the target (e.g. tuned vs scratch)
        if init != d.target:
            other = [float(r["standalone"][init].get(d.metric, math.nan)) for r in records]
            extra[f"standalone_{init}"] = rank_agreement(other, truth, d.top_k, d.bootstrap, 0.9, d.seed)
    return {"target": f"standalone_{d.target}_{d.metric}", "metric": d.metric, "archs": len(records),
            "recipe": {"epochs": d.epochs, "max_steps": d.max_steps, "init": list(d.init),
                       "batch_size": cfg.train.batch_size, "optimizer": cfg.train.optimizer.name,
                       "lr": cfg.train.optimizer.lr},
            "supernet_scoring": {"recalib_batches": cfg.search.recalib_batches, "batch_size": cfg.search.batch_size,
                                 "max_images": cfg.search.max_images},
            "rankers": rankers, "other_standalone": extra, "warning": constant_target(truth, d),
            "seconds": {k: sum(r["seconds"].get(k, 0.0) for r in records)
                        for k in sorted({k for r in records for k in r["seconds"]})}}


def constant_target(truth: Sequence[float], d) -> str | None:
    """Why every correlation is undefined when all stand-alone archs scored the same (typically AP 0: too
    few training steps to detect anything); None when the target varies."""
    values = {v for v in truth if not math.isnan(v)}
    if len(values) > 1 or not truth:
        return None
    value = f"{next(iter(values)):g}" if values else "missing"
    return (f"every stand-alone {d.metric} ({d.target}) is {value}: the target is constant, so no ranker can be "
            "compared with it (Kendall tau and Spearman rho are undefined, top-k overlap says nothing); train the "
            "stand-alone archs longer (diagnose.epochs, diagnose.max_steps) until their APs differ, then rerun")


def write_diagnose_outputs(records: Sequence[dict], cfg: ExperimentConfig, out: DiagnoseDir) -> dict:
    d = cfg.diagnose
    records = sorted(records, key=lambda r: (r["costs"]["macs"], r["arch_id"]))
    summary = summarize(records, cfg)
    write_results_csv(records, d.proxies, d.init, out.results_csv)
    write_json_atomic(out.summary, summary)
    plot_rankers(records, summary, cfg, out.rank_png)
    return summary


def write_results_csv(records: Sequence[dict], proxies: Sequence[str], inits: Sequence[str], path: Path) -> None:
    metrics = ("AP", "AP50")
    cols = ["arch_id", "arch", "input_size", "macs", "params", *[f"supernet_{m}" for m in metrics],
            *[f"standalone_{i}_{m}" for i in inits for m in metrics], *proxies, "seconds"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in records:
            w.writerow([r["arch_id"], json.dumps(r["arch"], sort_keys=True), r["arch"].get("input_size", ""),
                        r["costs"]["macs"], r["costs"]["params"], *[r["supernet"].get(m, "") for m in metrics],
                        *[r["standalone"][i].get(m, "") for i in inits for m in metrics],
                        *[r["proxies"][p] for p in proxies], round(sum(r["seconds"].values()), 1)])


def plot_rankers(records: Sequence[dict], summary: dict, cfg: ExperimentConfig, path: Path) -> None:
    """One panel per ranker: its score vs the stand-alone metric, titled with tau [90 % interval], rho, top-k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = cfg.diagnose
    scores = ranker_scores(records, d.proxies, d.metric)
    truth = [float(r["standalone"][d.target].get(d.metric, math.nan)) for r in records]
    labels = {"supernet": f"supernet {d.metric} (search split)", "macs": "MACs", "params": "params",
              "grad_norm": "grad_norm (init)", "synflow": "synflow, log10 (init)", "mae_det": "MAE-DET entropy (init)"}
    n = len(scores)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), dpi=110, squeeze=False)
    for ax, (name, xs) in zip(axes.flat, scores.items()):
        a = summary["rankers"][name]
        ax.scatter(xs, truth, s=22, c="tab:red" if name == "supernet" else "tab:blue")
        ax.set_title(f"{name}: tau {a['kendall_tau']:.2f} [{a['kendall_tau_lo']:.2f}, {a['kendall_tau_hi']:.2f}]\n"
                     f"rho {a['spearman_rho']:.2f}, top-{a['top_k']} overlap {a['top_k_overlap']:.2f}", fontsize=9)
        ax.set_xlabel(labels.get(name, name), fontsize=8)
        ax.set_ylabel(f"stand-alone {d.metric} ({d.target}, val)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{len(records)} archs; Kendall tau with bootstrap 90 % interval", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # a failed write (a full disk) names rank.png
        fig.savefig(tmp, format="png")
    plt.close(fig)


def ranker_table(summary: dict) -> Table:
    table = Table(title=f"rankers vs {summary['target']} ({summary['archs']} archs, 90 % bootstrap intervals)")
    for col in ("ranker", "Kendall tau", "90 % interval", "Spearman rho", "90 % interval", "top-k overlap"):
        table.add_column(col, justify="right")
    def f(v: float, spec: str = ".2f") -> str:
        return "undefined" if math.isnan(v) else format(v, spec)

    for name, a in {**summary["rankers"], **summary.get("other_standalone", {})}.items():
        table.add_row(name, f(a["kendall_tau"], ".3f"), f"[{f(a['kendall_tau_lo'])}, {f(a['kendall_tau_hi'])}]",
                      f(a["spearman_rho"], ".3f"), f"[{f(a['spearman_rho_lo'])}, {f(a['spearman_rho_hi'])}]",
                      f"{f(a['top_k_overlap'])} (k={a['top_k']})")
    return table
