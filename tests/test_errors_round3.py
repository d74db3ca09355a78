"""Issue 24, the one-line cases: batch and split sizes BatchNorm cannot train on, FCOS's GroupNorm on a 1x1
map, unreachable storages, a full disk, and the weak messages of that round. Each case here failed (a raw
traceback or a misleading line) before its fix."""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_raw
from test_errors import assert_one_line, cli, write_cfg
from test_search_postgresql import postgres_url  # noqa: F401  (a fixture: a throwaway PostgreSQL cluster)

def quiet():
    from rich.console import Console

    return Console(file=io.StringIO(), width=400)


@pytest.fixture
def cfg_file(shapes_dir, tmp_path):
    """A tiny config file; ``sections`` update (dicts) or replace its sections."""
    def make(name="tiny.yaml", detector="ssdlite", **sections):
        raw = tiny_raw(shapes_dir, tmp_path / "wd", detector)
        raw["train"].update(max_steps=1, epochs=1)
        raw["eval"]["max_images"] = 2
        for section, values in sections.items():
            raw.setdefault(section, {}).update(values) if isinstance(values, dict) else raw.update({section: values})
        return write_cfg(tmp_path / name, raw)

    return make


OFA_TINY = {"backbone": {"name": "ofa_mbv3", "width_mult": 0.25}}


# --------------------------------------------------------------- 7. BatchNorm meets one value per channel
def test_batch_size_1_on_a_1x1_map_is_one_line_naming_the_key(cfg_file):
    """SSDLite's last extra layer is 1x1 at 96 px: BatchNorm cannot train on one image there."""
    code, out, exc = cli("train", cfg_file(), "--set", "train.batch_size=1")
    assert_one_line(code, out, exc, "train.batch_size", "BatchNorm", "1x1", "set train.batch_size to 2 or more")


def test_a_stage_recipe_names_its_own_key(cfg_file):
    code, out, exc = cli("pretrain", cfg_file(model=OFA_TINY, supernet={"train": {"batch_size": 1, "max_steps": 1}}))
    assert_one_line(code, out, exc, "supernet.train.batch_size", "1x1")


def test_a_one_image_training_set_is_one_line_naming_it(cfg_file, shapes_dir, tmp_path):
    ann = json.loads((shapes_dir / "train" / "annotations.json").read_text())
    first = ann["images"][0]["id"]
    ann["images"] = ann["images"][:1]
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] == first]
    (tmp_path / "one.json").write_text(json.dumps(ann))
    code, out, exc = cli("train", cfg_file(), "--set", f"data.train.annotations={tmp_path / 'one.json'}")
    assert_one_line(code, out, exc, "one.json", "1 image", "BatchNorm")


def test_batch_size_1_trains_where_no_map_is_1x1(cfg_file):
    """RetinaNet at 96 px: its BatchNorms (the backbone's) see maps of 3x3 and more, so one image per batch
    trains (the FPN's P6 / P7 are 1x1 but carry no norm)."""
    code, out, exc = cli("train", cfg_file(detector="retinanet"), "--set", "train.batch_size=1")
    assert exc is None and code == 0, out


def test_a_last_partial_batch_of_one_neither_trains_nor_calibrates(tiny_config):
    """5 images in batches of 4: the training loader drops the last image of each epoch, and BN
    recalibration leaves out a last batch of one (both would give BatchNorm one value per channel)."""
    from nasdet.data.build import build_datasets
    from nasdet.models import build_detector
    from nasdet.train.bn import recalibrate_bn
    from nasdet.train.loop import Trainer

    cfg = tiny_config(train={"batch_size": 4, "epochs": 2, "max_steps": None}, eval={"max_images": 1})
    data = build_datasets(cfg, need=("train",))
    five = data["train"].subset(range(5))
    model = build_detector(cfg.model, num_classes=five.num_classes)
    assert recalibrate_bn(model, five.with_transforms(None), torch.device("cpu"), batches=2, batch_size=4) == 4
    trainer = Trainer.from_config(cfg, model, five, None, Path(cfg.work_dir) / "t", console=quiet())
    trainer.run()
    assert trainer.step == 2 and trainer.steps_per_epoch == 1


