"""Issue 16: kill -9 at random points of the writers and of pretrain, search, tune in the pipeline; every
rerun completes, no finished trial is lost, no half-written checkpoint, json or csv is ever left to read.

The killed processes are forks of the test process (torch already imported: no start-up cost); the
kill points are drawn from seeded generators, so a failure reproduces with its seed.
"""
from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from rich.console import Console

from nasdet.config import validate_config
from nasdet.workdir import write_json
from nasdet.search.study import open_storage
from nasdet.train.checkpoint import load_checkpoint, save_checkpoint

QUIET = Console(quiet=True)


def _rewrite_forever(json_path: str, ckpt_path: str) -> None:
    """Rewrite a ~1 MB json and a ~1 MB checkpoint, each holding its own version number, until killed."""
    torch.set_num_threads(1)
    for version in range(10**9):
        write_json(Path(json_path), {"version": version, "payload": list(range(100_000))})
        save_checkpoint({"model": {"w": torch.full((250_000,), float(version))}, "step": version}, ckpt_path)


def test_writers_killed_at_random_points_leave_only_whole_files(tmp_path):
    json_path, ckpt_path = tmp_path / "metrics.json", tmp_path / "ckpt" / "last.pt"
    rng = random.Random(16)
    last_json = last_ckpt = -1
    for _ in range(6):
        p = mp.get_context("fork").Process(target=_rewrite_forever, args=(str(json_path), str(ckpt_path)))
        p.start()
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        if json_path.exists():  # the first write may not have finished yet
            data = json.loads(json_path.read_text())
            assert data["payload"][-1] == 99_999 and data["version"] >= 0
            last_json = max(last_json, data["version"])
        if ckpt_path.exists():
            state = load_checkpoint(ckpt_path)  # weights_only; raises on a cut file
            assert torch.equal(state["model"]["w"], torch.full((250_000,), float(state["step"])))
            last_ckpt = max(last_ckpt, state["step"])
    assert last_json >= 0 and last_ckpt >= 0  # the kills did land after whole writes, and during others
    leftovers = [p.name for p in tmp_path.rglob("*.tmp")]
    assert all(name.startswith(".") for name in leftovers)  # temporary files never take a target's name


# ------------------------------------------------------------------------------------------ pipeline
def _pipeline_raw(shapes_dir, work_dir) -> dict:
    from conftest import tiny_raw

    raw = tiny_raw(shapes_dir, work_dir)
    raw["model"].update({"backbone": {"name": "ofa_mbv3", "width_mult": 0.25}})
    raw["train"].update(max_steps=3, epochs=1, ckpt_every_steps=1, threads=1)
    raw["supernet"] = {"input_sizes": [64, 96], "recalib_batches": 1, "report_archs": ["smallest"]}
    raw["search"] = {"strategy": "random", "confidence_resamples": 100,
                     "num_candidates": 6, "recalib_batches": 1, "batch_size": 4, "max_images": 2,
                     "budget": {"metric": "macs", "max": 1e12}, "include_extremes": False}
    raw["tune"] = {"recalib_batches": 1, "eval_initial": False}
    raw["export"] = {"check_images": 1}
    raw["eval"] = {"batch_size": 8, "max_images": 2}
    raw["cost"] = {"warmup": 0, "runs": 1, "threads": 1, "onnxruntime": False}
    raw["pipeline"] = {"export": False}  # not killed here (tests/test_tune_export_pipeline.py covers export)
    return raw


def _run_pipeline(raw: dict) -> None:
    from nasdet.pipeline import run_pipeline

    torch.set_num_threads(1)  # a fork of a process that used OpenMP: stay single-threaded
    run_pipeline(validate_config(raw, "fault"), console=QUIET)


def _started(wd: Path, stage: str) -> bool:
    """The stage is under way: it logged a training step, or (search) its study holds a scored trial."""
    if stage == "search":
        journal = wd / "search" / "study.journal"
        return journal.is_file() and '"state":1' in journal.read_text()
    return (wd / {"pretrain": "supernet", "tune": "tune"}[stage] / "log.jsonl").is_file()


def _finished_trials(wd: Path) -> dict[int, tuple]:
    journal = wd / "search" / "study.journal"
    if not journal.is_file():
        return {}
    study = optuna.load_study(study_name="tiny-random", storage=open_storage(None, wd / "search"))
    return {t.number: (tuple(sorted(t.params.items())), tuple(t.values)) for t in study.get_trials(states=(TrialState.COMPLETE,))}


def _check_every_record_is_whole(wd: Path) -> None:
    for path in wd.rglob("*.json"):
        json.loads(path.read_text())  # a cut file raises here
    for path in wd.rglob("*.pt"):
        load_checkpoint(path)
    for path in wd.rglob("*.csv"):
        rows = list(csv.DictReader(open(path)))
        assert all(None not in r and all(v is not None for v in r.values()) for r in rows), path
    for path in wd.rglob("*.jsonl"):
        lines = path.read_text().splitlines()
        for line in lines[:-1]:  # only the last line may have been cut by the kill
            json.loads(line)


@pytest.mark.parametrize("seed", [0, 1])
def test_pipeline_killed_at_random_points_of_pretrain_search_and_tune_resumes(shapes_dir, tmp_path, seed):
    rng = random.Random(seed)
    wd = tmp_path / "work"
    raw = _pipeline_raw(shapes_dir, wd)
    finished: dict[int, tuple] = {}
    ctx = mp.get_context("fork")
    for stage in ("pretrain", "search", "tune"):
        p = ctx.Process(target=_run_pipeline, args=(raw,))
        p.start()
        deadline = time.time() + 120
        while not _started(wd, stage) and p.is_alive() and time.time() < deadline:
            time.sleep(0.01)
        assert p.is_alive(), f"seed {seed}: the pipeline ended (exit {p.exitcode}) before {stage} started"
        time.sleep(rng.uniform(0.0, 0.5))  # a random point inside (or just after) the stage
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        _check_every_record_is_whole(wd)
        now = _finished_trials(wd)
        assert finished.items() <= now.items(), f"seed {seed}: a finished trial was lost after the kill in {stage}"
        finished = now
    baseline_ckpt = wd / "baseline" / "ckpt" / "last.pt"
    baseline_mtime = baseline_ckpt.stat().st_mtime_ns
    _run_pipeline(raw)  # the rerun completes
    _check_every_record_is_whole(wd)
    assert baseline_ckpt.stat().st_mtime_ns == baseline_mtime  # finished before the kills: not redone
    final = _finished_trials(wd)
    assert finished.items() <= final.items() and len(final) >= 6
    archs = [params for params, _ in final.values()]
    assert len(set(archs)) == len(archs)  # no arch scored twice across the kills
    for stage_dir in ("baseline", "supernet", "tune"):
        assert load_checkpoint(wd / stage_dir / "ckpt" / "last.pt")["step"] == 3
    report = json.loads((wd / "report.json").read_text())
    assert [r["model"] for r in report["rows"]] == ["baseline (ofa_mbv3)", "found arch (supernet + tune)"]
    assert not [p for p in wd.rglob("*") if p.is_file() and p.name.endswith(".tmp") and not p.name.startswith(".")]
