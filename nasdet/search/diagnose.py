"""``nasdet diagnose``: does the search's ranking of archs hold when they are trained alone?

K archs spread over the space's cost range (``stratified_archs``: smallest and largest always, the rest the
seeded uniform draws nearest to evenly spaced MACs) are each

1. scored with the trained supernet exactly as ``nasdet search`` scores them (``load_trained_supernet``:
   inherited weights, BN recalibrated, COCO metrics on the search split);
2. scored by each zero-cost proxy (``proxies.py``) at the subnet's scratch init;
3. trained alone with one short shared recipe (the top-level ``train`` section with ``diagnose.epochs``),
   from scratch and/or from the supernet's weights (``diagnose.init``), and evaluated on val.

Every ranker (the supernet score, MACs alone, params alone, each proxy) is then compared with the
stand-alone AP: Kendall's tau and Spearman's rho with bootstrap 90 % intervals, top-k overlap.

Work dir ``diagnose/``: ``archs.json`` (the plan), ``records/<id>.json`` (one finished arch each, written
atomically: a kill loses at most the arch in progress, whose training also resumes from its checkpoint in
``archs/<id>/<init>/``), ``claims/`` (which process holds which arch: several processes, ``--workers``,
share the plan; a claim of a dead process of this host is taken over), and once every arch is done
``results.csv``, ``summary.json``, ``rank.png``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..config import ExperimentConfig
from ..errors import ConfigError
from ..files import atomic_path, write_json_atomic
from ..space import SearchSpace
from .scoring import arch_key
from .study import _alive, worker_id

DIAGNOSE = "diagnose"
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


# ------------------------------------------------------------------------------------ one arch's work
def train_standalone(cfg: ExperimentConfig, ctx, data: Mapping[str, Any], arch: Mapping[str, Any], init: str,
                     out_dir: Path, console: Console) -> dict:
    """``arch`` trained alone with the diagnose recipe (resuming from ``out_dir/ckpt/last.pt``): from its
    scratch init or from the supernet's weights (BN recalibrated first, as ``nasdet tune``); val metrics."""
    import torch

    from ..experiment import _completed
    from ..models.supernet import export_detector
    from ..tune import TuneTrainer, recalibrate_static
    from .proxies import scratch_subnet

    d = cfg.diagnose
    recipe = cfg.train.model_copy(update={"epochs": d.epochs, "max_steps": d.max_steps})
    tcfg = cfg.model_copy(update={"train": recipe})
    if init == "scratch":
        model = scratch_subnet(ctx.model, ctx.space, arch, cfg.seed)
    else:
        model = export_detector(ctx.model, arch, ctx.space)
        if cfg.tune.recalib_batches and not (out_dir / "ckpt" / "last.pt").is_file():
            recalibrate_static(model.to(ctx.device), data["train"].with_transforms(None), ctx.device,
                               cfg.tune.recalib_batches, cfg.eval.batch_size, cfg.data.num_workers, cfg.seed)
    torch.manual_seed(cfg.seed)
    trainer = TuneTrainer(tcfg, model, data["train"], data["val"], out_dir, console=console, arch=arch)
    trainer.start_note = "from scratch" if init == "scratch" else "from the supernet's weights"
    trainer.prepare()
    done = _completed(out_dir, trainer, tcfg)
    if done is not None:
        return done["metrics"]
    metrics = trainer.run()
    write_json_atomic(out_dir / "metrics.json", {"metrics": metrics, "step": trainer.step, "arch": dict(arch), "init": init})
    return metrics


def diagnose_arch(cfg: ExperimentConfig, ctx, data: Mapping[str, Any], cost_fn, batch, arch: Mapping[str, Any],
                  out_dir: Path, console: Console) -> dict:
    """Every score of one arch: costs, the supernet's, each proxy's, and the stand-alone val metrics."""
    from .proxies import proxy_score

    d = cfg.diagnose
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    costs = cost_fn(arch)
    supernet = ctx.scorer(arch)
    seconds["supernet"] = time.perf_counter() - t
    proxies = {}
    for name in d.proxies:
        t = time.perf_counter()
        proxies[name] = proxy_score(name, ctx.model, ctx.space, arch, batch[0], batch[1], seed=d.seed)
        seconds[name] = time.perf_counter() - t
    standalone = {}
    for init in d.init:
        t = time.perf_counter()
        standalone[init] = train_standalone(cfg, ctx, data, arch, init, out_dir / "archs" / arch_id(arch) / init,
                                            console)
        seconds[f"train_{init}"] = time.perf_counter() - t
    return {"arch_id": arch_id(arch), "arch": dict(arch), "costs": costs, "supernet": supernet, "proxies": proxies,
            "standalone": standalone, "seconds": seconds, "worker": worker_id()}


