"""`nasdet diagnose`: rank statistics against scipy, stratified archs, resume after a kill, proxies,
config errors. (scipy is a test-only dependency: the reference for tau and rho.)"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console

from conftest import fake_pretrain

from nasdet.config import ConfigError, config_to_dict, validate_config
from nasdet.search.rank import bootstrap_interval, kendall_tau, rank_agreement, spearman_rho, top_k_overlap

QUIET = Console(quiet=True)
OFA_TINY = {"backbone": {"name": "ofa_mbv3", "width_mult": 0.25}}

VECTORS = [
    ([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5]),
    ([0.3, 0.1, 0.1, 0.9, 0.5, 0.5, 0.2], [3, 1, 2, 7, 5, 4, 4]),  # ties in both
    ([5, 4, 3, 2, 1], [1, 2, 3, 4, 5]),
    ([1.5, 2.5, 0.5, 9.0, 3.3, 3.3, 3.3, 7.1], [0.02, 0.05, 0.01, 0.04, 0.03, 0.03, 0.06, 0.08]),
]


@pytest.mark.parametrize("x,y", VECTORS)
def test_tau_and_rho_match_scipy(x, y):
    stats = pytest.importorskip("scipy.stats")
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_rank_agreement_top_k_and_bootstrap():
    x, y = [1, 2, 3, 4, 5, 6, 7, 8], [1, 3, 2, 4, 6, 8, 5, 7]
    assert top_k_overlap(x, y, 2) == 0.5 and top_k_overlap(x, x, 3) == 1.0
    assert math.isnan(top_k_overlap(x, y, 8))  # the top 8 of 8 overlap whatever the ranking: not a 1.00
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    lo, hi = bootstrap_interval(x, y, kendall_tau, samples=300, seed=0)
    assert -1 <= lo <= kendall_tau(x, y) <= hi <= 1 and lo < hi
    a = rank_agreement(x, y, top_k=2, samples=200)
    assert a["kendall_tau"] == pytest.approx(kendall_tau(x, y)) and a["n"] == 8
    with pytest.raises(ValueError, match="one length"):
        kendall_tau([1, 2], [1, 2, 3])


def test_stratified_archs_cover_the_cost_range():
    from nasdet.search.diagnose import stratified_archs
    from nasdet.space import SearchSpace

    space = SearchSpace({f"b{i}": (1, 2, 3, 4) for i in range(6)})
    macs = lambda a: float(sum(a.values()) ** 2)  # noqa: E731
    archs = stratified_archs(space, macs, k=8, pool=200, seed=1)
    costs = [macs(a) for a in archs]
    assert len(archs) == 8 and len({json.dumps(a, sort_keys=True) for a in archs}) == 8
    assert archs[0] == space.smallest() and archs[-1] == space.largest() and costs == sorted(costs)
    step = (costs[-1] - costs[0]) / 7
    assert max(b - a for a, b in zip(costs, costs[1:])) < 1.6 * step  # no hole in the range
    assert stratified_archs(space, macs, 8, 200, seed=1) == archs
    assert stratified_archs(space, macs, 8, 200, seed=2) != archs


def _tiny_diagnose_cfg(tiny_config, search=None, **diagnose):
    return tiny_config("ssdlite", model=OFA_TINY, data={"check_files": False}, supernet={"input_sizes": [64, 96]},
                       train={"threads": 1, "batch_size": 4}, eval={"max_images": 2, "batch_size": 4},
                       search={"recalib_batches": 1, "batch_size": 4, "max_images": 2, **(search or {})},
                       diagnose={"archs": 3, "pool": 6, "max_steps": 1, "epochs": 1, "proxy_batch_size": 2,
                                 "bootstrap": 100, **diagnose})


def test_proxy_scores_change_with_the_arch_and_repeat(tiny_config):
    from nasdet.data.build import build_datasets
    from nasdet.models.supernet import build_supernet
    from nasdet.search.proxies import PROXIES, proxy_batch, proxy_score

    cfg = _tiny_diagnose_cfg(tiny_config)
    data = build_datasets(cfg, need=("train",))
    model, space = build_supernet(cfg, data["train"].num_classes)
    images, targets = proxy_batch(data["supernet_train"].with_transforms(None), 2)
    small, large = space.smallest(), space.largest()
    for name in PROXIES:
        a = proxy_score(name, model, space, small, images, targets)
        assert math.isfinite(a), name
        assert proxy_score(name, model, space, small, images, targets) == a, name  # seeded
        assert proxy_score(name, model, space, large, images, targets) != a, name
    with pytest.raises(ValueError, match="not one of"):
        proxy_score("zen", model, space, small)


def test_a_proxy_drives_the_search_without_a_supernet(tiny_config):
    from nasdet.stages.search import run_search

    cfg = _tiny_diagnose_cfg(tiny_config, search={"strategy": "random", "num_candidates": 3, "scorer": "mae_det",
                                                  "budget": {"metric": "macs", "max": 1e12}})
    summary = run_search(cfg, console=QUIET)  # no supernet/ckpt: none needed
    out = Path(cfg.work_dir) / "search"
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert summary["records"] == 3 and len(rows) == 3 and (out / "best_arch.json").is_file()
    scores = [r["metrics"]["mae_det"] for r in summary["front"]]
    assert summary["best"]["metrics"]["mae_det"] == max(scores)
    # the csv holds the proxy's score, in a column of its own (qa_latency #2: no score anywhere)
    assert all(r["mae_det"] and r["AP"] == "" for r in rows)
    assert max(float(r["mae_det"]) for r in rows) == summary["best"]["metrics"]["mae_det"]


KILL_ON_SECOND = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from rich.console import Console
from nasdet.config import load_config
from nasdet.stages import diagnose
calls = []
real = diagnose.diagnose_arch
def dying(*a, **k):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # mid-arch, its claim left behind
    return real(*a, **k)
diagnose.diagnose_arch = dying
diagnose.run_diagnose(load_config({cfg!r}), console=Console(quiet=True))
"""


