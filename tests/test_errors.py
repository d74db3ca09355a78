"""Bad input ends as one clear line naming the file, key or value; a silent wrong result becomes an error,
a warning or the right result (issue 16). In-process (CliRunner) where that keeps the test meaningful."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_raw
from nasdet.cli import app
from nasdet.errors import CheckpointError, ConfigError, DataError, NasdetError, StageOrderError


def cli(*args):
    """Run the CLI in process; returns (exit code, output, exception or None)."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    exc = res.exception if not isinstance(res.exception, SystemExit) else None
    return res.exit_code, res.output, exc


def write_cfg(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


def assert_one_line(code, out, exc, *needles, exit_code=2):
    assert exc is None, f"raised {exc!r} instead of printing one line"
    assert code == exit_code, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    err = [ln for ln in lines if ln.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in out, out
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


# ------------------------------------------------------------------------------------ the error classes
def test_error_classes_share_one_base_and_keep_old_names():
    from nasdet.data.dataset import DataError as DataError2
    from nasdet.export import ExportParityError
    from nasdet.models.heads.fad import GenotypeError
    from nasdet.space import ArchError, NoArchUnderCost
    from nasdet.train.checkpoint import CheckpointError as CheckpointError2
    from nasdet.train.loop import TrainingDiverged
    from nasdet.errors import StageOutputMissing

    assert DataError2 is DataError and CheckpointError2 is CheckpointError and StageOutputMissing is StageOrderError
    for cls in (ConfigError, DataError, CheckpointError, StageOrderError, ArchError, GenotypeError, NoArchUnderCost,
                TrainingDiverged, ExportParityError):
        assert issubclass(cls, NasdetError)
    # callers that caught the builtins before still do
    assert issubclass(ConfigError, ValueError) and issubclass(StageOrderError, FileNotFoundError)
    assert issubclass(ArchError, ConfigError) and issubclass(TrainingDiverged, RuntimeError)


def test_cli_prints_errors_as_plain_text(shapes_dir, tmp_path):
    """Brackets in a path survive; a message holding ``[/...]`` does not crash the printer."""
    raw = tiny_raw(shapes_dir, tmp_path / "wd")
    raw["data"]["val"]["annotations"] = str(tmp_path / "data[v2]" / "annotations.json")
    code, out, exc = cli("eval", write_cfg(tmp_path / "c.yaml", raw), "--ckpt", tmp_path / "none.pt")
    assert_one_line(code, out, exc, "data[v2]")
    code, out, exc = cli("train", write_cfg(tmp_path / "ok.yaml", tiny_raw(shapes_dir, tmp_path / "wd")),
                         "--set", "model.detector=ssd/lite")
    assert_one_line(code, out, exc, "model.detector", "ssd/lite")


def test_cli_shows_a_traceback_for_a_bug(monkeypatch, tmp_path, shapes_dir):
    """A bug (here a ValueError or KeyError deep inside a stage) is not dressed up as a user error."""
    import nasdet.stages.baseline

    for bug in (ValueError("expected more than 1 value per channel"), KeyError("internal")):
        def broken(*a, **k):
            raise bug

        monkeypatch.setattr(nasdet.stages.baseline, "run_baseline", broken)
        code, out, exc = cli("train", write_cfg(tmp_path / "ok.yaml", tiny_raw(shapes_dir, tmp_path / "wd")))
        assert exc is bug and code == 1 and "error:" not in out


# ------------------------------------------------------------------- raw tracebacks -> one line
@pytest.fixture
def tiny_cfg_file(shapes_dir, tmp_path):
    def make(**sections):
        raw = tiny_raw(shapes_dir, tmp_path / "wd")
        for section, values in sections.items():
            raw.setdefault(section, {}).update(values) if isinstance(values, dict) else raw.update({section: values})
        return write_cfg(tmp_path / "tiny.yaml", raw)

    return make


def refuse_writes_under(monkeypatch, folder):
    """Make ``folder`` read-only. chmod is enough for a normal user; root writes anyway, so there the
    refusal the OS would give is raised by mkdir / open for paths under ``folder``."""
    import builtins
    import errno
    import os
    from pathlib import Path

    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o500)
    if os.geteuid() != 0:
        return
    root = str(folder.resolve())

    def inside(p):
        return str(Path(p).resolve()).startswith(root)

    def deny(p):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))

    real_mkdir, real_open = Path.mkdir, builtins.open
    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: deny(self) if inside(self) and not self.is_dir()
                        else real_mkdir(self, *a, **k))
    monkeypatch.setattr(builtins, "open", lambda f, mode="r", *a, **k: deny(f) if isinstance(f, (str, Path)) and
                        any(c in mode for c in "wax+") and inside(f) else real_open(f, mode, *a, **k))


def test_work_dir_not_writable_is_one_line(tiny_cfg_file, tmp_path, monkeypatch):
    cfg = tiny_cfg_file(train={"max_steps": 1})
    refuse_writes_under(monkeypatch, tmp_path / "ro")
    code, out, exc = cli("train", cfg, "--work-dir", tmp_path / "ro" / "wd")
    assert_one_line(code, out, exc, str(tmp_path / "ro"), "permission denied")


