"""The work dir contract: one missing checkpoint gives the same error from every stage that needs it, the
completion check reads the record, and the search's predicted costs reach export through best_arch.json."""
import json

import pytest

from nasdet.errors import CheckpointError, MissingCheckpoint, StageOrderError
from nasdet.space import SearchSpace, save_arch
from nasdet.workdir import WorkDir

OFA_TINY = {"backbone": {"name": "ofa_mbv3", "width_mult": 0.25}, "input_size": 64}


def test_a_missing_checkpoint_is_one_error_naming_the_stage_to_run(tiny_config):
    from nasdet.stages.baseline import run_eval
    from nasdet.stages.search import run_search
    from nasdet.stages.tune import baseline_checkpoint, supernet_checkpoint

    cfg = tiny_config("ssdlite", model=OFA_TINY)
    raised = {}
    for name, call, stage in (("search", lambda: run_search(cfg), "pretrain"),
                              ("tune", lambda: supernet_checkpoint(cfg), "pretrain"),
                              ("eval", lambda: run_eval(cfg), "baseline"),
                              ("export", lambda: baseline_checkpoint(cfg), "baseline")):
        with pytest.raises(MissingCheckpoint, match=f"run the {stage} stage first") as e:
            call()
        raised[name] = e.value
    assert all(isinstance(e, StageOrderError) and isinstance(e, CheckpointError) for e in raised.values())
    assert str(raised["tune"]).startswith(str(raised["search"]))  # the same checkpoint, the same words (+ a hint)


def test_completed_reads_the_record_and_predicted_costs_need_the_same_arch(tmp_path):
    wd = WorkDir(tmp_path)
    assert wd.supernet.completed(10) is None
    wd.supernet.checkpoint.parent.mkdir(parents=True)
    wd.supernet.checkpoint.write_bytes(b"x")
    wd.supernet.metrics.write_text(json.dumps({"step": 10}))
    assert wd.supernet.completed(10) == {"step": 10} and wd.supernet.completed(20) is None

    space = SearchSpace({"a": (1, 2), "input_size": (64,)})
    arch = {"a": 2, "input_size": 64}
    save_arch(wd.best_arch, arch, space)
    assert wd.predicted_costs(arch) is None  # written without costs (tune.arch given by hand)
    save_arch(wd.best_arch, arch, space, costs={"macs": 5e6, "params": 1e5, "latency": 1.5})
    assert wd.predicted_costs(arch) == {"macs": 5e6, "params": 1e5, "latency": 1.5}
    assert wd.predicted_costs({"a": 1, "input_size": 64}) is None
    with pytest.raises(StageOrderError, match="run the search stage first"):
        WorkDir(tmp_path / "empty").search.require("best_arch.json", "architecture to tune")


def test_an_export_record_counts_only_for_its_own_work_dirs_checkpoint(tmp_path):
    """A copied work dir (tune/ deleted, tuned again) kept the original's export: its record named the other
    work dir's checkpoint, which still existed and was older."""
    import shutil

    w = WorkDir(tmp_path / "run")
    w.tune.checkpoint.parent.mkdir(parents=True)
    w.tune.checkpoint.write_bytes(b"weights")
    w.export.root.mkdir(parents=True)
    onnx = w.export.root / "tune.onnx"
    onnx.write_bytes(b"graph")
    w.export_record("tune").write_text(json.dumps({"checkpoint": str(w.tune.checkpoint), "onnx": str(onnx)}))
    assert w.exported("tune") is not None
    shutil.copytree(w.root, tmp_path / "copy")
    assert WorkDir(tmp_path / "copy").exported("tune") is None