# ------------------------------------------------------------------------------------------- the stage
def plan_archs(cfg: ExperimentConfig, ctx, cost_fn, out: Path) -> dict:
    """``out/archs.json``: the stratified archs of the config (computed once; a plan for other settings is
    refused once archs of it are done)."""
    from .budget import restrict_resolution

    d = cfg.diagnose
    plan_path = out / "archs.json"
    plan_key = {"space_id": ctx.space.space_id, "archs": d.archs, "pool": d.pool, "seed": d.seed}
    plan = json.loads(plan_path.read_text()) if plan_path.is_file() else None
    if plan is None or plan.get("key") != plan_key:
        if plan is not None and any((out / "records").glob("*.json")):
            raise ConfigError(f"{plan_path} was planned with {plan.get('key')}, the config now asks for {plan_key}: "
                             f"use another --work-dir or delete {out}")
        space = restrict_resolution(ctx.space, cfg.model.input_size, cfg.search.resolution_tolerance)
        plan = {"key": plan_key, "archs": stratified_archs(space, lambda a: cost_fn(a)["macs"], d.archs, d.pool, d.seed)}
        write_json_atomic(plan_path, plan)
    return plan


def run_diagnose(cfg: ExperimentConfig, work_dir: str | Path | None = None, console: Console | None = None,
                 worker: int = 0, plan_only: bool = False) -> dict:
    """Score, proxy and train the plan's archs not yet done (shared with other processes through claims);
    when all are done, write ``results.csv``, ``summary.json``, ``rank.png``. Returns the summary (or
    ``{"pending": [...]}`` while other processes still hold archs). ``plan_only``: write ``archs.json`` and
    return the plan (before starting workers, so that they do not each compute it)."""
    from ..experiment import build_datasets, work_dir_of
    from .budget import CostModel
    from .proxies import proxy_batch
    from .run import load_trained_supernet

    console = console or Console()
    d = cfg.diagnose
    wd = work_dir_of(cfg, work_dir)
    out = wd / DIAGNOSE
    t_start = time.perf_counter()
    ctx = load_trained_supernet(cfg, wd)
    cost_fn = CostModel(ctx.model, ctx.space, ("macs", "params"))
    plan = plan_archs(cfg, ctx, cost_fn, out)
    if plan_only:
        return plan
    archs = [ctx.space.validate(a) for a in plan["archs"]]
    data = build_datasets(cfg, need=("train", "val"))
    batch = proxy_batch(data["supernet_train"].with_transforms(None), d.proxy_batch_size, d.seed) \
        if "grad_norm" in d.proxies else ([], [])
    claims = Claims(out / "claims")
    done_here = 0
    for i, arch in enumerate(archs):
        name = arch_id(arch)
        record_path = out / "records" / f"{name}.json"
        if record_path.is_file() or not claims.take(name):
            continue
        try:
            if record_path.is_file():  # finished by another process between the check and the claim
                continue
            console.print(f"diagnose: arch {i + 1}/{len(archs)} ({name}, {cost_fn(arch)['macs'] / 1e6:.1f} M MACs)")
            record = diagnose_arch(cfg, ctx, data, cost_fn, batch, arch, out, console)
            record["index"] = i
            write_json_atomic(record_path, record)
            done_here += 1
        finally:
            claims.release(name)
    records = [json.loads(p.read_text()) for a in archs if (p := out / "records" / f"{arch_id(a)}.json").is_file()]
    if len(records) < len(archs):
        pending = [arch_id(a) for a in archs if not (out / "records" / f"{arch_id(a)}.json").is_file()]
        console.print(f"diagnose: {len(records)}/{len(archs)} archs done; {len(pending)} held by other processes")
        return {"pending": pending}
    summary = write_diagnose_outputs(records, cfg, out)
    summary["seconds_this_process"] = time.perf_counter() - t_start
    summary["archs_this_process"] = done_here
    console.print(ranker_table(summary))
    return summary


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
            "rankers": rankers, "other_standalone": extra,
            "seconds": {k: sum(r["seconds"].get(k, 0.0) for r in records)
                        for k in sorted({k for r in records for k in r["seconds"]})}}


def write_diagnose_outputs(records: Sequence[dict], cfg: ExperimentConfig, out: Path) -> dict:
    d = cfg.diagnose
    records = sorted(records, key=lambda r: (r["costs"]["macs"], r["arch_id"]))
    summary = summarize(records, cfg)
    write_results_csv(records, d.proxies, d.init, out / "results.csv")
    write_json_atomic(out / "summary.json", summary)
    plot_rankers(records, summary, cfg, out / "rank.png")
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
    fig.savefig(path)
    plt.close(fig)


def ranker_table(summary: dict) -> Table:
    table = Table(title=f"rankers vs {summary['target']} ({summary['archs']} archs, 90 % bootstrap intervals)")
    for col in ("ranker", "Kendall tau", "90 % interval", "Spearman rho", "90 % interval", "top-k overlap"):
        table.add_column(col, justify="right")
    for name, a in {**summary["rankers"], **summary.get("other_standalone", {})}.items():
        table.add_row(name, f"{a['kendall_tau']:.3f}", f"[{a['kendall_tau_lo']:.2f}, {a['kendall_tau_hi']:.2f}]",
                      f"{a['spearman_rho']:.3f}", f"[{a['spearman_rho_lo']:.2f}, {a['spearman_rho_hi']:.2f}]",
                      f"{a['top_k_overlap']:.2f} (k={a['top_k']})")
    return table
