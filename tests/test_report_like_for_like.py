"""The report's rows compare like with like, and say so when they do not: the supernet a tune started from
(as a file, by sha256), the random controls' cost gap, an imported baseline."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nasdet.space import save_arch
from nasdet.stages.report import _controls_text, unlike
from test_tune_export_pipeline import FAST_TRAIN, OFA_TINY, QUIET, _fake_supernet, _middle, _save_supernet


def test_a_tune_from_a_since_retrained_supernet_is_refused_and_records_its_file(tiny_config):
    """The tune (and each control) was kept as complete after the supernet was retrained, and the report
    called it "supernet + tune" of the new one."""
    from nasdet.errors import CheckpointError
    from nasdet.stages.tune import run_tune
    from nasdet.train.checkpoint import file_sha256

    cfg = tiny_config("ssdlite", model=OFA_TINY, train=FAST_TRAIN, tune={"recalib_batches": 1, "eval_initial": False})
    model, space = _fake_supernet(cfg)
    save_arch(Path(cfg.work_dir) / "search" / "best_arch.json", _middle(space), space)
    sn = Path(cfg.work_dir) / "supernet" / "ckpt" / "last.pt"
    result = run_tune(cfg, console=QUIET)
    assert result["supernet"] == str(sn.resolve()) and result["supernet_sha256"] == file_sha256(sn)
    assert result["recalib_batches"] == 1 and result["seed"] == cfg.seed and result["augment"] == cfg.data.augment.model_dump(mode="json")
    assert run_tune(cfg, console=QUIET)["step"] == 2  # unchanged: complete
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    _save_supernet(cfg, model, space)  # retrained at the same path
    with pytest.raises(CheckpointError, match="was tuned from another supernet checkpoint .* delete .*tune to tune from it"):
        run_tune(cfg, console=QUIET)


def test_unlike_compares_the_supernet_as_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sn.pt").write_bytes(b"x")
    found = {"init": "supernet", "supernet": str(tmp_path / "sn.pt"), "step": 3}
    assert unlike(found, {**found, "supernet": "sn.pt"}) == []  # the same file, named relative (it was left out)
    with_sha = {**found, "supernet_sha256": "a" * 64}
    assert unlike(with_sha, {**with_sha, "supernet": "elsewhere.pt"}) == []  # a copy of the same file
    assert unlike(with_sha, {**with_sha, "supernet_sha256": "b" * 64}) == [f"supernet sha256 {'b' * 12} vs {'a' * 12}"]


def _control(name: str, ap: float, gap: float | None = None, unlike_: list | None = None) -> dict:
    return {"control": name, "AP": ap, "split": "val (8 images)", "gap": gap, "unlike": unlike_ or []}


def test_controls_text_says_when_a_random_control_is_not_of_the_same_cost():
    found = {"AP": 0.1, "split": "val (8 images)"}
    near = _controls_text(None, found, [_control("random_0", 0.08, gap=0.02)], tolerance=0.03)
    assert "over a random arch of the same cost" in near
    timed = _controls_text(None, found, [_control("random_0", 0.08, gap=0.02)], tolerance=0.03, latency=True)
    assert "of the same MACs (a latency budget is matched through MACs" in timed
    far = _controls_text(None, found, [_control("random_0", 0.08, gap=0.198), _control("random_1", 0.07, gap=-0.01)],
                         tolerance=0.03)
    assert "same cost" not in far.replace("not of the same cost", "")
    assert "MACs differ from the found arch's by up to +20% (no draw came within report.controls_tolerance 3%)" in far
    # every control left out: no stray space before the sentence that says so
    apart = _controls_text(None, found, [_control("random_0", 0.08, 0.0, ["supernet sha256 b vs a"])])
    assert apart.startswith("Left out of these comparisons") and "supernet sha256 b vs a" in apart


def test_controls_text_does_not_read_an_imported_baseline_as_this_runs_training():
    found = {"AP": 0.1, "split": "val (8 images)"}
    baseline = {"AP": 0.05, "split": "val (8 images)"}
    own = {**_control("baseline_arch", 0.09), "recipe_vs_baseline": []}
    trained_here = _controls_text(baseline, found, [own])
    assert "over the same arch trained alone (the baseline)" in trained_here
    imported = _controls_text(baseline, found, [own], imported=True)
    assert "the baseline was imported (pipeline.baseline_checkpoint)" in imported
    assert "trained alone (the baseline)" not in imported


def test_a_detector_checkpoint_given_as_the_supernet_says_what_it_is(tiny_config, tmp_path):
    """A baseline checkpoint as tune.supernet_checkpoint gave "does not fit this model: N missing keys"."""
    from nasdet.errors import CheckpointError
    from nasdet.models import build_detector
    from nasdet.train.checkpoint import save_checkpoint
    from nasdet.train.trained import build_tuned_model

    cfg = tiny_config("ssdlite", model=OFA_TINY)
    _, space = _fake_supernet(cfg)
    baseline = tmp_path / "baseline.pt"
    save_checkpoint({"model": build_detector(tiny_config("ssdlite").model, num_classes=8).state_dict(), "step": 2},
                    baseline)
    with pytest.raises(CheckpointError, match="is not a supernet's: it is a detector checkpoint that records no search"):
        build_tuned_model(cfg, 8, _middle(space), baseline)


def test_the_report_says_where_the_weights_started(tiny_config):
    """report.md never said that the baseline was imported, nor that the backbone started from ImageNet weights."""
    import json

    from nasdet.stages.report import write_report
    from nasdet.workdir import WorkDir

    def report(cfg, baseline: dict) -> str:
        w = WorkDir(Path(cfg.work_dir))
        for folder, record in ((w.tune.root, {"init": "supernet"}), (w.baseline.root, baseline)):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "metrics.json").write_text(json.dumps({"metrics": {"AP": 0.3, "AP50": 0.5}, "val_images": 8,
                                                             **record}))
        write_report(cfg, w.root, {}, QUIET, costs={"baseline": {"macs": {"total": 2e6}, "params": {"total": 1e5}}})
        return w.report_md.read_text()

    imported = {"imported_from": {"path": "/x/coco.pth", "format": "torchvision"}, "step": 3}
    text = report(tiny_config("ssdlite", pipeline={"init_supernet_from_baseline": True}), imported)
    assert "Starting weights: the baseline imported from /x/coco.pth (torchvision checkpoint, fine-tuned 3 steps for " \
           "this data's classes); the supernet from the baseline's weights" in text
    assert any(line.startswith("| baseline (") and ", imported) |" in line for line in text.splitlines()), text
    text = report(tiny_config("ssdlite", model={"backbone": {"pretrained": "imagenet", "width_mult": 1.0}}), {"step": 5})
    tv = "torchvision's MobileNet_V3_Large_Weights.IMAGENET1K_V2 weights (imagenet: mobilenet_v3_large-5c1a4163.pth)"
    assert f"Starting weights: the baseline trained here (backbone from {tv}); the supernet (backbone from {tv})." in text


def test_the_report_reads_the_supernets_recorded_start(tiny_config, tmp_path):
    """report.md said "the supernet (from scratch)" for a supernet started from `nasdet classify`'s backbone
    (pipeline.classify) or from supernet.init_from: it read the raw config, not what pretrain did."""
    import json

    from nasdet.stages.pretrain import pretrain_config, supernet_start_note
    from nasdet.stages.report import write_report
    from nasdet.workdir import WorkDir

    cfg = tiny_config("ssdlite", model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.35}},
                      pipeline={"classify": True})
    w = WorkDir(Path(cfg.work_dir))
    w.classified_backbone.parent.mkdir(parents=True)
    w.classified_backbone.write_bytes(b"")
    start = supernet_start_note(pretrain_config(cfg, w))
    assert start == f"backbone from `nasdet classify`'s {w.classified_backbone}"
    for folder, record in ((w.tune.root, {"init": "supernet"}), (w.baseline.root, {"step": 5}),
                           (w.supernet.root, {"start": start})):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps({"metrics": {"AP": 0.3, "AP50": 0.5}, "val_images": 8,
                                                         **record}))
    write_report(cfg, w.root, {}, QUIET, costs={"baseline": {"macs": {"total": 2e6}, "params": {"total": 1e5}}})
    assert (f"Starting weights: the baseline trained here (from scratch); the supernet (backbone from `nasdet "
            f"classify`'s {w.classified_backbone}).") in w.report_md.read_text()
    init_from = cfg.model_copy(update={"supernet": cfg.supernet.model_copy(update={"init_from": "/x/base.pt"})})
    assert supernet_start_note(init_from) == "from supernet.init_from /x/base.pt"
    # a backbone file beside it is not read: said, and not a start of the run (rewriting it refused the resume)
    from nasdet.train.supernet import start_files

    backbone_file = tmp_path / "ofa.pth"
    backbone_file.write_bytes(b"weights")
    both = init_from.model_copy(update={"model": init_from.model.model_copy(update={
        "backbone": init_from.model.backbone.model_copy(update={"checkpoint": str(backbone_file)})})})
    assert supernet_start_note(both) == (f"from supernet.init_from /x/base.pt (model.backbone.checkpoint {backbone_file} "
                                         "not read: every backbone weight is that detector's)")
    assert "model.backbone.checkpoint" not in start_files(both)
    plain = both.model_copy(update={"supernet": both.supernet.model_copy(update={"init_from": None})})
    assert "model.backbone.checkpoint" in start_files(plain)


def test_checkpoints_of_the_wrong_kind_say_what_they_are_and_what_they_are_for(tiny_config, tmp_path):
    """A supernet or a tuned subnet given as pipeline.baseline_checkpoint was "a nasdet detector of another
    layout"; a tuned subnet as tune.supernet_checkpoint "does not fit this model: N missing keys" (it records a
    space, so the dedicated line was skipped); `nasdet eval --ckpt` of a tuned subnet under a detector's config
    said only that the backbone is not a supernet, naming no file."""
    from nasdet.config import config_to_dict
    from nasdet.errors import CheckpointError
    from nasdet.models.supernet import export_detector
    from nasdet.stages.baseline import import_baseline
    from nasdet.train.checkpoint import save_checkpoint
    from nasdet.train.trained import build_tuned_model, load_tuned_model

    cfg = tiny_config("ssdlite", model=OFA_TINY)
    model, space = _fake_supernet(cfg)
    supernet = Path(cfg.work_dir) / "supernet" / "ckpt" / "last.pt"
    arch = _middle(space)
    tuned = tmp_path / "tuned.pt"
    save_checkpoint({"model": export_detector(model, arch, space).state_dict(), "space_id": space.space_id,
                     "config": config_to_dict(cfg), "extra": {"arch": arch}, "step": 1}, tuned)

    with pytest.raises(CheckpointError, match=r"is not a supernet's: it is a subnet tuned by `nasdet tune` \(search "
                                              f"space {space.space_id}; model.detector ssdlite"):
        build_tuned_model(cfg, 8, arch, tuned)
    # through `nasdet tune`: no warning that "the supernet" was trained with other model settings comes first
    import io

    from rich.console import Console

    from nasdet.models import build_detector
    from nasdet.stages.tune import run_tune

    save_arch(Path(cfg.work_dir) / "search" / "best_arch.json", arch, space)
    baseline = tmp_path / "baseline.pt"
    save_checkpoint({"model": build_detector(tiny_config("ssdlite").model, num_classes=8).state_dict(), "step": 2,
                     "config": config_to_dict(tiny_config("ssdlite"))}, baseline)
    for path in (tuned, baseline):
        said = Console(record=True, file=io.StringIO(), width=400)
        with_file = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"supernet_checkpoint": str(path)})})
        with pytest.raises(CheckpointError, match="is not a supernet's"):
            run_tune(with_file, console=said)
        assert "other model settings" not in said.export_text()

    plain = tiny_config("ssdlite")
    for path, kind in ((supernet, "a supernet trained by `nasdet pretrain`"), (tuned, "a subnet tuned by `nasdet tune`")):
        cfg_import = tiny_config("ssdlite", pipeline={"baseline_checkpoint": str(path)}, work_dir=str(tmp_path / "imp"))
        with pytest.raises(CheckpointError, match=f"^pipeline.baseline_checkpoint {path} is {kind} .*the baseline is a "
                                                  "detector of this config's model"):
            import_baseline(cfg_import)
    with pytest.raises(CheckpointError, match=f"^{tuned} is a subnet tuned by `nasdet tune`.*this config's model has "
                                              "no search space"):
        load_tuned_model(tuned, plain, 8)


def test_a_control_tuned_with_other_recalibration_seed_or_augmentation_is_not_alike():
    """tune.recalib_batches (the inherited weights' BN statistics), the seed and data.augment make the tuned
    weights too: a control tuned with another was reported "all trained exactly alike" (QA, session 27)."""
    found = {"init": "supernet", "recalib_batches": 10, "seed": 0, "augment": {"hflip": 0.5, "photometric": 0.3}}
    assert unlike(found, {**found, "recalib_batches": 1}) == ["recalib_batches 1 vs 10"]
    assert unlike(found, {**found, "seed": 1}) == ["seed 1 vs 0"]
    assert unlike(found, {**found, "augment": {"hflip": 0.5, "photometric": 0.0}}) == ["augment (photometric)"]
    # a found arch tuned under torchrun: the pipeline's one-process controls cannot be tuned alike, and the advice
    # to delete controls/ and rerun gave the same again
    text = _controls_text(None, {"AP": 0.1, "split": "val (8 images)"},
                          [_control("random_0", 0.08, 0.0, ["processes 1 vs 2", "step 32 vs 16"])])
    assert "tuned under torchrun" in text and "tune the found arch in one process too" in text
    # another step count alone (a max_steps changed since): deleting controls/ alone tuned them unlike again; the
    # fix names the side that trained fewer steps (QA: "delete tune/ and controls/" when the control had, which
    # threw the found arch's longer tune away)
    text = _controls_text(None, {"AP": 0.1, "split": "val (8 images)"}, [_control("random_0", 0.08, 0.0, ["step 30 vs 40"])])
    assert "random_0 trained fewer steps than the found arch (40)" in text and "delete controls/random_0 and rerun " \
        "the pipeline with the recipe the found arch was tuned with" in text and "delete tune/" not in text
    text = _controls_text(None, {"AP": 0.1, "split": "val (8 images)"}, [_control("random_0", 0.08, 0.0, ["step 40 vs 30"])])
    assert "the found arch trained fewer steps" in text and "delete tune/ and controls/ and rerun the pipeline" in text


def test_the_training_sentence_gives_each_sides_steps():
    """"+0.05 over the same arch trained alone" compared 900 steps with 900 + 201 + 900 steps continuing the
    baseline's weights, without a word (QA, session 27)."""
    val = "val (8 images)"
    baseline = {"AP": 0.05, "split": val, "steps": 900}
    own = {**_control("baseline_arch", 0.10), "recipe_vs_baseline": [], "steps": 900}
    chained = _controls_text(baseline, {"AP": 0.1, "split": val}, [own], supernet_steps=201, from_baseline=True)
    assert ("It trained longer: the baseline 900 steps; the other the baseline's 900, then 201 supernet steps (the "
            "supernet started from the baseline's weights), then 900 tune steps") in chained
    alone = _controls_text(baseline, {"AP": 0.1, "split": val}, [own], supernet_steps=201)
    assert "Steps: the baseline 900; the other 201 supernet steps, then 900 tune steps." in alone
    # tune.init scratch: nothing was taken from the supernet (it said "taken from the supernet and tuned")
    scratch = _controls_text(baseline, {"AP": 0.1, "split": val}, [{**own, "init": "scratch"}], supernet_steps=201)
    assert "taken from the supernet" not in scratch and "supernet steps" not in scratch
    assert "the baseline's arch trained from scratch with tune's init (tune.init: scratch) has AP +0.0500" in scratch


def test_report_rows_give_input_resolution_and_steps():
    from nasdet.stages.report import COLUMNS, _fmt, _row

    record = {"metrics": {"AP": 0.1, "AP50": 0.2}, "step": 900, "val_images": 8,
              "arch": {"input_size": 128}}
    row = _row("found", record, None, None, input_size=160)
    assert row["input_size"] == 128 and row["steps"] == 900  # the arch's resolution, not the config's
    assert _row("baseline", {"metrics": {}, "step": 3}, None, None, input_size=160)["input_size"] == 160
    assert _row("x", record, {"input_size": 96, "measured": {"macs": 1, "params": 1}, "latency_torch": {"median_ms": 1},
                              "latency_onnxruntime": {"median_ms": 1}}, None)["input_size"] == 96
    assert ("input_size", "input") in COLUMNS and _fmt(row, "input_size") == "128 px"
    assert _fmt(row, "steps") == "900" and _fmt({**row, "init": "supernet"}, "steps") == "supernet + 900"
    imported = _row("baseline", {"metrics": {}, "step": 0, "imported_from": {"path": "x.pt"}}, None, None, 160)
    assert _fmt(imported, "steps") == "imported" and _fmt({**imported, "steps": 50}, "steps") == "imported + 50"


def test_a_changed_score_threshold_evaluates_finished_stages_again(tiny_config):
    """Records keep the post-processing their AP was taken after. A finished stage rerun with another
    model.score_thresh is evaluated again (the report paired the old AP with an export baked at the new one), and
    `nasdet eval` with another threshold writes to eval/, not over the stage's own record (the next report then
    compared a baseline at 0.2 with a found model at 0.01). QA, session 27."""
    import io
    import json

    from rich.console import Console

    from nasdet.stages.baseline import run_baseline, run_eval

    cfg = tiny_config("ssdlite", train=FAST_TRAIN, eval={"max_images": 4})
    run_baseline(cfg, console=QUIET)
    record_path = Path(cfg.work_dir) / "baseline" / "metrics.json"
    record = json.loads(record_path.read_text())
    assert record["postprocessing"]["score_thresh"] == cfg.model.score_thresh
    run_eval(cfg, console=QUIET)
    evaluated = Path(cfg.work_dir) / "eval" / "baseline_last_metrics.json"
    made = evaluated.stat().st_mtime_ns
    run_eval(cfg, console=QUIET)  # the same figures again: the record is left as it was (report.md not made stale)
    assert evaluated.stat().st_mtime_ns == made
    other = cfg.model_copy(update={"model": cfg.model.model_copy(update={"score_thresh": 0.5})})
    buf = io.StringIO()
    run_eval(other, console=Console(file=buf, width=300))
    assert json.loads(record_path.read_text()) == record
    assert "(other post-processing (model.*) than the stage's record:" in buf.getvalue()  # not "another val set"
    assert json.loads(evaluated.read_text())["postprocessing"]["score_thresh"] == 0.5
    buf = io.StringIO()
    run_baseline(other, console=Console(file=buf, width=300))
    again = json.loads(record_path.read_text())
    assert again["postprocessing"]["score_thresh"] == 0.5 and again["step"] == record["step"]
    assert f"evaluated again after other post-processing (model.score_thresh {cfg.model.score_thresh} -> 0.5)" in buf.getvalue()
    run_baseline(other, console=QUIET)  # now current: not evaluated again
    assert json.loads(record_path.read_text()) == again
    # a record from before records kept it: evaluated as its checkpoint's config says (0.01), so again at 0.5 (it
    # kept its 0.01 AP while the report said every AP was taken at 0.5)
    record_path.write_text(json.dumps({k: v for k, v in record.items() if k != "postprocessing"}))
    buf = io.StringIO()
    run_baseline(other, console=Console(file=buf, width=300))
    assert json.loads(record_path.read_text())["postprocessing"]["score_thresh"] == 0.5
    assert "evaluated again after other post-processing" in buf.getvalue()


def test_the_report_names_the_postprocessing_and_rows_taken_after_other_values(tiny_config):
    from nasdet.stages.report import postprocessing_lines

    cfg = tiny_config("ssdlite")
    now = {"score_thresh": cfg.model.score_thresh, "nms_thresh": cfg.model.nms_thresh}
    rows = [{"model": "baseline", "postprocessing": {**now, "score_thresh": 0.2}}, {"model": "found arch", "postprocessing": None}]
    (line, _) = postprocessing_lines(cfg, rows)
    assert line.startswith(f"Post-processing of every AP and exported graph: score_thresh {cfg.model.score_thresh}")
    assert "Evaluated after other values: baseline (" in line and "found arch" not in line.split("values:")[1]
    assert "Evaluated after" not in postprocessing_lines(cfg, rows[1:])[0]


def test_a_record_rewritten_after_the_report_is_said(tmp_path):
    """`nasdet export --int8` (or eval, a retune) rewrote a record report.md is made from, and nothing said the
    report no longer matched it (QA, session 27)."""
    import os

    from nasdet.stages.report import stale_report_note
    from nasdet.workdir import WorkDir

    w = WorkDir(tmp_path)
    (tmp_path / "export").mkdir()
    (tmp_path / "tune").mkdir()
    for name in ("tune/metrics.json", "export/tune.json", "report.md"):
        (tmp_path / name).write_text("{}")
        os.utime(tmp_path / name, ns=(10**18, 10**18))
    assert stale_report_note(w) is None
    os.utime(tmp_path / "export" / "tune.json", ns=(10**18 + 1, 10**18 + 1))
    note = stale_report_note(w)
    assert note.startswith(f"{w.report_md} is older than export/tune.json") and "rerun `nasdet pipeline CONFIG`" in note


def test_the_latency_line_names_each_p90_and_a_record_past_max_steps_is_complete(tmp_path):
    """The p90s came baseline first under a "found / baseline" label; a stage trained past a since lowered
    max_steps was resumed (training nothing) and rewritten on every rerun (QA, session 27)."""
    import json

    from nasdet.stages.report import latency_lines
    from nasdet.workdir import WorkDir

    cfg_like = type("C", (), {"cost": type("K", (), {"runs": 30, "warmup": 5, "threads": 1})()})()
    timing = {"baseline": {"torch": {"median_ms": 16.0, "p90_ms": 16.5}, "onnxruntime": {"median_ms": 7.0, "p90_ms": 8.7}},
              "tune": {"torch": {"median_ms": 14.0, "p90_ms": 14.2}, "onnxruntime": {"median_ms": 6.0, "p90_ms": 7.6}}}
    line = latency_lines(timing, cfg_like)[0]
    assert "x0.88 in torch (p90 found 14.20, baseline 16.50 ms)" in line and "(p90 found 7.60, baseline 8.70 ms)" in line
    tune = WorkDir(tmp_path).tune
    (tune.root / "ckpt").mkdir(parents=True)
    tune.checkpoint.write_bytes(b"x")
    tune.metrics.write_text(json.dumps({"step": 40, "metrics": {}}))
    assert tune.completed(30)["step"] == 40 and tune.completed(40) and tune.completed(50) is None


def test_the_search_paragraph_follows_what_the_search_kept():
    """A complete study rerun with another model.score_thresh: report.md lost its image count, and described a
    baseline point the plot no longer had; it now gives the images the search recorded, mentions the baseline point
    only when the plot has one, and says which settings the kept study was scored with."""
    from nasdet.stages.report import search_lines

    record = {"scored": 30, "front": [{}] * 9, "baseline": None, "images": 120,
              "scored_with": {"model.score_thresh": 0.01}}
    text = " ".join(search_lines("evolution", record, None, "search", True))
    assert "candidates scored on the search split (120 images)" in text and "baseline point" not in text
    assert "scored with other settings than this config's and its candidates are kept as scored (model.score_thresh " \
           "0.01): the search's APs are taken after those." in text
    record.update(baseline={"metrics": {"AP": 0.05}}, scored_with=None)
    text = " ".join(search_lines("evolution", record, {"images": 120, "verdict": "the winner ..."}, "search", True))
    assert "The plot's baseline point is scored on the search split too" in text and "other settings" not in text
    assert text.endswith("the winner ... ")
