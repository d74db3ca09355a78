"""The report's controls (report.controls): the baseline's own arch and a random arch of the found arch's
cost, taken from the same supernet and tuned exactly like the found arch."""
from __future__ import annotations

import json

import pytest
from rich.console import Console

QUIET = Console(quiet=True)


def test_controls_are_tuned_like_the_found_arch_and_reported(shapes_dir, tmp_path):
    from conftest import tiny_raw

    from nasdet.config import validate_config
    from nasdet.models.supernet import build_supernet
    from nasdet.pipeline import run_pipeline
    from nasdet.search.budget import CostModel
    from nasdet.workdir import WorkDir

    wd = tmp_path / "work"
    raw = tiny_raw(shapes_dir, wd)
    raw["model"].update({"backbone": {"name": "ofa_mbv3", "width_mult": 0.25}})
    raw["train"].update(max_steps=2, epochs=1)
    raw["data"]["check_files"] = False
    raw["supernet"] = {"input_sizes": [64, 96], "recalib_batches": 1, "report_archs": ["smallest"]}
    raw["search"] = {"strategy": "random", "num_candidates": 4, "recalib_batches": 1, "batch_size": 4, "max_images": 2,
                     "confidence_top": 2, "confidence_resamples": 20, "budget": {"metric": "macs", "max": 12e6}}
    raw["tune"] = {"recalib_batches": 1, "eval_initial": False}
    raw["eval"] = {"batch_size": 8, "max_images": 2}
    raw["pipeline"] = {"export": False}
    raw["report"] = {"controls": True, "controls_seeds": 2, "controls_tolerance": 0.25, "controls_draws": 6}
    cfg = validate_config(raw, "controls")
    report = run_pipeline(cfg, console=QUIET)

    w = WorkDir(wd)
    assert [r["model"] for r in report["rows"]] == [
        "baseline (ofa_mbv3)", "found arch (supernet + tune)", "baseline arch (supernet + tune)",
        "random arch 0 (supernet + tune)", "random arch 1 (supernet + tune)"]
    found = json.loads((w.tune / "metrics.json").read_text())
    plan = json.loads(w.controls_plan.read_text())
    model, space = build_supernet(cfg, 8)
    cost = CostModel(model, space)
    found_macs = cost(found["arch"])["macs"]
    for c in plan["controls"]:
        record = json.loads((w.control(c["name"]) / "metrics.json").read_text())
        # same init, supernet and recipe as the found arch: only the arch differs
        for key in ("init", "supernet", "recipe", "val", "val_images"):
            assert record[key] == found[key], (c["name"], key)
        assert record["init"] == "supernet" and record["arch"] == c["arch"]
        if c["name"] == "baseline_arch":
            assert c["arch"] == space.default()
        else:
            macs = cost(c["arch"])["macs"]
            assert macs <= 12e6 and macs == c["costs"]["macs"]
            assert abs(macs / found_macs - 1) <= 0.25 or c["tried"] == 6  # else the nearest of all 6 draws
    assert plan["controls"][1]["arch"] != plan["controls"][2]["arch"]  # two seeds, two archs
    md = w.report_md.read_text()
    assert "Architecture, all trained exactly alike: the found arch has AP" in md and "Training:" in md
    assert "| random arch 1 (supernet + tune) | val (2 images) |" in md
    # without an export the sizes still come: the baseline counted as `nasdet cost`, the found arch as searched
    assert [r.get("macs") is not None for r in report["rows"]] == [True] * 5
    assert report["rows"][1]["macs"] == found_macs and "The found model has" in md

    import yaml
    assert yaml.safe_load(w.config.read_text())["tune"].get("arch") is None  # the run's config, not a control's

    # a rerun tunes nothing again
    ckpt = w.control("random_0").checkpoint
    before = ckpt.stat().st_mtime_ns
    run_pipeline(cfg, console=QUIET)
    assert ckpt.stat().st_mtime_ns == before


