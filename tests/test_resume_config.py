"""A resume is onto the same run (issue 24 cases 3, 4): a rerun whose training-relevant config differs from
the one in the checkpoint is refused, listing the keys (old -> new), before anything is rewritten; what does
not change the weights (logging, evaluation, max_steps, the work dir) may change."""
from __future__ import annotations

import hashlib

import yaml

from conftest import tiny_raw
from test_user_data_safety import cli, one_error_line


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def started_run(shapes_dir, tmp_path):
    """A baseline stopped after 2 of its 12 steps (a checkpoint to resume)."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(shapes_dir, tmp_path / "wd")))
    code, out, exc = cli("train", cfg, "--set", "train.max_steps=2")
    assert code == 0 and exc is None, out
    return cfg, tmp_path / "wd"


def test_resume_with_another_lr_is_refused(shapes_dir, tmp_path):
    cfg, wd = started_run(shapes_dir, tmp_path)
    config_yaml, ckpt = wd / "config.yaml", wd / "baseline" / "ckpt" / "last.pt"
    before = digest(config_yaml), digest(ckpt)
    line = one_error_line(*cli("train", cfg, "--set", "train.max_steps=3", "--set", "train.optimizer.lr=0.01"),
                          "train.optimizer.lr: 0.002 -> 0.01", str(wd / "baseline"))
    assert "max_steps" not in line  # not training-relevant: a longer run of the same recipe is a resume
    assert (digest(config_yaml), digest(ckpt)) == before
    # what does not change the weights may change: logging, evaluation, the number of steps to stop at
    code, out, exc = cli("train", cfg, "--set", "train.max_steps=3", "--set", "train.log_every_steps=5",
                         "--set", "eval.batch_size=2", "--set", "data.num_workers=0")
    assert code == 0 and exc is None, out
    assert "resumed at step 2" in " ".join(out.split())


def test_resume_after_changing_the_optimizer_is_refused_without_keyerror(shapes_dir, tmp_path):
    cfg, wd = started_run(shapes_dir, tmp_path)
    before = digest(wd / "config.yaml")
    one_error_line(*cli("train", cfg, "--set", "train.optimizer.name=sgd"), "train.optimizer.name: adamw -> sgd",
                   "delete")
    assert digest(wd / "config.yaml") == before
    assert "adamw" in (wd / "config.yaml").read_text()


def test_eval_on_another_val_set_keeps_the_stage_record(shapes_dir, tmp_path):
    """Case 6: `eval --set data.val...` replaced baseline/metrics.json, which the report reads as the
    baseline's val AP; it now writes eval/ and says so. On the run's own val set it updates the record."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(shapes_dir, tmp_path / "wd")))
    code, out, exc = cli("train", cfg, "--set", "train.epochs=1", "--set", "train.max_steps=1")
    assert code == 0 and exc is None, out
    record = tmp_path / "wd" / "baseline" / "metrics.json"
    before = digest(record)
    other = ["--set", f"data.val.annotations={shapes_dir / 'train' / 'annotations.json'}",
             "--set", f"data.val.images={shapes_dir / 'train' / 'images'}"]
    for extra in (other, ["--set", "eval.max_images=3"]):
        code, out, exc = cli("eval", cfg, *extra)
        assert code == 0 and exc is None, out
        flat = "".join(out.split())  # rich wraps long paths
        assert digest(record) == before, extra
        assert str(tmp_path / "wd" / "eval" / "baseline_last_metrics.json") in flat and "kept" in flat, flat
    code, out, exc = cli("eval", cfg)
    assert code == 0 and exc is None, out
    assert str(record) in "".join(out.split())
    # `cost --ckpt` of a checkpoint kept elsewhere wrote cost.json into the folder above it
    mine = tmp_path / "mine" / "models"
    mine.mkdir(parents=True)
    (mine / "baseline.pt").write_bytes((tmp_path / "wd" / "baseline" / "ckpt" / "last.pt").read_bytes())
    (tmp_path / "mine" / "cost.json").write_text("my own notes")
    code, out, exc = cli("cost", cfg, "--ckpt", mine / "baseline.pt", "--no-latency")
    assert code == 0 and exc is None, out
    assert (tmp_path / "mine" / "cost.json").read_text() == "my own notes"
    assert (tmp_path / "wd" / "eval" / "models_baseline_cost.json").is_file()  # named by its folder too