# ------------------------------------------------------------------ 8. a supernet split of one image
def test_a_one_image_supernet_split_is_one_line_with_the_numbers(cfg_file):
    code, out, exc = cli("pretrain", cfg_file(model=OFA_TINY), "--set", "data.search_fraction=0.99")
    assert_one_line(code, out, exc, "data.search_fraction", "0.99", "1 of 24", "23")


# ------------------------------------------------------------ 9. FCOS GroupNorm(32, 32) on a 1x1 P7
def test_fcos_group_norm_on_a_1x1_p7_is_one_line_naming_op_and_setting(cfg_file):
    """Training ran (batches of 4); export traced one image and torch.onnx raised torch's GroupNorm refusal."""
    fcos = cfg_file("fcos.yaml", detector="fcos", model={"fpn_channels": 32})
    for command in (["train"], ["export", "--source", "baseline"]):
        code, out, exc = cli(command[0], fcos, *command[1:])
        assert_one_line(code, out, exc, "model.fpn_channels 32", "GroupNorm(32)", "input_size 96", "P7")


def test_fcos_with_32_fpn_channels_exports_above_128_px(tiny_config):
    """At 160 px P7 is 2x2: one image exports and runs (GroupNorm sees 4 values per group)."""
    from nasdet.models import build_detector
    from nasdet.export import export_onnx

    cfg = tiny_config("fcos", model={"fpn_channels": 32, "input_size": 160})
    model = build_detector(cfg.model, num_classes=2).eval()
    with torch.no_grad():
        model([torch.rand(3, 120, 150)])
    assert export_onnx(model, Path(cfg.work_dir) / "m.onnx").is_file()


# ------------------------------------------------------------------------- 10, 11. storages
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_postgresql_is_one_line_naming_the_url(cfg_file):
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is None:
        pytest.skip("no PostgreSQL driver installed")
    port = _closed_port()
    code, out, exc = cli("search", cfg_file(), "--storage", f"postgresql://u:secret@127.0.0.1:{port}/db")
    assert_one_line(code, out, exc, f"postgresql://u:***@127.0.0.1:{port}/db", "cannot connect", "Connection refused")
    assert "secret" not in out
    code, out, exc = cli("search", cfg_file(), "--storage", "postgresql://u:secret@nosuchhost.invalid/db")
    assert_one_line(code, out, exc, "postgresql://u:***@nosuchhost.invalid/db", "nosuchhost.invalid")
    assert "secret" not in out


def test_readme_postgresql_url_works_with_psycopg2_alone(postgres_url):
    """README: ``--storage postgresql://user:password@host/db`` with psycopg2-binary installed. SQLAlchemy 2.1
    reads a bare ``postgresql://`` as psycopg 3; the search stage's early check refused it before."""
    import importlib.util

    from nasdet.search.study import check_storage_url, open_storage

    assert postgres_url.startswith("postgresql://")
    url = check_storage_url(postgres_url)
    if importlib.util.find_spec("psycopg") is None:
        assert url.startswith("postgresql+psycopg2://")
    storage = open_storage(postgres_url, "unused")
    assert storage.get_all_studies() is not None


def test_sqlite_in_a_missing_folder_is_one_line_naming_it(cfg_file, tmp_path):
    db = tmp_path / "no" / "such" / "x.db"
    code, out, exc = cli("search", cfg_file(), "--storage", f"sqlite:///{db}")
    assert_one_line(code, out, exc, str(db.parent), "does not exist")


