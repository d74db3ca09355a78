"""``pipeline.diagnose: K``: a short ``nasdet diagnose`` after the search, its tau table in report.md, kept on a
rerun; diagnose's noise check (the target's spread over two seeds of one arch against its spread over archs)."""
from __future__ import annotations

import io
import json
import math
import re
import statistics

import pytest
from rich.console import Console

QUIET = Console(quiet=True)


def test_target_noise_on_crafted_numbers():
    from nasdet.search.diagnose import rank_plot_title, target_noise

    # one CPU epoch from scratch (issue 14): every arch near AP 0, two seeds of one arch as far apart
    archs = [0.0001, 0.0003, 0.0000, 0.0004, 0.0002]
    noise = target_noise(archs, (0.0000, 0.0004), seeds=(0, 1))
    assert noise["seed_sd"] == pytest.approx(0.0004 / math.sqrt(2))
    assert noise["arch_sd"] == pytest.approx(statistics.stdev(archs))
    assert noise["noise_share"] == pytest.approx(0.0004 ** 2 / 2 / statistics.variance(archs))
    assert noise["is_noise"] and noise["archs"] == 5
    assert noise["verdict"].startswith("The diagnose target is noise: one arch's AP was 0.0000 and 0.0004 with seeds 0 "
                                       "and 1, a variance 320% of the variance over the 5 archs")
    assert noise["verdict"].endswith("so the Kendall taus mean nothing; train the stand-alone archs longer "
                                     "(diagnose.epochs).")
    # the noise check's arch at AP 0 under both seeds (QA: "not noise" from 0 == 0, archs at 0 and 2.5e-4)
    floor = target_noise([5.7e-05, 0.0, 0.0, 2.5e-04], (0.0, 0.0), seeds=(0, 1))
    assert floor["is_noise"] and floor["verdict"].startswith(
        "The diagnose target cannot be told from noise: one arch's AP was 0 with seeds 0 and 1 (it detected nothing)")
    # measured (benchmarks/README.md): a weak supernet's archs tuned one epoch, their seeds within the archs' range
    # but explaining most of their spread
    weak = target_noise([0.0018, 0.0025, 0.0024], (0.0025, 0.0021))
    assert weak["seed_sd"] < weak["arch_sd"] and weak["noise_share"] == pytest.approx(0.0004 ** 2 / 2 / statistics.variance(
        [0.0018, 0.0025, 0.0024])) and weak["is_noise"]
    # tuned from the supernet: the archs spread over 0.025-0.074, the seeds of one arch within 0.003
    archs = [0.025, 0.031, 0.048, 0.052, 0.074]
    # rank.png says it in its title, as the table does
    assert "THE TARGET IS NOISE" in rank_plot_title(5, {"noise": noise})
    clean = target_noise(archs, (0.048, 0.051), seeds=(0, 1))
    assert "NOISE" not in rank_plot_title(5, {"noise": clean})
    assert "torch threads" not in clean["verdict"] and clean["threads"] is None
    # the two trainings on other thread counts (the governor under load): said, as a cause of their difference
    mixed = target_noise(archs, (0.048, 0.051), seeds=(0, 1), threads=([2], [1, 2]))
    assert mixed["verdict"].endswith("The two trainings ran on 2 and 1 or 2 torch threads (the machine's load), "
                                     "which round floats differently: part of their difference.")
    assert "torch threads" not in target_noise(archs, (0.048, 0.051), threads=([2], [2]))["verdict"]
    assert not clean["is_noise"] and clean["seed_sd"] == pytest.approx(0.003 / math.sqrt(2))
    assert clean["verdict"] == ("The diagnose target is not noise: one arch's AP was 0.0480 and 0.0510 with seeds 0 and 1, "
                                f"a variance 1% of the variance over the 5 archs (std 0.0021 over the seeds, "
                                f"{statistics.stdev(archs):.4f} over the archs).")
    # the threshold is the share of the archs' variance
    share = clean["noise_share"]
    assert target_noise(archs, (0.048, 0.051), share=share * 0.99)["is_noise"]
    assert not target_noise(archs, (0.048, 0.051), share=share * 1.01)["is_noise"]
    assert target_noise([0.0, 0.0, 0.0], (0.0, 0.0))["is_noise"]  # a constant target ranks nothing