def test_work_dir_under_a_file_is_one_line(tiny_cfg_file, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    code, out, exc = cli("train", tiny_cfg_file(train={"max_steps": 1}), "--work-dir", tmp_path / "afile" / "wd")
    assert_one_line(code, out, exc, str(tmp_path / "afile"), "not a directory")


def test_make_synthetic_unwritable_output_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    code, out, exc = cli("data", "make-synthetic", tmp_path / "afile" / "s", "--train", 2, "--val", 1, "--size", 48,
                         "--workers", 1)
    assert_one_line(code, out, exc, str(tmp_path / "afile"))
    refuse_writes_under(monkeypatch, tmp_path / "ro")
    code, out, exc = cli("data", "make-synthetic", tmp_path / "ro" / "s", "--train", 2, "--val", 1, "--size", 48,
                         "--workers", 1)
    assert_one_line(code, out, exc, str(tmp_path / "ro"), "permission denied")


@pytest.mark.parametrize("option, value", [("--train", 0), ("--val", 0), ("--size", 100000), ("--seed", -1),
                                           ("--workers", 0)])
def test_make_synthetic_out_of_range_options_are_refused_naming_the_option(tmp_path, option, value):
    """--train 0 wrote a set nasdet then refused; --size 100000 ended in numpy's memory error traceback."""
    code, out, exc = cli("data", "make-synthetic", tmp_path / "s", option, value)
    assert code == 2 and exc is None and f"Invalid value for '{option}'" in out, out
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("kind", ["malicious", "truncated", "empty", "json"])
def test_bad_backbone_checkpoint_is_one_line_naming_it(tiny_cfg_file, tmp_path, kind):
    import os
    import pickle

    import torch

    from nasdet.config import BackboneConfig
    from nasdet.models.backbones import build_backbone

    path = tmp_path / f"{kind}.pt"
    if kind == "malicious":
        class Payload:
            def __reduce__(self):
                return os.system, (f"touch {tmp_path / 'pwned'}",)

        path.write_bytes(pickle.dumps({"model": Payload()}))
    elif kind == "truncated":
        good = tmp_path / "good.pt"
        torch.save(build_backbone(BackboneConfig(name="mobilenet_v3_small", width_mult=0.5)).state_dict(), good)
        path.write_bytes(good.read_bytes()[:4000])
    elif kind == "json":  # another file given by mistake (an arch json): not said to hold Python objects
        path.write_text('{"width": 1.0}')
    else:
        path.write_bytes(b"")
    code, out, exc = cli("train", tiny_cfg_file(), "--set", f"model.backbone.checkpoint={path}")
    line = assert_one_line(code, out, exc, str(path), "model.backbone.checkpoint")
    assert "Aborted" not in out and not (tmp_path / "pwned").exists()
    assert {"malicious": "other than tensors", "truncated": "truncated", "empty": "empty",
            "json": "not a torch checkpoint (neither torch.save's zip archive nor a pickle)"}[kind] in line


def test_a_checkpoint_whose_model_entry_is_not_a_state_dict_is_one_line(tiny_cfg_file, tmp_path):
    import torch

    path = tmp_path / "odd.pt"
    torch.save({"model": 5}, path)
    for command in ("eval", "cost"):
        code, out, exc = cli(command, tiny_cfg_file(), "--ckpt", path)
        line = assert_one_line(code, out, exc, str(path))
        assert "'model' entry is of type int, not a state_dict" in line, line


def test_cuda_without_cuda_is_one_line(tiny_cfg_file):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, out, exc = cli("train", tiny_cfg_file(), "--set", "train.device=cuda")
    assert_one_line(code, out, exc, "train.device", "CUDA is not available")
    # the device latency is timed on too (a GPU config on a CPU box: a ~100-line traceback, qa_latency #7)
    for command, *sets in (("cost",), ("export",),
                           ("search", "search.budget={metric: latency, max: 100}", "cost.latency=torch")):
        args = [a for s in sets for a in ("--set", s)]
        code, out, exc = cli(command, tiny_cfg_file(), "--set", "cost.device=cuda", *args)
        line = assert_one_line(code, out, exc, "cost.device", "CUDA is not available", "set cost.device: cpu")
        assert "auto" not in line  # cost.device names where it times: no auto


def test_device_typo_is_an_error_not_cpu(tiny_cfg_file):
    code, out, exc = cli("train", tiny_cfg_file(), "--set", "train.device=gpu")
    assert_one_line(code, out, exc, "train.device", "'gpu'")


def test_a_missing_detector_or_a_backbone_typo_names_the_setting(tiny_cfg_file):
    """qa_docs #4: `model.detector: null` gave pydantic's 'Unable to extract tag using discriminator'; a backbone
    typo beside pipeline.baseline_backbone was taken for a static backbone and the advice named the typo."""
    for value, needle in (("model.detector=null", "needs model.detector, its detector one of ssd, ssdlite"),
                          ("model=3", "needs a mapping, its detector one of"),
                          ("model.detector=[retinanet]", "needs model.detector"),  # (a TypeError: unhashable)
                          ("model.detector={name: retinanet}", "needs model.detector")):
        code, out, exc = cli("cost", tiny_cfg_file(), "--no-latency", "--set", value)
        line = assert_one_line(code, out, exc, needle)
        assert "discriminator" not in line
    cfg = tiny_cfg_file(pipeline={"baseline_backbone": "mobilenet_v2"})
    code, out, exc = cli("cost", cfg, "--no-latency", "--set", "model.backbone.name=mobilenetv2")
    line = assert_one_line(code, out, exc, "model.backbone.name 'mobilenetv2' is not a known backbone", "mobilenet_v2")
    assert "baseline_backbone" not in line
    cfg = tiny_cfg_file(pipeline={"baseline_backbone": "mobilenetv2"})  # the typo there is named there (qa_s33 #6)
    code, out, exc = cli("cost", cfg, "--no-latency", "--set", "model.backbone.name=mbv2_elastic")
    assert_one_line(code, out, exc, "pipeline.baseline_backbone 'mobilenetv2' is not a known backbone")


def test_truncated_tune_arch_names_the_file(tmp_path, tiny_config):
    from nasdet.stages.tune import resolve_tune_arch

    path = tmp_path / "arch.json"
    path.write_text('{"backbone.stage1.depth": 3, "backbone.stage2')
    with pytest.raises(ConfigError, match=r"tune.arch file .*arch.json is not valid YAML: .* at line 1"):
        resolve_tune_arch(tiny_config(tune={"arch": str(path)}), space=None)


def test_yaml_duplicate_keys_are_an_error_naming_key_and_line(tiny_cfg_file, tmp_path):
    text = tiny_cfg_file().read_text()
    twice = tmp_path / "twice.yaml"
    twice.write_text(text.replace("\ntrain:\n", "\ntrain:\n  epochs: 5\n  epochs: 6\n", 1))
    line_no = twice.read_text().splitlines().index("  epochs: 6") + 1
    code, out, exc = cli("train", twice)
    assert_one_line(code, out, exc, "twice.yaml", "duplicate key 'epochs'", f"line {line_no}")
    sections = tmp_path / "sections.yaml"
    sections.write_text(text + "train:\n  epochs: 1\n")
    code, out, exc = cli("train", sections)
    assert_one_line(code, out, exc, "sections.yaml", "duplicate key 'train'")


# ------------------------------------------------------------------------------------------ images
def one_image_set(tmp_path, name, save, width, height, boxes=((2, 3, 10, 12),)):
    """A COCO data set of one image written by ``save(path)``; returns the DetectionDataset."""
    import json

    from nasdet.data.coco import load_coco

    (tmp_path / "img").mkdir(exist_ok=True)
    save(tmp_path / "img" / name)
    ann = {"images": [{"id": 1, "file_name": name, "width": width, "height": height}],
           "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": list(b), "area": b[2] * b[3],
                            "iscrowd": 0} for i, b in enumerate(boxes)],
           "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / f"{name}.json").write_text(json.dumps(ann))
    return load_coco(tmp_path / f"{name}.json", tmp_path / "img")