def test_data_paths_are_compared_as_the_files_they_name(shapes_dir, tmp_path, monkeypatch):
    """The same data through a symlink or another spelling of its path resumes; the same relative path from
    another folder (other data) is refused, naming both folders."""
    import os

    from nasdet.train.checkpoint import load_checkpoint
    from nasdet.train.resume import resolved_paths, training_changes

    data = tmp_path / "project" / "data"
    (data / "images").mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)
    real = os.path.realpath(data / "images")

    def record(images):
        return {"data": {"train": {"annotations": None, "images": images}}, "seed": 0}

    monkeypatch.chdir(tmp_path / "project")
    saved = record("data/images")
    paths = resolved_paths(saved)
    assert paths == {"data.train.images": real}
    for same in ("./data/images", "data/images/", real, str(tmp_path / "link" / "images"), "../link/images"):
        assert training_changes(saved, record(same), ("data",), (), paths) == [], same
        assert training_changes(saved, record(same), ("data",), ()) == [], same  # a checkpoint without paths
    (data / "images" / "a.jpg").write_bytes(b"1234")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data" / "images").mkdir(parents=True)
    (elsewhere / "data" / "images" / "b.jpg").write_bytes(b"1234")
    monkeypatch.chdir(elsewhere)
    changes = training_changes(saved, record("data/images"), ("data",), (), paths)
    assert changes == [f"data.train.images: {real} -> {os.path.realpath(elsewhere / 'data' / 'images')} "
                       "(the same relative path, from another folder, other data)"]
    assert training_changes(saved, record("../project/data/images"), ("data",), (), paths) == []
    # a work dir copied with its data to another clone: the same files there are the same run (`nasdet pipeline`
    # refused the copy that search, tune and export took), and so is a run whose recorded folder is gone (moved)
    (elsewhere / "data" / "images" / "b.jpg").rename(elsewhere / "data" / "images" / "a.jpg")
    assert training_changes(saved, record("data/images"), ("data",), (), paths) == []
    (elsewhere / "data" / "images" / "a.jpg").write_bytes(b"12345")  # another size
    assert len(training_changes(saved, record("data/images"), ("data",), (), paths)) == 1
    ann = {"data": {"train": {"annotations": "data/train.json", "images": None}}, "seed": 0}
    (data / "train.json").write_text('{"images": [1]}')
    (elsewhere / "data" / "train.json").write_text('{"images": [2]}')  # same size, other bytes
    ann_paths = {"data.train.annotations": str(data / "train.json")}
    assert len(training_changes(ann, ann, ("data",), (), ann_paths)) == 1
    (elsewhere / "data" / "train.json").write_text('{"images": [1]}')
    assert training_changes(ann, ann, ("data",), (), ann_paths) == []
    (data / "train.json").unlink()
    (elsewhere / "data" / "train.json").write_text('{"images": [3, 4]}')
    assert training_changes(ann, ann, ("data",), (), ann_paths) == []  # the recorded file is gone: moved

    # a trainer keeps the resolved paths with its checkpoint and resumes through a link to the same data
    monkeypatch.chdir(tmp_path)
    cfg, wd = started_run(shapes_dir, tmp_path)
    state = load_checkpoint(wd / "baseline" / "ckpt" / "last.pt")
    assert state["paths"]["data.train.images"] == os.path.realpath(shapes_dir / "train" / "images")
    (tmp_path / "shapes_link").symlink_to(shapes_dir)
    linked = ["--set", f"data.train.images={tmp_path / 'shapes_link' / 'train' / 'images'}",
              "--set", f"data.train.annotations={tmp_path / 'shapes_link' / 'train' / 'annotations.json'}"]
    code, out, exc = cli("train", cfg, "--set", "train.max_steps=3", *linked)
    assert code == 0 and exc is None, out
    assert "resumed at step 2" in " ".join(out.split())


