import pytest
import yaml

from nasdet.config import ConfigError, load_config, save_config

BASE = {
    "data": {"format": "coco", "train": {"annotations": "a.json", "images": "img"},
             "val": {"annotations": "b.json", "images": "img"}},
}


def write(tmp_path, raw, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return p


def test_minimal_config_gets_defaults(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.model.detector == "ssdlite" and cfg.train.optimizer.name == "sgd"


def test_unknown_key_names_path_and_file(tmp_path):
    raw = {**BASE, "train": {"optimiser": {"lr": 0.1}}}
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, raw, "typo.yaml"))
    assert "train.optimiser" in str(e.value) and "typo.yaml" in str(e.value) and "unknown key" in str(e.value)


def test_wrong_type_names_key_and_value(tmp_path):
    raw = {**BASE, "train": {"epochs": "many"}}
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, raw))
    assert "train.epochs" in str(e.value) and "many" in str(e.value)


@pytest.mark.parametrize("key", ["train.epochs", "train.optimizer.lr", "pipeline.diagnose", "model.input_size"])
def test_a_boolean_for_a_number_is_an_error_naming_the_key(tmp_path, key):
    """pydantic's lax mode took `--set train.epochs=true` as 1 epoch."""
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, BASE), [f"{key}=true"])
    assert f"{key}: expected a number, not a boolean (got True)" in str(e.value)
    cfg = load_config(write(tmp_path, BASE), ["train.channels_last=false", "export.int8=true"])  # booleans stay
    assert cfg.train.channels_last is False and cfg.export.int8 is True


def test_a_config_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("# café\n".encode("latin-1") + yaml.safe_dump(BASE).encode())
    with pytest.raises(ConfigError, match=rf"config {p} is not UTF-8 text \(byte 0xe9 at offset 5\): save it as UTF-8"):
        load_config(p)
    p.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(BASE).encode())  # UTF-8 with a byte-order mark: fine
    assert load_config(p).data.format == "coco"


def test_home_folder_paths_are_expanded(tmp_path, monkeypatch):
    """`work_dir: ~/runs` made a folder named `~` in the current one."""
    from nasdet.workdir import work_dir_of

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(write(tmp_path, {**BASE, "work_dir": "~/runs/x"}), ["data.train.images=~/data/img"])
    assert cfg.work_dir == str(tmp_path / "home" / "runs" / "x")
    assert cfg.data.train.images == str(tmp_path / "home" / "data" / "img")
    assert work_dir_of(cfg, "~/other") == tmp_path / "home" / "other"  # --work-dir=~/other (no shell expansion)


def test_bad_literal(tmp_path):
    with pytest.raises(ConfigError, match="model.detector"):
        load_config(write(tmp_path, {**BASE, "model": {"detector": "yolov9"}}))


def test_a_key_of_another_detector_family_is_an_error_naming_it(tmp_path):
    raw = {**BASE, "model": {"detector": "fcos", "fpn_channels": 64, "ssd_levels": ["c3", "c4", "c5"]}}
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, raw, "mixed.yaml"))
    msg = str(e.value)
    assert "model.ssd_levels: unknown key" in msg and "ssd or ssdlite" in msg and "mixed.yaml" in msg
    assert "fpn_channels" not in msg  # a key of its own family is fine
    cfg = load_config(write(tmp_path, {**BASE, "model": {"detector": "fcos", "fpn_channels": 64}}))
    assert cfg.model.fpn_channels == 64 and not hasattr(cfg.model, "ssd_levels")
    with pytest.raises(ConfigError, match=r"model\.extra_channels: unknown key.*ssd or ssdlite"):
        load_config(write(tmp_path, BASE), ["model.detector=faster_rcnn", "model.extra_channels=[1, 2, 3, 4]"])


def test_coco_needs_annotations(tmp_path):
    raw = {"data": {"format": "coco", "train": {"images": "x"}, "val": {"annotations": "b", "images": "x"}}}
    with pytest.raises(ConfigError, match="data.train"):
        load_config(write(tmp_path, raw))


def test_set_overrides_nested_and_typed(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["train.epochs=3", "train.optimizer.lr=0.5", "model.backbone.name=resnet18",
                                              "train.grad_clip=null", "data.augment.iou_crop=true"])
    assert cfg.train.epochs == 3 and cfg.train.optimizer.lr == 0.5 and cfg.model.backbone.name == "resnet18"
    assert cfg.train.grad_clip is None and cfg.data.augment.iou_crop is True


