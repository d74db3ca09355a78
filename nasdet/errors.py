"""The errors nasdet raises on purpose. The CLI prints one line for a ``NasdetError`` (the message names
the file, key or value at fault) and a full traceback for anything else, which is a bug.

Each class also derives from the builtin the code raised before (ValueError, FileNotFoundError,
RuntimeError), so ``except ValueError`` in callers keeps working.
"""
from __future__ import annotations


class NasdetError(Exception):
    """Base of every error caused by the user's input or environment, not by a bug in nasdet."""

    exit_code = 2  # bad input; 1 for a run that worked but whose result failed a check
    label = "error"


class ConfigError(NasdetError, ValueError):
    """A config file, override or option that does not validate; the message names the file and key path."""


class ArchError(ConfigError):
    """An arch (or a restriction) that does not fit its search space; the message names what and why."""


class GenotypeError(ConfigError):
    """A genotype that cannot be parsed or built; the message names the bad op or input index."""


class NoArchUnderCost(NasdetError, RuntimeError):
    """``sample_under`` found no arch under the cost limit."""


class DataError(NasdetError, ValueError):
    """Bad input data; the message names the file and the id (image or annotation) at fault."""


class CheckpointError(NasdetError, ValueError):
    """A checkpoint that is missing, unreadable or from another model / search space."""


class StageOrderError(NasdetError, FileNotFoundError):
    """A stage needs the output of an earlier one that has not run (the message names the stage to run)."""


StageOutputMissing = StageOrderError  # the name tune/export used first


class MissingCheckpoint(StageOrderError, CheckpointError):
    """A stage's checkpoint is not there: the earlier stage has not run (both a stage-order and a checkpoint
    error, so callers catching either keep working)."""


class EnvironmentProblem(NasdetError, RuntimeError):
    """The machine cannot do what the config asks (no CUDA, a storage driver not installed, ...)."""


class TrainingDiverged(NasdetError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept untouched."""


class ExportParityError(NasdetError, RuntimeError):
    """onnxruntime's outputs differ from torch's beyond the configured tolerance."""

    exit_code = 1  # the export ran but its file is wrong: a failure, not bad input
    label = "export check failed"