def test_16_bit_png_loads_scaled(tmp_path):
    import numpy as np
    from PIL import Image

    wide = (np.arange(24 * 40, dtype=np.int64).reshape(24, 40) * 68).astype(np.uint16)  # 0 .. 65212
    ds = one_image_set(tmp_path, "deep.png", lambda p: Image.fromarray(wide).save(p), 40, 24)
    img = ds.load_image(0).numpy()
    assert img.shape == (3, 24, 40) and img.dtype == np.uint8
    assert np.abs(img[0].astype(float) - wide / 257.0).max() <= 0.5 + 1e-6  # not clipped to 255
    assert (img[0] == img[1]).all() and (img[1] == img[2]).all()


def test_exif_rotated_jpeg_is_read_upright(tmp_path):
    """Stored 40 wide x 24 high with orientation 6 (rotate 90 clockwise to view): the viewer, and the
    annotations, see 24 x 40 with the white patch where the box says."""
    import numpy as np
    from PIL import Image

    stored = np.zeros((24, 40, 3), np.uint8)
    stored[0:8, 4:12] = 255  # top-left area of the stored image = top-right area once upright

    def save(p):
        im = Image.fromarray(stored)
        exif = im.getexif()
        exif[0x0112] = 6
        im.save(p, exif=exif, quality=100)

    upright_box = (24 - 8, 4, 8, 8)  # x, y, w, h in the upright 24x40 frame
    ds = one_image_set(tmp_path, "phone.jpg", save, 24, 40, boxes=(upright_box,))
    img = ds.load_image(0).numpy()
    assert img.shape == (3, 40, 24)
    x1, y1, x2, y2 = ds.records[0].boxes[0].astype(int)
    assert img[:, y1:y2, x1:x2].mean() > 200 and img.mean() < 60  # the box covers the bright patch


def test_decompression_bomb_is_a_data_error(tmp_path, monkeypatch):
    from PIL import Image

    ds = one_image_set(tmp_path, "big.png", lambda p: Image.new("RGB", (64, 64)).save(p), 64, 64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px > 2x the limit: PIL raises
    with pytest.raises(DataError, match=r"big.png .* more pixels than PIL opens safely"):
        ds.load_image(0)


def test_corrupt_image_in_a_loader_worker_is_one_line(tmp_path):
    import torch

    from nasdet.data.dataset import collate_detection

    ds = one_image_set(tmp_path, "broken.jpg", lambda p: p.write_bytes(b"\xff\xd8\xff garbage"), 32, 32)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=collate_detection)
    with pytest.raises(DataError) as info:
        next(iter(loader))
    msg = str(info.value)
    assert "broken.jpg" in msg and "cannot be decoded" in msg and "\n" not in msg and "Traceback" not in msg
    assert "Traceback" in info.value.worker_traceback  # kept for NASDET_DEBUG


# ------------------------------------------------------------------------------ silent wrong results
def test_training_set_without_annotations_warns(shapes_dir, tmp_path):
    import io
    import json

    from rich.console import Console

    from nasdet.config import validate_config
    from nasdet.stages.baseline import run_baseline

    ann = json.loads((shapes_dir / "train" / "annotations.json").read_text())
    ann["annotations"] = []
    (tmp_path / "empty.json").write_text(json.dumps(ann))
    raw = tiny_raw(shapes_dir, tmp_path / "wd")
    raw["data"]["train"]["annotations"] = str(tmp_path / "empty.json")
    raw["train"].update(max_steps=1, epochs=1)
    raw["eval"]["max_images"] = 2
    buf = io.StringIO()
    run_baseline(validate_config(raw, "t"), console=Console(file=buf, width=300))
    assert "warning: training set" in buf.getvalue() and "empty.json has no annotations" in buf.getvalue()


def test_make_synthetic_does_not_overwrite_foreign_annotations(tmp_path):
    from nasdet.data.synthetic import make_synthetic

    mine = tmp_path / "data" / "train" / "annotations.json"
    mine.parent.mkdir(parents=True)
    mine.write_text('{"images": [], "annotations": [], "categories": []}')
    code, out, exc = cli("data", "make-synthetic", tmp_path / "data", "--train", 2, "--val", 1, "--size", 48,
                         "--workers", 1)
    assert_one_line(code, out, exc, str(mine), "not overwriting")
    assert mine.read_text() == '{"images": [], "annotations": [], "categories": []}'
    make_synthetic(tmp_path / "ours", 2, 1, 48, workers=1)
    make_synthetic(tmp_path / "ours", 3, 1, 48, workers=1)  # its own files: regenerated


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_frozen_bn_resnets_build_and_run(depth):
    import torch

    from nasdet.config import BackboneConfig
    from nasdet.models.backbones import build_backbone

    frozen = build_backbone(BackboneConfig(name=f"resnet{depth}", norm="frozen_bn"))
    plain = build_backbone(BackboneConfig(name=f"resnet{depth}"))
    assert frozen.out_channels == plain.out_channels
    if depth == 18:
        out = frozen.train()(torch.rand(1, 3, 64, 64))
        assert [o.shape[1] for o in out.values()] == list(frozen.out_channels.values())
        # frozen_stages (MMDetection's; torchvision's trainable_backbone_layers 3 = 1 here): the stem and layer1 keep
        # their weights and BN statistics in training, layer2 on train (the R-50 baselines trained them all)
        staged = build_backbone(BackboneConfig(name="resnet18", frozen_stages=1)).train()
        before = {k: v.clone() for k, v in staged.state_dict().items()}
        staged(torch.rand(2, 3, 64, 64))
        changed = {k for k, v in staged.state_dict().items() if not torch.equal(v, before[k])}
        assert changed and not any(k.startswith(("stem.", "layer1.")) for k in changed)
        assert any(k.startswith("layer2.") for k in changed)
        trainable = {n.split(".")[0] for n, p in staged.named_parameters() if p.requires_grad}
        assert trainable == {"layer2", "layer3", "layer4"}
        with pytest.raises(ConfigError, match="frozen_stages is for the ResNet backbones .* not 'mobilenet_v2'"):
            build_backbone(BackboneConfig(name="mobilenet_v2", frozen_stages=1))


@pytest.fixture(scope="module")
def trained_baseline(shapes_dir, tmp_path_factory):
    """A work dir whose baseline trained one step (config, checkpoint, metrics.json)."""
    import io

    from rich.console import Console

    from nasdet.config import validate_config
    from nasdet.stages.baseline import run_baseline

    raw = tiny_raw(shapes_dir, tmp_path_factory.mktemp("trained") / "wd")
    raw["train"].update(max_steps=1, epochs=1)
    raw["eval"]["max_images"] = 2
    raw["export"] = {"check_images": 1}
    raw["search"] = {"budget": {"metric": "macs", "max": 1000}}  # far below the baseline
    cfg = validate_config(raw, "t")
    run_baseline(cfg, console=Console(file=io.StringIO()))
    return cfg