def test_a_finished_stage_is_evaluated_again_when_eval_max_images_changes(shapes_dir, tmp_path):
    """Its record said 3 images while the config asked for 6, and the report's rows then scored different images."""
    import json

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(shapes_dir, tmp_path / "wd")))
    run = ["--set", "train.epochs=1", "--set", "train.max_steps=1"]
    code, out, exc = cli("train", cfg, *run, "--set", "eval.max_images=3")
    assert code == 0 and exc is None, out
    record, ckpt = tmp_path / "wd" / "baseline" / "metrics.json", tmp_path / "wd" / "baseline" / "ckpt" / "last.pt"
    before, weights = json.loads(record.read_text()), digest(ckpt)
    assert before["val_images"] == 3
    code, out, exc = cli("train", cfg, *run, "--set", "eval.max_images=6")
    assert code == 0 and exc is None, out
    after = json.loads(record.read_text())
    assert after["val_images"] == 6 and after["step"] == before["step"] and digest(ckpt) == weights  # not retrained
    assert "evaluated again on 6 val images (its record had 3: eval.max_images changed)" in " ".join(out.split())
    code, out, exc = cli("train", cfg, *run, "--set", "eval.max_images=6")  # nothing changed: nothing redone
    assert code == 0 and "evaluated again" not in out and json.loads(record.read_text()) == after


def test_the_backbone_checkpoint_and_imagenet_weights_are_compared_as_what_they_name(tmp_path, monkeypatch):
    """A rerun naming the same backbone file through a symlink or another spelling, or the same ImageNet weights
    by another name (imagenet = IMAGENET1K_V2 for MobileNetV3-Large), was refused as another config."""
    from nasdet.train.resume import resolved_paths, training_changes

    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "backbone.pth").write_bytes(b"weights")
    (tmp_path / "link.pth").symlink_to(tmp_path / "ck" / "backbone.pth")
    monkeypatch.chdir(tmp_path)

    def run(checkpoint=None, pretrained=None):
        return {"model": {"backbone": {"name": "mobilenet_v3_large", "checkpoint": checkpoint, "pretrained": pretrained}}}

    saved = run(checkpoint="ck/backbone.pth")
    paths = resolved_paths(saved)
    assert paths == {"model.backbone.checkpoint": str((tmp_path / "ck" / "backbone.pth").resolve())}
    for same in ("ck/backbone.pth", str(tmp_path / "link.pth"), "ck/../ck/backbone.pth"):
        assert training_changes(saved, run(checkpoint=same), ("model",), saved_paths=paths) == [], same
    (tmp_path / "other.pth").write_bytes(b"other")
    assert training_changes(saved, run(checkpoint="other.pth"), ("model",), saved_paths=paths) == [
        f"model.backbone.checkpoint: {paths['model.backbone.checkpoint']} -> {(tmp_path / 'other.pth').resolve()}"]
    saved = run(pretrained="imagenet")
    for same in ("IMAGENET1K_V2", "imagenet1k_v2", "MobileNet_V3_Large_Weights.IMAGENET1K_V2", "DEFAULT"):
        assert training_changes(saved, run(pretrained=same), ("model",)) == [], same
    assert training_changes(saved, run(pretrained="IMAGENET1K_V1"), ("model",)) == [
        "model.backbone.pretrained: imagenet -> IMAGENET1K_V1"]
    assert training_changes(saved, run(), ("model",)) == ["model.backbone.pretrained: imagenet -> None"]


