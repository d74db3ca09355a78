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
    first = json.loads(w.report_json.read_text())["stage_seconds"]
    # each stated AP difference with a paired bootstrap interval over the val images; the detections computed again
    # from each checkpoint give each record's own AP
    boot = report["ap_differences"]
    assert set(boot["differences"]) == {"found - baseline", "found - random archs' mean", "found - baseline's arch",
                                        "baseline's arch - baseline"}
    records = {"found": found, **{c["name"]: json.loads((w.control(c["name"]) / "metrics.json").read_text())
                                  for c in plan["controls"]},
               "baseline": json.loads((w.baseline.root / "metrics.json").read_text())}
    assert {n: round(ap, 6) for n, ap in boot["ap"].items()} == {n: round(r["metrics"]["AP"], 6) for n, r in records.items()}
    d = boot["differences"]["found - baseline"]
    assert d["low"] <= d["high"] and d["point"] == pytest.approx(boot["ap"]["found"] - boot["ap"]["baseline"])
    assert "How sure these AP differences are (paired bootstrap over the 2 val images" in md
    kept = (w.root / "report_bootstrap.json").stat().st_mtime_ns
    again = run_pipeline(cfg, console=QUIET)
    assert ckpt.stat().st_mtime_ns == before
    assert (w.root / "report_bootstrap.json").stat().st_mtime_ns == kept and again["ap_differences"] == boot
    # a stage found done keeps its earlier seconds (report.json said 0.7 s for a baseline trained minutes)
    assert again["stage_seconds"]["baseline"] >= first["baseline"] > again["stage_seconds_this_run"]["baseline"]
    assert again["rows"][0]["input_size"] == cfg.model.input_size and "| input | training steps |" in w.report_md.read_text()
    # report.controls turned off: the earlier run's controls are not reported as this run's (QA: every row and the
    # "all trained exactly alike" paragraph stayed, without a word)
    raw["report"]["controls"] = False
    off = run_pipeline(validate_config(raw, "controls off"), console=QUIET)
    assert [r["model"] for r in off["rows"]] == ["baseline (ofa_mbv3)", "found arch (supernet + tune)"]
    assert "random arch 0" not in w.report_md.read_text() and ckpt.stat().st_mtime_ns == before


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


def _old_random_control(space, cost_fn, target, tolerance, draws, seed):
    """The draws before the edge rule: the first within ``tolerance``, else the nearest of all ``draws``."""
    import random

    rng, nearest = random.Random(f"control-{seed}"), None
    for n in range(1, draws + 1):
        arch = space.sample(rng)
        gap = cost_fn(arch)["macs"] / target - 1
        if nearest is None or abs(gap) < abs(nearest[1]):
            nearest = (arch, gap)
        if abs(gap) <= tolerance:
            break
    return nearest


def test_random_control_at_the_space_edge_stops_early_and_shows_its_draws():
    """The found arch was the smallest subnet: 1000 draws were costed (215 s) with nothing on the console, as
    no uniform draw comes within 3 % of the space's cheapest arch."""
    import io

    from nasdet.search.controls import control_archs
    from nasdet.space import SearchSpace

    space = SearchSpace({f"b{i}": (1, 2, 3, 4) for i in range(8)})
    costed = []

    def cost_fn(arch):
        costed.append(arch)
        return {"macs": float(sum(arch.values())), "params": 1.0}

    smallest = cost_fn(space.smallest())
    costed.clear()
    plan = control_archs(space, space.default(), smallest, cost_fn, None, seeds=1, tolerance=0.03, draws=1000)
    assert len(costed) < 200  # not all 1000 draws
    from nasdet.search.controls import EDGE_DRAWS

    assert len(costed) <= 1 + 2 + EDGE_DRAWS  # the default arch, the two edges, the draws
    r = plan[1]
    assert r["edge"] == "lower" and r["tried"] == EDGE_DRAWS and r["gap"] > 0.03
    # the nearest of the first EDGE_DRAWS of the same draws
    assert (r["arch"], r["gap"]) == _old_random_control(space, cost_fn, smallest["macs"], 0.03, EDGE_DRAWS, 0)

    # away from the edges the draws are the ones they were
    for seed, target in ((0, 20.0), (1, 17.0), (2, 23.0)):
        got = control_archs(space, space.default(), {"macs": target}, cost_fn, None, seeds=1, tolerance=0.03,
                            draws=1000, seed=seed)[1]
        assert "edge" not in got and (got["arch"], got["gap"]) == _old_random_control(space, cost_fn, target, 0.03,
                                                                                       1000, seed)

    # the draws are shown as they go, with the nearest so far, and each control's outcome
    out = io.StringIO()
    control_archs(space, space.default(), smallest, cost_fn, None, seeds=1, tolerance=0.03, draws=1000,
                  console=Console(file=out, width=200))
    lines = out.getvalue().splitlines()
    assert "found arch is at the space's lower MACs edge" in lines[0] and "nearest of 100 draws" in lines[0]
    progress = [line for line in lines if line.startswith("random control 0: ") and "/100 (" in line]
    assert len(progress) == 10 and progress[-1].startswith("random control 0: 100/100 (100%), nearest +")
    assert lines[-1].startswith("random control 0: draw ") and "none within 3 %, the nearest: +" in lines[-1]