def test_eval_ckpt_does_not_overwrite_a_stage_record(trained_baseline):
    import io
    import json
    from pathlib import Path

    from rich.console import Console

    from nasdet.stages.baseline import run_eval

    wd = Path(trained_baseline.work_dir)
    record = wd / "baseline" / "metrics.json"
    before = record.read_text()
    buf = io.StringIO()
    run_eval(trained_baseline, ckpt=wd / "baseline" / "ckpt" / "last.pt", console=Console(file=buf, width=300))
    assert record.read_text() == before
    written = wd / "eval" / "baseline_last_metrics.json"
    assert json.loads(written.read_text())["checkpoint"].endswith("last.pt") and str(written) in buf.getvalue()


def test_export_keeps_no_unverified_file_and_no_baseline_budget_alarm(trained_baseline, monkeypatch):
    import io
    from pathlib import Path

    from rich.console import Console

    import nasdet.stages.export
    from nasdet.errors import ExportParityError
    from nasdet.stages.export import run_export

    out = Path(trained_baseline.work_dir) / "export"
    buf = io.StringIO()
    result = run_export(trained_baseline, source="baseline", console=Console(file=buf, width=300))
    assert "OVER BUDGET" not in buf.getvalue() and result["budget"] is None  # the baseline is the reference
    assert sorted(p.name for p in out.glob("*.onnx*")) == ["baseline.onnx"]
    (out / "baseline.onnx").unlink()

    def differs(model, path, *a, **k):
        assert Path(path).is_file()
        raise ExportParityError("onnxruntime detections differ from torch's on 1 val images: ...")

    monkeypatch.setattr(nasdet.stages.export, "check_parity", differs)
    with pytest.raises(ExportParityError) as info:
        run_export(trained_baseline, source="baseline", console=Console(file=io.StringIO()))
    assert not list(out.glob("*.onnx*"))  # nothing unverified left, under any name
    assert str(out / "baseline.onnx") in str(info.value) and "not written" in str(info.value)


def test_eval_and_export_compute_on_the_configs_threads(trained_baseline, monkeypatch, tmp_path):
    """`nasdet eval`, `nasdet export` (its torch reference for the parity check) and the import of a trained detector
    ran on torch's default threads while the pipeline's stages ran on train.threads: the same checkpoint's AP and
    parity verdict (1.01e-3 px against a 1e-3 limit on 2 threads, within it on 1) changed with the command."""
    import io
    from pathlib import Path

    import torch
    from rich.console import Console

    import nasdet.stages.baseline
    import nasdet.stages.export
    from nasdet.stages.baseline import import_baseline, run_eval
    from nasdet.stages.export import run_export

    seen = []

    def spy(module, name):
        inner = getattr(module, name)

        def wrapper(*a, **k):
            seen.append((name, torch.get_num_threads()))
            return inner(*a, **k)
        monkeypatch.setattr(module, name, wrapper)

    spy(nasdet.stages.baseline, "evaluate_detector")
    spy(nasdet.stages.export, "check_parity")
    one = trained_baseline.model_copy(update={"train": trained_baseline.train.model_copy(update={"threads": 1})})
    quiet = Console(file=io.StringIO())
    ckpt = Path(one.work_dir) / "baseline" / "ckpt" / "last.pt"
    for run in (lambda: run_eval(one, ckpt=ckpt, console=quiet),
                lambda: run_export(one, source="baseline", console=quiet),
                lambda: import_baseline(one.model_copy(update={
                    "pipeline": one.pipeline.model_copy(update={"baseline_checkpoint": str(ckpt)})}),
                    tmp_path / "imported", console=quiet)):
        torch.set_num_threads(2)
        run()
    assert [n for n, _ in seen][:1] == ["evaluate_detector"] and "check_parity" in [n for n, _ in seen]
    assert len(seen) >= 3 and seen[-1][0] == "evaluate_detector"  # eval's, the export's check(s), the import's
    assert all(threads == 1 for _, threads in seen), seen
    # ... and leave torch's count as the caller had it: a cost timed at "torch's" count (cost.threads unset) was
    # timed at 2 threads in a fresh process and at 1 after this eval, in a notebook
    from nasdet.stages.baseline import run_cost

    torch.set_num_threads(2)
    unset = one.model_copy(update={"cost": one.cost.model_copy(update={"threads": None, "warmup": 0, "runs": 1})})
    assert run_cost(unset, ckpt=ckpt, console=quiet)["latency"]["threads"] == 2
    for run in (lambda: run_eval(one, ckpt=ckpt, console=quiet), lambda: run_export(one, source="baseline", console=quiet)):
        run()
        assert torch.get_num_threads() == 2
        assert run_cost(unset, ckpt=ckpt, console=quiet)["latency"]["threads"] == 2


def test_a_stage_takes_a_dict_of_the_configs_keys(trained_baseline):
    """A config built in Python as a dict (a YAML file's keys) went to a stage as it was: a bare AttributeError."""
    import io

    from rich.console import Console

    from nasdet.config import config_to_dict
    from nasdet.errors import ConfigError
    from nasdet.stages.baseline import run_cost

    quiet = Console(file=io.StringIO())
    ckpt = Path(trained_baseline.work_dir) / "baseline" / "ckpt" / "last.pt"
    raw = config_to_dict(trained_baseline)
    raw["cost"] = {**raw["cost"], "warmup": 0, "runs": 1, "threads": 1}
    record = run_cost(raw, ckpt=ckpt, console=quiet)
    assert record["macs"]["total"] > 0 and raw["cost"]["runs"] == 1  # the caller's dict is left as it was
    with pytest.raises(ConfigError, match=r"(?s)<dict>.*cost\.runs"):
        run_cost({**raw, "cost": {**raw["cost"], "runs": "many"}}, ckpt=ckpt, console=quiet)
    with pytest.raises(ConfigError, match="a stage takes a config from nasdet.config.load_config.*got str"):
        run_cost(str(ckpt), console=quiet)


def test_export_traces_its_graph_on_a_val_image(trained_baseline, monkeypatch):
    """The end-to-end graph is traced on a check image (the path real images take), not on random noise."""
    import io

    from rich.console import Console

    import nasdet.stages.export
    from nasdet.stages.export import run_export

    examples = []
    inner = nasdet.stages.export.export_onnx
    monkeypatch.setattr(nasdet.stages.export, "export_onnx",
                        lambda *a, **k: examples.append(k.get("example")) or inner(*a, **k))
    run_export(trained_baseline, source="baseline", console=Console(file=io.StringIO()))
    s = trained_baseline.model.input_size
    assert examples and examples[0] is not None and tuple(examples[0].shape) == (3, s + 37, s + 11)