def test_controls_text_names_architecture_and_training():
    from nasdet.stages.report import _controls_text

    val = "val (10 images)"
    found = {"AP": 0.30, "split": val}
    controls = [{"control": "baseline_arch", "AP": 0.25, "split": val}, {"control": "random_0", "AP": 0.20, "split": val},
                {"control": "random_1", "AP": 0.24, "split": val}]
    text = _controls_text({"AP": 0.22, "split": val}, found, controls)
    assert "AP +0.0800 over a random arch of the same cost (their AP spans 0.2000-0.2400 over 2 random archs)" in text
    assert "AP +0.0500 over the baseline's own arch" in text
    assert "Training: the baseline's arch taken from the supernet and tuned has AP +0.0300" in text
    assert text.endswith("All on val (10 images).")


def test_the_report_compares_only_what_was_trained_and_evaluated_alike():
    """A control tuned with another init, recipe or number of steps, or evaluated on other val images, was
    still called "trained exactly alike" (QA, session 20); the baseline on other val images was compared too."""
    from nasdet.stages.report import _controls_text, unlike

    found = {"init": "supernet", "supernet": "s.pt", "recipe": {"lr": 0.003, "max_steps": 12}, "step": 12,
             "val": "v.json", "val_images": 16}
    assert unlike(found, found) == []
    other = {**found, "init": "scratch", "recipe": {"lr": 0.001, "max_steps": 3}, "step": 3, "val_images": 8}
    assert unlike(found, other) == ["init scratch vs supernet", "recipe (lr, max_steps)", "step 3 vs 12",
                                    "val_images 8 vs 16"]
    assert unlike(found, {"init": "supernet"}) == []  # an older record without the other keys

    val = "val (16 images)"
    row = {"AP": 0.30, "split": val}
    controls = [{"control": "baseline_arch", "AP": 0.25, "split": val, "unlike": ["step 3 vs 12"]},
                {"control": "random_0", "AP": 0.20, "split": val, "unlike": []}]
    text = _controls_text({"AP": 0.22, "split": val}, row, controls)
    assert "AP +0.1000 over a random arch of the same cost" in text
    assert "baseline's own arch" not in text and "Training:" not in text
    assert "Left out of these comparisons, tuned unlike the found arch: baseline_arch (step 3 vs 12)" in text
    # the baseline on other val images: no training sentence; another recipe than the baseline's: said
    own = {"control": "baseline_arch", "AP": 0.25, "split": val, "unlike": [], "recipe_vs_baseline": ["lr"]}
    assert "Training:" not in _controls_text({"AP": 0.22, "split": "val (8 images)"}, row, [own])
    assert "(tuned with another recipe than the baseline's: lr)" in _controls_text({"AP": 0.22, "split": val}, row, [own])
    # a difference that rounds to zero is +0.0000, not -0.0000
    tie = _controls_text(None, {"AP": 0.25, "split": val}, [{"control": "random_0", "AP": 0.250004, "split": val}])
    assert "AP +0.0000 over a random arch" in tie


def test_random_control_under_a_latency_budget_matches_macs_without_timing():
    """Latency is not timed per draw: the control matches the found arch's MACs (the cost_fn has no latency)."""
    from nasdet.errors import ConfigError
    from nasdet.search.budget import Budget
    from nasdet.search.controls import matched_cost_metric, random_control
    from nasdet.space import SearchSpace

    space = SearchSpace({f"b{i}": (1, 2, 3, 4) for i in range(6)})

    def cost_fn(arch):
        return {"macs": float(sum(arch.values())), "params": 1.0}

    latency = Budget("latency", 2.0)
    assert matched_cost_metric(latency) == "macs"
    c = random_control(space, cost_fn, target=15.0, metric="macs", budget=latency, tolerance=0.01, draws=200, seed=0)
    assert c["costs"]["macs"] == 15.0 and c["tried"] == c["draws"]
    # a MACs budget is checked on every draw; one nothing fits is a clear error
    with pytest.raises(ConfigError, match="controls_draws=20 uniform draws"):
        random_control(space, cost_fn, target=15.0, metric="macs", budget=Budget("macs", 5.0), tolerance=0.01,
                       draws=20, seed=0)