# ------------------------------------------------------------------------------- 12. a full disk
def fill_disk_under(monkeypatch, folder: Path):
    """Every file opened for writing under ``folder`` (a file or a folder) is /dev/full (writes fail with ENOSPC, no file named,
    as on a full disk); ``torch.save`` to a path there fails as it does on a full disk (a RuntimeError from
    its C++ writer that names neither the file nor the cause)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    real_open, real_save = builtins.open, torch.save
    root = str(folder.resolve())

    def inside(p) -> bool:  # under ``folder``, or ``folder``'s temporary sibling (files.atomic_path)
        if not isinstance(p, (str, os.PathLike)):
            return False
        p = Path(p).resolve()
        return str(p).startswith(root) or (str(p.parent) == str(Path(root).parent) and
                                           p.name.startswith(f".{Path(root).name}."))

    def full_open(file, mode="r", *args, **kwargs):
        if inside(file) and any(c in mode for c in "wax+"):
            real_open(file, "ab").close()  # a full disk still creates an empty file
            return real_open("/dev/full", mode.replace("x", "w"), *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    def full_save(obj, f, *args, **kwargs):
        if inside(f):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr(io, "open", full_open)
    monkeypatch.setattr(torch, "save", full_save)


@pytest.mark.parametrize("full", ["baseline/ckpt", "baseline/log.jsonl"])
def test_disk_full_during_train_is_one_line_naming_the_file(cfg_file, tmp_path, monkeypatch, full):
    fill_disk_under(monkeypatch, tmp_path / "wd" / full)
    code, out, exc = cli("train", cfg_file())
    named = "last.pt" if full.endswith("ckpt") else "log.jsonl"
    assert_one_line(code, out, exc, str(tmp_path / "wd" / full).rsplit("/", 1)[0], named, "no space left on device")


def test_disk_full_during_search_is_one_line_naming_the_file(shapes_dir, tmp_path, monkeypatch):
    raw = tiny_raw(shapes_dir, tmp_path / "wd")
    raw["model"].update(OFA_TINY)
    raw.update(supernet={"input_sizes": [64, 96]},
               search={"strategy": "random", "num_candidates": 2, "scorer": "mae_det", "max_images": 2,
                       "budget": {"metric": "macs", "max": 1e12}},
               diagnose={"proxy_batch_size": 2})
    cfg = write_cfg(tmp_path / "search.yaml", raw)
    fill_disk_under(monkeypatch, tmp_path / "wd" / "search" / "study.journal")
    code, out, exc = cli("search", cfg)
    assert_one_line(code, out, exc, str(tmp_path / "wd" / "search" / "study.journal"), "no space left on device")
    monkeypatch.undo()
    fill_disk_under(monkeypatch, tmp_path / "wd" / "search" / "results.csv")
    code, out, exc = cli("search", cfg)
    assert_one_line(code, out, exc, str(tmp_path / "wd" / "search" / "results.csv"), "no space left on device")


def test_disk_full_during_export_is_one_line_naming_the_file(cfg_file, tmp_path, monkeypatch):
    cfg = cfg_file(export={"check_images": 1})
    code, out, exc = cli("train", cfg)
    assert code == 0, out
    fill_disk_under(monkeypatch, tmp_path / "wd" / "export")
    code, out, exc = cli("export", cfg, "--source", "baseline")
    assert_one_line(code, out, exc, str(tmp_path / "wd" / "export" / "baseline.onnx:"), "no space left on device")


# --------------------------------------------------------------------- weak: checkpoints of a search space
def _tuned_checkpoint(cfg, num_classes=8):
    """A tune checkpoint where ``nasdet tune`` writes it (the space's smallest arch, its static weights)."""
    from nasdet.config import config_to_dict
    from nasdet.models.supernet import build_supernet
    from nasdet.train.checkpoint import save_checkpoint
    from nasdet.train.trained import build_static_model

    space = build_supernet(cfg, num_classes)[1]
    arch = space.smallest()
    model, _ = build_static_model(cfg, num_classes, arch)
    path = Path(cfg.work_dir) / "tune" / "ckpt" / "last.pt"
    save_checkpoint({"model": model.state_dict(), "extra": {"arch": arch}, "config": config_to_dict(cfg),
                     "step": 1}, path)
    return path, arch, space


def test_tuned_checkpoint_of_another_space_is_a_short_line_naming_it(tiny_config):
    from nasdet.errors import CheckpointError
    from nasdet.models.supernet import build_supernet
    from nasdet.stages.export import run_export

    ofa = tiny_config(model=OFA_TINY, supernet={"input_sizes": [64, 96]})
    path, _, space = _tuned_checkpoint(ofa)
    mbv2 = ofa.model_copy(update={"model": ofa.model.model_copy(update={
        "backbone": ofa.model.backbone.model_copy(update={"name": "mbv2_elastic", "width_mult": 0.35})})})
    other = build_supernet(mbv2, 8)[1]
    with pytest.raises(CheckpointError) as info:
        run_export(mbv2, source="tune", console=quiet())
    line = str(info.value)
    assert str(path) in line and space.space_id in line and other.space_id in line and len(line) < 600, line


def test_eval_and_cost_of_the_configs_own_tuned_checkpoint(tiny_config):
    from nasdet.stages.baseline import run_cost, run_eval

    cfg = tiny_config(model=OFA_TINY, supernet={"input_sizes": [64, 96]}, eval={"max_images": 2})
    path, arch, _ = _tuned_checkpoint(cfg)
    buf = quiet()
    run_eval(cfg, ckpt=path, console=buf)
    record = json.loads((Path(cfg.work_dir) / "eval" / "tune_last_metrics.json").read_text())
    assert record["tuned_arch"] == arch and "tuned subnet" in buf.file.getvalue()
    cost = run_cost(cfg, ckpt=path, latency=False, console=quiet())
    assert cost["tuned_arch"] == arch and cost["macs"]["total"] > 0


def test_eval_of_a_supernet_checkpoint_says_which_subnet(tiny_config):
    from conftest import fake_pretrain
    from nasdet.stages.baseline import run_eval

    cfg = tiny_config(model=OFA_TINY, supernet={"input_sizes": [64, 96], "recalib_batches": 1},
                      eval={"max_images": 2})
    _, space = fake_pretrain(cfg)
    buf = quiet()
    run_eval(cfg, ckpt=Path(cfg.work_dir) / "supernet" / "ckpt" / "last.pt", console=buf)
    said = " ".join(buf.file.getvalue().split())
    assert "supernet checkpoint: evaluated its default subnet at input size 96" in said
    assert "BatchNorm recalibrated" in said
    record = json.loads((Path(cfg.work_dir) / "eval" / "supernet_last_metrics.json").read_text())
    assert record["supernet_subnet"] == space.default()


# ------------------------------------------------------------------------------- weak: one-line refusals
@pytest.mark.parametrize("strategy", ["gradient", "darts"])
def test_one_process_searches_refuse_workers_before_starting_any(cfg_file, strategy, monkeypatch):
    import subprocess

    def no_launch(*a, **k):
        raise AssertionError("a worker process was started")

    monkeypatch.setattr(subprocess, "Popen", no_launch)
    cfg = cfg_file(detector="fcos" if strategy == "darts" else "ssdlite",
                   search={"strategy": strategy, "budget": {"metric": "macs", "max": 1e12}})
    code, out, exc = cli("search", cfg, "--workers", 2)
    assert_one_line(code, out, exc, "--workers 2", f"search.strategy {strategy} runs in one process")


def test_searched_arch_names_the_backbone_it_needs(cfg_file):
    cfg = cfg_file(model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.35}},
                   tune={"searched_arch": [0] * 17, "init": "scratch"})
    code, out, exc = cli("tune", cfg)
    assert_one_line(code, out, exc, "tune.searched_arch", "mbv2_width", "'mbv2_elastic'")