def test_a_tuned_checkpoint_is_evaluated_on_the_tunes_threads(trained_baseline, monkeypatch, tmp_path):
    """A tune with its own tune.train.threads trained and evaluated on them, and `nasdet eval` / `nasdet export` of
    its checkpoint ran on train.threads: another float rounding than the stage's record."""
    import io
    import shutil
    from pathlib import Path

    import torch
    from rich.console import Console

    import nasdet.stages.baseline
    from nasdet.stages.baseline import run_eval
    from nasdet.stages.common import checkpoint_stage, stage_threads

    cfg = trained_baseline.model_copy(update={
        "train": trained_baseline.train.model_copy(update={"threads": 2}),
        "tune": trained_baseline.tune.model_copy(update={"train": trained_baseline.train.model_copy(update={"threads": 1})})})
    tuned = tmp_path / "wd" / "tune" / "ckpt" / "last.pt"
    tuned.parent.mkdir(parents=True)
    shutil.copy(Path(cfg.work_dir) / "baseline" / "ckpt" / "last.pt", tuned)
    assert checkpoint_stage(tuned) == "tune" and stage_threads(cfg, "tune") == 1 and stage_threads(cfg, "baseline") == 2
    assert checkpoint_stage(tmp_path / "wd" / "controls" / "a1b2" / "ckpt" / "last.pt") == "controls"
    assert checkpoint_stage(tmp_path / "model.pt") == "baseline"
    seen = []
    inner = nasdet.stages.baseline.evaluate_detector
    monkeypatch.setattr(nasdet.stages.baseline, "evaluate_detector",
                        lambda *a, **k: seen.append(torch.get_num_threads()) or inner(*a, **k))
    torch.set_num_threads(2)
    run_eval(cfg, ckpt=tuned, console=Console(file=io.StringIO()))
    assert seen == [1]


def test_search_records_follow_the_current_budget_and_supernet(tiny_config, tmp_path):
    """A search rerun judges feasibility under today's budget; a supernet whose pretraining stopped early
    is named in a warning; a study is refused on another supernet checkpoint."""
    import csv
    import io
    from pathlib import Path

    import torch
    from rich.console import Console

    from nasdet.config import BudgetConfig, config_to_dict
    from nasdet.models.supernet import build_supernet
    from nasdet.stages.search import run_search
    from nasdet.train.checkpoint import save_checkpoint

    cfg = tiny_config("ssdlite", model={"backbone": {"name": "ofa_mbv3", "width_mult": 0.25}},
                      data={"check_files": False}, supernet={"input_sizes": [64, 96]},
                      search={"strategy": "random", "confidence_resamples": 100,
                              "num_candidates": 3, "recalib_batches": 1, "batch_size": 4,
                              "max_images": 2, "include_extremes": False, "budget": {"metric": "macs", "max": 1e12}})
    torch.manual_seed(0)
    model, space = build_supernet(cfg, 8)
    ckpt = Path(cfg.work_dir) / "supernet" / "ckpt" / "last.pt"
    save_checkpoint({"model": model.state_dict(), "space_id": space.space_id, "config": config_to_dict(cfg),
                     "step": 46, "total_steps": 800}, ckpt)
    buf = io.StringIO()
    run_search(cfg, console=Console(file=buf, width=400))
    assert "stopped at step 46 of 800" in buf.getvalue() and "did not finish" in buf.getvalue()

    results = Path(cfg.work_dir) / "search" / "results.csv"
    costs = sorted(float(r["macs"]) for r in csv.DictReader(open(results)))
    assert costs[0] < costs[-1]
    tight = cfg.model_copy(update={"search": cfg.search.model_copy(
        update={"budget": BudgetConfig(metric="macs", max=costs[0])})})
    again = run_search(tight, console=Console(file=io.StringIO()))
    assert again["counts"]["scored"] == 0 and again["best"]["costs"]["macs"] <= costs[0]
    rows = list(csv.DictReader(open(results)))
    assert [r["feasible"] == "True" for r in rows] == [float(r["macs"]) <= costs[0] for r in rows]

    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # the supernet trained on: other weights
    save_checkpoint({"model": model.state_dict(), "space_id": space.space_id, "config": config_to_dict(cfg),
                     "step": 800, "total_steps": 800}, ckpt)
    with pytest.raises(CheckpointError, match=r"another supernet checkpoint \(step 46.*step 800.*study_name"):
        run_search(cfg, console=Console(file=io.StringIO()))



def test_bad_storage_url_is_one_line(tiny_cfg_file, tmp_path):
    import importlib.util

    code, out, exc = cli("search", tiny_cfg_file(), "--storage", "postgress://u:secret@localhost/db")
    line = assert_one_line(code, out, exc, "unknown database scheme 'postgress'")
    assert "secret" not in line
    if importlib.util.find_spec("MySQLdb") is None:
        code, out, exc = cli("search", tiny_cfg_file(), "--storage", "mysql://u:secret@localhost/db")
        assert_one_line(code, out, exc, "mysql://u:***@localhost/db", "'MySQLdb', is not installed")


def _hold_journal_lock(journal: str, seconds: float, started, partial: bytes = b"") -> None:
    from nasdet.search.storage import JournalLock

    lock = JournalLock(journal)
    lock.acquire()
    before = os.path.getsize(journal)
    if partial:  # a record half written when the kill comes
        with open(journal, "ab") as f:
            f.write(partial)
    started.set()
    time.sleep(seconds)
    # the journal's size while the lock was held: nobody may append in between
    Path(journal + ".held").write_text(f"{before} {os.path.getsize(journal)}")
    lock.release()


