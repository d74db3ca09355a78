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
from ..files import atomic_path, nonfinite_to_null, write_json_atomic
from ..workdir import DiagnoseDir
from ..space import SearchSpace
from .scoring import arch_key
from .study import _alive, worker_id

COST_RANKERS = ("macs", "params")
FEW_DIAGNOSED_ARCHS = 8  # below, a rank correlation's bootstrap interval is degenerate (K = 3: tau 1.00 [1.00, 1.00])


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


def settings_key(cfg: ExperimentConfig, supernet_sha256: str | None) -> dict:
    """Everything a diagnose summary depends on, the supernet checkpoint it scored and started from (its sha256)
    too: a summary written with other settings, or of a supernet pretrained again since, is not reused."""
    return {"diagnose": cfg.diagnose.model_dump(mode="json"), "train": cfg.train.model_dump(mode="json"),
            "seed": cfg.seed, "search_scoring": {k: getattr(cfg.search, k) for k in
                                                 ("recalib_batches", "batch_size", "max_images", "score_on")},
            "standalone_recalibration": {"batches": cfg.tune.recalib_batches, "batch_size": cfg.eval.batch_size},
            "supernet_sha256": supernet_sha256}


def finished_summary(cfg: ExperimentConfig, out: DiagnoseDir, supernet_sha256: str | None) -> dict | None:
    """The summary of a diagnose finished with ``cfg``'s settings on the supernet of ``supernet_sha256``, or None
    (not run, or run otherwise)."""
    if not out.summary.is_file():
        return None
    summary = json.loads(out.summary.read_text())
    return summary if summary.get("settings") == settings_key(cfg, supernet_sha256) else None