def test_a_searched_arch_other_than_the_work_dirs_search_result_is_said(cfg_file, tmp_path):
    """ENOT's tune configs carry tune.searched_arch (the baseline's widths): a tune after the search in the same
    work dir trained that, not the search's best_arch.json, without a word."""
    from nasdet.config import load_config
    from nasdet.models.supernet import build_supernet
    from nasdet.space import save_arch

    cfg = cfg_file(model={"backbone": {"name": "mbv2_width", "width_mult": 0.25}},
                   tune={"searched_arch": [0] * 17, "init": "scratch"})
    _, space = build_supernet(load_config(cfg), 8)
    best = tmp_path / "wd" / "search" / "best_arch.json"
    best.parent.mkdir(parents=True)
    save_arch(best, space.smallest(), space)
    code, out, exc = cli("tune", cfg)
    assert code == 0 and exc is None, out
    flat = " ".join(out.split())
    assert "tune: arch from tune.searched_arch" in flat
    assert f"warning: tuning tune.searched_arch (the config's ENOT width indices), not the architecture this work " \
           f"dir's search found ({best}); --set tune.searched_arch=null tunes the search's" in flat


def test_diagnose_with_every_standalone_ap_zero_says_the_target_is_constant(tiny_config):
    import math

    from rich.console import Console

    from nasdet.search.diagnose import ranker_table, summarize

    cfg = tiny_config(diagnose={"archs": 4, "proxies": []})
    records = [{"arch_id": f"a{i}", "arch": {"input_size": 96}, "costs": {"macs": 1e6 * (i + 1), "params": 1e3 * (i + 1)},
                "supernet": {"AP": 0.01 * i}, "standalone": {"scratch": {"AP": 0.0}, "supernet": {"AP": 0.0}},
                "proxies": {}, "seconds": {"train": 1.0}} for i in range(4)]
    summary = summarize(records, cfg)
    assert math.isnan(summary["rankers"]["macs"]["top_k_overlap"])  # was 1.0 or 0.67: archs in listed order
    assert "the target is constant" in summary["warning"] and "diagnose.epochs" in summary["warning"]
    buf = io.StringIO()
    Console(file=buf, width=200).print(ranker_table(summary))
    assert "undefined" in buf.getvalue() and "nan" not in buf.getvalue()