def test_controls_plan_is_drawn_again_when_its_settings_change(tiny_config):
    """A rerun with other report.controls_* settings or another budget kept controls/archs.json as long as the
    found arch file was the same: a random control drawn for the old budget stayed in the report."""
    import io
    import random

    from nasdet.errors import ResumeMismatch
    from nasdet.models.supernet import build_supernet
    from nasdet.pipeline import controls_plan
    from nasdet.space import save_arch
    from nasdet.workdir import ARCH_JSON, WorkDir, write_json

    def config(**report):
        return tiny_config(model={"backbone": {"name": "ofa_mbv3", "width_mult": 0.25}},
                           report={"controls": True, "controls_seeds": 1, "controls_tolerance": 0.25,
                                   "controls_draws": 6, **report})

    cfg = config()
    w = WorkDir.of(cfg)
    _, space = build_supernet(cfg, 8)
    save_arch(w.tune / ARCH_JSON, space.sample(random.Random(3)), space)
    first = controls_plan(cfg, w)
    for c in first:  # both controls tuned
        write_json(w.control(c["name"]) / "metrics.json", {"arch": c["arch"], "step": 2})

    more = controls_plan(config(controls_seeds=2), w)
    assert [c["name"] for c in more] == ["baseline_arch", "random_0", "random_1"]  # drawn again
    assert more[:2] == first  # the same draws for the same seeds: their tunes are kept
    assert json.loads(w.controls_plan.read_text())["settings"]["report.controls_seeds"] == 2
    assert controls_plan(config(controls_seeds=2), w) == more  # the same settings: kept
    out = io.StringIO()  # a change is said in one line
    assert controls_plan(config(controls_seeds=2, controls_draws=7), w, Console(file=out, width=300))[:2] == first
    assert out.getvalue().splitlines()[0].endswith(
        "archs.json was drawn with report.controls_draws 6 (now 7): drawing the control archs again")

    # another tolerance draws another random_0: its folder holds a tune of the old arch, refused by name
    plan_file = w.controls_plan.read_text()
    with pytest.raises(ResumeMismatch, match=r"controls/random_0 holds a tune of another arch.*delete it"):
        controls_plan(config(controls_seeds=2, controls_draws=7, controls_tolerance=0.001), w)
    assert w.controls_plan.read_text() == plan_file  # the report still reads the plan the folders were tuned for
    (w.control("random_0") / "metrics.json").unlink()
    tight = controls_plan(config(controls_seeds=2, controls_draws=7, controls_tolerance=0.001), w)
    assert tight[1]["arch"] != first[1]["arch"] and tight[0] == first[0]


def test_no_control_is_tuned_after_a_torchrun_tune(tiny_config, tmp_path):
    """After README's torchrun recipe (tune under torchrun), the one-process `nasdet pipeline` tuned every control in
    one process and then left each out of the report as tuned unlike the found arch; its "delete it to tune it
    again" tuned it the same way again. It now tunes none and says why, as report.md does."""
    import io

    from rich.console import Console

    from nasdet.pipeline import run_controls
    from nasdet.workdir import WorkDir

    cfg = tiny_config(report={"controls": True})
    w = WorkDir(tmp_path / "work")
    w.tune.root.mkdir(parents=True)
    (w.tune.root / "metrics.json").write_text(json.dumps({"processes": 2, "arch": {}}))
    out = io.StringIO()
    assert run_controls(cfg, w.root, Console(file=out, width=400)) == {}
    said = " ".join(out.getvalue().split())
    assert "controls: not tuned: the found arch was tuned by 2 processes (torchrun)" in said
    assert "delete tune/ and rerun the pipeline" in said and not w.controls_plan.exists()