def noise_arch(archs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The arch ``diagnose.noise_check`` trains twice: the plan's middle one (the plan is sorted by MACs)."""
    return archs[len(archs) // 2]


def target_noise(arch_values: Sequence[float], pair: Sequence[float], share: float = 0.5, metric: str = "AP",
                 seeds: Sequence[int] = (0, 1), remedy: str = "train the stand-alone archs longer (diagnose.epochs)",
                 threads: Sequence[Sequence[int]] | None = None) -> dict:
    """Is the target noise? ``pair``: one arch's target under two seeds; ``arch_values``: the target of each
    diagnosed arch. The pair's variance ((a - b)^2 / 2) estimates the training noise of one arch, the archs'
    sample variance that noise plus the true differences a ranker should find. When the first is at least
    ``share`` of the second (default a half: the archs' spread is at least half seed noise), a rank
    correlation against that target measures the seeds more than the rankers. One pair is a rough estimate
    (one degree of freedom). ``threads``: the torch thread counts each of the pair trained on; when they
    differ the verdict says so (another count rounds floats otherwise: part of the pair's difference).
    Returns the figures, ``is_noise`` and a one-sentence ``verdict``."""
    values = [v for v in arch_values if not math.isnan(v)]
    a, b = (float(v) for v in pair)
    n = len(values)
    mean = sum(values) / n if n else math.nan
    arch_sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    seed_sd = abs(a - b) / math.sqrt(2)
    noise_share = seed_sd ** 2 / arch_sd ** 2 if arch_sd > 0 else (math.inf if seed_sd > 0 else math.nan)
    # an arch that detected nothing under both seeds measures no seed noise (0 == 0 read as "no noise": QA, archs
    # at AP 0 called "not noise"); the taus are then not to be trusted either
    floor = a == 0 and b == 0
    is_noise = floor or not noise_share < share  # NaN (a constant or missing target) is noise too
    pair_text = (f"one arch's {metric} was {a:.4f} and {b:.4f} with seeds {seeds[0]} and {seeds[1]}, a variance "
                 + ("undefined" if math.isnan(noise_share) else "under 1%" if noise_share < 0.005 else f"{noise_share:.0%}")
                 + f" of the variance over the {n} archs (std {seed_sd:.4f} over the seeds, {arch_sd:.4f} over the archs)")
    if floor:
        verdict = (f"The diagnose target cannot be told from noise: one arch's {metric} was 0 with seeds {seeds[0]} and "
                   f"{seeds[1]} (it detected nothing), so the seeds' spread is unmeasured and the Kendall taus mean "
                   f"nothing; {remedy}.")
    elif is_noise:
        verdict = f"The diagnose target is noise: {pair_text}, so the Kendall taus mean nothing; {remedy}."
    else:
        verdict = f"The diagnose target is not noise: {pair_text}."
    if threads is not None and list(threads[0]) != list(threads[1]):
        shown = [" or ".join(map(str, t)) for t in threads]
        verdict += (f" The two trainings ran on {shown[0]} and {shown[1]} torch threads (the machine's load), which "
                    "round floats differently: part of their difference.")
    return {"seeds": list(seeds), "pair": [a, b], "seed_sd": seed_sd, "arch_sd": arch_sd, "noise_share": noise_share,
            "threshold": share, "archs": n, "is_noise": is_noise, "verdict": verdict,
            "threads": [list(t) for t in threads] if threads is not None else None}


def summarize(records: Sequence[dict], cfg: ExperimentConfig, repeat: dict | None = None,
              supernet_sha256: str | None = None) -> dict:
    """Rank agreement of every ranker with the stand-alone metric of ``diagnose.target``; with ``repeat`` (the
    noise check's second training of one arch), whether that target is noise (``target_noise``)."""
    from .rank import rank_agreement

    d = cfg.diagnose
    truth = [float(r["standalone"][d.target].get(d.metric, math.nan)) for r in records]
    noise = None
    if repeat is not None:
        first = next(r for r in records if r["arch_id"] == repeat["arch_id"])
        pair = (float(first["standalone"][d.target].get(d.metric, math.nan)),
                float(repeat["metrics"].get(d.metric, math.nan)))
        remedy = "train the stand-alone archs longer (diagnose.epochs)" + (
            " or from the supernet's weights (diagnose.init and diagnose.target: supernet)" if d.target == "scratch" else "")
        threads = ((first.get("threads") or {}).get(d.target), repeat.get("threads"))
        noise = target_noise(truth, pair, d.noise_share, d.metric, (cfg.seed, repeat["seed"]), remedy,
                             threads if all(threads) else None)
    rankers = {name: rank_agreement(scores, truth, d.top_k, d.bootstrap, 0.9, d.seed)
               for name, scores in ranker_scores(records, d.proxies, d.metric).items()}
    extra = {}
    for init in d.init:  # agreement of each other stand-alone AP with the target (e.g. tuned vs scratch)
        if init != d.target:
            other = [float(r["standalone"][init].get(d.metric, math.nan)) for r in records]
            extra[f"standalone_{init}"] = rank_agreement(other, truth, d.top_k, d.bootstrap, 0.9, d.seed)
    steps = {r["steps"][d.target] for r in records if "steps" in r}
    trainings = len(records) * len(d.init) + (repeat is not None)
    return {"target": f"standalone_{d.target}_{d.metric}", "metric": d.metric, "archs": len(records),
            "recipe": {"epochs": d.epochs, "max_steps": d.max_steps, "init": list(d.init),
                       "batch_size": cfg.train.batch_size, "optimizer": cfg.train.optimizer.name,
                       "lr": cfg.train.optimizer.lr, "steps": max(steps) if steps else None},
            "supernet_scoring": {"recalib_batches": cfg.search.recalib_batches, "batch_size": cfg.search.batch_size,
                                 "max_images": cfg.search.max_images},
            # where each figure comes from: the supernet scores on the search split, the target on val
            "splits": {"supernet": {"split": cfg.search.score_on, "images": _first(records, "search_images")},
                       "target": {"split": "val", "images": _first(records, "val_images")}},
            "macs_range": [min(r["costs"]["macs"] for r in records), max(r["costs"]["macs"] for r in records)],
            "rankers": rankers, "other_standalone": extra, "warning": constant_target(truth, d), "noise": noise,
            "few_archs": few_archs_note(len(records)),
            "trainings": trainings, "settings": settings_key(cfg, supernet_sha256),
            "seconds": {k: sum(r["seconds"].get(k, 0.0) for r in records)
                        + (repeat["seconds"] if repeat is not None and k == f"train_{d.target}" else 0.0)
                        for k in sorted({k for r in records for k in r["seconds"]})}}


def _first(records: Sequence[dict], key: str) -> int | None:
    return next((r[key] for r in records if r.get(key) is not None), None)


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


def few_archs_note(archs: int, k_key: str = "diagnose.archs") -> str | None:
    """Why the intervals of a diagnose of few archs are no evidence (None from ``FEW_DIAGNOSED_ARCHS`` on)."""
    if archs >= FEW_DIAGNOSED_ARCHS:
        return None
    return (f"with {archs} archs a tau takes few values and its bootstrap interval (resamples that repeat archs) "
            "says little: read the table as the order of these archs, not as evidence for a ranker; compare "
            f"rankers with {k_key} >= {FEW_DIAGNOSED_ARCHS}")


def fmt_stat(v: float | None, spec: str = ".2f") -> str:
    """A statistic of summary.json for a table or title: None (JSON's null) or NaN is ``undefined``."""
    return "undefined" if v is None or math.isnan(v) else format(v, spec)


def write_diagnose_outputs(records: Sequence[dict], cfg: ExperimentConfig, out: DiagnoseDir,
                           repeat: dict | None = None, supernet_sha256: str | None = None) -> dict:
    d = cfg.diagnose
    records = sorted(records, key=lambda r: (r["costs"]["macs"], r["arch_id"]))
    summary = nonfinite_to_null(summarize(records, cfg, repeat, supernet_sha256))  # an undefined statistic is null, not bare NaN
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
    from matplotlib.figure import Figure  # not pyplot's: the caller's backend stays as it is

    d = cfg.diagnose
    scores = ranker_scores(records, d.proxies, d.metric)
    truth = [float(r["standalone"][d.target].get(d.metric, math.nan)) for r in records]
    labels = {"supernet": f"supernet {d.metric} (search split)", "macs": "MACs", "params": "params",
              "grad_norm": "grad_norm (init)", "synflow": "synflow, log10 (init)", "mae_det": "MAE-DET entropy (init)"}
    n = len(scores)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.6 * rows), dpi=110)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, xs) in zip(axes.flat, scores.items()):
        a = summary["rankers"][name]
        ax.scatter(xs, truth, s=22, c="tab:red" if name == "supernet" else "tab:blue")
        ax.set_title(f"{name}: tau {fmt_stat(a['kendall_tau'])} [{fmt_stat(a['kendall_tau_lo'])}, "
                     f"{fmt_stat(a['kendall_tau_hi'])}]\n"
                     f"rho {fmt_stat(a['spearman_rho'])}, top-{a['top_k']} overlap {fmt_stat(a['top_k_overlap'])}",
                     fontsize=9)
        ax.set_xlabel(labels.get(name, name), fontsize=8)
        ax.set_ylabel(f"stand-alone {d.metric} ({d.target}, val)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(rank_plot_title(len(records), summary), fontsize=10, color="tab:red" if is_noise(summary) else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:  # a failed write (a full disk) names rank.png
        fig.savefig(tmp, format="png")


def rank_plot_title(archs: int, summary: dict) -> str:
    """rank.png's title: what its panels show and, when the noise check found it, that the target is noise."""
    noise = ("\nTHE TARGET IS NOISE (two seeds of one arch differ as much as the archs do): every tau means nothing"
             if is_noise(summary) else "")
    return f"{archs} archs; Kendall tau with bootstrap 90 % interval{noise}"


def is_noise(summary: dict) -> bool:
    """The summary's noise check found its target to be noise."""
    return bool((summary.get("noise") or {}).get("is_noise"))


def ranker_table(summary: dict) -> Table:
    noise = is_noise(summary)
    title = f"rankers vs {summary['target']} ({summary['archs']} archs, 90 % bootstrap intervals)"
    table = Table(title=title + (": THE TARGET IS NOISE, every tau means nothing" if noise else ""))
    for col in ("ranker", "Kendall tau", "90 % interval", "Spearman rho", "90 % interval", "top-k overlap"):
        table.add_column(col, justify="right")
    f = fmt_stat

    for name, a in {**summary["rankers"], **summary.get("other_standalone", {})}.items():
        table.add_row(name, f(a["kendall_tau"], ".3f") + (" (noise)" if noise else ""),
                      f"[{f(a['kendall_tau_lo'])}, {f(a['kendall_tau_hi'])}]",
                      f(a["spearman_rho"], ".3f"), f"[{f(a['spearman_rho_lo'])}, {f(a['spearman_rho_hi'])}]",
                      f"{f(a['top_k_overlap'])} (k={a['top_k']})")
    return table