def test_set_unknown_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config(write(tmp_path, BASE), ["train.epoch=3"])


def test_set_malformed(tmp_path):
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(write(tmp_path, BASE), ["train.epochs"])


def test_invalid_yaml_names_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["train.epochs=7"])
    save_config(cfg, tmp_path / "wd" / "config.yaml")
    again = load_config(tmp_path / "wd" / "config.yaml")
    assert again == cfg


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted(Path(__file__).parent.parent.joinpath("configs").rglob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)


def test_classify_and_init_from_baseline_together_are_refused(tmp_path):
    """Both give the supernet its starting weights: the baseline's overwrote the classification-trained backbone
    (DetNAS / OFA step 1's work lost without a word)."""
    raw = {**BASE, "pipeline": {"classify": True, "init_supernet_from_baseline": True}}
    with pytest.raises(ConfigError, match="pipeline.classify and pipeline.init_supernet_from_baseline .* choose one"):
        load_config(write(tmp_path, raw))
    raw = {**BASE, "pipeline": {"classify": True}, "supernet": {"init_from": "baseline.pt"}}  # (QA: classify trained,
    with pytest.raises(ConfigError, match=r"pipeline.classify and supernet.init_from \(baseline.pt\) .* choose one"):
        load_config(write(tmp_path, raw))  # then its backbone was discarded without a word)
    for one in ("classify", "init_supernet_from_baseline"):
        assert getattr(load_config(write(tmp_path, {**BASE, "pipeline": {one: True}})).pipeline, one)


def test_an_int8_budget_with_an_export_opset_before_13_is_refused_at_load(tmp_path):
    """The pipeline trained every stage and then failed at export: its INT8 file needs opset 13."""
    raw = {**BASE, "cost": {"latency": "onnxruntime_int8"}, "export": {"opset": 12}}
    with pytest.raises(ConfigError, match=r"export.opset 12 is too old for the INT8 file an INT8 latency budget"):
        load_config(write(tmp_path, raw))
    assert load_config(write(tmp_path, {**raw, "export": {"opset": 13}})).export.opset == 13


def test_setting_one_key_of_an_unset_recipe_keeps_the_rest_of_train(tmp_path):
    """`--set supernet.train.max_steps=6` on a config without supernet.train trained SGD lr 0.01, 12 epochs, batch
    16 (the built-in defaults) instead of the config's train with max_steps 6, without a word (QA, session 27)."""
    raw = {**BASE, "train": {"epochs": 3, "batch_size": 4, "optimizer": {"name": "adamw", "lr": 0.003}}}
    path = write(tmp_path, raw)
    for section in ("supernet", "tune"):
        cfg = load_config(path, [f"{section}.train.max_steps=6"])
        recipe = getattr(cfg, section).train
        assert recipe.max_steps == 6 and recipe.epochs == 3 and recipe.batch_size == 4
        assert recipe.optimizer.name == "adamw" and recipe.optimizer.lr == 0.003
        assert cfg.train.max_steps is None  # the top-level recipe itself unchanged
    # a recipe section the config writes is changed where it says
    raw["tune"] = {"train": {"epochs": 9}}
    assert load_config(write(tmp_path, raw), ["tune.train.max_steps=6"]).tune.train.epochs == 9


def test_setting_a_recipe_key_over_a_train_that_is_not_a_section_names_train(tmp_path):
    with pytest.raises(ConfigError, match="train: Input should be a valid dictionary"):
        load_config(write(tmp_path, {**BASE, "train": 5}), ["tune.train.max_steps=6"])  # (was a TypeError)


