"""Search engine: latency budgets (torch, onnxruntime, lookup table), BN recalibration's effect on the
score, and `nasdet search --workers N`."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import optuna
import torch
import pytest
import yaml
from rich.console import Console

from conftest import fake_pretrain

from nasdet.config import config_to_dict
from nasdet.models.supernet import build_supernet
from nasdet.models.supernet import export_detector

QUIET = Console(quiet=True)
OFA_TINY = {"backbone": {"name": "ofa_mbv3", "width_mult": 0.25}}


def test_latency_table_sums_blocks_measures_each_once_and_persists(tiny_config, tmp_path):
    from nasdet.search.latency import LatencyTable, backbone_blocks

    cfg = tiny_config("ssdlite", model=OFA_TINY, supernet={"input_sizes": [64, 96]})
    model, space = build_supernet(cfg, 8)
    path = tmp_path / "lut.json"
    table = LatencyTable(path, warmup=1, runs=3, threads=1)
    rng = random.Random(0)
    arch = space.sample(rng)
    static = export_detector(model, arch, space)
    first = table.predict(static, arch, model, space)
    n_blocks = len(backbone_blocks(static))
    assert first > 0 and n_blocks >= 10
    measured = table.measured
    assert table.predict(static, arch, model, space) == first and table.measured == measured  # no re-timing
    # the prediction is the rest at this size plus one entry per block
    s = arch["input_size"]
    keys = [table.block_key(b, shape) for b, shape in table._block_inputs(static, s)]
    assert len(keys) == n_blocks
    assert first == pytest.approx(table.rest[table.rest_key(static, s)] + sum(table.blocks[k] for k in keys))
    assert table.rest_key(static, s).startswith(f"{s}|") and len(table.rest) == 1
    # what a forward fills in is not what the rest is: Faster R-CNN's RoI pooler infers its scales at its first one
    from nasdet.models import build_detector
    from nasdet.config import make_model_config
    from nasdet.search.latency import rest_fingerprint

    frcnn = build_detector(make_model_config(detector="faster_rcnn", backbone={"name": "mobilenet_v3_small",
                                                                               "width_mult": 0.5}, input_size=64), 3)
    before = rest_fingerprint(frcnn.eval())
    with torch.no_grad():
        frcnn([torch.rand(3, 64, 64)])
    assert frcnn.roi_heads.box_roi_pool.scales is not None and rest_fingerprint(frcnn) == before
    # another process (a worker, a later search) reads the table and measures nothing
    again = LatencyTable(path, warmup=1, runs=3, threads=1)
    assert again.predict(static, arch, model, space) == pytest.approx(first) and again.measured == 0
    # a worker opened before the file had an entry reads it from the file when it needs it, not timing it again;
    # one that timed an entry another saved meanwhile takes the saved figure (qa_latency #3: two tables in one study)
    early = LatencyTable(tmp_path / "shared.json", warmup=1, runs=3, threads=1)
    late_starter = LatencyTable(tmp_path / "shared.json", warmup=1, runs=3, threads=1)
    p_early = early.predict(static, arch, model, space)
    assert late_starter.predict(static, arch, model, space) == p_early and late_starter.measured == 0
    k = keys[0]
    early.blocks[k] = 123.0  # timed by this worker ...
    saved = json.loads((tmp_path / "shared.json").read_text())
    early.save()  # ... and saved after another worker's figure: the file's is kept, and this worker uses it
    assert early.blocks[k] == saved["cpu|threads=1"]["blocks"][k] != 123.0
    # the rest of another post-processing is another entry: a table timed for score_thresh 0.5 is not read for 0.01
    for m in static.modules():
        if hasattr(m, "score_thresh"):
            m.score_thresh = 0.5
    assert table.rest_key(static, s) not in again.rest
    assert table.rest_key(export_detector(model, space.smallest() | {"input_size": s}, space), s) in again.rest
    # a deeper arch has more block entries and costs more than the smallest
    small, large = space.smallest(), dict(space.largest(), input_size=s)
    p_small = table.predict(export_detector(model, dict(small, input_size=s), space), dict(small, input_size=s), model, space)
    p_large = table.predict(export_detector(model, large, space), large, model, space)
    assert p_large > p_small


@pytest.mark.parametrize("backend", ["onnxruntime", "lut"])
def test_search_under_a_latency_budget(tiny_config, backend, monkeypatch):
    from nasdet import threads
    from nasdet.stages.search import run_search

    turns = []  # CPU timings take the host's turn alone, scoring takes it shared (search workers on one machine)
    real_turn = threads.timing_turn
    monkeypatch.setattr(threads, "timing_turn", lambda exclusive: turns.append(exclusive) or real_turn(exclusive))

    cfg = tiny_config("ssdlite", model=OFA_TINY, data={"check_files": False}, supernet={"input_sizes": [64, 96]},
                      cost={"latency": backend, "warmup": 1, "runs": 3, "threads": 1},
                      search={"strategy": "random", "confidence_resamples": 100,
                              "num_candidates": 2, "recalib_batches": 1, "batch_size": 4,
                              "max_images": 2, "include_extremes": False, "budget": {"metric": "latency", "max": 1e4}})
    fake_pretrain(cfg)
    summary = run_search(cfg, console=QUIET)
    assert summary["records"] == 2
    rows = list(csv.DictReader(open(Path(cfg.work_dir) / "search" / "results.csv")))
    assert all(float(r["latency_ms"]) > 0 for r in rows)
    assert (Path(cfg.work_dir) / "search" / "latency_lut.json").is_file() == (backend == "lut")
    assert True in turns and False in turns


def test_search_workers_option_starts_processes_that_share_the_study(tiny_config, tmp_path):
    from typer.testing import CliRunner

    from nasdet.cli import app
    from nasdet.search.study import open_storage

    cfg = tiny_config("ssdlite", model=OFA_TINY, data={"check_files": False}, supernet={"input_sizes": [64, 96]},
                      train={"threads": 1},
                      search={"strategy": "random", "confidence_resamples": 100,
                              "num_candidates": 6, "recalib_batches": 1, "batch_size": 4,
                              "max_images": 2, "include_extremes": False, "budget": {"metric": "macs", "max": 1e12}})
    fake_pretrain(cfg)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    res = CliRunner().invoke(app, ["search", str(path), "--workers", "2"])
    assert res.exit_code == 0, res.output
    study = optuna.load_study(study_name="tiny-random", storage=open_storage(None, Path(cfg.work_dir) / "search"))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    archs = [json.dumps(t.params, sort_keys=True) for t in done]
    assert len(done) >= 6 and len(set(archs)) == len(archs)
    assert len({t.user_attrs.get("worker") for t in done}) == 2  # both processes scored
    rows = list(csv.DictReader(open(Path(cfg.work_dir) / "search" / "results.csv")))
    assert len(rows) == len(done)


def test_launched_workers_leave_the_outputs_to_their_launcher(tiny_config, monkeypatch):
    """The launcher of --workers N writes results.csv / best_arch.json and prints the table once, after its
    workers: each worker scored, then wrote and printed them again (and scored the baseline again)."""
    import subprocess

    from nasdet import cli as cli_module
    from nasdet.stages.search import run_search

    started = []

    class Finished:
        returncode = 0

        def __init__(self, cmd, **kwargs):
            started.append(cmd)

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Finished)
    cli_module._launch_workers("search", Path("c.yaml"), None, ["search.seed=1"], 2, [])
    assert [c[c.index("--worker") + 1] for c in started] == ["0", "1"]
    assert all("--launched" in c and c[-2:] == ["--set", "search.seed=1"] for c in started)

    cfg = tiny_config("ssdlite", model=OFA_TINY, data={"check_files": False},
                      search={"strategy": "random", "num_candidates": 2, "recalib_batches": 1, "batch_size": 4,
                              "max_images": 2, "include_extremes": False, "budget": {"metric": "macs", "max": 1e12}})
    fake_pretrain(cfg)
    done = run_search(cfg, console=QUIET, outputs=False)
    out = Path(cfg.work_dir) / "search"
    assert done["counts"]["scored"] == 2 and not (out / "results.csv").exists() and not (out / "best_arch.json").exists()
    assert run_search(cfg, console=QUIET)["counts"]["scored"] == 0 and (out / "results.csv").is_file()


def test_latency_table_finds_the_blocks_of_every_supernet_family(tiny_config):
    """OFA (stages), ENOT's MobileNetV2 (features) and DetNAS (stages): each exported subnet's blocks
    get table entries, so predictions differ between archs."""
    from nasdet.search.latency import LatencyTable

    for backbone in ({"name": "ofa_mbv3", "width_mult": 0.25}, {"name": "mbv2_elastic", "width_mult": 0.25},
                     {"name": "detnas_tiny"}):
        cfg = tiny_config("ssdlite", model={"backbone": backbone})
        model, space = build_supernet(cfg, 8)
        table = LatencyTable(None, warmup=0, runs=1, threads=1)
        # the default (reference) subnet and the smallest fill the table; a middle arch needs new entries
        small = space.smallest()
        middle = {n: v[len(v) // 2] for n, v in space.choices.items()}
        middle["input_size"] = small["input_size"]
        p_small = table.predict(export_detector(model, small, space), small, model, space)
        n_small = len(table.blocks)
        p_middle = table.predict(export_detector(model, middle, space), middle, model, space)
        assert n_small >= 5 and len(table.blocks) > n_small and p_middle != p_small, backbone


def test_search_progress_counts_the_studys_candidates_not_only_this_workers(tiny_config, monkeypatch):
    """Under --workers N the launcher shows worker 0's progress lines: they counted only worker 0's own
    candidates (5/12 when the study held all 12). A candidate another worker scores mid-run now counts."""
    import io
    import re

    from nasdet.stages import search as search_stage
    from nasdet.stages.search import run_search

    cfg = tiny_config("ssdlite", model=OFA_TINY, data={"check_files": False}, supernet={"input_sizes": [64, 96]},
                      train={"threads": 1},
                      search={"strategy": "random", "confidence_resamples": 20, "num_candidates": 3,
                              "recalib_batches": 1, "batch_size": 4, "max_images": 2, "include_extremes": False,
                              "budget": {"metric": "macs", "max": 1e12}})
    fake_pretrain(cfg)
    real_run_study = search_stage.run_study
    theirs = []

    def run_study_beside_another_worker(study, *args, on_trial, **kwargs):
        def on_trial_after_another_worker(rec):
            if len(study.trials) == 1:  # another worker finishes a candidate of another arch meanwhile
                t = study.trials[0]
                name, dist = next((n, d) for n, d in t.distributions.items() if len(d.choices) > 1)
                other = next(c for c in dist.choices if c != t.params[name])
                theirs.append(t.values[0] + 0.5)  # and a better one than this worker's
                study.add_trial(optuna.trial.create_trial(
                    params={**t.params, name: other}, distributions=t.distributions, values=[theirs[0]],
                    user_attrs={**t.user_attrs, "worker": "another"}))
            on_trial(rec)
        return real_run_study(study, *args, on_trial=on_trial_after_another_worker, **kwargs)

    monkeypatch.setattr(search_stage, "run_study", run_study_beside_another_worker)
    out = io.StringIO()
    run_search(cfg, console=Console(file=out, width=200))
    counts = re.findall(r"search candidates: (\d+)/3", out.getvalue())
    assert counts and counts[-1] == "3", out.getvalue()
    assert f"best AP {theirs[0]:.4f}" in out.getvalue()  # the study's best, not this worker's


def test_pareto_says_the_baseline_is_timed_when_candidates_are_predicted(tiny_config):
    """Under cost.latency lut the candidates' latency is the table's prediction while the baseline (not a subnet
    of the space) is timed: pareto.json and the plot's legend say so (the baseline looked slower than the
    largest subnet with fewer MACs, on one axis with nothing said)."""
    import torch

    from nasdet.models.detectors import build_detector
    from nasdet.stages.search import run_search
    from nasdet.train.checkpoint import save_checkpoint
    from nasdet.workdir import WorkDir

    cfg = tiny_config("ssdlite", model=OFA_TINY, data={"check_files": False}, supernet={"input_sizes": [64, 96]},
                      cost={"latency": "lut", "warmup": 1, "runs": 2, "threads": 1},
                      search={"strategy": "random", "confidence_resamples": 100, "num_candidates": 1,
                              "recalib_batches": 1, "batch_size": 4, "max_images": 2, "include_extremes": False,
                              "budget": {"metric": "latency", "max": 1e4}})
    fake_pretrain(cfg)
    torch.manual_seed(1)
    save_checkpoint({"model": build_detector(cfg.model, num_classes=8).state_dict(), "config": config_to_dict(cfg),
                     "step": 1}, WorkDir.of(cfg, None).baseline.checkpoint)
    run_search(cfg, console=QUIET)
    baseline = json.loads((Path(cfg.work_dir) / "search" / "pareto.json").read_text())["baseline"]
    assert baseline["costs"]["latency"] > 0
    assert baseline["latency_note"] == "timed in torch on cpu; the candidates' latency is the lookup table's prediction"


def test_a_worker_of_workers_leaves_the_small_split_warning_to_its_launcher(tiny_config):
    """`nasdet search --workers 2` printed the small-search-split warning once per process."""
    import io

    from nasdet.stages.search import run_search

    cfg = tiny_config("ssdlite", model=OFA_TINY, data={"check_files": False}, supernet={"input_sizes": [64, 96]},
                      search={"strategy": "random", "confidence_resamples": 100, "num_candidates": 1,
                              "recalib_batches": 1, "batch_size": 4, "max_images": 2, "include_extremes": False})
    fake_pretrain(cfg)
    said = []
    for outputs in (False, True):
        buf = io.StringIO()
        run_search(cfg, console=Console(file=buf, width=300), outputs=outputs)
        said.append("warning: the search split has" in buf.getvalue())
    assert said == [False, True]


def test_a_search_on_a_training_set_changed_since_pretraining_is_refused(tiny_config, shapes_dir, tmp_path):
    """data.search_fraction splits train by position: images added to or removed from train after `nasdet pretrain`
    moved the "held-out" search split onto images the supernet trained on (8 of 11 after 3 images were added to a
    YOLO folder), without a word. The supernet records the images it trained on; a search on another split is
    refused, naming both counts; with search.score_on val the split scores nothing and is not checked."""
    from nasdet.data.build import build_datasets
    from nasdet.errors import DataError
    from nasdet.search.scorers import load_trained_supernet
    from nasdet.stages.pretrain import run_pretrain
    from nasdet.train.checkpoint import load_checkpoint

    ann = json.loads((shapes_dir / "train" / "annotations.json").read_text())
    copy = tmp_path / "train.json"
    copy.write_text(json.dumps(ann))
    cfg = tiny_config("ssdlite", model=OFA_TINY, supernet={"input_sizes": [96], "recalib_batches": 1, "report_archs": ["smallest"]},
                      data={"train": {"annotations": str(copy), "images": str(shapes_dir / "train" / "images")}},
                      train={"epochs": 1, "max_steps": 1}, eval={"max_images": 2}, search={"max_images": 4})
    run_pretrain(cfg, console=QUIET)
    trained_on = build_datasets(cfg, need=("search",))["supernet_train"]
    state = load_checkpoint(tmp_path / "work" / "supernet" / "ckpt" / "last.pt")
    assert state["train_images"]["count"] == len(trained_on)
    load_trained_supernet(cfg, console=QUIET)  # the same images: scores
    dropped = {im["id"] for im in ann["images"][:3]}
    ann["images"] = ann["images"][3:]
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] not in dropped]
    copy.write_text(json.dumps(ann))
    now = len(build_datasets(cfg, need=("search",))["supernet_train"])
    with pytest.raises(DataError, match=rf"pretrained on {len(trained_on)} training images, and the training set now "
                                        rf"splits into {now} other ones .* so \d+ of the \d+ images of the search split "
                                        r"the supernet trained on would score candidates: restore the training set"):
        load_trained_supernet(cfg, console=QUIET)
    on_val = cfg.model_copy(update={"search": cfg.search.model_copy(update={"score_on": "val"})})
    load_trained_supernet(on_val, console=QUIET)
    # a lowered data.search_fraction holds out a part of the images held out before: nothing it trained on scores
    copy.write_text((shapes_dir / "train" / "annotations.json").read_text())
    fewer = cfg.model_copy(update={"data": cfg.data.model_copy(update={"search_fraction": cfg.data.search_fraction / 2})})
    load_trained_supernet(fewer, console=QUIET)


def test_a_training_resumed_on_a_changed_training_set_is_refused(tiny_config, shapes_dir, tmp_path):
    """A pretraining interrupted, then resumed on a training set reordered (or changed with the same step count)
    went on silently, and its checkpoint then recorded the new set: the search's split check passed on images the
    supernet had trained on."""
    from nasdet.stages.baseline import run_baseline
    from nasdet.train.checkpoint import CheckpointError

    ann = json.loads((shapes_dir / "train" / "annotations.json").read_text())
    copy = tmp_path / "train.json"
    copy.write_text(json.dumps(ann))
    raw = {"data": {"train": {"annotations": str(copy), "images": str(shapes_dir / "train" / "images")}},
           "eval": {"max_images": 2}}
    cfg = tiny_config(train={"epochs": 1, "max_steps": 4}, **raw)
    run_baseline(cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 2})}), console=QUIET)
    top = max(im["id"] for im in ann["images"]) + 1
    for item in ann["images"]:  # the same images in reverse order (records go by image id)
        item["id"] = top - item["id"]
    for a in ann["annotations"]:
        a["image_id"] = top - a["image_id"]
    copy.write_text(json.dumps(ann))
    with pytest.raises(CheckpointError, match=r"was training on \d+ images, and the training set now gives \d+ other "
                                              r"ones .* restore the training set"):
        run_baseline(cfg, console=QUIET)


def test_an_unreadable_image_of_the_search_split_stops_pretraining_before_it_starts(tiny_config, shapes_dir, tmp_path):
    """The trainer checks the images it trains on; one of the held-out search split that does not open passed
    `nasdet pretrain` and stopped `nasdet search` after the whole pretraining."""
    import shutil

    from nasdet.data.build import build_datasets
    from nasdet.errors import DataError
    from nasdet.stages.pretrain import run_pretrain

    images = tmp_path / "images"
    shutil.copytree(shapes_dir / "train" / "images", images)
    cfg = tiny_config("ssdlite", model=OFA_TINY, supernet={"input_sizes": [96], "recalib_batches": 1},
                      data={"train": {"annotations": str(shapes_dir / "train" / "annotations.json"),
                                      "images": str(images)}},
                      train={"epochs": 1, "max_steps": 1}, eval={"max_images": 2})
    held_out = build_datasets(cfg, need=("search",))["search"].records[0].file
    held_out.write_bytes(b"not an image")
    with pytest.raises(DataError, match=rf"image file {held_out} \(image id \d+\) cannot be decoded"):
        run_pretrain(cfg, console=QUIET)
    assert not (tmp_path / "work" / "supernet" / "ckpt").exists()
