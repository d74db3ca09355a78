"""Bad input ends as one clear line naming the file, key or value; a silent wrong result becomes an error,
a warning or the right result (issue 16). In-process (CliRunner) where that keeps the test meaningful."""
from __future__ import annotations

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
    from nasdet.tune import StageOutputMissing

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
    """A bug (here a KeyError inside a stage) is not dressed up as a user error."""
    import nasdet.stages.baseline

    def broken(*a, **k):
        raise KeyError("internal")

    monkeypatch.setattr(nasdet.stages.baseline, "run_baseline", broken)
    code, out, exc = cli("train", write_cfg(tmp_path / "ok.yaml", tiny_raw(shapes_dir, tmp_path / "wd")))
    assert isinstance(exc, KeyError) and code == 1
