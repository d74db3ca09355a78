"""An export record is reused only when made with the settings of the rerun: ``nasdet pipeline`` rerun with
another budget, ``eval.max_images`` or INT8 calibration exports again (and says so in one line), and a plain
``nasdet export`` keeps an earlier INT8 file only when it was made with the same settings."""
from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from conftest import fake_pretrain
from nasdet.space import save_arch

QUIET = Console(quiet=True)


def _tuned(tiny_config, **sections):
    """A tuned OFA-MobileNetV3 SSDLite at 96 px (2 steps from the supernet's random weights), no baseline."""
    from nasdet.stages.tune import run_tune

    base = {"model": {"backbone": {"name": "ofa_mbv3", "width_mult": 0.25}, "score_thresh": 0.05},
            "train": {"max_steps": 2, "epochs": 1}, "tune": {"eval_initial": False, "recalib_batches": 1},
            "export": {"check_images": 1}, "cost": {"warmup": 0, "runs": 2, "threads": 1},
            "pipeline": {"baseline": False}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    cfg = tiny_config("ssdlite", **base)
    _, space = fake_pretrain(cfg)
    save_arch(Path(cfg.work_dir) / "search" / "best_arch.json", {n: v[len(v) // 2] for n, v in space.choices.items()},
              space)
    run_tune(cfg, console=QUIET)
    return cfg


def _with(cfg, **sections):
    return cfg.model_copy(update={k: getattr(cfg, k).model_copy(update=v) for k, v in sections.items()})


def test_pipeline_rerun_with_another_budget_exports_again(tiny_config, monkeypatch):
    import nasdet.pipeline as pipeline
    from nasdet.config import BudgetConfig
    from nasdet.workdir import WorkDir

    cfg = _tuned(tiny_config, search={"budget": {"metric": "macs", "max": 1e12}})
    for name in ("run_pretrain", "run_search", "run_tune"):  # done above; the export and the report are the test
        monkeypatch.setattr(pipeline, name, lambda *a, **k: {})
    w = WorkDir(cfg.work_dir)
    record = w.export_record("tune")

    def rerun(c):
        buf = Console(file=io.StringIO(), width=400)
        pipeline.run_pipeline(c, console=buf)
        return json.loads(record.read_text()), buf.file.getvalue()

    first, _ = rerun(cfg)
    assert first["budget"]["within"]
    made = record.stat().st_mtime_ns
    _, out = rerun(cfg)  # nothing changed: nothing exported again
    assert record.stat().st_mtime_ns == made and "exporting again" not in out
    # a 1-MAC budget: the record and the report say OVER, not the old verdict
    tight = _with(cfg, search={"budget": BudgetConfig(metric="macs", max=1.0)})
    again, out = rerun(tight)
    assert again["budget"]["max"] == 1.0 and not again["budget"]["within"]
    assert "(**OVER** the budget 1e-06 M MACs" in w.report_md.read_text()
    assert "export/tune.json was made with other settings (search.budget.max 1000000000000.0 -> 1.0): exporting " \
           "again" in out
    # a record written before records kept their settings: what it was made with is unknown, so it is made again
    from nasdet.stages.export import current_export

    assert current_export(tight, w, "tune", QUIET) is not None
    del again["settings"]
    record.write_text(json.dumps(again))
    buf = Console(file=io.StringIO(), width=400)
    assert current_export(tight, w, "tune", buf) is None
    assert "export/tune.json does not say what settings it was made with" in buf.file.getvalue()
    # a work dir copied from another folder: its record's files are the original's, so it is made again, saying
    # why (a copied finished run exported both files again without a word)
    again["settings"] = json.loads(record.read_text()).get("settings") or {}
    again["checkpoint"] = "/elsewhere/wd/tune/ckpt/last.pt"
    record.write_text(json.dumps(again))
    buf = Console(file=io.StringIO(), width=400)
    assert current_export(tight, w, "tune", buf) is None
    assert "export/tune.json was made in another work dir (from /elsewhere/wd/tune/ckpt/last.pt): exporting again" \
        in " ".join(buf.file.getvalue().split())


def test_int8_file_of_other_settings_is_not_kept(tiny_config):
    import shutil

    from nasdet.stages.export import run_export
    from nasdet.workdir import WorkDir

    cfg = _tuned(tiny_config, eval={"max_images": 2}, export={"calibration_images": 2})
    w = WorkDir(cfg.work_dir)
    int8_path = w.onnx_int8("tune")

    def as_int8_export_leaves_it(rec: dict) -> None:
        """The INT8 file and its part of the record, as ``export --int8`` leaves them (its figures: test_int8.py)."""
        shutil.copy(rec["onnx"], int8_path)
        ap, lat = {"AP": 0.1, "AP50": 0.2}, {"median_ms": 1.0}
        int8 = {"onnx": str(int8_path), "val_images": 2, "metrics_onnxruntime": {"float": ap, "int8": ap},
                "drop": {"AP": 0.0, "AP50": 0.0}, "latency_onnxruntime": {"float": lat, "int8": lat},
                "latency_ratio_int8_to_float": 1.0, "quantization": {"quantized_ops": 1, "method": "minmax",
                                                                     "calibration_images": 2, "float_bytes": 1,
                                                                     "int8_bytes": 1}}
        w.export_record("tune").write_text(json.dumps({**rec, "int8": int8}))

    as_int8_export_leaves_it(run_export(cfg, console=QUIET))
    # a plain export keeps the INT8 file of the same checkpoint only when made with the same INT8 settings
    buf = Console(file=io.StringIO(), width=400)
    other = _with(cfg, export={"calibration_images": 3})
    rec = run_export(other, console=buf)
    assert rec["int8"] is None and not int8_path.exists()
    assert f"removed {int8_path}: its record was made with other settings (export.calibration_images 2 -> 3)" \
        in buf.file.getvalue()
    # the pipeline's check: an INT8 AP scored on 2 images is not one of 3, a minmax calibration not a percentile one
    from nasdet.stages.export import current_export

    as_int8_export_leaves_it(rec)
    int8 = _with(other, export={"int8": True})
    assert current_export(int8, w, "tune", QUIET)["int8"]["val_images"] == 2
    # its INT8 file deleted: exported again, saying why (every other cause said so; this one printed nothing)
    kept = int8_path.read_bytes()
    int8_path.unlink()
    buf = Console(file=io.StringIO(), width=400)
    assert current_export(int8, w, "tune", buf) is None
    assert f"export/tune.json names an INT8 file that is not there ({int8_path}): exporting again" in buf.file.getvalue()
    int8_path.write_bytes(kept)
    buf = Console(file=io.StringIO(), width=400)
    assert current_export(_with(int8, eval={"max_images": 3}, export={"calibration_method": "percentile"}), w, "tune",
                          buf) is None
    assert "export/tune.json was made with other settings (eval.max_images 2 -> 3, export.calibration_method minmax " \
           "-> percentile): exporting again" in buf.file.getvalue()


def test_the_same_checkpoint_spelled_from_another_folder_keeps_its_int8_file(tiny_config, monkeypatch):
    """Records kept paths as given: an `--int8` export run with a relative work dir, then a plain export naming it
    absolute (or run from another folder), removed the INT8 file "quantized from an earlier checkpoint" than the
    very same one, and called the work dir another one (exporting everything again)."""
    import shutil

    from nasdet.stages.export import run_export
    from nasdet.workdir import WorkDir

    cfg = _tuned(tiny_config, eval={"max_images": 2}, export={"calibration_images": 2})
    root = Path(cfg.work_dir)
    monkeypatch.chdir(root.parent)
    relative = cfg.model_copy(update={"work_dir": root.name})
    rec = run_export(relative, console=QUIET)
    assert Path(rec["checkpoint"]).is_absolute() and Path(rec["onnx"]).is_absolute()
    w = WorkDir(cfg.work_dir)
    int8_path = w.onnx_int8("tune")
    shutil.copy(rec["onnx"], int8_path)  # as `export --int8` leaves it (its figures: test_int8.py)
    lat = {"median_ms": 1.0}
    ap = {"AP": 0.1, "AP50": 0.2}
    int8 = {"onnx": str(int8_path), "val_images": 2, "metrics_onnxruntime": {"float": ap, "int8": ap},
            "drop": {"AP": 0.0, "AP50": 0.0}, "latency_onnxruntime": {"float": lat, "int8": lat}, "latency_ratio_int8_to_float": 1.0,
            "quantization": {"quantized_ops": 1, "method": "minmax", "calibration_images": 2, "float_bytes": 1,
                             "int8_bytes": 1}}
    w.export_record("tune").write_text(json.dumps({**rec, "int8": int8}))
    (root.parent / "elsewhere").mkdir()
    monkeypatch.chdir(root.parent / "elsewhere")
    buf = Console(file=io.StringIO(), width=400)
    again = run_export(cfg, console=buf)  # the work dir named absolute, from another folder
    assert again["int8"]["kept_from_earlier_export"] and int8_path.is_file(), buf.file.getvalue()
    assert "another work dir" not in buf.file.getvalue()


def test_rerun_with_other_postprocessing_exports_again_and_a_failed_export_leaves_no_record(tiny_config,
                                                                                             monkeypatch):
    """The end-to-end graph bakes in the thresholds and NMS of ``model``: other values are another file. And the
    record goes before the files it describes are replaced, so an export that dies midway is redone, not
    reported from the old record."""
    import pytest

    import nasdet.stages.export as export_stage
    from nasdet.stages.export import current_export, run_export
    from nasdet.workdir import WorkDir

    cfg = _tuned(tiny_config)
    w = WorkDir(cfg.work_dir)
    rec = run_export(cfg, console=QUIET)
    s = rec["input_size"]
    # the latencies say which input they were timed on: the graph resizes inside, a larger frame costs more
    assert rec["latency_onnxruntime"]["input"] == rec["latency_torch"]["input"] == [3, s, s]
    assert f"{s}x{s}" in rec["latency_input"] and "larger frame" in rec["latency_input"]
    assert rec["settings"]["model"] == {"score_thresh": 0.05, "nms_thresh": 0.5, "detections_per_img": 100,
                                        "topk_candidates": 300}
    assert json.loads((w.export / "classes.json").read_text())["1"] == {"name": "circle", "category_id": 1}
    assert current_export(cfg, w, "tune", QUIET) is not None
    buf = Console(file=io.StringIO(), width=400)
    assert current_export(_with(cfg, model={"score_thresh": 0.3, "detections_per_img": 10}), w, "tune", buf) is None
    assert "export/tune.json was made with other settings (model.detections_per_img 100 -> 10, model.score_thresh " \
           "0.05 -> 0.3): exporting again" in buf.file.getvalue()
    # killed after the new float file is in place, before its figures are: no record is left to trust
    record, onnx_path = w.export_record("tune"), w.onnx("tune")
    made = onnx_path.stat().st_mtime_ns

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_stage, "time_onnx", killed)
    with pytest.raises(KeyboardInterrupt):
        run_export(_with(cfg, export={"calibration_method": "entropy"}), console=QUIET)
    assert onnx_path.stat().st_mtime_ns != made and not record.exists()
    assert current_export(cfg, w, "tune", QUIET) is None  # the rerun with the old settings exports again
    monkeypatch.undo()
    run_export(cfg, console=QUIET)
    assert current_export(cfg, w, "tune", QUIET) is not None  # the record is back, last