def test_a_journal_lock_left_by_a_killed_writer_is_removed_with_its_half_record_and_a_live_one_is_waited_for(
        tmp_path):
    import multiprocessing as mp

    import optuna

    from nasdet.search.storage import JournalLock
    from nasdet.search.study import open_storage

    journal = tmp_path / "study.journal"
    study = optuna.create_study(storage=open_storage(journal, tmp_path), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    # killed mid-write: Optuna's symlink lock stays; its flock went with the process
    ctx = mp.get_context("fork")
    started = ctx.Event()
    p = ctx.Process(target=_hold_journal_lock, args=(str(journal), 60, started))
    p.start()
    assert started.wait(30)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    lock = Path(str(journal) + ".lock")
    assert lock.is_symlink()
    t0 = time.perf_counter()
    with pytest.warns(UserWarning, match="study.journal.lock: removed the journal lock a killed process left"):
        study = optuna.load_study(storage=open_storage(journal, tmp_path), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert time.perf_counter() - t0 < 10  # Optuna alone waits 30 s, then breaks the lock
    assert not lock.exists()
    # killed mid-append while the study is open elsewhere: the next writer cuts the half record off first
    p = ctx.Process(target=_hold_journal_lock, args=(str(journal), 60, started, b'{"op_code":5,"worker_id":"kil'))
    started.clear()
    p.start()
    assert started.wait(30)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    os.utime(lock, (time.time() - 5, time.time() - 5), follow_symlinks=False)  # past the foreign grace
    with pytest.warns(UserWarning) as said:
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    said = " ".join(str(w.message) for w in said)
    assert "removed the journal lock a killed process left" in said and "removed an incomplete last record" in said
    assert journal.read_bytes().endswith(b"\n")
    # a live holder keeps it, however long it holds it (Optuna's grace would break it after 30 s)
    started.clear()
    p = ctx.Process(target=_hold_journal_lock, args=(str(journal), 2 * JournalLock.FOREIGN_GRACE_S, started))
    p.start()
    assert started.wait(30)
    os.utime(lock, (time.time() - 5, time.time() - 5), follow_symlinks=False)  # older than the foreign grace
    size = journal.stat().st_size
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    p.join()
    assert Path(str(journal) + ".held").read_text() == f"{size} {size}" and journal.stat().st_size > size
    assert [t.state.name for t in optuna.load_study(storage=open_storage(journal, tmp_path),
                                                    study_name="s").trials] == ["COMPLETE"] * 5


def test_journal_with_a_cut_or_garbage_line(tmp_path):
    import optuna

    from nasdet.search.study import open_storage

    journal = tmp_path / "study.journal"
    study = optuna.create_study(storage=open_storage(journal, tmp_path), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code":5,"worker_id":"killed mid-wri')  # a kill -9 during a write
    with pytest.warns(UserWarning, match="removed an incomplete last record"):
        study = optuna.load_study(storage=open_storage(journal, tmp_path), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)  # the next append is not glued onto it
    again = optuna.load_study(storage=open_storage(journal, tmp_path), study_name="s")
    assert [t.state.name for t in again.trials] == ["COMPLETE"] * 4

    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:2] + [b"\x00\x00garbage\n"] + lines[2:]))
    with pytest.raises(DataError, match=r"study.journal, line 3: not a study record .* Move the file aside"):
        open_storage(journal, tmp_path)


def test_a_storage_file_that_is_not_a_journal_is_left_as_it_is(tmp_path, shapes_dir):
    """An annotations json or an SQLite database given as a journal path (without ``sqlite:///``) was cut
    after its last newline and appended to; now it is refused before anything touches it (no lock file either)."""
    import sqlite3

    from nasdet.search.study import open_storage

    coco = tmp_path / "annotations.json"
    coco.write_text(json.dumps(json.loads((shapes_dir / "val" / "annotations.json").read_text())))  # one line, no \n
    db = tmp_path / "study.db"
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    for path, said in ((coco, "(it starts '{\""), (db, "sqlite:///")):
        before = path.read_bytes()
        with pytest.raises(ConfigError, match="is a file that is not an Optuna journal") as e:
            open_storage(path, tmp_path)
        assert said in str(e.value) and str(path) in str(e.value)
        assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.json", "study.db"]
    # a journal whose only record a kill cut short is still a journal
    cut = tmp_path / "cut.journal"
    cut.write_bytes(b'{"op_code":0,"worker_id":"kil')
    with pytest.warns(UserWarning, match="removed an incomplete last record"):
        open_storage(cut, tmp_path)


def test_a_file_named_like_the_journals_lock_is_not_removed(tmp_path):
    """Optuna's lock is a link ``<journal>.lock``; a killed writer's is removed. A user's regular file of that
    name (``poetry.lock`` beside a journal named ``poetry``) was removed too; now the storage is refused."""
    import optuna

    from nasdet.search.study import open_storage

    journal = tmp_path / "poetry"
    user_file = tmp_path / "poetry.lock"
    user_file.write_text("[[package]]\n")
    os.utime(user_file, (time.time() - 3600,) * 2)
    with pytest.raises(ConfigError, match="poetry.lock exists and is not the journal's lock"):
        optuna.create_study(storage=open_storage(journal, tmp_path), study_name="s")
    # the same when the journal exists already (refused at open, before any lock is taken)
    user_file.rename(tmp_path / "kept")
    optuna.create_study(storage=open_storage(journal, tmp_path), study_name="s")
    (tmp_path / "kept").rename(user_file)
    with pytest.raises(ConfigError, match="poetry.lock exists and is not the journal's lock"):
        open_storage(journal, tmp_path)
    assert user_file.read_text() == "[[package]]\n"


def test_a_killed_worker_not_yet_reaped_is_dead_to_the_others():
    """A search worker killed while its launcher waited on another stayed a zombie, which `kill(pid, 0)` finds:
    the survivor took its claim for live, never retried its arch and skipped 200 trials as "surplus"."""
    import subprocess
    import sys

    from nasdet.search.study import _alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while time.time() < deadline:  # exited, not reaped: a zombie
        with open(f"/proc/{child.pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                break
        time.sleep(0.05)
    os.kill(child.pid, 0)  # what the old check asked: it succeeds on a zombie
    assert not _alive(child.pid)
    assert _alive(os.getpid())
    child.wait()
    assert not _alive(child.pid)


def test_under_torchrun_an_error_is_one_line_once(tmp_path, monkeypatch, shapes_dir):
    """Under torchrun every rank met a config error and printed it (8 times on 8 GPUs); a rank whose peer died
    printed gloo's 70-line traceback ("a bug") after the real error; `nasdet pipeline` scored the search on
    every rank through the trainers' process group (KeyError 'AP', or two archs' detections in one AP)."""
    import nasdet.stages.baseline as baseline

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(shapes_dir, tmp_path / "work")))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    res = CliRunner().invoke(app, ["train", str(cfg), "--set", "train.batch_size=-1"])
    assert res.exit_code == 2 and res.output == ""  # rank 0 says it
    monkeypatch.setenv("RANK", "0")
    res = CliRunner().invoke(app, ["train", str(cfg), "--set", "train.batch_size=-1"])
    assert res.exit_code == 2 and res.output.count("error:") == 1 and "train.batch_size" in res.output

    def peer_died(*args, **kwargs):
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:36542")

    monkeypatch.setattr(baseline, "run_baseline", peer_died)
    res = CliRunner().invoke(app, ["train", str(cfg)])
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert said == "error: another process of this torchrun stopped (its error is printed above); rank 0 stops with it"
    res = CliRunner().invoke(app, ["pipeline", str(cfg)])
    assert res.exit_code == 2 and "nasdet pipeline runs in one process, not under torchrun" in " ".join(res.output.split())
    assert not (tmp_path / "work").exists()