def test_resume_with_another_process_count_says_so(shapes_dir, tmp_path):
    """A run started under torchrun (2 processes) and rerun in one: refused, as it must be (the per-process batch
    makes another schedule), but the error left the user to guess which of four things changed."""
    from nasdet.train.checkpoint import load_checkpoint, save_checkpoint

    cfg, wd = started_run(shapes_dir, tmp_path)
    ckpt = wd / "baseline" / "ckpt" / "last.pt"
    state = load_checkpoint(ckpt)
    assert state["processes"] == 1
    save_checkpoint({**state, "processes": 2, "total_steps": state["total_steps"] // 2}, ckpt)  # as 2 would write
    one_error_line(*cli("train", cfg, "--set", "train.max_steps=3"), "was written by 2 process(es)",
                   "this run has 1", "torchrun --nproc_per_node 2")


def test_a_stages_own_recipe_is_named_by_its_key(tmp_path):
    """The supernet trains with supernet.train put in place of train: a changed supernet.train.optimizer.lr was
    refused as "train.optimizer.lr", the baseline's key, which the user had not touched."""
    import pytest

    from nasdet.errors import ResumeMismatch
    from nasdet.train.resume import refuse_changed_run

    saved = {"seed": 0, "train": {"optimizer": {"lr": 0.1}}}
    now = {"seed": 0, "train": {"optimizer": {"lr": 0.2}}}
    ckpt = tmp_path / "supernet" / "ckpt" / "last.pt"
    with pytest.raises(ResumeMismatch, match=r"\(supernet.train.optimizer.lr: 0.1 -> 0.2\)"):
        refuse_changed_run(ckpt, saved, now, ("seed", "train"), (), recipe="supernet.train")
    with pytest.raises(ResumeMismatch, match=r"\(train.optimizer.lr: 0.1 -> 0.2\)"):
        refuse_changed_run(ckpt, saved, now, ("seed", "train"), ())


def test_a_run_written_before_a_schedule_phase_key_existed_resumes_unless_the_key_is_set():
    """A supernet pretraining started before phases had ``lr`` (and ``warmup_epochs``) was refused on resume after the
    upgrade (the list of phases differed by the new unset keys); a phase given an lr since is a change."""
    from nasdet.train.resume import training_changes

    old = {"supernet": {"schedule": [{"epoch": 0, "open": {"kernel": [7]}, "samples": None}]}}

    def new(lr=None, warmup=0):
        return {"supernet": {"schedule": [{"epoch": 0, "open": {"kernel": [7]}, "samples": None, "lr": lr,
                                           "warmup_epochs": warmup}]}}

    assert training_changes(old, new(), ("supernet",), ()) == []
    assert len(training_changes(old, new(lr=0.1), ("supernet",), ())) == 1
    assert len(training_changes(old, new(warmup=2), ("supernet",), ())) == 1
    grown = new()
    grown["supernet"]["schedule"].append({"epoch": 3, "open": {}, "samples": None, "lr": None, "warmup_epochs": 0})
    assert len(training_changes(old, grown, ("supernet",), ())) == 1  # a phase added


def test_a_key_the_saved_config_lacks_compares_as_its_default():
    """A run started before model.backbone.frozen_stages existed resumed under the upgraded R-50 config (frozen_stages
    1) without a word: its stem and layer1 froze from the resumed step on (qa_s32). A key the record lacks is what
    the schema fills in for that record (its family's default); a new key left at it resumes as before."""
    import copy

    from nasdet.config import config_to_dict, load_config
    from nasdet.train.resume import training_changes

    current = config_to_dict(load_config("configs/baselines/fcos_resnet50_coco.yaml"))
    saved = copy.deepcopy(current)
    del saved["model"]["backbone"]["frozen_stages"], saved["supernet"]["uniform_samples"]
    assert training_changes(saved, current, ("model", "supernet"), ()) == [
        "model.backbone.frozen_stages: 0 (not recorded: the default) -> 1"]
    current["model"]["backbone"]["frozen_stages"] = 0
    assert training_changes(saved, current, ("model", "supernet"), ()) == []
    # a family's own default (FCOS's 1000 candidates a level is set; YOLOv3's score_thresh 0.05 is its default)
    yolo = config_to_dict(load_config("configs/demo/yolov3_pipeline_shapes.yaml"))
    old = copy.deepcopy(yolo)
    del old["model"]["score_thresh"]
    assert training_changes(old, yolo, ("model",), ()) == []