def test_diagnose_resumes_after_a_kill_and_writes_outputs(tiny_config, tmp_path, monkeypatch):
    from nasdet.stages import diagnose

    cfg = _tiny_diagnose_cfg(tiny_config, init=["scratch", "supernet"], proxies=["synflow"])
    fake_pretrain(cfg)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    code = KILL_ON_SECOND.format(tests=str(Path(__file__).parent), cfg=str(path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=400)
    assert proc.returncode == -9, proc.stderr[-2000:]
    out = Path(cfg.work_dir) / "diagnose"
    first = sorted((out / "records").glob("*.json"))
    assert len(first) == 1 and len(list((out / "claims").glob("*.claim"))) == 1  # the dead process's claim
    kept = first[0].read_text()

    calls = []
    real = diagnose.diagnose_arch
    monkeypatch.setattr(diagnose, "diagnose_arch", lambda *a, **k: calls.append(1) or real(*a, **k))
    import matplotlib

    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # a notebook's backend stays its own (rank.png switched it to Agg)
    try:
        summary = diagnose.run_diagnose(cfg, console=QUIET)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)
    assert len(calls) == 2  # the finished arch was not redone
    assert first[0].read_text() == kept
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 3 and {"supernet_AP", "standalone_scratch_AP", "standalone_supernet_AP", "macs", "params",
                               "synflow"} <= set(rows[0])
    assert [float(r["macs"]) for r in rows] == sorted(float(r["macs"]) for r in rows)
    # strict JSON: an undefined statistic (top-3 overlap of 3 archs) is null, not a bare NaN other parsers refuse
    saved = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert saved["rankers"]["macs"]["top_k_overlap"] is None and summary["rankers"]["macs"]["top_k_overlap"] is None
    assert saved["few_archs"].startswith("with 3 archs a tau takes few values") and "diagnose.archs >= 8" in saved["few_archs"]
    assert set(saved["rankers"]) == {"supernet", "macs", "params", "synflow"}
    assert {"kendall_tau", "kendall_tau_lo", "kendall_tau_hi", "spearman_rho", "top_k_overlap"} <= set(saved["rankers"]["macs"])
    assert saved["target"] == "standalone_supernet_AP" and "standalone_scratch" in saved["other_standalone"]
    assert saved["noise"]["seeds"] == [0, 1] and saved["trainings"] == 3 * 2 + 1  # K archs x 2 inits + noise check
    # each training's thread counts are kept: the noise check compares them
    counts = [saved["noise"]["threads"][1]] + [t for p in (out / "records").glob("*.json")
                                               for t in json.loads(p.read_text())["threads"].values()]
    assert len(counts) == 1 + 3 * 2 and all(c and all(1 <= n <= os.cpu_count() for n in c) for c in counts), counts
    assert summary["archs"] == 3 and (out / "rank.png").stat().st_size > 1000
    assert not list((out / "claims").glob("*.claim"))
    # a worker of --workers leaves the outputs (and their table) to its launcher
    (out / "summary.json").unlink()
    assert diagnose.run_diagnose(cfg, console=QUIET, outputs=False) == {"pending": [], "trained_here": 0}
    assert not (out / "summary.json").exists()


def test_diagnose_config_errors_name_the_key(tiny_config, tmp_path):
    from typer.testing import CliRunner

    from nasdet.cli import app

    base = config_to_dict(_tiny_diagnose_cfg(tiny_config))
    cases = {"diagnose.archs": {"archs": 1}, "diagnose.proxies": {"proxies": ["zen"]},
             "diagnose.target": {"init": ["scratch"], "target": "supernet"}, "diagnose.pool": {"pool": 2},
             "diagnose.epochs": {"epochs": 0}}
    for key, bad in cases.items():
        raw = {**base, "diagnose": {**base["diagnose"], **bad}}
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate_config(raw, "c.yaml")
    with pytest.raises(ConfigError, match=r"search\.scorer"):
        validate_config({**base, "search": {**base["search"], "scorer": "zen"}}, "c.yaml")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base))
    res = CliRunner().invoke(app, ["diagnose", str(path), "--archs", "1"])
    assert res.exit_code == 2 and "diagnose.archs" in res.output
    res = CliRunner().invoke(app, ["diagnose", str(path)])
    assert res.exit_code == 2 and "nasdet pretrain" in res.output