def test_search_workers_launcher_checks_its_inputs_before_starting_any(tmp_path, shapes_dir):
    """`--workers N` started its workers, each loaded its data and met the same error, and the launcher ended
    with "rerun the same command to continue" (exit 1): rerunning could not help."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(shapes_dir, tmp_path / "work")))
    other = tmp_path / "notes.txt"
    other.write_text("my notes\n")
    for args, said in ((["--storage", str(other)], "is a file that is not an Optuna journal"),
                       ([], "run the pretrain stage first")):
        res = CliRunner().invoke(app, ["search", str(cfg), "--workers", "2", *args])
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and said in out and "started" not in out and out.count("error:") == 1, out
    assert other.read_text() == "my notes\n"


def test_search_workers_on_a_database_find_its_schema_made(tmp_path, shapes_dir, monkeypatch):
    """Two workers on a new database both ran Optuna's schema creation at once: one failed ("UNIQUE constraint
    failed: alembic_version"); the launcher now opens the storage first, and warns about SQLite with workers."""
    import sqlite3

    import nasdet.cli as cli_module

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(shapes_dir, tmp_path / "work")))
    ckpt = tmp_path / "work" / "supernet" / "ckpt" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")  # the launcher only checks that the pretrain stage ran
    db = tmp_path / "study.db"
    seen = []

    def launched(*args, **kwargs):
        tables = sqlite3.connect(db).execute("select name from sqlite_master where type='table'").fetchall()
        seen.append({t for (t,) in tables})

    monkeypatch.setattr(cli_module, "_launch_workers", launched)
    import nasdet.stages.search as search_stage

    monkeypatch.setattr(search_stage, "run_search", lambda *a, **k: None)
    res = CliRunner().invoke(app, ["search", str(cfg), "--workers", "2", "--storage", f"sqlite:///{db}"])
    assert res.exit_code == 0, res.output
    assert seen and {"alembic_version", "studies", "trials"} <= seen[0]
    assert "not safe for parallel writers" in " ".join(res.output.split())


def test_eval_refuses_a_checkpoint_of_other_classes_and_a_val_set_without_boxes(tiny_config, tmp_path, shapes_dir):
    """eval (and export, search) read a checkpoint's label k as the data's k-th class whatever it was trained
    on: another class order scored, exported and deployed mislabelled, silently. A val set without boxes ended
    in "ground truth has no annotations", naming no set."""
    from nasdet.config import config_to_dict
    from nasdet.data.build import build_datasets
    from nasdet.models import build_detector
    from nasdet.stages.baseline import run_eval
    from nasdet.train.checkpoint import save_checkpoint

    cfg = tiny_config("ssdlite")
    names = list(build_datasets(cfg, need=("val",))["val"].classes)
    ckpt = tmp_path / "other.pt"
    swapped = [names[1], names[0], *names[2:]]
    save_checkpoint({"model": build_detector(cfg.model, num_classes=len(names)).state_dict(),
                     "config": config_to_dict(cfg), "step": 1,
                     "classes": [[i + 1, n] for i, n in enumerate(swapped)]}, ckpt)
    with pytest.raises(CheckpointError, match=r"checkpoint .*other.pt was trained on the classes \['" + swapped[0]):
        run_eval(cfg, ckpt=ckpt)
    empty = tmp_path / "val.json"
    val = json.loads((shapes_dir / "val" / "annotations.json").read_text())
    empty.write_text(json.dumps({**val, "annotations": []}))
    no_boxes = tiny_config("ssdlite", data={**cfg.data.model_dump(), "val": {
        "annotations": str(empty), "images": str(shapes_dir / "val" / "images")}})
    with pytest.raises(DataError, match=r"val set .*val.json.* has no box in the 8 images it scores"):
        run_eval(no_boxes, ckpt=ckpt)


def test_a_val_set_that_is_not_held_out_or_holds_a_class_never_trained_is_warned(tiny_config, tmp_path, shapes_dir):
    """val given as the training images (a Roboflow-style `val: train/images`) was reported as "val" without a
    word; a class with val boxes but no training box silently averaged an AP of 0 into every figure."""
    import warnings as w

    from nasdet.data import build

    leak = tiny_config("ssdlite", data={**tiny_config("ssdlite").data.model_dump(), "val": {
        "annotations": str(shapes_dir / "train" / "annotations.json"), "images": str(shapes_dir / "train" / "images")}})
    with pytest.warns(UserWarning, match=r"shares 24 of its 24 images with the training set .*not a held-out figure"):
        build.build_datasets(leak)
    train = json.loads((shapes_dir / "train" / "annotations.json").read_text())
    first = train["categories"][0]
    kept = {**train, "annotations": [a for a in train["annotations"] if a["category_id"] != first["id"]]}
    (tmp_path / "train.json").write_text(json.dumps(kept))
    no_class = tiny_config("ssdlite", data={**tiny_config("ssdlite").data.model_dump(), "train": {
        "annotations": str(tmp_path / "train.json"), "images": str(shapes_dir / "train" / "images")}})
    with pytest.warns(UserWarning, match=rf"has no box of '{first['name']}' \(\d+ in val\): the detector cannot learn"):
        build.build_datasets(no_class)
    with w.catch_warnings():
        w.simplefilter("error")
        build.build_datasets(no_class)  # once per process: every stage builds the splits
    # a Roboflow COCO export's supercategory, listed as category 0 with no box anywhere
    for split in ("train", "val"):
        d = json.loads((shapes_dir / split / "annotations.json").read_text())
        d["categories"] = [{"id": 0, "name": "shapes", "supercategory": "none"}] + d["categories"]
        (tmp_path / f"rf_{split}.json").write_text(json.dumps(d))
    roboflow = tiny_config("ssdlite", data={**tiny_config("ssdlite").data.model_dump(), **{
        split: {"annotations": str(tmp_path / f"rf_{split}.json"), "images": str(shapes_dir / split / "images")}
        for split in ("train", "val")}})
    with pytest.warns(UserWarning, match=r"class\(es\) 'shapes' of .* have no box in train or val"):
        build.build_datasets(roboflow)


def test_export_refuses_a_checkpoint_of_other_classes(tiny_config, tmp_path):
    """export wrote classes.json from the data's class list whatever the checkpoint was trained on: with the
    classes in another order every deployed detection was named as another class."""
    from nasdet.config import config_to_dict
    from nasdet.data.build import build_datasets
    from nasdet.models import build_detector
    from nasdet.stages.export import run_export
    from nasdet.train.checkpoint import save_checkpoint

    cfg = tiny_config("ssdlite")
    names = list(build_datasets(cfg, need=("val",))["val"].classes)
    ckpt = Path(cfg.work_dir) / "baseline" / "ckpt" / "last.pt"
    save_checkpoint({"model": build_detector(cfg.model, num_classes=len(names)).state_dict(),
                     "config": config_to_dict(cfg), "step": 1,
                     "classes": [[i + 1, n] for i, n in enumerate(reversed(names))]}, ckpt)
    with pytest.raises(CheckpointError, match=r"checkpoint .*last.pt was trained on the classes \['" + names[-1]):
        run_export(cfg, source="baseline")
    assert not (Path(cfg.work_dir) / "export" / "classes.json").exists()