def _records(values):
    return [{"arch_id": f"a{i}", "arch": {"input_size": 96}, "costs": {"macs": 1e6 * (i + 1), "params": 1e3 * (i + 1)},
             "supernet": {"AP": 0.01 * i}, "standalone": {"supernet": {"AP": v}}, "proxies": {},
             "seconds": {"train_supernet": 1.0}, "search_images": 30, "val_images": 20, "steps": {"supernet": 150}}
            for i, v in enumerate(values)]


@pytest.mark.parametrize("second,noisy", [(0.0290, False), (0.0700, True)])
def test_noisy_target_is_said_in_the_diagnose_output_and_the_report(tiny_config, second, noisy):
    from nasdet.search.diagnose import ranker_table, summarize
    from nasdet.stages.report import diagnose_lines

    cfg = tiny_config(diagnose={"archs": 4, "proxies": []})
    records = _records([0.010, 0.030, 0.050, 0.070])
    summary = summarize(records, cfg, {"arch_id": "a1", "seed": 1, "metrics": {"AP": second}, "seconds": 2.0})
    assert summary["noise"]["pair"] == [0.030, second] and summary["noise"]["is_noise"] is noisy
    assert summary["trainings"] == 5 and summary["seconds"]["train_supernet"] == 6.0
    buf = io.StringIO()
    Console(file=buf, width=250).print(ranker_table(summary))
    assert ("THE TARGET IS NOISE" in buf.getvalue()) is noisy and ("(noise)" in buf.getvalue()) is noisy

    md = "\n".join(diagnose_lines(summary))
    assert "(AP on the search split, 30 images)" in md and "1 epoch (150 steps) from the supernet's weights" in md
    assert "evaluated on val (20 images)" in md and "5 stand-alone trainings" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| ranker")]
    assert [r.split(" |")[0] for r in rows] == ["| supernet", "| macs", "| params"]
    assert rows[1].startswith("| macs | 1.00 [") and "| 1.00 [" in rows[1]  # tau and rho with their intervals
    assert all(r.split(" | ")[1].endswith("(noise)") for r in rows) is noisy
    assert summary["noise"]["verdict"] in md
    assert (f"**{summary['noise']['verdict']}**" in md) is noisy
    assert "With 4 archs a tau takes few values" in md


def _pipeline_raw(shapes_dir, work_dir) -> dict:
    from conftest import tiny_raw

    raw = tiny_raw(shapes_dir, work_dir)
    raw["model"].update({"backbone": {"name": "ofa_mbv3", "width_mult": 0.25}})
    raw["train"].update(max_steps=1, epochs=1)
    raw["data"]["check_files"] = False
    raw["supernet"] = {"input_sizes": [64, 96], "recalib_batches": 1, "report_archs": ["smallest"]}
    raw["search"] = {"strategy": "random", "num_candidates": 2, "recalib_batches": 1, "batch_size": 4, "max_images": 2,
                     "confidence_top": 2, "confidence_resamples": 20, "budget": {"metric": "macs", "max": 1e12}}
    raw["tune"] = {"recalib_batches": 1, "eval_initial": False}
    raw["eval"] = {"batch_size": 8, "max_images": 2}
    raw["diagnose"] = {"archs": 3, "pool": 6, "max_steps": 1, "proxies": ["synflow"], "bootstrap": 100}
    raw["pipeline"] = {"baseline": False, "export": False, "diagnose": 3}
    return raw