def test_readme_command_fails_a_dead_remote_workers_trial(tmp_path, monkeypatch):
    """A journal file has no heartbeat: a trial of a dead process on another host stays RUNNING (its arch
    blocked) until failed with the README's ``optuna tell`` command, after which nasdet's next look skips it."""
    import sys
    import warnings

    import optuna
    from optuna.cli import main as optuna_cli
    from optuna.trial import TrialState

    from nasdet.search.study import fail_stale_trials, open_storage

    journal = tmp_path / "search" / "study.journal"
    study = optuna.create_study(storage=open_storage(journal, tmp_path), study_name="tiny-evolution")
    trial = study.ask()
    trial.suggest_categorical("b.kernel", [3, 5])
    trial.set_user_attr("worker", "another-host:4242")
    assert fail_stale_trials(study) == 0  # nasdet cannot tell a remote process is dead
    for command in (["trials", "-f", "table"], ["tell", "--trial-number", str(trial.number), "--state", "fail"]):
        monkeypatch.setattr(sys, "argv", ["optuna", command[0], "--storage", str(journal), "--study-name",
                                          "tiny-evolution", *command[1:]])
        with warnings.catch_warnings():  # optuna marks `tell` experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            assert optuna_cli() == 0
    again = optuna.load_study(storage=open_storage(journal, tmp_path), study_name="tiny-evolution")
    assert [t.state for t in again.trials] == [TrialState.FAIL]


def test_pipeline_without_a_search_split_is_refused_before_the_pretrain(tiny_config, tmp_path):
    """data.search_fraction 0 (the default) leaves the split the search scores on empty: said before anything is
    trained (the pipeline pretrained the whole supernet, then stopped at the search, and the fix needed the
    supernet deleted: another split is another pretrain)."""
    from rich.console import Console

    from nasdet.errors import ConfigError
    from nasdet.pipeline import run_pipeline

    cfg = tiny_config(data={"search_fraction": 0.0})
    with pytest.raises(ConfigError, match="data.search_fraction"):
        run_pipeline(cfg, console=Console(quiet=True))
    assert not (Path(cfg.work_dir) / "baseline").exists() and not (Path(cfg.work_dir) / "supernet").exists()