def test_data_stats_warns_as_training_will(tmp_path, shapes_dir):
    """`data stats`, the command that checks a set, said nothing of a val set that is the training set."""
    import shutil

    leak = tmp_path / "val.json"
    shutil.copy(shapes_dir / "train" / "annotations.json", leak)  # its own source: warned once per pair
    raw = tiny_raw(shapes_dir, tmp_path / "work")
    raw["data"]["val"] = {"annotations": str(leak), "images": str(shapes_dir / "train" / "images")}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.warns(UserWarning, match=r"shares 24 of its 24 images with the training set"):
        res = CliRunner().invoke(app, ["data", "stats", str(cfg)])
    assert res.exit_code == 0, res.output


def test_a_missing_image_says_when_it_is_there_under_another_extension(tmp_path, shapes_dir):
    """A set converted to PNG after labelling: "train_0003.jpg is missing", with train_0003.png beside it."""
    import shutil

    from nasdet.data.coco import load_coco

    images = tmp_path / "images"
    shutil.copytree(shapes_dir / "val" / "images", images)
    first = sorted(images.iterdir())[0]
    from PIL import Image

    Image.open(first).save(first.with_suffix(".png"))
    first.unlink()
    with pytest.raises(DataError, match=rf"{first.stem}.png is there under another extension: name it in the "
                                        r"annotations"):
        load_coco(shapes_dir / "val" / "annotations.json", images)


def test_a_checkpoint_of_another_width_says_what_it_was_written_with():
    """A supernet pretrained at model.backbone.width_mult 1.2 (OFA's w1.2 file) read by a later config building 1.0
    stopped on torch's size mismatch alone: the load now names the settings the checkpoint was written with."""
    from nasdet.config import make_model_config
    from nasdet.errors import CheckpointError
    from nasdet.models import build_detector
    from nasdet.train.checkpoint import load_model_weights

    def model(width):
        return build_detector(make_model_config(detector="ssdlite", backbone={"name": "mobilenet_v2", "width_mult": width},
                                                input_size=64, extra_channels=[32, 16, 16, 8]), num_classes=3)

    state = {"model": model(0.5).state_dict(), "config": {"model": {
        "detector": "ssdlite", "backbone": {"name": "mobilenet_v2", "width_mult": 0.5}}}}
    with pytest.raises(CheckpointError, match=r"size mismatch.*written with model.detector ssdlite, "
                                              r"model.backbone.name mobilenet_v2, model.backbone.width_mult 0.5"):
        load_model_weights(model(0.35), state, source="supernet/ckpt/last.pt")
    load_model_weights(model(0.5), state)


def test_detnas_flat_list_arch_is_taken_by_tune_and_classify(tmp_path, tiny_config):
    """docs/detnas.md says DetNAS's flat list is accepted: `tune.arch` / `classify.arch` refused it from a file ("does
    not hold a mapping") and inline (a pydantic dump); a wrong list names its block (qa_detnas #2)."""
    from nasdet.space import ArchError
    from nasdet.stages.classify import backbone_arch
    from nasdet.stages.tune import _tune_arch

    ops = [0, 1, 2, 3, 1, 0, 0, 0, 0, 0]  # detnas_tiny: 10 blocks
    model = {"backbone": {"name": "detnas_tiny", "width_mult": 0.5}}
    path = tmp_path / "list.json"
    path.write_text(json.dumps(ops))
    for given in (ops, str(path)):
        cfg = tiny_config(model=model, tune={"arch": given}, classify={"root": str(tmp_path), "arch": given})
        arch, _ = _tune_arch(cfg, None, None)
        assert arch["backbone.stage1.block1.op"] == 1 and arch["backbone.stage2.block1.op"] == 3
        assert arch["input_size"] == 96
        assert backbone_arch(cfg)[0]["stage2.block0.op"] == 2
    bad = tiny_config(model=model, tune={"arch": [0, 4, *ops[2:]]})
    with pytest.raises(ArchError, match=r"tune.arch: invalid DetNAS tiny arch list: block 1 \(stage1.block1.op\) = 4"):
        _tune_arch(bad, None, None)
    with pytest.raises(ArchError, match=r"tune.arch: a flat list of choices is DetNAS's form .* 'mobilenet_v3_small'"):
        _tune_arch(tiny_config(tune={"arch": ops}), None, None)


def test_eval_keep_aspect_writes_its_own_record_and_square_detectors_are_refused(trained_baseline, shapes_dir,
                                                                                  tmp_path):
    """``nasdet eval --keep-aspect MIN,MAX``: the AP at a resize keeping the aspect ratio (how torchvision tests its
    Faster R-CNN / RetinaNet / FCOS), recorded apart from every stage's record; SSDLite (square in torchvision
    too) and a malformed value are one line."""
    import io

    from rich.console import Console

    from nasdet.config import validate_config
    from nasdet.stages.baseline import run_baseline, run_eval

    with pytest.raises(ConfigError, match="faster_rcnn, retinanet, fcos, yolov3; ssd/ssdlite resizes to a square"):
        run_eval(trained_baseline, console=Console(file=io.StringIO()), keep_aspect=(96, 128))
    from nasdet.stages.baseline import describe_held  # a supernet's line says the resize, not the square size

    held = {"supernet_subnet": {"input_size": 64}}
    assert "its default subnet at input size 64" in describe_held(held)
    said = describe_held(held, size="with the aspect ratio kept (96, 160)")
    assert "subnet with the aspect ratio kept (96, 160)" in said and "input size" not in said
    raw = tiny_raw(shapes_dir, tmp_path / "wd", "fcos")
    raw["train"].update(max_steps=1, epochs=1)
    raw["eval"]["max_images"] = 4
    path = write_cfg(tmp_path / "fcos.yaml", raw)
    run_baseline(validate_config(raw, "t"), console=Console(file=io.StringIO()))
    record = tmp_path / "wd" / "baseline" / "metrics.json"
    before = record.read_text()
    for bad in ("128,96", "\u00b2"):  # ('²' passes str.isdigit and not int)
        code, out, exc = cli("eval", path, "--keep-aspect", bad)
        assert code == 2 and exc is None and "--keep-aspect" in out and "MIN <= MAX" in " ".join(out.split())
    code, out, exc = cli("eval", path, "--keep-aspect", "96,160")
    assert code == 0 and exc is None, out
    written = tmp_path / "wd" / "eval" / "baseline_last_keep_aspect_96x160_metrics.json"
    got = json.loads(written.read_text())
    assert got["resize"] == {"keep_aspect": {"min_size": 96, "max_size": 160}} and "AP" in got["metrics"]
    assert record.read_text() == before and "aspect kept: shorter side 96, longer at most 160" in " ".join(out.split())