def test_a_shrinking_schedule_past_the_training_is_refused(tmp_path):
    """A 500-epoch recipe shortened to 2 epochs kept its phases at 80..400: depth and expand never opened in
    training, yet the pretrain reported the phase's never-trained "smallest" and the search scored them."""
    phases = [{"epoch": 0, "open": {"kernel": [7]}}, {"epoch": 1, "open": {"kernel": [3, 5, 7]}}, {"epoch": 2, "open": {}}]
    raw = {**BASE, "train": {"epochs": 2}, "supernet": {"schedule": phases}}
    with pytest.raises(ConfigError, match=r"supernet.schedule: the phase\(s\) at epoch 2 start when the training has "
                                          r"ended \(train.epochs 2"):
        load_config(write(tmp_path, raw))
    raw["supernet"]["train"] = {"epochs": 3}  # the supernet's own recipe decides
    assert load_config(write(tmp_path, raw)).supernet.schedule[-1].epoch == 2
    raw["supernet"]["distill"] = {"teacher": "largest", "start_epoch": 3}
    with pytest.raises(ConfigError, match=r"supernet.distill.start_epoch 3 is at or after the training's end "
                                          r"\(supernet.train.epochs 3\)"):
        load_config(write(tmp_path, raw))
    # a phase's own lr (OFA) warmed up over its whole span never reaches it; a warm-up without one warms nothing
    raw["supernet"]["distill"] = {}
    phases[1].update(lr=0.01, warmup_epochs=2)
    with pytest.raises(ConfigError, match=r"the phase at epoch 1 warms its lr up over 2 epochs, and its lr runs only "
                                          r"to epoch 3 \(the next phase with an lr, or supernet.train.epochs\)"):
        load_config(write(tmp_path, raw))
    phases[1].pop("lr")
    with pytest.raises(ConfigError, match=r"supernet.schedule \(epoch 1\): warmup_epochs warms a phase's own lr up"):
        load_config(write(tmp_path, raw))
    phases[1].update(lr=0.01, warmup_epochs=0)
    assert load_config(write(tmp_path, raw)).supernet.schedule[1].lr == 0.01


def test_uniform_samples_with_sandwich_sampling_are_refused(tmp_path):
    """OFA's 1 / 2 / 4 uniform subnets a step copied into a sandwich config did nothing, without a word."""
    raw = {**BASE, "supernet": {"sampling": "sandwich", "schedule": [{"epoch": 0, "open": {}, "samples": 2}]}}
    with pytest.raises(ConfigError, match="supernet.sampling sandwich trains its own"):
        load_config(write(tmp_path, raw))
    raw["supernet"] = {"sampling": "sandwich", "uniform_samples": 4}
    with pytest.raises(ConfigError, match="supernet.sampling sandwich trains its own"):
        load_config(write(tmp_path, raw))


def test_defaults_a_strategy_or_stage_does_not_use_are_not_checked_against_what_is_set(tmp_path):
    """search.parents (evolution's; default 10) refused an NSGA-II population of 4; diagnose.archs (default 12, which
    pipeline.diagnose replaces) refused pipeline.diagnose 3 with a pool of 6."""
    cfg = load_config(write(tmp_path, {**BASE, "search": {"strategy": "nsga2", "population": 4}}))
    assert cfg.search.population == 4
    for raw in ({"strategy": "evolution", "population": 4}, {"strategy": "nsga2", "population": 4, "parents": 5}):
        with pytest.raises(ConfigError, match=r"search.parents \(\d+\) must be <= search.population \(4\)"):
            load_config(write(tmp_path, {**BASE, "search": raw}))
    cfg = load_config(write(tmp_path, {**BASE, "pipeline": {"diagnose": 3}, "diagnose": {"pool": 6}}))
    assert cfg.pipeline.diagnose == 3
    with pytest.raises(ConfigError, match=r"diagnose.pool \(6\) must be >= diagnose.archs \(12\)"):
        load_config(write(tmp_path, {**BASE, "diagnose": {"pool": 6}}))
    with pytest.raises(ConfigError, match=r"pipeline.diagnose \(8\) must be <= diagnose.pool \(6\)"):
        load_config(write(tmp_path, {**BASE, "pipeline": {"diagnose": 8}, "diagnose": {"pool": 6}}))


def test_a_config_loaded_by_a_relative_path_is_still_the_given_file_after_a_chdir(tmp_path, monkeypatch):
    """A notebook loads a run's record with an override, changes folder, runs a stage: the record it was given was
    rewritten under it (the path kept as typed no longer named it); one override may be given as a str."""
    from nasdet.config import save_run_record

    run = tmp_path / "run"
    run.mkdir()
    record = save_run_record(load_config(write(tmp_path, {**BASE, "work_dir": str(run)})), run / "config.yaml")
    before = record.read_text()
    monkeypatch.chdir(tmp_path)
    cfg = load_config("run/config.yaml", "train.epochs=2")
    assert cfg.train.epochs == 2 and load_config("run/config.yaml", "").train.epochs == 12
    monkeypatch.chdir(run.parent.parent)
    written = save_run_record(cfg, record)
    assert written == run / "config.nasdet.yaml" and record.read_text() == before