def test_pipeline_diagnose_runs_after_the_search_reports_and_is_kept(shapes_dir, tmp_path, monkeypatch):
    from nasdet.config import ConfigError, validate_config
    from nasdet.pipeline import diagnose_config, run_pipeline
    from nasdet.stages import diagnose
    from nasdet.workdir import WorkDir

    wd = tmp_path / "work"
    cfg = validate_config(_pipeline_raw(shapes_dir, wd), "pipeline")
    order = []
    real = diagnose.run_diagnose
    monkeypatch.setattr(diagnose, "run_diagnose", lambda *a, **k: order.append(WorkDir(wd).tune.root.exists())
                        or real(*a, **k))
    report = run_pipeline(cfg, console=QUIET)
    assert order == [False]  # after the search, before tune
    w = WorkDir(wd)
    summary = json.loads(w.diagnose.summary.read_text())
    assert summary["archs"] == 3 and summary["target"] == "standalone_supernet_AP"  # the defaults: tuned, not scratch
    assert summary["trainings"] == 4 and summary["noise"]["seeds"] == [0, 1]  # K trainings + the noise check
    assert len(list(w.diagnose.records.glob("*.json"))) == 3
    repeat = json.loads(next((w.diagnose.root / "noise").glob("*_seed1.json")).read_text())
    plan = json.loads(w.diagnose.plan.read_text())["archs"]
    assert repeat["arch"] == plan[1] and repeat["seed"] == 1 and repeat["init"] == "supernet"
    trained = json.loads((w.diagnose.training(repeat["arch_id"], "supernet", 1) / "metrics.json").read_text())
    assert trained["seed"] == 1 and trained["val_images"] == 2
    assert report["diagnose"]["archs"] == 3 and set(report["diagnose"]["rankers"]) == {"supernet", "macs", "params",
                                                                                      "synflow"}
    md = w.report_md.read_text()
    assert "## Does the supernet rank truthfully here?" in md and "(pipeline.diagnose: 3)" in md
    assert "(AP on the search split, 2 images)" in md and "evaluated on val (2 images)" in md
    assert summary["noise"]["verdict"] in md and "| synflow |" in md
    assert "With 3 archs a tau takes few values" in md and "pipeline.diagnose >= 8" in md

    # a finished diagnose is not rerun (nor its supernet loaded)
    monkeypatch.setattr(diagnose, "run_diagnose", lambda *a, **k: pytest.fail("diagnose ran again"))
    before = w.diagnose.summary.stat().st_mtime_ns
    run_pipeline(cfg, console=QUIET)
    assert w.diagnose.summary.stat().st_mtime_ns == before
    # records of another training recipe are not mixed with this one's
    lr = cfg.train.optimizer.model_copy(update={"lr": 0.01})
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"optimizer": lr})})
    with pytest.raises(ConfigError, match=r"archs.json was planned with other settings than the config's "
                                          r"\(recipe.optimizer.lr: 0.002 -> 0.01\); records"):  # the value, not the recipe
        real(diagnose_config(other), wd, console=QUIET)
    # nor records evaluated on other val images, scored otherwise, or with other proxies (QA, session 20)
    for section, values, key in (("eval", {"max_images": 4}, "eval_max_images: 2 -> 4"),
                                 ("search", {"recalib_batches": 2}, "search_scoring.recalib_batches: "),
                                 ("diagnose", {"proxies": ["grad_norm"]}, "proxies: ['synflow'] -> ['grad_norm']"),
                                 ("tune", {"recalib_batches": 2}, "standalone_recalibration.batches: 1 -> 2")):
        changed = cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=values)})
        with pytest.raises(ConfigError, match=re.escape(key)):
            real(diagnose_config(changed), wd, console=QUIET)
    # nor those of a supernet pretrained again in the same work dir (QA: its old table and verdict, without a word)
    import torch

    from nasdet.train.checkpoint import load_checkpoint

    state = load_checkpoint(w.supernet.checkpoint)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = state["model"][name] + 1.0
    torch.save(state, w.supernet.checkpoint)
    with pytest.raises(ConfigError, match=r"supernet_sha256: \w+ -> \w+"):
        real(diagnose_config(cfg), wd, console=QUIET)
    monkeypatch.setattr(diagnose, "run_diagnose", lambda *a, **k: order.append("again"))
    from nasdet.pipeline import run_pipeline_diagnose

    run_pipeline_diagnose(cfg, wd, QUIET)  # the pipeline's finished summary is not the new supernet's
    assert order[-1] == "again"


def test_pipeline_diagnose_config_errors_name_the_key(shapes_dir, tmp_path):
    from nasdet.config import ConfigError, validate_config

    raw = _pipeline_raw(shapes_dir, tmp_path / "work")
    for bad, key in (({"diagnose": 2}, "pipeline.diagnose"), ({"diagnose": 7}, "diagnose.pool")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate_config({**raw, "pipeline": {**raw["pipeline"], **bad}}, "c.yaml")
    darts = {**raw, "search": {**raw["search"], "strategy": "darts"}}
    with pytest.raises(ConfigError, match=r"pipeline\.diagnose.*darts"):
        validate_config(darts, "c.yaml")
