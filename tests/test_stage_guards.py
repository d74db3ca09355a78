"""What one stage finds of another in the work dir: a killed run's outputs, a config that does not fit the
stage's space. Each case here went through silently, or failed late with a line naming no config key, before
its fix (session 20, from a QA pass over the stage commands)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from nasdet.config import BudgetConfig

from test_errors_round3 import OFA_TINY, _tuned_checkpoint


def quiet():
    from rich.console import Console

    return Console(file=io.StringIO(), width=400)


def test_model_input_size_outside_the_supernets_sizes_is_refused_before_training(tiny_config):
    from nasdet.errors import ConfigError
    from nasdet.stages.pretrain import run_pretrain

    cfg = tiny_config(model={**OFA_TINY, "input_size": 80}, supernet={"input_sizes": [64, 96]},
                      train={"max_steps": 1})
    with pytest.raises(ConfigError) as info:
        run_pretrain(cfg, console=quiet())
    line = str(info.value)
    assert "model.input_size 80" in line and "supernet.input_sizes [64, 96]" in line
    assert not (Path(cfg.work_dir) / "supernet").exists()  # refused before anything is written


def _with_planned_steps(path: Path, step: int, total: int) -> None:
    from nasdet.train.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(path)
    save_checkpoint({**state, "step": step, "total_steps": total}, path)


def test_export_of_a_killed_tune_says_so_and_records_the_step(tiny_config):
    from nasdet.stages.export import run_export

    cfg = tiny_config(model=OFA_TINY, supernet={"input_sizes": [64, 96]}, export={"check_images": 1},
                      cost={"warmup": 0, "runs": 1, "threads": 1})
    path, _, _ = _tuned_checkpoint(cfg)
    _with_planned_steps(path, 3, 10)
    buf = quiet()
    record = run_export(cfg, source="tune", console=buf)
    said = " ".join(buf.file.getvalue().split())
    assert f"warning: {path} stopped at step 3 of 10: its training did not finish" in said
    assert "rerun `nasdet tune` to finish it" in said
    assert record["checkpoint_step"] == 3 and record["finished_training"] is False
    written = json.loads((Path(cfg.work_dir) / "export" / "tune.json").read_text())
    assert written["checkpoint_step"] == 3 and written["finished_training"] is False

    _with_planned_steps(path, 10, 10)  # finished: no warning; over a budget, the box gives the units
    budget = BudgetConfig(metric="macs", max=1000)
    buf = quiet()
    record = run_export(cfg.model_copy(update={"search": cfg.search.model_copy(update={"budget": budget})}),
                        source="tune", console=buf)
    assert record["finished_training"] is True and "warning" not in buf.file.getvalue()
    said = " ".join(buf.file.getvalue().replace("│", " ").split())
    measured = record["measured"]["macs"] / 1e6
    assert f"macs measured {measured:.4g} M MACs vs predicted - vs budget 0.001 M MACs" in said, said


def _darts_search_outputs(cfg, step: int, total: int, max_steps: int | None = None) -> Path:
    """``search/genotype.json`` and the darts checkpoint of a search at ``step`` of ``total``."""
    from nasdet.config import config_to_dict
    from nasdet.models.heads.fad import read_genotypes, write_genotypes
    from nasdet.train.checkpoint import save_checkpoint

    out = Path(cfg.work_dir) / "search"
    write_genotypes(out, *read_genotypes("fad_paper"))
    record = config_to_dict(cfg)
    record["search"]["darts"]["max_steps"] = max_steps
    save_checkpoint({"model": {}, "step": step, "total_steps": total, "config": record}, out / "ckpt" / "last.pt")
    return out / "genotype.json"


def test_tune_refuses_the_genotypes_of_a_killed_darts_search(tiny_config):
    from nasdet.errors import StageOrderError
    from nasdet.models.heads.fad import GENOTYPE_KEY
    from nasdet.stages.tune import resolve_genotype_arch

    cfg = tiny_config("fcos", search={"strategy": "darts"})
    genotypes = _darts_search_outputs(cfg, 3, 8)
    with pytest.raises(StageOrderError) as info:
        resolve_genotype_arch(cfg)
    line = str(info.value)
    assert "the darts search stopped at step 3 of 8" in line and f"tune.arch: {genotypes}" in line
    assert "rerun `nasdet search`" in line

    # given as tune.arch, the same file is taken as it is
    given = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"arch": str(genotypes)})})
    arch, source = resolve_genotype_arch(given)
    assert set(arch) == {GENOTYPE_KEY} and source == str(genotypes)

    # a search cut short on purpose (search.darts.max_steps) finished its run: its genotypes are tuned
    _darts_search_outputs(cfg, 3, 8, max_steps=3)
    assert resolve_genotype_arch(cfg)[1] == str(genotypes)
    _darts_search_outputs(cfg, 8, 8)
    assert resolve_genotype_arch(cfg)[1] == str(genotypes)


def _trained_baseline(cfg, folder: Path, num_classes: int = 8) -> Path:
    """A baseline checkpoint of ``cfg``'s detector (random weights) in ``folder/baseline/ckpt/last.pt``."""
    import torch

    from nasdet.config import config_to_dict
    from nasdet.models import build_detector
    from nasdet.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_detector(cfg.model, num_classes=num_classes)
    path = folder / "baseline" / "ckpt" / "last.pt"
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg), "step": 1}, path)
    return path


def test_cost_of_a_supernet_checkpoint_is_its_default_subnets(tiny_config):
    from conftest import fake_pretrain
    from nasdet.models.cost import detector_macs, detector_params
    from nasdet.models.supernet import export_detector
    from nasdet.stages.baseline import run_cost

    cfg = tiny_config(model=OFA_TINY, supernet={"input_sizes": [64, 96]})
    model, space = fake_pretrain(cfg)
    subnet = export_detector(model, space.default(), space).eval()
    cost = run_cost(cfg, ckpt=Path(cfg.work_dir) / "supernet" / "ckpt" / "last.pt", latency=False, console=quiet())
    assert cost["supernet_subnet"] == space.default()
    assert cost["params"]["total"] == detector_params(subnet)["total"] < detector_params(model)["total"]
    assert cost["macs"]["total"] == detector_macs(subnet)["total"]


def test_cost_names_the_checkpoints_backbone_not_the_configs(tiny_config, tmp_path):
    from nasdet.stages.baseline import run_cost

    trained = tiny_config()  # mobilenet_v3_small
    path = _trained_baseline(trained, tmp_path / "other_run")
    buf = quiet()
    cost = run_cost(tiny_config(model=OFA_TINY), ckpt=path, latency=False, console=buf)
    assert cost["backbone"] == "mobilenet_v3_small"
    assert "cost of ssdlite / mobilenet_v3_small" in buf.file.getvalue()


def test_eval_records_of_two_runs_checkpoints_do_not_collide(tiny_config, tmp_path):
    from nasdet.stages.baseline import eval_record_path

    cfg = tiny_config()
    wd = Path(cfg.work_dir)
    names = {eval_record_path(cfg, None, tmp_path / run / "baseline" / "ckpt" / "last.pt", True).name
             for run in ("run_a", "run_b")}
    assert names == {"run_a_baseline_last_metrics.json", "run_b_baseline_last_metrics.json"}
    # this run's own checkpoints keep their short names
    assert eval_record_path(cfg, None, wd / "baseline" / "ckpt" / "last.pt", True) == \
        wd / "eval" / "baseline_last_metrics.json"
    assert eval_record_path(cfg, None, wd / "tune" / "ckpt" / "last.pt", True, what="cost").name == "tune_last_cost.json"


def test_eval_of_an_imported_baseline_keeps_its_import_record(tiny_config):
    from nasdet.stages.baseline import run_eval

    cfg = tiny_config()
    wd = Path(cfg.work_dir)
    _trained_baseline(cfg, wd)
    imported = {"path": "/models/mine.pth", "sha256": "ab" * 32}
    (wd / "baseline" / "metrics.json").write_text(json.dumps({"metrics": {"AP": 0.5}, "imported_from": imported}))
    run_eval(cfg, console=quiet())
    record = json.loads((wd / "baseline" / "metrics.json").read_text())
    assert record["imported_from"] == imported and record["metrics"]["AP"] != 0.5 and record["step"] == 1


def test_standalone_pretrain_starts_from_the_baseline_as_the_pipeline_does(tiny_config):
    """ENOT's pipeline.init_supernet_from_baseline held only inside `nasdet pipeline`: `nasdet pretrain` started
    from random weights, and the pipeline then kept that supernet."""
    from nasdet.errors import StageOrderError
    from nasdet.stages.common import baseline_config
    from nasdet.stages.pretrain import run_pretrain
    from nasdet.train.checkpoint import load_checkpoint

    cfg = tiny_config(model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.25}},
                      pipeline={"baseline_backbone": "mobilenet_v2", "init_supernet_from_baseline": True},
                      supernet={"report_archs": ["smallest"], "recalib_batches": 1},
                      train={"max_steps": 1}, eval={"max_images": 2})
    wd = Path(cfg.work_dir)
    with pytest.raises(StageOrderError, match=r"pipeline.init_supernet_from_baseline: .*baseline/ckpt/last.pt does "
                                              r"not exist: run the baseline stage first \(`nasdet train CONFIG`\)"):
        run_pretrain(cfg, console=quiet())
    assert not (wd / "supernet").exists()
    base = _trained_baseline(baseline_config(cfg), wd)
    buf = quiet()
    run_pretrain(cfg, console=buf)
    assert f"initialised the supernet from {base}" in " ".join(buf.file.getvalue().split())
    assert load_checkpoint(wd / "supernet" / "ckpt" / "last.pt")["config"]["supernet"]["init_from"] == str(base)


def test_the_first_log_line_says_what_training_starts_from(tiny_config, tmp_path):
    """The trainer's header said "from scratch" for a detector whose backbone started from a file."""
    import torch

    from nasdet.models import build_detector
    from nasdet.stages.baseline import run_baseline
    from nasdet.stages.common import start_note_of

    assert start_note_of(tiny_config()) == "from scratch"
    assert start_note_of(tiny_config(model={"backbone": {"name": "mobilenet_v3_small", "width_mult": 0.5,
                                                         "pretrained": "imagenet"}})) == \
        "backbone from torchvision's MobileNet_V3_Small_Weights.IMAGENET1K_V1 weights (imagenet: " \
        "mobilenet_v3_small-047dcff4.pth)"  # the weights `imagenet` means here, which torchvision has moved before
    body = tmp_path / "backbone.pt"
    torch.save(build_detector(tiny_config().model, num_classes=8).backbone.body.state_dict(), body)
    cfg = tiny_config(model={"backbone": {"name": "mobilenet_v3_small", "width_mult": 0.5, "checkpoint": str(body)}},
                      train={"max_steps": 1}, eval={"max_images": 2})
    buf = quiet()
    run_baseline(cfg, console=buf)
    assert f"from backbone from {body}" not in buf.file.getvalue()
    assert f"backbone from {body}" in " ".join(buf.file.getvalue().split())
